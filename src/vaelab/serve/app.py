"""The explorer's web app: a JSON API over :class:`~vaelab.serve.explorer.Explorer` and the
static page that uses it.

    GET  /                      the page (static/index.html, app.js, style.css; no CDN)
    GET  /api/info              the model's summary and its latent dimensions ordered by KL
    GET  /api/map               the test set's posterior means on the plane, with labels
    GET  /api/example/{i}       test example i: input, reconstruction, posterior
    POST /api/decode            {"z": [D numbers]} or {"point": [x, y]} -> E[x|z]
    GET  /api/sample?n=16       fresh z ~ p(z), decoded (optional &seed=)
    POST /api/interpolate       {"from": END, "to": END, "steps": 10, "method": "linear"|"spherical"},
                                END = {"z": [...]} or {"index": i} or {"point": [x, y]}
    POST /api/upload?name=F     the file's raw bytes (PNG/JPEG/.npy, at most 5 MB) -> posterior,
                                reconstruction, ELBO and log p(x) with its standard error

A model with a context (conditional VAE, M2) decodes, samples and interpolates under the
context the request names: ``"label"`` (a class id or name; a query parameter for GET
/api/sample and POST /api/upload) and, for a model that also conditions on continuous
covariates, ``"context_of"`` (a test example whose context to use). A conditional VAE scores
an upload under it too (log p(x|c)); M2 scores without it. /api/info lists the classes; an
unknown class is a 422 that names them all.

Bad input is a 4xx answer ``{"error": "..."}`` (400 malformed or foreign Host, 403 cross-site,
404 no such endpoint, 405 wrong method, with ``Allow``, 408 not sent in time (see
:mod:`~vaelab.serve.connections`), 413 too large, 415 wrong content type,
422 invalid values or files, 503 busy, with ``Retry-After`` when too many uploads are on their
way) and the server keeps serving; a bug is a 500 of the same
form and one line on stderr, never a traceback (:class:`LastResort`, which also adds
``X-Content-Type-Options: nosniff`` to every answer). Requests pass
:class:`~vaelab.serve.guard.Guard` first: a ``Host`` it knows, a POST needs a non-simple
content type (``application/json``; ``application/octet-stream`` for uploads) and no foreign
``Origin``, so no other web page can make the browser post to the explorer. All torch work runs one call at a
time in a worker thread under ``torch.no_grad()``; a :class:`Gate` admits a few calls at
once and answers 503 beyond that, so quick slider moves cannot queue unbounded work. Uploads
hold their bytes while they arrive (a slow one up to 30 s, see
:mod:`~vaelab.serve.connections`) and while they are scored: an :class:`UploadBudget` caps the
bytes all of them may declare at once (64 MB, a dozen uploads of the largest size), and an
upload beyond it is a 503 before its body is read.
"""

from __future__ import annotations

import json
import logging
import math
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from importlib import resources
from pathlib import Path
from typing import Any

import torch
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import ClientDisconnect, Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Match, Mount, Route
from starlette.staticfiles import StaticFiles

from ..errors import VaelabError
from .explorer import Explorer
from .guard import ASGIApp, Guard, Receive, Scope, Send
from .uploads import MAX_UPLOAD_BYTES, prepare_upload

__all__ = ["create_app", "Gate", "UploadBudget", "ApiError", "LastResort", "MAX_UPLOADS_HELD"]

LOG = logging.getLogger("vaelab.serve")
MAX_JSON_BYTES = 64 * 1024
# bytes of uploads held at once (declared sizes, a chunked one counted at MAX_UPLOAD_BYTES), from
# their head until they are answered: without a bound, 1000 connections each trickling a 5 MB
# upload (the body deadline is 30 s) could hold 5 GB (50 stalled ones: 356 MB more than an idle
# server; with the bound, 50 or 200 of them: 12 held, the rest a 503, about 125 MB)
MAX_UPLOADS_HELD = 64 * 1024 * 1024
RETRY_AFTER = 5  # seconds, in the 503 of an upload over that bound
MAX_SAMPLES = 64
ANY_METHOD = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")
MAX_STEPS = 50
STATIC = Path(str(resources.files("vaelab.serve") / "static"))
# The page loads nothing from elsewhere; the browser enforces it.
CSP = "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'"


class _Static(StaticFiles):
    """The page's files, each with the page's Content-Security-Policy (a copy of index.html
    under /static must not be framed by another site either)."""

    async def get_response(self, path: str, scope: Any) -> Response:
        response = await super().get_response(path, scope)
        response.headers["Content-Security-Policy"] = CSP
        return response


class LastResort:
    """The outermost layer (ASGI middleware): ``X-Content-Type-Options: nosniff`` on every
    answer, and an exception no handler answered (a bug) as a 500 JSON line plus one line on
    stderr (logger ``vaelab.serve``). Starlette's own ``Exception`` handler answers too but then
    re-raises, so the server printed a traceback on the terminal for every such request.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def send_nosniff(message: Any) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                headers = list(message.get("headers", []))
                if not any(k.lower() == b"x-content-type-options" for k, _ in headers):
                    headers.append((b"x-content-type-options", b"nosniff"))
                message = {**message, "headers": headers}
            await send(message)

        try:
            await self.app(scope, receive, send_nosniff)
        except Exception as err:  # noqa: BLE001 - a bug: one line on the terminal, one JSON line to the page
            what = " ".join(str(err).split())[:200]
            LOG.error("error: internal error answering %s %s (%s%s); the server goes on serving", scope.get("method"),
                      scope.get("path"), type(err).__name__, f": {what}" if what else "")
            if not started:  # else the answer is already on its way; the connection is closed unfinished
                await JSONResponse({"error": f"internal error ({type(err).__name__}); the server goes on serving"},
                                   status_code=500)(scope, receive, send_nosniff)


class ApiError(Exception):
    """An answer with a 4xx/5xx status and a one-line message for the page."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = " ".join(message.split())
        self.headers = headers


class Gate:
    """Admit at most ``capacity`` model calls at once; they run one at a time, the rest get 503.

    Waiting happens in worker threads (one lock), not in the event loop, so the gate works
    with any loop; the admitted count bounds those threads and the queued work.
    """

    def __init__(self, capacity: int = 4) -> None:
        self.capacity = capacity
        self._admitted = 0
        self._count = threading.Lock()
        self._work = threading.Lock()

    async def run(self, fn: Callable[..., Any], *args: Any) -> Any:
        with self._count:
            if self._admitted >= self.capacity:
                raise ApiError(503, "the server is busy with earlier requests; try again in a moment")
            self._admitted += 1
        try:
            return await run_in_threadpool(self._one_at_a_time, fn, *args)
        finally:
            with self._count:
                self._admitted -= 1

    def _one_at_a_time(self, fn: Callable[..., Any], *args: Any) -> Any:
        with self._work, torch.no_grad():
            return fn(*args)


class UploadBudget:
    """The bytes uploads may hold at once: each upload reserves its declared size
    (``Content-Length``; a chunked one, without it, the most an upload may be) when its head has
    arrived, before its body is read, and gives it back when it is answered, whatever the end
    (scored, refused, timed out, its client gone: :meth:`hold` is a context manager). An upload
    that does not fit is a 503 with ``Retry-After``.

    Only the event loop's thread touches it (the handlers), so the count needs no lock; there is
    one all the same, for tests that look from another thread.
    """

    def __init__(self, total: int = MAX_UPLOADS_HELD) -> None:
        if total < MAX_UPLOAD_BYTES:
            raise ValueError(f"an upload budget must hold at least one upload of {MAX_UPLOAD_BYTES} bytes, got {total}")
        self.total = total
        self.held = 0  # bytes reserved now
        self.uploads = 0  # uploads holding them
        self._lock = threading.Lock()

    @contextmanager
    def hold(self, size: int) -> Iterator[None]:
        """Reserve ``size`` bytes for the ``with`` block, or raise a 503 :class:`ApiError`."""
        with self._lock:
            if self.held + size > self.total:
                raise ApiError(503, f"the server is receiving other uploads ({self.uploads} holding "
                                    f"{_size(self.held)} of the {_size(self.total)} it takes at once); "
                                    f"try again in {RETRY_AFTER} s", headers={"Retry-After": str(RETRY_AFTER)})
            self.held += size
            self.uploads += 1
        try:
            yield
        finally:  # any end: an answer, an ApiError, ClientDisconnect, a bug, cancellation
            with self._lock:
                self.held -= size
                self.uploads -= 1


# --- reading and checking requests -------------------------------------------------------------
def _size(n: int) -> str:
    """A byte count for a message: ``64 KB``, ``5 MB``, ``1.5 MB``, ``900 bytes`` (K = 1024)."""
    for unit, scale in (("MB", 1024 * 1024), ("KB", 1024)):
        if n >= scale:
            return f"{n / scale:.3g} {unit}"
    return f"{n} bytes"


def _declared(request: Request, limit: int, what: str) -> int | None:
    """The body's declared size (``Content-Length``; None: chunked), refused with 413 over ``limit``."""
    declared = request.headers.get("content-length")
    if declared is None or not declared.isdigit():  # (h11 refuses a malformed one before the app sees it)
        return None
    if int(declared) > limit:
        raise _too_big(limit, what)
    return int(declared)


def _too_big(limit: int, what: str) -> ApiError:
    return ApiError(413, f"{what} is larger than {_size(limit)}; send a smaller one")


async def _body(request: Request, limit: int, what: str) -> bytes:
    """The request body, refused with 413 as soon as it passes ``limit`` bytes."""
    too_big = _too_big(limit, what)
    _declared(request, limit, what)
    chunks, size = [], 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise too_big
            chunks.append(chunk)
    except ClientDisconnect:  # the user cancelled (no one reads the answer; no traceback on the terminal)
        raise ApiError(400, f"the connection closed before {what} arrived") from None
    return b"".join(chunks)


async def _json(request: Request) -> dict[str, Any]:
    raw = await _body(request, MAX_JSON_BYTES, "the request")
    try:
        doc = json.loads(raw)
    except ValueError as err:  # JSONDecodeError, UnicodeDecodeError, an integer of more than 4300 digits
        raise ApiError(400, f"the request body is not valid JSON ({_short(err, 120)})") from None
    except RecursionError:  # thousands of nested brackets
        raise ApiError(400, "the request body is JSON nested too deeply; send a flat object") from None
    if not isinstance(doc, dict):
        raise ApiError(400, f"the request body must be a JSON object, got {type(doc).__name__}")
    return doc


def _vector(value: Any, n: int, what: str) -> torch.Tensor:
    """A list of ``n`` finite numbers as a tensor, or a 422."""
    if not isinstance(value, list) or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
        raise ApiError(422, f"{what} must be a list of {n} numbers")
    if len(value) != n:
        raise ApiError(422, f"{what} has {len(value)} numbers; this model needs {n}")
    try:
        floats = [float(v) for v in value]
    except OverflowError:  # an integer beyond the float range
        raise ApiError(422, f"{what} holds values beyond ±1e6; send latents of a sensible size") from None
    if not all(math.isfinite(v) for v in floats):
        raise ApiError(422, f"{what} holds NaN or infinite values; send finite numbers")
    if any(abs(v) > 1e6 for v in floats):
        raise ApiError(422, f"{what} holds values beyond ±1e6; send latents of a sensible size")
    return torch.tensor(floats, dtype=torch.float32)


def _short(value: Any, limit: int = 60) -> str:
    """``repr`` (``str`` for an exception) of a value from a request, cut to ``limit`` characters."""
    text = str(value) if isinstance(value, Exception) else repr(value)
    return text if len(text) <= limit else text[:limit] + "…"


def _int(value: Any, lo: int, hi: int, what: str) -> int:
    if isinstance(value, str):
        digits = value[1:] if value[:1] == "-" else value
        # ASCII digits only: int() also reads "1_0" and other scripts' digits, which no URL means
        if not (digits.isascii() and digits.isdigit()):
            raise ApiError(422, f"{what} must be a whole number, got {_short(value)}")
        try:
            value = int(value)
        except ValueError:  # more digits than Python reads (4300)
            raise ApiError(422, f"{what} must be a whole number, got {_short(value)}") from None
    if not isinstance(value, int) or isinstance(value, bool):
        raise ApiError(422, f"{what} must be a whole number, got {_short(value)}")
    if not lo <= value <= hi:
        raise ApiError(422, f"{what} must be between {lo} and {hi}, got {_short(value)}")
    return value


def create_app(
    run_dir: str | Path, *, capacity: int = 4, explorer: Explorer | None = None, allowed_hosts: list[str] | None = None,
    upload_budget: int = MAX_UPLOADS_HELD,
) -> Starlette:
    """The explorer's Starlette app for a run folder; the model is loaded once, here.

    Args:
        run_dir: a run folder written by ``vaelab train`` (only read, never written).
        capacity: model calls admitted at once (one runs, the others wait); more get 503.
        explorer: an already loaded explorer (tests), instead of loading ``run_dir``.
        allowed_hosts: answer only requests whose Host header names one of these (guards a
            loopback server against DNS rebinding; IPv6 as ``::1``); None: any.
        upload_budget: bytes all uploads may hold at once (see :class:`UploadBudget`; at
            least ``MAX_UPLOAD_BYTES``); an upload beyond it is a 503 before its body is read.

    Raises:
        VaelabError: ``run_dir`` is not a loadable run.
    """
    ex = explorer or Explorer.from_run(run_dir)
    gate = Gate(capacity)
    uploads = UploadBudget(upload_budget)
    d = ex.model.latent_dim
    info = ex.info()
    the_map = ex.map()

    def context(label: Any, context_of: Any, doing: str = "decodes") -> torch.Tensor | None:
        """The context a request names (see :meth:`Explorer.context`), or a 422."""
        i = None if context_of is None else _int(context_of, 0, max(0, len(ex.x) - 1), "'context_of'")
        return ex.context(label, i, doing)

    def end(value: Any, what: str) -> torch.Tensor:
        """An interpolation end: {"z": [...]}, {"index": i} or {"point": [x, y]}."""
        if not isinstance(value, dict) or len(value.keys() & {"z", "index", "point"}) != 1:
            raise ApiError(422, f"'{what}' must be an object with one of 'z', 'index' or 'point'")
        if "z" in value:
            return _vector(value["z"], d, f"'{what}.z'")
        if "point" in value:
            return ex.projection.lift(_vector(value["point"], 2, f"'{what}.point'")[None])[0]
        return ex.latent_of(_int(value["index"], 0, max(0, len(ex.x) - 1), f"'{what}.index'"))

    async def index(request: Request) -> Response:
        return FileResponse(STATIC / "index.html", headers={"Content-Security-Policy": CSP, "Cache-Control": "no-cache"})

    async def api_info(request: Request) -> Response:
        return JSONResponse(info)

    async def api_map(request: Request) -> Response:
        return JSONResponse(the_map)

    async def api_example(request: Request) -> Response:
        if not len(ex.x):
            raise ApiError(404, ex.note or "there is no test set")
        i = _int(request.path_params["i"], 0, len(ex.x) - 1, "the example index")
        return JSONResponse(await gate.run(ex.example, i))

    async def api_decode(request: Request) -> Response:
        doc = await _json(request)
        if ("z" in doc) == ("point" in doc):
            raise ApiError(422, "send either {\"z\": [" + f"{d} numbers]}} or {{\"point\": [x, y]}}")
        c = context(doc.get("label"), doc.get("context_of"))
        if "z" in doc:
            return JSONResponse(await gate.run(ex.decode, _vector(doc["z"], d, "'z'"), c))
        return JSONResponse(await gate.run(ex.decode_point, _vector(doc["point"], 2, "'point'"), c))

    async def api_sample(request: Request) -> Response:
        n = _int(request.query_params.get("n", "16"), 1, MAX_SAMPLES, "'n'")
        seed = request.query_params.get("seed")
        seed_value = None if seed is None else _int(seed, 0, 2**63 - 1, "'seed'")
        c = context(request.query_params.get("label"), request.query_params.get("context_of"))
        return JSONResponse(await gate.run(ex.sample, n, seed_value, c))

    async def api_interpolate(request: Request) -> Response:
        doc = await _json(request)
        z0, z1 = end(doc.get("from"), "from"), end(doc.get("to"), "to")
        steps = _int(doc.get("steps", 10), 2, MAX_STEPS, "'steps'")
        method = doc.get("method", "linear")
        if method not in ("linear", "spherical"):
            raise ApiError(422, f"'method' must be 'linear' or 'spherical', got {method!r}")
        c = context(doc.get("label"), doc.get("context_of"))
        return JSONResponse(await gate.run(ex.interpolate, z0, z1, steps, method, c))

    async def api_upload(request: Request) -> Response:
        name = (request.query_params.get("name") or request.headers.get("x-filename") or "the upload")[:200]
        label, context_of = request.query_params.get("label"), request.query_params.get("context_of")
        free = ex.classifier is not None and label is None and context_of is None  # M2 scores x without a class
        c = None if free else context(label, context_of, "scores an upload")
        declared = _declared(request, MAX_UPLOAD_BYTES, f"'{name}'")  # 413 first: too big is too big
        # reserved before a byte of the body is read, given back when this upload is answered
        with uploads.hold(MAX_UPLOAD_BYTES if declared is None else declared):
            data = await _body(request, MAX_UPLOAD_BYTES, f"'{name}'")
            # decoding is work like any other: under the gate (one at a time, a few admitted), so
            # concurrent uploads of huge images cannot decode at once
            result = await gate.run(score_upload, data, name, c)
            del data
        return JSONResponse(result)

    def score_upload(data: bytes, name: str, c: torch.Tensor | None) -> dict[str, Any]:
        prepared = prepare_upload(data, name, ex.shape, ex.background)
        return {"name": name, "notes": prepared.notes, **ex.score(prepared.x, 0, c)}

    async def api_missing(request: Request) -> Response:
        for route in api_routes:  # a real endpoint asked with the wrong method: 405 naming the right one
            if route.matches(request.scope)[0] == Match.PARTIAL:
                allowed = sorted(route.methods or ())
                takes = " or ".join(m for m in allowed if m != "HEAD")
                raise ApiError(405, f"{request.method} is not allowed on {request.url.path}; it takes {takes}",
                               headers={"Allow": ", ".join(allowed)})
        raise ApiError(404, f"no API endpoint {request.url.path}; see GET /api/info")

    async def on_api_error(request: Request, err: Exception) -> Response:
        assert isinstance(err, ApiError)
        return JSONResponse({"error": err.message}, status_code=err.status, headers=err.headers)

    async def on_vaelab_error(request: Request, err: Exception) -> Response:
        return JSONResponse({"error": str(err)}, status_code=422)

    async def on_http_error(request: Request, err: Exception) -> Response:
        assert isinstance(err, HTTPException)
        message, headers = err.detail, dict(err.headers or {})
        if err.status_code == 405:  # e.g. POST / (the API's own 405s come from api_missing)
            allowed = sorted(m.strip() for m in headers.get("Allow", "GET").split(","))
            takes = " or ".join(m for m in allowed if m != "HEAD")
            message = f"{request.method} is not allowed on {request.url.path}; it takes {takes}"
            headers["Allow"] = ", ".join(allowed)
        return JSONResponse({"error": message}, status_code=err.status_code, headers=headers)

    api_routes = [
        Route("/api/info", api_info, methods=["GET"]),
        Route("/api/map", api_map, methods=["GET"]),
        Route("/api/example/{i}", api_example, methods=["GET"]),
        Route("/api/decode", api_decode, methods=["POST"]),
        Route("/api/sample", api_sample, methods=["GET"]),
        Route("/api/interpolate", api_interpolate, methods=["POST"]),
        Route("/api/upload", api_upload, methods=["POST"]),
    ]
    routes = [
        Route("/", index),
        *api_routes,
        Route("/api/{rest:path}", api_missing, methods=ANY_METHOD),  # 405 or 404
        Mount("/static", _Static(directory=STATIC), name="static"),
    ]
    # no handler for Exception: Starlette re-raises after calling it (a traceback on the
    # terminal); LastResort, outermost, answers bugs instead
    handlers = {ApiError: on_api_error, VaelabError: on_vaelab_error, HTTPException: on_http_error}
    middleware = [Middleware(LastResort),
                  Middleware(Guard, allowed_hosts=allowed_hosts, json_paths=("/api/decode", "/api/interpolate"))]
    app = Starlette(routes=routes, exception_handlers=handlers, middleware=middleware)  # type: ignore[arg-type]
    app.state.explorer = ex
    app.state.gate = gate
    app.state.uploads = uploads
    return app
