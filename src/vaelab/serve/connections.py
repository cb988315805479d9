"""Connections the explorer's server keeps: every request must arrive in time.

uvicorn times out nothing while a request is on its way: a connection that sent nothing, part
of a request line or of its headers, or a ``Content-Length`` body it never finishes (a
"slowloris" client) was kept open forever, and its file descriptor with it, until the process
ran out of them and no one's request was accepted any more. :class:`TimedH11Protocol`, the
HTTP/1.1 protocol the explorer runs (uvicorn's h11 one, with deadlines), bounds each phase of
a request:

* **the head** (request line and headers): within ``head_timeout`` seconds (10) of the
  connection's opening or of the previous answer's end. Trickling a byte at a time does not
  extend it: the deadline is fixed when the wait begins.
* **the body**: within ``body_timeout`` seconds (30) of the end of the head.

A request that does not arrive in time is answered ``408`` with a JSON ``{"error": ...}`` line
(when no answer has started), its connection is closed, and the server says so in one line on
stderr (logger ``vaelab.serve``; at most a few lines a second, the rest counted). A connection
that sent nothing at all (a browser's spare connection, an idle keep-alive one) is closed
without an answer or a line. While the app works on a request (the request is complete) no
deadline runs: model work is bounded by the app's gate instead.

Connections are also capped (``max_connections``, by default what the process's file
descriptor limit leaves room for, at most 1000): a new connection over the cap closes the
oldest one still waiting for its request, so stalled connections can never keep a complete
request from being accepted.
"""

from __future__ import annotations

import json
import logging
import os
import time
from typing import Any

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

__all__ = ["TimedH11Protocol", "timed_protocol", "connection_cap", "HEAD_TIMEOUT", "BODY_TIMEOUT", "KEEP_ALIVE",
           "BACKLOG"]

LOG = logging.getLogger("vaelab.serve")
HEAD_TIMEOUT = 10.0  # seconds for a request's line and headers
BODY_TIMEOUT = 30.0  # seconds for its body (an upload is at most 5 MB)
KEEP_ALIVE = 5  # seconds an idle keep-alive connection is kept (uvicorn's own timer)
BACKLOG = 64  # the listening queue; also the most connections asyncio accepts at once
LINES_PER_SECOND = 5  # log lines about closed connections; the rest are counted in the next one


def connection_cap() -> int:
    """How many connections the server keeps at most: what the file descriptor limit leaves
    after those open now and bursts of accepts (``BACKLOG``), between 16 and 1000."""
    try:
        import resource

        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    except (ImportError, OSError, ValueError):  # Windows: no such limit to run into
        return 1000
    if soft == resource.RLIM_INFINITY or soft <= 0:
        return 1000
    open_now = 64
    for folder in ("/proc/self/fd", "/dev/fd"):
        try:
            open_now = len(os.listdir(folder))
            break
        except OSError:
            continue
    # asyncio accepts up to BACKLOG connections at a time, and may do so again before the first
    # of them is seen (and one over the cap closed): room for two such bursts
    return max(16, min(1000, soft - open_now - 2 * BACKLOG - 32))


class _Lines:
    """At most ``LINES_PER_SECOND`` log lines a second; the ones left out are counted in the next."""

    def __init__(self) -> None:
        self.second = 0
        self.count = 0
        self.left_out = 0

    def warn(self, message: str) -> None:
        now = int(time.monotonic())
        if now != self.second:
            self.second, self.count = now, 0
        self.count += 1
        if self.count > LINES_PER_SECOND:
            self.left_out += 1
            return
        if self.left_out:
            message += f" ({self.left_out} more such line{'s' if self.left_out > 1 else ''} left out before this one)"
            self.left_out = 0
        LOG.warning("%s", message)


LINES = _Lines()


def _answer_408(message: str) -> bytes:
    body = json.dumps({"error": message}).encode()
    return (b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\ncontent-length: %d\r\n"
            b"connection: close\r\nx-content-type-options: nosniff\r\n\r\n%s" % (len(body), body))


class TimedH11Protocol(H11Protocol):
    """uvicorn's HTTP/1.1 protocol with a deadline on each request's head and body, and a cap
    on open connections (see the module's docstring). Use :func:`timed_protocol` to set them."""

    head_timeout: float = HEAD_TIMEOUT
    body_timeout: float = BODY_TIMEOUT
    max_connections: int = 1000

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._phase: str | None = None  # "head", "body" or None (the request is complete, or none can come)
        self._since = 0.0  # when the current phase began (loop time)
        self._timer: Any = None
        self._lost = False

    # --- uvicorn's protocol, watched -----------------------------------------------------------
    def connection_made(self, transport: Any) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._watch()
        if len(self.connections) > self.max_connections:
            self._close_oldest_waiting()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        self._watch()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._watch()

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost = True
        self._phase = None
        self._cancel()
        super().connection_lost(exc)

    # --- deadlines ------------------------------------------------------------------------------
    def _cancel(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _watch(self) -> None:
        """Start, keep or stop the deadline after anything that may move the request along."""
        phase = None
        if self.transport is not None and not self.transport.is_closing():
            state = self.conn.their_state
            phase = "head" if state is h11.IDLE else "body" if state is h11.SEND_BODY else None
        if phase == self._phase:
            return  # the same wait goes on: its deadline stays where it was
        self._phase = phase
        self._cancel()
        if phase is not None:
            self._since = self.loop.time()
            limit = self.head_timeout if phase == "head" else self.body_timeout
            self._timer = self.loop.call_later(limit, self._timed_out)

    def _timed_out(self) -> None:
        self._timer = None
        if self._phase is None or self.transport.is_closing():
            return
        part, limit = ("headers", self.head_timeout) if self._phase == "head" else ("body", self.body_timeout)
        self._close(f"did not send its request's {part} within {limit:g} s",
                    f"the request's {part} did not arrive within {limit:g} s; the connection is closed")

    def _close_oldest_waiting(self) -> None:
        """Over the cap: close the connection that has waited longest for its request."""
        waiting = [c for c in list(self.connections)
                   if isinstance(c, TimedH11Protocol) and c is not self and c._phase is not None
                   and c.transport is not None and not c.transport.is_closing()]
        if not waiting:
            return  # every other connection is being answered; their number is bounded by the work
        oldest = min(waiting, key=lambda c: c._since)
        waited = self.loop.time() - oldest._since
        oldest._close(f"had not sent its whole request after {waited:.1f} s, and {len(self.connections)} "
                      f"connections were open, over the {self.max_connections} this server keeps",
                      f"the request did not arrive within {waited:.1f} s while the server had more connections "
                      "open than it keeps; the connection is closed")

    def _close(self, reason: str, message: str) -> None:
        """Close this connection, answering 408 when no answer has started; one log line,
        none for a connection that sent nothing (a spare or idle keep-alive one)."""
        sent_nothing = self._phase == "head" and not self.conn.trailing_data[0]
        cycle = self.cycle if self._phase == "body" else None
        answered = cycle is not None and cycle.response_started  # (e.g. a 413 before the body was read)
        self._phase = None
        self._cancel()
        if cycle is not None and not cycle.response_complete:
            cycle.disconnected = True  # the app's receive() says so; what it answers is dropped
            cycle.message_event.set()
        if not sent_nothing and not answered:
            self.transport.write(_answer_408(message))
        self.transport.close()
        self.loop.call_later(1.0, self._abort)  # a client that does not read cannot keep it open either
        if not sent_nothing:
            host, port = self.client[:2] if self.client else ("?", 0)
            who = f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"
            answer = "" if answered else ", answered 408"
            LINES.warn(f"warning: closed the connection from {who}: it {reason}{answer}")

    def _abort(self) -> None:
        if not self._lost:
            self.transport.abort()


def timed_protocol(head_timeout: float = HEAD_TIMEOUT, body_timeout: float = BODY_TIMEOUT,
                   max_connections: int | None = None) -> type[TimedH11Protocol]:
    """The protocol class for ``uvicorn.Config(http=...)`` with these deadlines (seconds, > 0)
    and cap on open connections (None: :func:`connection_cap`)."""
    if not (head_timeout > 0 and body_timeout > 0):
        raise ValueError(f"timeouts must be positive, got {head_timeout} and {body_timeout}")
    cap = connection_cap() if max_connections is None else int(max_connections)
    if cap < 1:
        raise ValueError(f"max_connections must be at least 1, got {max_connections}")
    return type("TimedH11Protocol", (TimedH11Protocol,),
                {"head_timeout": float(head_timeout), "body_timeout": float(body_timeout), "max_connections": cap})
