"""The explorer's server against requests that never finish arriving (slowloris).

uvicorn timed nothing out while a request was on its way: a connection that sent part of a
request line, part of its headers, or a ``Content-Length`` body it never finished was kept
open forever, and once they had used up the process's file descriptors no request was
accepted at all (asyncio logged "socket.accept() out of system resource" tens of thousands of
times a second). These tests run the real server (:func:`vaelab.serve.server.server_for`, as
``vaelab serve`` does) on a free port with deadlines of a fraction of a second and talk to it
over raw sockets.
"""

from __future__ import annotations

import json
import logging
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import pytest

import vaelab.runs
from vaelab.serve import connections, create_app
from vaelab.serve.connections import BODY_TIMEOUT, HEAD_TIMEOUT, TimedH11Protocol, connection_cap
from vaelab.serve.server import bind, server_for

HEAD = 0.5  # the deadlines the tests run under (the server's defaults are 10 s and 30 s)
BODY = 1.0
SLACK = 3.0  # how much later than its deadline a closing may be seen on a busy machine
LOGGER = "vaelab.serve"


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> Any:
    out = tmp_path_factory.mktemp("runs")
    np.save(out / "v.npy", np.random.default_rng(0).normal(size=(60, 4)).astype(np.float32))
    model, _ = vaelab.runs.train(out=str(out), name="v", data=str(out / "v.npy"), hidden=[8], latent_dim=2,
                                 likelihood="gaussian", epochs=1, eval_k=0, figures=False, progress=False,
                                 log=lambda m: None, device="cpu")
    return create_app(model.run_dir, allowed_hosts=["127.0.0.1", "localhost"])


@contextmanager
def running(app: Any, **kw: Any) -> Iterator[int]:
    """The app served on a free loopback port (its number), as ``vaelab serve`` serves it."""
    sock = bind("127.0.0.1", 0)
    server = server_for(app, **{"head_timeout": HEAD, "body_timeout": BODY, **kw})
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        for _ in range(500):
            if server.started:
                break
            time.sleep(0.01)
        assert server.started
        yield sock.getsockname()[1]
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()
        assert not thread.is_alive()


OPENED: list[socket.socket] = []


@pytest.fixture(autouse=True)
def close_sockets() -> Iterator[None]:
    yield
    while OPENED:
        OPENED.pop().close()


def connect(port: int, data: bytes = b"") -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    OPENED.append(s)
    if data:
        s.sendall(data)
    return s


def until_closed(s: socket.socket, limit: float = HEAD + BODY + SLACK) -> bytes:
    """Everything the server sends until it closes the connection (fails after ``limit`` s)."""
    s.settimeout(limit)
    chunks = []
    try:
        while chunk := s.recv(65536):
            chunks.append(chunk)
    except ConnectionResetError:
        pass
    except TimeoutError:
        pytest.fail(f"the server kept the connection open for {limit} s; it got {b''.join(chunks)[:200]!r}")
    finally:
        s.close()
    return b"".join(chunks)


def silent(s: socket.socket, wait: float = 0.2) -> bool:
    """Whether the server has neither answered on ``s`` nor closed it (waiting ``wait`` s)."""
    s.settimeout(wait)
    try:
        s.recv(1, socket.MSG_PEEK)  # b"": closed; a byte: answered
        return False
    except (TimeoutError, BlockingIOError):  # nothing to read (a timeout of 0 does not wait)
        return True
    except ConnectionResetError:
        return False


def status_and_json(raw: bytes) -> tuple[int, dict[str, str], Any]:
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = dict((k.strip().lower(), v.strip()) for k, _, v in (line.partition(":") for line in lines[1:]))
    return int(lines[0].split()[1]), headers, json.loads(body) if body else None


def one_answer(s: socket.socket) -> tuple[int, dict[str, str], Any]:
    """One whole answer read from a connection kept open (its Content-Length)."""
    s.settimeout(5)
    raw = b""
    while b"\r\n\r\n" not in raw:
        raw += s.recv(65536)
    status, headers, _ = status_and_json(raw.partition(b"\r\n\r\n")[0] + b"\r\n\r\n")
    while len(raw.partition(b"\r\n\r\n")[2]) < int(headers["content-length"]):
        raw += s.recv(65536)
    return status_and_json(raw)


def ask(port: int, request: bytes) -> tuple[int, dict[str, str], Any]:
    """A whole request on a new connection (``Connection: close``) and its answer."""
    return status_and_json(until_closed(connect(port, request)))


def get(path: str, host: str = "127.0.0.1") -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode()


UPLOAD_HEAD = (b"POST /api/upload?name=x.npy HTTP/1.1\r\nHost: 127.0.0.1\r\n"
               b"Content-Type: application/octet-stream\r\nContent-Length: 1000\r\n\r\n")
STALLED = {  # what each stalled client sends, then nothing more; and what it gets: 408 or a silent close
    "nothing": (b"", None),
    "part of the request line": (b"GET /api/in", 408),
    "part of the headers": (b"GET /api/info HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: ", 408),
    "headers without their blank line": (b"GET /api/info HTTP/1.1\r\nHost: 127.0.0.1\r\n", 408),
    "an upload cut short": (UPLOAD_HEAD + b"\x93NUMPY", 408),
    "a JSON body cut short": (b"POST /api/decode HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                              b"Content-Length: 100\r\n\r\n{\"z\": [0", 408),
}


def test_stalled_requests_do_not_block_others_and_are_closed_at_their_deadline(
        app: Any, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(connections, "LINES_PER_SECOND", 1000)
    caplog.set_level(logging.WARNING, LOGGER)
    copies = 4
    with running(app) as port:
        start = time.monotonic()
        stalled = [(kind, connect(port, sent)) for kind, (sent, _) in STALLED.items() for _ in range(copies)]
        # a keep-alive connection that answered one request, then sent part of the next
        keep = connect(port, b"GET /api/info HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        assert one_answer(keep)[0] == 200
        keep.sendall(b"GET /api/info HTTP/1.1\r\nHo")
        stalled.append(("part of a keep-alive connection's second request", keep))

        status, headers, info = ask(port, get("/api/info"))  # with 25 stalled connections open
        assert status == 200 and info["latent_dim"] == 2 and headers["x-content-type-options"] == "nosniff"
        assert time.monotonic() - start < HEAD, "a whole request was answered only after the stalled ones' deadline"
        assert all(silent(s, 0) for _, s in stalled)  # (nothing to read yet: no answer, no close)

        for kind, s in stalled:
            raw = until_closed(s)
            closed = time.monotonic() - start
            expected = STALLED.get(kind, (b"", 408))[1]
            if expected is None:
                assert raw == b"", kind
            else:
                status, headers, doc = status_and_json(raw)
                assert status == 408, (kind, raw)
                assert headers["connection"] == "close" and headers["x-content-type-options"] == "nosniff"
                assert "did not arrive within" in doc["error"] and "\n" not in doc["error"]
            deadline = BODY if "cut short" in kind else HEAD
            assert closed >= deadline - 0.05, f"{kind}: closed after {closed:.2f} s, before its deadline"
        assert ask(port, get("/api/info"))[0] == 200  # and the server goes on serving
    lines = [r.getMessage() for r in caplog.records if r.name == LOGGER]
    # one line for each connection that sent something (the silent ones are a browser's spare connections)
    assert len(lines) == copies * (len(STALLED) - 1) + 1, lines
    assert all(line.startswith("warning: closed the connection from 127.0.0.1:") and "\n" not in line for line in lines)
    assert sum("headers within 0.5 s, answered 408" in line for line in lines) == 3 * copies + 1
    assert sum("body within 1 s, answered 408" in line for line in lines) == 2 * copies
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], "an error (a traceback?) was logged"


def test_a_trickled_request_head_does_not_move_its_deadline(app: Any) -> None:
    with running(app) as port:
        s = connect(port)
        start = time.monotonic()
        sent = 0
        request = b"GET /api/info HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: " + b"a" * 200
        while time.monotonic() - start < HEAD + SLACK and silent(s, 0.05):  # a byte every 0.05 s
            try:
                s.sendall(request[sent:sent + 1])
            except OSError:
                break
            sent += 1
        raw = until_closed(s)
        closed = time.monotonic() - start
        assert HEAD - 0.05 <= closed < HEAD + SLACK, closed
        assert raw.startswith(b"HTTP/1.1 408 ")


def test_a_stalled_upload_is_a_408_and_no_error_and_the_next_upload_is_scored(
        app: Any, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    with running(app) as port:
        status, _, doc = status_and_json(until_closed(connect(port, UPLOAD_HEAD + b"\x93NUMPY\x01\x00")))
        assert status == 408 and "body did not arrive within 1 s" in doc["error"]
        # the app, waiting for the body, was told the client is gone; its own answer was dropped
        import io
        buf = io.BytesIO()
        np.save(buf, np.zeros(4, dtype=np.float32))
        body = buf.getvalue()
        status, _, doc = ask(port, b"POST /api/upload?name=x.npy HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
                                   b"Content-Type: application/octet-stream\r\nContent-Length: %d\r\n\r\n%s"
                             % (len(body), body))
        assert status == 200 and "elbo" in doc
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], [r.getMessage() for r in caplog.records]
    assert [r.getMessage() for r in caplog.records if r.name == LOGGER and "closed the connection" in r.getMessage()]


def test_idle_and_keep_alive_connections_are_closed_without_a_word(app: Any, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, LOGGER)
    with running(app) as port:
        idle = connect(port)
        keep = connect(port, b"GET /api/info HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        start = time.monotonic()
        raw = until_closed(keep)  # its answer, then the close: no 408 after it
        assert raw.startswith(b"HTTP/1.1 200 ") and raw.count(b"HTTP/1.1") == 1
        assert until_closed(idle) == b""
        assert time.monotonic() - start < HEAD + SLACK
    assert not [r for r in caplog.records if r.name == LOGGER]


def test_connections_over_the_cap_close_the_oldest_waiting_one(app: Any, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, LOGGER)
    cap, n = 8, 20
    with running(app, head_timeout=60, body_timeout=60, max_connections=cap) as port:  # no deadline closes them here
        stalled = []
        for i in range(n):
            stalled.append(connect(port, b"GET /api/info HTTP/1.1\r\nHost: 127"))
            time.sleep(0.02)  # in order: the first is the oldest
        start = time.monotonic()
        status, _, info = ask(port, get("/api/info"))
        assert status == 200 and info["latent_dim"] == 2 and time.monotonic() - start < 5
        status, _, doc = status_and_json(until_closed(stalled[0], 5))
        assert status == 408 and "more connections open than it keeps" in doc["error"]
        assert silent(stalled[-1]), "the newest waiting connection was closed, not the oldest"
        waiting = sum(silent(s, 0.05) for s in stalled[1:])
        assert waiting <= cap, waiting
    assert any("over the 8 this server keeps" in r.getMessage() for r in caplog.records)


def test_the_front_door_still_holds_over_real_connections(app: Any) -> None:
    with running(app) as port:
        status, headers, doc = ask(port, get("/api/info", host="evil.example"))
        assert status == 400 and "DNS rebinding" in doc["error"] and headers["x-content-type-options"] == "nosniff"
        status, headers, doc = ask(port, b"DELETE /api/info HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        assert status == 405 and headers["allow"] == "GET, HEAD"
        status, _, _ = ask(port, b"POST /api/upload HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
                                 b"Content-Type: text/plain\r\nContent-Length: 2\r\n\r\nhi")
        assert status == 415
        too_big = UPLOAD_HEAD.replace(b"1000", b"99999999").replace(b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n")
        status, _, doc = ask(port, too_big)
        assert status == 413 and "5 MB" in doc["error"]


def test_a_refused_upload_whose_body_never_comes_is_closed_without_a_second_answer(app: Any) -> None:
    # answered (413) before its body was read; the body then never comes: closed, and no 408 after the 413
    with running(app) as port:
        s = connect(port, UPLOAD_HEAD.replace(b"1000", b"99999999") + b"x" * 10)
        raw = until_closed(s)
        assert raw.startswith(b"HTTP/1.1 413 ") and raw.count(b"HTTP/1.1") == 1


def test_serve_runs_the_timed_protocol_with_its_defaults(app: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    import uvicorn

    from vaelab.serve import serve

    configs: list[Any] = []
    monkeypatch.setattr(uvicorn.Server, "run", lambda self, sockets=None: configs.append(self.config))
    monkeypatch.setattr("vaelab.serve.app.create_app", lambda run, **kw: app)
    serve("RUN", host="127.0.0.1", port=0)
    [config] = configs
    assert issubclass(config.http, TimedH11Protocol)
    assert (config.http.head_timeout, config.http.body_timeout) == (HEAD_TIMEOUT, BODY_TIMEOUT) == (10.0, 30.0)
    assert config.http.max_connections == connection_cap() and config.timeout_keep_alive == 5
    with pytest.raises(ValueError, match="positive"):
        server_for(app, head_timeout=0)


def test_the_connection_cap_leaves_room_under_the_descriptor_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    import resource

    monkeypatch.setattr(resource, "getrlimit", lambda what: (256, 1024))  # macOS's default soft limit
    cap = connection_cap()
    assert 16 <= cap <= 256 - 2 * connections.BACKLOG - 32
    monkeypatch.setattr(resource, "getrlimit", lambda what: (1 << 20, 1 << 20))
    assert connection_cap() == 1000


def test_log_lines_about_closed_connections_are_throttled(caplog: pytest.LogCaptureFixture,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    caplog.set_level(logging.WARNING, LOGGER)
    lines = connections._Lines()
    clock = [100.2]
    monkeypatch.setattr(connections.time, "monotonic", lambda: clock[0])
    for i in range(connections.LINES_PER_SECOND + 3):
        lines.warn(f"line {i}")
    clock[0] = 101.5
    lines.warn("later")
    said = [r.getMessage() for r in caplog.records]
    assert said[:-1] == [f"line {i}" for i in range(connections.LINES_PER_SECOND)]
    assert said[-1] == "later (3 more such lines left out before this one)"


# --- uploads held at once ------------------------------------------------------------------------
# A slow upload holds what it has received (up to 5 MB) until its body deadline (30 s); with up to
# 1000 connections, trickled uploads held gigabytes (50 of them: +356 MB of RSS). Each upload now
# reserves its declared size before its body is read, from a budget of 64 MB, and gives it back
# when it is answered, however it ends.
from vaelab.serve.app import MAX_UPLOADS_HELD  # noqa: E402
from vaelab.serve.uploads import MAX_UPLOAD_BYTES  # noqa: E402

FULL_UPLOAD_HEAD = UPLOAD_HEAD.replace(b"1000", str(MAX_UPLOAD_BYTES).encode())


def budget_app(app: Any, uploads: int = 2) -> Any:
    """The module's model served with room for ``uploads`` uploads of the largest size at once."""
    return create_app("unused", explorer=app.state.explorer, allowed_hosts=["127.0.0.1", "localhost"],
                      upload_budget=uploads * MAX_UPLOAD_BYTES)


def held_becomes(app: Any, size: int, count: int, limit: float = 5.0) -> None:
    """Wait until the app's uploads hold ``size`` bytes in ``count`` uploads (fails after ``limit`` s)."""
    budget = app.state.uploads
    start = time.monotonic()
    while (budget.held, budget.uploads) != (size, count):
        if time.monotonic() - start > limit:
            pytest.fail(f"the uploads hold {budget.held} bytes in {budget.uploads}, not {size} in {count}")
        time.sleep(0.01)


CHUNKED_UPLOAD_HEAD = UPLOAD_HEAD.replace(b"Content-Length: 1000", b"Transfer-Encoding: chunked")


def npy_upload() -> bytes:
    """A whole upload of a .npy example the model scores, on a connection closed after it."""
    import io
    buf = io.BytesIO()
    np.save(buf, np.zeros(4, dtype=np.float32))
    body = buf.getvalue()
    return (b"POST /api/upload?name=x.npy HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
            b"Content-Type: application/octet-stream\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))


def test_uploads_held_at_once_are_bounded_and_one_over_is_a_503_before_its_body(app: Any) -> None:
    assert MAX_UPLOADS_HELD == 64 * 1024 * 1024 and app.state.uploads.total == MAX_UPLOADS_HELD
    with pytest.raises(ValueError, match="at least one upload"):
        budget_app(app, 0)
    small = budget_app(app)
    with running(small, body_timeout=60) as port:
        stalled = [connect(port, FULL_UPLOAD_HEAD + b"\x93NUMPY") for _ in range(2)]  # 5 MB declared, 6 bytes sent
        held_becomes(small, 2 * MAX_UPLOAD_BYTES, 2)
        # a third upload, even a small one, is answered at once, from its head alone: no body byte sent
        for head in (FULL_UPLOAD_HEAD, UPLOAD_HEAD, CHUNKED_UPLOAD_HEAD):
            s = connect(port, head)
            start = time.monotonic()
            status, headers, doc = one_answer(s)
            assert status == 503 and time.monotonic() - start < 2, (status, doc)
            assert headers["retry-after"] == "5" and headers["x-content-type-options"] == "nosniff"
            assert set(doc) == {"error"} and "\n" not in doc["error"]
            assert "receiving other uploads (2 holding 10 MB of the 10 MB it takes at once)" in doc["error"]
        assert (small.state.uploads.held, small.state.uploads.uploads) == (2 * MAX_UPLOAD_BYTES, 2)
        # what was refused before is refused as before: too big (413), wrong type (415), foreign Host (400)
        status, _, doc = ask(port, FULL_UPLOAD_HEAD.replace(str(MAX_UPLOAD_BYTES).encode(), b"99999999")
                             .replace(b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n"))
        assert status == 413 and "5 MB" in doc["error"]
        assert ask(port, FULL_UPLOAD_HEAD.replace(b"application/octet-stream", b"text/plain")
                   .replace(b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n"))[0] == 415
        assert ask(port, npy_upload().replace(b"Host: 127.0.0.1", b"Host: evil.example"))[0] == 400
        # the rest of the explorer is not held up: JSON bodies are not uploads
        assert ask(port, get("/api/info"))[0] == 200
        decode = b'{"z": [0, 0]}'
        assert ask(port, b"POST /api/decode HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\nContent-Type: "
                         b"application/json\r\nContent-Length: %d\r\n\r\n%s" % (len(decode), decode))[0] == 200
        # one stalled upload gone (its client closed): its room is free again, and an upload is scored
        stalled.pop().close()
        held_becomes(small, MAX_UPLOAD_BYTES, 1)
        status, _, doc = ask(port, npy_upload())
        assert status == 200 and "elbo" in doc
        held_becomes(small, MAX_UPLOAD_BYTES, 1)
        stalled.pop().close()  # (the server, stopping, would wait for its answer)
        held_becomes(small, 0, 0)


def test_aborted_uploads_give_back_all_they_held(app: Any, caplog: pytest.LogCaptureFixture,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(connections, "LINES_PER_SECOND", 1000)
    caplog.set_level(logging.WARNING, LOGGER)
    small = budget_app(app)
    half = FULL_UPLOAD_HEAD.replace(str(MAX_UPLOAD_BYTES).encode(), str(MAX_UPLOAD_BYTES // 2).encode())
    rounds = 3
    with running(small, max_connections=16) as port:
        for _ in range(rounds):
            # closed by its client mid-body, reset by it (RST), timed out (408), a damaged file (422),
            # a chunked one cut short: each at once with another, so that two are in flight
            closed, reset = connect(port, half + b"\x93NUMPY"), connect(port, half + b"\x93NUMPY")
            held_becomes(small, MAX_UPLOAD_BYTES, 2)
            closed.close()
            reset.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
            reset.close()
            timed_out = connect(port, FULL_UPLOAD_HEAD + b"\x93NUMPY")
            chunked = connect(port, CHUNKED_UPLOAD_HEAD + b"6\r\n\x93NUMPY\r\n")
            held_becomes(small, 2 * MAX_UPLOAD_BYTES, 2)
            assert status_and_json(until_closed(timed_out))[0] == 408
            chunked.close()
            held_becomes(small, 0, 0)
            damaged = npy_upload().replace(b"\x93NUMPY", b"\x93NUMPX")
            assert ask(port, damaged)[0] == 422
            assert ask(port, npy_upload())[0] == 200
            held_becomes(small, 0, 0)
        # the whole budget again: two uploads of the largest size are held, a third is refused
        again = [connect(port, FULL_UPLOAD_HEAD + b"\x93NUMPY") for _ in range(2)]
        held_becomes(small, 2 * MAX_UPLOAD_BYTES, 2)
        assert one_answer(connect(port, FULL_UPLOAD_HEAD))[0] == 503
        for s in again:
            s.close()
        held_becomes(small, 0, 0)
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], [r.getMessage() for r in caplog.records]
