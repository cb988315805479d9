"""The explorer's front door: which requests reach the app at all.

A server on the loopback address is still reachable from every web page the user visits: the
browser will send a page's ``fetch`` or form POST to ``http://127.0.0.1:8765/``, and a DNS
name rebound to 127.0.0.1 makes such a page look same-origin. :class:`Guard` (plain ASGI
middleware, in front of every route) refuses, with a one-line JSON ``{"error": ...}``:

* **Host** (400): a ``Host`` header that names neither one of the allowed names nor an address
  in one of the allowed networks (any port): the DNS-rebinding defence (a page whose DNS name
  was rebound to this server's address sends its own name). A loopback server allows
  ``localhost`` and the loopback addresses (``127.0.0.0/8``, ``[::1]``); one that listens on
  other addresses (``0.0.0.0``, ``::``) any IP address (a rebinding attack needs a DNS name),
  ``localhost`` and this computer's own names. IPv6 literals are read in their brackets, so
  ``--host ::1`` is checked like ``127.0.0.1``.
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

import ipaddress
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


IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


def ip_of(name: str | None) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """``name`` as an IP address (an IPv4-mapped IPv6 one as its IPv4 address), or None."""
    try:
        ip = ipaddress.ip_address(name or "")
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


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
        allowed_hosts: what a request's ``Host`` must name: host names (any case), IP
            addresses (IPv6 with or without brackets) and IP networks (``127.0.0.0/8``,
            ``0.0.0.0/0`` for any IPv4 address); None: any Host (no check).
        json_paths: POST paths whose body must be ``application/json``; every other POST
            needs some non-simple content type.
    """

    def __init__(self, app: ASGIApp, allowed_hosts: Iterable[str] | None = None, json_paths: Iterable[str] = ()) -> None:
        self.app = app
        self.allowed: set[str] | None = None  # names
        self.networks: list[IPNetwork] = []
        if allowed_hosts is not None:
            self.allowed = set()
            for h in allowed_hosts:
                h = h.strip().strip("[]").lower()
                try:
                    net = ipaddress.ip_network(h, strict=False)
                except ValueError:
                    self.allowed.add(h)
                else:
                    self.networks.append(net)
        self.json_paths = set(json_paths)

    def host_allowed(self, name: str | None) -> bool:
        """Whether a ``Host`` header's name part (see :func:`host_name`) is one this server answers."""
        if self.allowed is None:
            return True
        if name is None:
            return False
        if name in self.allowed:
            return True
        ip = ip_of(name)
        return ip is not None and any(ip in net for net in self.networks)

    def allowed_text(self) -> str:
        """The allowed hosts for a message: ``127.0.0.1, localhost, ::1 or 127.0.0.0/8``."""
        items = sorted(self.allowed or ())
        if any(n.prefixlen == 0 for n in self.networks):
            items.append("any IP address")
        else:
            items += [str(n.network_address if n.num_addresses == 1 else n) for n in self.networks]
        return ", ".join(items[:-1]) + (" or " if len(items) > 1 else "") + items[-1] if items else "nothing"

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
        if not self.host_allowed(name):
            by_ip = " or by this computer's IP address" if any(n.prefixlen == 0 for n in self.networks) else ""
            return 400, (f"this explorer answers only requests addressed to {self.allowed_text()}, "
                         f"not {host[:80]!r} (a guard against DNS rebinding); open it at the address it printed{by_ip}")
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
