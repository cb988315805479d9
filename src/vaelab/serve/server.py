"""Running the explorer: load the run, bind the port, print the address, serve until Ctrl+C."""

from __future__ import annotations

import socket
import sys
from pathlib import Path
from typing import TextIO

from ..errors import VaelabError

__all__ = ["serve", "bind", "LOOPBACK"]

LOOPBACK = ("127.0.0.1", "localhost", "::1")


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
        sock.listen(64)
    except OSError as err:
        sock.close()
        if err.errno in (98, 48, 10048):  # EADDRINUSE on Linux, macOS, Windows
            raise VaelabError(f"port {port} on {host} is already in use; choose another with --port") from None
        raise VaelabError(f"cannot listen on {host}:{port} ({err.strerror}); choose another --host or --port") from None
    sock.set_inheritable(True)
    return sock


def serve(run: str | Path, host: str = "127.0.0.1", port: int = 8765, out: TextIO | None = None) -> None:
    """Serve the latent space explorer for ``run`` at ``http://host:port/`` until interrupted.

    The run is loaded (and checked) first, then the port is bound, then the address is
    printed: a bad run or a port in use is a :class:`VaelabError` before anything serves.
    """
    import uvicorn

    from .app import create_app

    out = out or sys.stdout
    app = create_app(run, allowed_hosts=list(LOOPBACK) if host in LOOPBACK else None)  # DNS rebinding guard
    sock = bind(host, port)
    bound_port = sock.getsockname()[1]
    shown = f"[{host}]" if ":" in host else host
    if host not in LOOPBACK:
        print(f"warning: listening on {host}, not only this computer: anyone who can reach it can use "
              "the explorer (it has no login)", file=sys.stderr, flush=True)
    ex = app.state.explorer
    given = ""
    if ex.classifier is not None and ex.label is not None:
        given = f"; semi-supervised, {len(ex.label.names())} classes"
    elif ex.variables:
        given = f"; conditional on {', '.join(v.name for v in ex.variables)}"
    print(f"exploring {ex.model.run_dir} ({ex.model.latent_dim}-D latent space, {len(ex.x)} test examples on the map{given})",
          file=out)
    here = f" (from this computer: http://127.0.0.1:{bound_port}/)" if host in ("0.0.0.0", "::", "") else ""
    print(f"open http://{shown}:{bound_port}/ in a browser{here} (Ctrl+C stops the server)", file=out, flush=True)
    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off")
    try:
        uvicorn.Server(config).run(sockets=[sock])
    finally:
        sock.close()
