"""The application: the page modules' routers on one FastAPI app, wrapped in the middleware
that applies the limits and the security checks; :func:`serve` runs it on uvicorn.

A page module is a module of this package with a FastAPI ``router`` of module-level routes,
which take the shared :class:`~tfguess.serve.context.ServeContext` as a dependency
(:data:`tfguess.serve.deps.Ctx`, read from ``app.state.ctx``), and ``register(app, ctx)``,
which includes its router(s) and sets up what they need on ``app.state``; add its name to
:data:`PAGE_MODULES`. They are imported when an app is made: they need FastAPI, an extra
(``serve`` says so in one line when it is missing).
"""

import asyncio
import contextlib
import importlib
import os
import secrets
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from tfguess.core.config import ServeConfig, configure
from tfguess.core.errors import TfguessError
from tfguess.serve.batching import MicroBatcher
from tfguess.serve.context import LOOPBACK_NAMES, ServeContext, ServeLimits, is_loopback

# The modules whose routes the app serves, in this order; a new page is one more name here.
PAGE_MODULES = ("predict", "home", "docs", "review", "inbox", "metrics", "auth")
API_KEY_ENV = "TFGUESS_API_KEY"


def page_modules() -> list:
    """The modules of :data:`PAGE_MODULES`, imported."""
    return [importlib.import_module(f"tfguess.serve.{name}") for name in PAGE_MODULES]


def _print(line: str) -> None:
    print(line, flush=True)


class ServeError(TfguessError, ValueError):
    """Serving cannot start; the message says why and what to do."""


def exposure_warning(host: str, api_key: str | None = None) -> str | None:
    """What binding ``host`` exposes, when it is more than this machine."""
    if is_loopback(host):
        return None
    where = host
    if host in ("0.0.0.0", "::"):
        where = ("every network interface of this container (the host addresses that reach it "
                 "are the ones its port is published on)" if Path("/.dockerenv").exists()
                 else "every network interface of this machine")
    if api_key:
        return (f"note: listening on {where}; every request needs the API key, which travels "
                "in clear text without TLS: put a TLS reverse proxy in front beyond a trusted network.")
    return (f"warning: listening on {where} with no API key (--no-auth): anyone who can reach it "
            "can classify images, read the model card and the evaluation report (file names of "
            "the data set), and change the data set on the review page. There is no TLS either.")


def check_exposure(host: str, api_key: str | None, no_auth: bool) -> None:
    """Refuses to listen beyond loopback without an API key, unless ``no_auth`` says so."""
    if api_key or no_auth or is_loopback(host):
        return
    raise ServeError(f"refusing to listen on {host} without an API key (anyone on the network "
                     f"could change the data set): add --api-key KEY (or set {API_KEY_ENV}), or "
                     "--no-auth to serve it open anyway")


def check_cors_origins(origins) -> list[str]:
    from urllib.parse import urlsplit

    checked = []
    for origin in origins:
        parts = urlsplit(origin)
        if origin != "*" and not (parts.scheme in ("http", "https") and parts.netloc
                                  and parts.path in ("", "/") and not parts.query):
            raise ServeError(f"invalid --cors-origin {origin!r}: write it as "
                             "https://host[:port] (scheme and host, no path)")
        checked.append(origin.rstrip("/"))
    return checked


def host_name(host_header: str) -> str:
    """The host name of a ``Host`` header, IPv6 literals included (``[::1]:8080`` -> ``::1``)."""
    if host_header.startswith("["):
        return host_header[1:].split("]", 1)[0]
    return host_header.rsplit(":", 1)[0] if host_header.count(":") == 1 else host_header


async def _send_json(send, status: int, detail: str, headers: dict | None = None) -> None:
    from starlette.responses import JSONResponse

    response = JSONResponse({"detail": detail}, status, headers=headers)
    await response({"type": "http"}, None, send)


def _guard(app, limits: ServeLimits, loopback_only: bool):
    """ASGI middleware: the host check (DNS rebinding), and the body limits: 413 past
    ``max_upload_bytes``, 408 when the body is not in within ``timeout_s`` of the request's start
    (a per-request clock, not per receive: a trickling upload is cut off)."""
    from starlette.exceptions import HTTPException

    max_bytes, timeout_s = limits.max_upload_bytes, limits.timeout_s
    too_big = f"request body larger than {limits.max_upload_mb:g} MB, the server's limit"

    async def middleware(scope, receive, send):
        if scope["type"] != "http":
            return await app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        if loopback_only:
            name = host_name(headers.get(b"host", b"").decode("latin-1"))
            if name not in LOOPBACK_NAMES:
                return await _send_json(send, 400, "Invalid host header")
        length = headers.get(b"content-length")
        if length is not None and length.isdigit() and int(length) > max_bytes:
            return await _send_json(send, 413, too_big, {"Connection": "close"})
        deadline = time.monotonic() + timeout_s
        scope["tfguess.deadline"] = deadline
        seen, started = 0, False

        async def limited():
            nonlocal seen
            try:
                message = await asyncio.wait_for(receive(), max(0.0, deadline - time.monotonic()))
            except asyncio.TimeoutError:
                raise HTTPException(408, f"request not received within {timeout_s:g} s") from None
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > max_bytes:
                    raise HTTPException(413, too_big)
            return message

        async def sending(message):
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            return await app(scope, limited, sending)
        except HTTPException as exc:  # raised by `limited` where no handler turned it into an answer
            if started or exc.status_code not in (408, 413):
                raise
            return await _send_json(send, exc.status_code, exc.detail, {"Connection": "close"})

    return middleware


def flat_routes(routes) -> list:
    """``routes`` with each included router replaced by its own routes, in order (FastAPI
    0.16x keeps an included router as one route whose ``original_router`` holds them; before,
    its routes were copied in)."""
    flat = []
    for route in routes:
        inner = getattr(route, "original_router", None)
        flat += flat_routes(inner.routes) if inner is not None else [route]
    return flat


def _observe(app, routes, metrics_, access_log: Callable[[str], None] | None):
    """ASGI middleware: every answer counted and timed by route (``/metrics``), and the access
    log line when asked for."""
    from starlette.routing import Match

    routes = flat_routes(routes)

    def route_of(scope) -> str:
        for route in routes:
            match, _ = route.matches(scope)
            if match == Match.FULL:
                return getattr(route, "path", "") or "/"
        return "other"

    async def middleware(scope, receive, send):
        if scope["type"] != "http":
            return await app(scope, receive, send)
        t0 = time.monotonic()
        status, size = 500, 0

        async def sending(message):
            nonlocal status, size
            if message["type"] == "http.response.start":
                status = message["status"]
            elif message["type"] == "http.response.body":
                size += len(message.get("body", b""))
            await send(message)

        try:
            await app(scope, receive, sending)
        finally:
            seconds = time.monotonic() - t0
            method = scope.get("method", "")
            metrics_.observe(method, route_of(scope), status, seconds)
            if access_log is not None:
                client = (scope.get("client") or ("-",))[0]
                query = scope.get("query_string", b"").decode("latin-1")
                target = scope.get("path", "") + ("?" + query if query else "")
                when = time.strftime("%Y-%m-%dT%H:%M:%S%z")
                access_log(f'{client} [{when}] "{method} {target}" {status} {size} '
                           f"{seconds * 1000:.1f}ms")

    return middleware


NUL_IN_NAME = "embedded null byte"   # what the OS functions raise (ValueError) for such a name


async def _nul_in_a_name(request, exc: ValueError):
    """A file name or path with a NUL byte, which no file can have (the OS refuses it with a
    ValueError): the request's fault, a 400 that says so; any other ValueError stays a 500."""
    from starlette.responses import JSONResponse

    if NUL_IN_NAME not in str(exc):
        raise exc
    return JSONResponse({"detail": "a file name holds a NUL byte, which no file name can: "
                                   "rename the file"}, 400)


def create_app(model: str | Path, limits: ServeLimits | None = None, host: str = "127.0.0.1",
               log: Callable[[str], None] = print, *, api_key: str | None = None,
               cors_origins=(), access_log: bool = False, inbox_dir: str | Path | None = None,
               inbox_every: int = 20):
    """The FastAPI application serving ``model`` (a TF_FILES folder, ``model.keras`` or ``.tflite``).

    ``api_key``: required on every route but the static files, ``/login`` and ``/healthz``;
    ``cors_origins``: web origins allowed to call the API from their pages (none by default);
    ``access_log``: one line a request through ``log``.
    """
    from fastapi import FastAPI
    from starlette.middleware.cors import CORSMiddleware

    from tfguess import __version__
    from tfguess.serve import auth, inbox, metrics

    limits = limits or ServeLimits()
    limits.check_queue()
    origins = check_cors_origins(cors_origins)
    served = inbox.served_model(model, log)  # a TF_FILES with no model yet starts on /inbox
    served_metrics = metrics.create_metrics()
    batcher = MicroBatcher(lambda: served.current, limits.max_batch, limits.max_wait_ms / 1000,
                           limits.queue_size, on_batch=served_metrics.on_batch)
    # Decoding in a pool of one thread a core: faster than more on a busy CPU, and a fixed
    # number of threads keeps the memory flat under load.
    decoder = ThreadPoolExecutor(max_workers=os.cpu_count() or 1, thread_name_prefix="decode")
    ctx = ServeContext(served=served, limits=limits, batcher=batcher, decoder=decoder,
                       token=secrets.token_urlsafe(32), log=log, api_key=api_key or None)

    @contextlib.asynccontextmanager
    async def lifespan(_app):
        yield
        batcher.close()
        decoder.shutdown(wait=False, cancel_futures=True)

    app = FastAPI(title="tfguess", version=__version__, docs_url=None, redoc_url=None,
                  lifespan=lifespan, description="Classify images with a trained tfguess model.")
    app.state.served, app.state.batcher, app.state.limits, app.state.ctx = served, batcher, limits, ctx
    app.state.inbox_dir, app.state.inbox_every = (str(inbox_dir) if inbox_dir else None), inbox_every
    app.state.metrics = served_metrics
    app.add_exception_handler(ValueError, _nul_in_a_name)
    for module in page_modules():
        module.register(app, ctx)
    # outermost first: count and log everything, then the host and body limits, CORS (its
    # preflights carry no key), the API key
    asgi = auth.require_key(app, ctx.api_key) if ctx.api_key else app
    if origins:
        asgi = CORSMiddleware(asgi, allow_origins=origins, allow_methods=["GET", "POST"],
                              allow_headers=["Authorization", "X-API-Key", "Content-Type"],
                              expose_headers=["X-Model-Digest"], max_age=600)
    asgi = _guard(asgi, limits, loopback_only=is_loopback(host))
    return _observe(asgi, app.routes, served_metrics, log if access_log else None)


def serve(model: str | Path, config: ServeConfig | None = None,
          log: Callable[[str], None] = _print, **overrides) -> None:
    """Serve ``model`` until interrupted (Ctrl-C), as ``config`` says (default:
    :class:`~tfguess.core.config.ServeConfig`'s defaults) with keyword ``overrides`` of its
    fields, e.g. ``serve(model, port=9000, api_key=key)``. Beyond loopback an ``api_key`` is
    required unless ``no_auth`` is given."""
    config = configure(ServeConfig, config, overrides)
    limits = ServeLimits.from_config(config)
    limits.check_queue()
    host, api_key = config.host, config.api_key
    check_exposure(host, api_key, config.no_auth)
    check_cors_origins(config.cors_origins)
    if config.inbox is not None and not Path(config.inbox).expanduser().is_dir():
        raise ServeError(f"inbox folder not found: {config.inbox}: check the path")
    try:
        import fastapi  # noqa: F401
        import multipart  # noqa: F401
        import uvicorn
    except ImportError as exc:
        raise ServeError(f"{exc.name} is not installed: pip install 'tfguess[serve]'") from None

    app = create_app(model, limits, host, log, api_key=api_key, cors_origins=config.cors_origins,
                     inbox_dir=config.inbox, inbox_every=config.inbox_every,
                     access_log=config.access_log)
    warning = exposure_warning(host, api_key)
    if warning:
        log(warning)
    shown = f"[{host}]" if ":" in host else host
    if host in ("0.0.0.0", "::"):
        shown = "127.0.0.1"
    log(f"tfguess serve: http://{shown}:{config.port}/ (API docs: /docs, review: /review, metrics: "
        f"/metrics{'; API key required' if api_key else ''}); Ctrl-C stops")
    uvicorn.run(app, host=host, port=config.port, log_level="warning", access_log=False,
                limit_concurrency=max(64, limits.queue_size * 2), timeout_keep_alive=5,
                timeout_graceful_shutdown=5)
