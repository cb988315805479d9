"""The explorer's front door: which requests reach the app at all.

A server on the loopback address is still reachable from every web page the user visits: the
browser will send a page's ``fetch`` or form POST to ``http://127.0.0.1:8765/``, and a DNS
name rebound to 127.0.0.1 makes such a page look same-origin. :class:`Guard` (plain ASGI
middleware, in front of every route) refuses, with a one-line JSON ``{"error": ...}``:

* **Host** (400): on a loopback server, a ``Host`` header that does not name the loopback
  (``127.0.0.1``, ``localhost`` or ``[::1]``, any port): the DNS-rebinding defence. IPv6
  literals are read in their brackets, so ``--host ::1`` is checked like ``127.0.0.1``.
* **Origin** (403): a request whose ``Origin`` header is present and is not this server's own
  origin (``http://`` + the ``Host`` it was sent to; ``null`` too), and an API request a
  browser marks ``Sec-Fetch-Site: cross-site`` or ``same-site``.
* **Content type** (415): a POST whose body is not declared with a non-simple content type.
  The three "simple" types (``text/plain``, ``multipart/form-data``,
  ``application/x-www-form-urlencoded``) and no type at all are what a cross-site form or a
  no-CORS ``fetch`` can send without the browser asking first (a CORS preflight, which this
  server never answers); JSON endpoints take ``application/json`` only.

Every refusal happens before the body is read or any model work is done.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from typing import Any

__all__ = ["Guard", "host_name", "LOOPBACK_NAMES", "SIMPLE_TYPES"]

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

LOOPBACK_NAMES = ("127.0.0.1", "localhost", "::1")
SIMPLE_TYPES = ("text/plain", "multipart/form-data", "application/x-www-form-urlencoded")


def host_name(host: str) -> str | None:
    """The name part of a ``Host`` header: ``[::1]:8765`` -> ``::1``, ``localhost:80`` ->
    ``localhost``, ``127.0.0.1`` -> ``127.0.0.1``; None when it cannot be read."""
    host = host.strip().lower()
    if host.startswith("["):  # an IPv6 literal, maybe with a port
        end = host.find("]")
        if end < 0 or (host[end + 1 :] and not (host[end + 1] == ":" and host[end + 2 :].isdigit())):
            return None
        return host[1:end] or None
    name, _, port = host.partition(":")
    if port and not port.isdigit():
        return None
    return name or None


class Guard:
    """ASGI middleware that refuses foreign hosts, cross-site requests and simple-typed POSTs.

    Args:
        app: the app behind the door.
        allowed_hosts: host names a request's ``Host`` must name (None: any; the server passes
            :data:`LOOPBACK_NAMES` when it listens on the loopback only).
        json_paths: POST paths whose body must be ``application/json``; every other POST
            needs some non-simple content type.
    """

    def __init__(self, app: ASGIApp, allowed_hosts: Iterable[str] | None = None, json_paths: Iterable[str] = ()) -> None:
        self.app = app
        self.allowed = None if allowed_hosts is None else {h.strip("[]").lower() for h in allowed_hosts}
        self.json_paths = set(json_paths)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        refusal = self.refusal(scope)
        if refusal is None:
            await self.app(scope, receive, send)
            return
        status, message = refusal
        body = json.dumps({"error": message}).encode()
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})

    def refusal(self, scope: Scope) -> tuple[int, str] | None:
        """``(status, message)`` for a request that must not reach the app, else None."""
        headers: dict[str, str] = {}
        for k, v in scope.get("headers", []):
            headers.setdefault(k.decode("latin-1").lower(), v.decode("latin-1"))
        host = headers.get("host", "")
        name = host_name(host)
        if self.allowed is not None and name not in self.allowed:
            return 400, (f"this explorer answers only requests addressed to {', '.join(sorted(self.allowed))}, "
                         f"not {host[:80]!r}; open it at the address it printed")
        origin = headers.get("origin")
        own = f"{scope.get('scheme', 'http')}://{host}".lower()
        if origin is not None and origin.strip().lower() != own:
            return 403, (f"cross-origin request from {origin[:80]!r} refused; the explorer answers only its own page "
                         f"({own})")
        path = scope.get("path", "")
        if path.startswith("/api/") and headers.get("sec-fetch-site") in ("cross-site", "same-site"):
            return 403, "cross-site request refused; the explorer answers only its own page"
        if scope.get("method") == "POST":
            media = headers.get("content-type", "").split(";")[0].strip().lower()
            if path in self.json_paths and media != "application/json":
                return 415, f"send the request body as JSON with Content-Type: application/json (got {media or 'none'!r})"
            if not media or media in SIMPLE_TYPES:
                return 415, (f"send the file's bytes with Content-Type: application/octet-stream (got {media or 'none'!r}; "
                             "form and text types are refused, as a cross-site page could send them)")
        return None
