"""Running the explorer: load the run, bind the port, print the address, serve until Ctrl+C."""

from __future__ import annotations

import socket
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any, TextIO

from ..errors import VaelabError, printable
from .connections import BACKLOG, BODY_TIMEOUT, HEAD_TIMEOUT, KEEP_ALIVE, timed_protocol
from .guard import ip_of

__all__ = ["serve", "bind", "server_for", "LOOPBACK", "is_loopback", "allowed_hosts"]

LOOPBACK = ("127.0.0.1", "localhost", "::1")
LOOPBACK_NETWORK = "127.0.0.0/8"  # every 127.x.y.z address is this computer
ANY_ADDRESS = ("0.0.0.0", "::", "")  # listening on every address: open to other computers


def is_loopback(host: str) -> bool:
    """Whether listening on ``host`` means this computer only: a loopback address (any of
    127.0.0.0/8, ``::1``), ``localhost`` in any case, or a name that resolves to one (the
    address :func:`bind` would listen on)."""
    name = host.strip().lower()
    if name == "localhost":
        return True
    ip = ip_of(name)
    if ip is None and name not in ANY_ADDRESS:
        try:
            infos = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
            ip = ip_of(str(infos[0][4][0]).partition("%")[0])
        except (OSError, UnicodeError, IndexError):  # bind() names the problem
            return False
    return ip is not None and ip.is_loopback


def allowed_hosts(host: str, extra: Iterable[str] = ()) -> list[str]:
    """What a request's ``Host`` header may name on a server listening on ``host`` (see
    :class:`~vaelab.serve.guard.Guard`): on the loopback, ``localhost`` and the loopback
    addresses; elsewhere also any IP address (a DNS-rebinding attack needs a DNS name) and this
    computer's own names. ``host`` itself when it is a name, and ``extra`` names, in both cases."""
    if is_loopback(host):
        hosts = [*LOOPBACK, LOOPBACK_NETWORK]
    else:
        hosts = ["localhost", "0.0.0.0/0", "::/0", socket.gethostname(), socket.getfqdn()]
    hosts += [*([] if ip_of(host.strip()) else [host]), *extra]
    out: list[str] = []
    for h in hosts:
        h = h.strip().lower()
        if h and h not in ANY_ADDRESS and h not in out:
            out.append(h)
    return out


def bind(host: str, port: int) -> socket.socket:
    """A listening socket on ``host:port`` (port 0: any free one), or a one-line VaelabError."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as err:
        raise VaelabError(f"cannot listen on host '{host}' ({err.strerror}); use an address such as 127.0.0.1") from None
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)  # proto IPPROTO_TCP: asyncio then sets TCP_NODELAY (no 40 ms delayed-ACK stalls)
    try:
        if sys.platform != "win32":
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(BACKLOG)
    except OSError as err:
        sock.close()
        if err.errno in (98, 48, 10048):  # EADDRINUSE on Linux, macOS, Windows
            raise VaelabError(f"port {port} on {host} is already in use; choose another with --port") from None
        raise VaelabError(f"cannot listen on {host}:{port} ({err.strerror}); choose another --host or --port") from None
    sock.set_inheritable(True)
    return sock


def server_for(app: Any, *, head_timeout: float = HEAD_TIMEOUT, body_timeout: float = BODY_TIMEOUT,
               max_connections: int | None = None) -> Any:
    """The ``uvicorn.Server`` that runs ``app`` (call ``.run(sockets=[bind(...)])``): HTTP/1.1
    through :class:`~vaelab.serve.connections.TimedH11Protocol`, so a request whose head does
    not arrive within ``head_timeout`` seconds, or whose body within ``body_timeout``, is a 408
    and a closed connection, idle keep-alive connections are closed after 5 s, and at most
    ``max_connections`` are kept (None: what the file descriptor limit leaves room for)."""
    import uvicorn

    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off", backlog=BACKLOG,
                            http=timed_protocol(head_timeout, body_timeout, max_connections),
                            timeout_keep_alive=KEEP_ALIVE)
    return uvicorn.Server(config)


def serve(run: str | Path, host: str = "127.0.0.1", port: int = 8765, out: TextIO | None = None,
          allow_hosts: Iterable[str] = (), *, head_timeout: float = HEAD_TIMEOUT, body_timeout: float = BODY_TIMEOUT,
          max_connections: int | None = None) -> None:
    """Serve the latent space explorer for ``run`` at ``http://host:port/`` until interrupted.

    The run is loaded (and checked) first, then the port is bound, then the address is
    printed: a bad run or a port in use is a :class:`VaelabError` before anything serves.
    Requests are answered only when their ``Host`` header names what :func:`allowed_hosts`
    allows (the DNS-rebinding guard); ``allow_hosts`` adds names (e.g. a DNS alias of this
    computer that is not its own name). A request must arrive in time: its head within
    ``head_timeout`` seconds, its body within ``body_timeout`` (else 408 and the connection is
    closed), and at most ``max_connections`` are kept open (see :func:`server_for`).
    """
    from .app import create_app

    out = out or sys.stdout
    loopback = is_loopback(host)
    app = create_app(run, allowed_hosts=allowed_hosts(host, allow_hosts))  # DNS rebinding guard
    sock = bind(host, port)
    bound_port = sock.getsockname()[1]
    shown = f"[{host}]" if ":" in host else host
    if not loopback:
        print(printable(f"warning: listening on {host}, not only this computer: anyone who can reach it can use "
                        "the explorer (it has no login)"), file=sys.stderr, flush=True)
    ex = app.state.explorer
    given = ""
    if ex.classifier is not None and ex.label is not None:
        given = f"; semi-supervised, {len(ex.label.names())} classes"
    elif ex.variables:
        given = f"; conditional on {', '.join(v.name for v in ex.variables)}"
    print(printable(f"exploring {ex.model.run_dir} ({ex.model.latent_dim}-D latent space, {len(ex.x)} test examples "
                    f"on the map{given})"), file=out)  # (a run or variable name with an escape sequence: shown escaped)
    here = f" (from this computer: http://127.0.0.1:{bound_port}/)" if host in ANY_ADDRESS else ""
    print(printable(f"open http://{shown}:{bound_port}/ in a browser{here} (Ctrl+C stops the server)"), file=out,
          flush=True)
    server = server_for(app, head_timeout=head_timeout, body_timeout=body_timeout, max_connections=max_connections)
    try:
        server.run(sockets=[sock])
    finally:
        sock.close()
