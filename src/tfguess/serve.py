"""``serve``: a web page and a REST API for a trained model (FastAPI on uvicorn).

The model is loaded once. Uploaded images are decoded from memory in threads, then queued for a
single batching thread that runs the network on up to ``max_batch`` images at a time, waiting
at most ``max_wait_ms`` for more to arrive: concurrent requests share the network's batches. The
queue is bounded (``queue_size`` images admitted at once; beyond it: 503), request bodies are
bounded (413), non-images are refused (415), undecodable images and decompression bombs too
(422), and a request that takes longer than ``timeout_s`` gets a 504.

Serving a TF_FILES folder also serves its evaluation report at ``/report/`` and the review page
(``/review``), where suspected label errors can be moved to another label or taken out of the
data set (:mod:`tfguess.relabel`) and the model re-trained in place.
"""


import asyncio
import contextlib
import functools
import hmac
import ipaddress
import os
import queue
import secrets
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Annotated

import numpy as np

from .errors import TfguessError
from .images import ImageError, load_image
from .predict import Predictor
from .runfolder import RunFolder

WEB_DIR = Path(__file__).with_name("web")
TOKEN_HEADER = "X-Tfguess-Token"
LOOPBACK_NAMES = ("127.0.0.1", "localhost", "::1")
# The pages load nothing from elsewhere and cannot be framed by another site.
CSP = ("default-src 'self'; img-src 'self' blob: data:; style-src 'self'; script-src 'self'; "
       "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'")


@dataclass(frozen=True)
class ServeLimits:
    """How much the server accepts; beyond it a request is refused, never queued without bound."""

    max_upload_mb: float = 32.0   # one request's body (413 beyond)
    max_files: int = 64           # images in one request (413 beyond)
    max_batch: int = 32           # images the network runs at once
    max_wait_ms: float = 10.0     # how long a batch waits for more images
    queue_size: int = 256         # images admitted at once, decoded or waiting (503 beyond)
    timeout_s: float = 60.0       # one request, upload included (408 / 504 beyond)

    def __post_init__(self) -> None:
        checks = [
            (self.max_upload_mb > 0, "max_upload_mb must be positive"),
            (self.max_files >= 1, "max_files must be at least 1"),
            (self.max_batch >= 1, "max_batch must be at least 1"),
            (self.max_wait_ms >= 0, "max_wait_ms must not be negative"),
            (self.queue_size >= 1, "queue_size must be at least 1"),
            (self.timeout_s > 0, "timeout_s must be positive"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(f"invalid setting: {message}")


class ServeError(TfguessError, ValueError):
    """Serving cannot start; the message says why and what to do."""


class Saturated(Exception):
    """The queue is full."""


class MicroBatcher:
    """Collects images from concurrent requests into batches for one network thread.

    ``admit(n)`` reserves room for ``n`` images (or raises :class:`Saturated`); each image then
    either goes in with ``submit`` or gives its place back with ``release``. A batch is run as
    soon as it is full, when ``max_wait`` has passed, or when no admitted image is still on its
    way (a lone request does not wait).
    """

    def __init__(self, predictor: Callable[[], Predictor], max_batch: int, max_wait_s: float,
                 capacity: int) -> None:
        self._predictor = predictor
        self.max_batch, self.max_wait_s, self.capacity = max_batch, max_wait_s, capacity
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._admitted = 0
        self.batches = 0
        self.images = 0
        self._thread = threading.Thread(target=self._loop, name="tfguess-batcher", daemon=True)
        self._thread.start()

    @property
    def admitted(self) -> int:
        return self._admitted

    def admit(self, n: int) -> None:
        with self._lock:
            if self._admitted + n > self.capacity:
                raise Saturated
            self._admitted += n

    def release(self, n: int = 1) -> None:
        with self._lock:
            self._admitted -= n

    def submit(self, pixels: np.ndarray) -> Future:
        """Queue one admitted image; the future's result is ``(labels, probabilities)``."""
        future: Future = Future()
        future.add_done_callback(lambda _: self.release())
        self._queue.put((pixels, future))
        return future

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=5)

    def _loop(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            batch = [first]
            deadline = time.monotonic() + self.max_wait_s
            while len(batch) < self.max_batch:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    left = deadline - time.monotonic()
                    if left <= 0 or self._admitted <= len(batch):  # nothing else on its way
                        break
                    try:
                        item = self._queue.get(timeout=min(left, 0.002))
                    except queue.Empty:
                        continue
                if item is None:
                    self._queue.put(None)
                    break
                batch.append(item)
            self._run(batch)

    def _run(self, batch: list[tuple[np.ndarray, Future]]) -> None:
        predictor = self._predictor()
        try:
            probs = predictor.probabilities(np.stack([pixels for pixels, _ in batch]))
        except Exception as exc:  # the network failed: every waiting request hears why
            for _, future in batch:
                future.set_exception(exc)
            return
        self.batches += 1
        self.images += len(batch)
        for (_, future), p in zip(batch, probs):
            future.set_result((predictor.labels, p))


def error_status(reason: str) -> int:
    """415 for content that is not a (supported) image, 422 for a broken or oversized one."""
    return 415 if reason.startswith(("not an image", "unsupported format")) else 422


def _is_loopback(host: str) -> bool:
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def exposure_warning(host: str) -> str | None:
    """What binding ``host`` exposes, when it is more than this machine."""
    if _is_loopback(host):
        return None
    where = host
    if host in ("0.0.0.0", "::"):
        where = ("every network interface of this container (the host addresses that reach it "
                 "are the ones its port is published on)" if Path("/.dockerenv").exists()
                 else "every network interface of this machine")
    return (f"warning: listening on {where}: anyone who can reach it can classify images, read "
            "the model card and the evaluation report (file names of the data set), and see the "
            "review page. There is no login and no TLS; prefer 127.0.0.1 behind a reverse proxy.")


class ServedModel:
    """The model being served (swapped in place after a re-training) and its card."""

    def __init__(self, model: str | Path, log: Callable[[str], None] = print) -> None:
        from .model import MODEL_FILENAME, resolve_model_path

        arg = Path(model).expanduser().resolve()
        self.tf_files = arg if arg.is_dir() else None
        self.path = resolve_model_path(arg) if self.tf_files is None else self.tf_files / MODEL_FILENAME
        resolve_model_path(self.path)
        self.log = log
        self.lock = threading.Lock()
        self.predictor = Predictor.load(self.path, log=log)
        self.card = self._card()

    def reload(self) -> None:
        predictor = Predictor.load(self.path, log=self.log)
        with self.lock:
            self.predictor, self.card = predictor, self._card()

    def _card(self) -> dict:
        p = self.predictor
        stat = self.path.stat()
        card = {
            "name": self.tf_files.name if self.tf_files else self.path.name,
            "file": self.path.name,
            "labels": p.labels,
            "input_size": p.input_size,
            "resize": p.resize,
            "engine": p.engine,
            "date": datetime.fromtimestamp(stat.st_mtime, timezone.utc).isoformat(timespec="seconds"),
            "backbone": None, "mode": None, "config": None, "metrics": None, "test_accuracy": None,
            "report": bool(self.tf_files and (RunFolder.at(self.tf_files).report / "index.html").is_file()),
            "review": self.tf_files is not None,
        }
        if self.path.suffix.lower() == ".keras":
            from .model import read_meta

            meta = read_meta(self.path)
            config = meta.get("config") or {}
            backbone = meta.get("backbone") or {}
            card.update(
                backbone=backbone, config=config, metrics=meta.get("metrics"),
                mode=("TF Hub module " + config["tfhub_module"]) if config.get("tfhub_module")
                else "transfer learning: frozen backbone, trained softmax head",
                test_accuracy=(meta.get("metrics") or {}).get("test", {}).get("accuracy"),
            )
        else:
            card["mode"] = "exported TFLite model"
        return card


class Retrainer:
    """Re-trains TF_FILES in a worker thread with the settings of its last run, then reloads."""

    def __init__(self, served: ServedModel) -> None:
        self.served = served
        self.lock = threading.Lock()
        self.state: dict = {"state": "idle"}

    def start(self) -> bool:
        with self.lock:
            if self.state.get("state") == "running":
                return False
            self.state = {"state": "running", "started": time.time(),
                          "accuracy_before": self.served.card.get("test_accuracy")}
        threading.Thread(target=self._work, name="tfguess-retrain", daemon=True).start()
        return True

    def _work(self) -> None:
        from .config import TrainConfig
        from .report import write_report
        from .train import train

        tf_files = self.served.tf_files
        run = RunFolder.at(tf_files)
        t0 = time.perf_counter()
        lines: list[str] = []
        try:
            config = TrainConfig.from_dict(run.read_summary().get("config", {}))
            result = train(tf_files, config, progress=False, log=lines.append)
            if config.report or run.report.is_dir():
                write_report(tf_files, progress=False, log=lines.append)
            self.served.reload()
            state = {"state": "done", "accuracy": result.metrics.get("test", {}).get("accuracy"),
                     "n_test": result.metrics.get("test", {}).get("n")}
        except Exception as exc:  # shown on the page; the served model stays the old one
            state = {"state": "failed", "error": f"{type(exc).__name__}: {exc}"}
        with self.lock:
            self.state = {**self.state, **state, "seconds": round(time.perf_counter() - t0, 2),
                          "log": lines[-12:]}


def _limit_body(app, max_bytes: int, timeout_s: float):
    """ASGI middleware: 413 past ``max_bytes`` of body, 408 when the body stalls past ``timeout_s``."""
    from starlette.exceptions import HTTPException

    async def middleware(scope, receive, send):
        if scope["type"] != "http":
            return await app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        length = headers.get(b"content-length")
        too_big = f"request body larger than {max_bytes / 2**20:g} MB (--max-upload-mb)"
        if length is not None and length.isdigit() and int(length) > max_bytes:
            from starlette.responses import JSONResponse

            return await JSONResponse({"detail": too_big}, 413, headers={"Connection": "close"})(
                scope, receive, send)
        seen = 0

        async def limited():
            nonlocal seen
            try:
                message = await asyncio.wait_for(receive(), timeout_s)
            except asyncio.TimeoutError:
                raise HTTPException(408, f"upload stalled for more than {timeout_s:g} s") from None
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > max_bytes:
                    raise HTTPException(413, too_big)
            return message

        return await app(scope, limited, send)

    return middleware


def create_app(model: str | Path, limits: ServeLimits | None = None, host: str = "127.0.0.1",
               log: Callable[[str], None] = print):
    """The FastAPI application serving ``model`` (a TF_FILES folder, ``model.keras`` or ``.tflite``)."""
    from fastapi import FastAPI, File, HTTPException, Query, UploadFile
    from fastapi.openapi.docs import get_swagger_ui_html
    from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response
    from fastapi.staticfiles import StaticFiles
    from starlette.middleware.trustedhost import TrustedHostMiddleware

    from . import __version__

    limits = limits or ServeLimits()
    if limits.queue_size < limits.max_files:
        raise ValueError(f"invalid setting: queue_size ({limits.queue_size}) must be at least "
                         f"max_files ({limits.max_files})")
    served = ServedModel(model, log)
    batcher = MicroBatcher(lambda: served.predictor, limits.max_batch,
                           limits.max_wait_ms / 1000, limits.queue_size)
    # Decoding in a pool of one thread a core: faster than more on a busy CPU, and a fixed
    # number of threads keeps the memory flat under load.
    decoder = ThreadPoolExecutor(max_workers=os.cpu_count() or 1, thread_name_prefix="decode")
    retrainer = Retrainer(served) if served.tf_files else None
    token = secrets.token_urlsafe(32)

    @contextlib.asynccontextmanager
    async def lifespan(_app):
        yield
        batcher.close()
        decoder.shutdown(wait=False, cancel_futures=True)

    app = FastAPI(title="tfguess", version=__version__, docs_url=None, redoc_url=None,
                  lifespan=lifespan, description="Classify images with a trained tfguess model.")
    app.state.served, app.state.batcher, app.state.limits = served, batcher, limits
    if _is_loopback(host):  # a page on another site cannot reach us through DNS rebinding
        app.add_middleware(TrustedHostMiddleware, allowed_hosts=["127.0.0.1", "localhost", "::1"])
    app.mount("/static", StaticFiles(directory=WEB_DIR), name="static")

    # ---- API

    @app.get("/healthz", summary="liveness: the model is loaded")
    def healthz() -> dict:
        return {"status": "ok", "queued": batcher.admitted, "batches": batcher.batches,
                "images": batcher.images}

    @app.get("/api/model", summary="the model card: labels, backbone, settings, accuracy, date")
    def model_card() -> dict:
        return served.card

    @app.post("/api/predict", summary="classify one or more images (field 'files', repeated)",
              response_description="per file: path (the uploaded name), error, predictions best first")
    async def predict(files: Annotated[list[UploadFile], File(description="image files")],
                      top_k: Annotated[int, Query(ge=0, description="labels per image (0: all)")] = 0):
        if len(files) > limits.max_files:
            raise HTTPException(413, f"{len(files)} files in one request; at most {limits.max_files}")
        try:
            batcher.admit(len(files))
        except Saturated:
            raise HTTPException(503, "the server is busy (queue full); retry shortly",
                                headers={"Retry-After": "1"}) from None
        predictor = served.predictor
        loop = asyncio.get_running_loop()

        async def decode(upload: UploadFile) -> np.ndarray | str:
            try:
                data = await upload.read()
            finally:
                await upload.close()
            job = functools.partial(load_image, upload.filename or "upload", predictor.input_size,
                                    predictor.resize, data=data)
            try:
                return await loop.run_in_executor(decoder, job)
            except ImageError as exc:
                return exc.reason

        futures: list[Future | None] = []
        errors: list[str | None] = []
        try:
            for decoded in await asyncio.gather(*(decode(u) for u in files)):
                futures.append(None if isinstance(decoded, str) else batcher.submit(decoded))
                errors.append(decoded if isinstance(decoded, str) else None)
        finally:  # the places of images that did not reach the network are given back
            batcher.release(len(files) - sum(f is not None for f in futures))
        waiting = [asyncio.wrap_future(f) for f in futures if f is not None]
        try:
            done = await asyncio.wait_for(asyncio.gather(*waiting), limits.timeout_s)
        except asyncio.TimeoutError:
            raise HTTPException(504, f"no answer within {limits.timeout_s:g} s") from None
        k = top_k or None
        results, answers = [], iter(done)
        for upload, future, error in zip(files, futures, errors):
            entry = {"path": upload.filename or "upload", "error": error, "predictions": []}
            if future is not None:
                labels, p = next(answers)
                order = np.argsort(-p, kind="stable")[:k]
                entry["predictions"] = [{"label": labels[i], "score": round(float(p[i]), 6)}
                                        for i in order]
            results.append(entry)
        if all(r["error"] for r in results):
            status = max(error_status(r["error"]) for r in results)
            detail = "; ".join(f"{r['path']}: {r['error']}" for r in results)
            return JSONResponse({"detail": detail, "results": results}, status)
        return results

    # ---- pages

    def page(name: str, **values: str) -> HTMLResponse:
        text = (WEB_DIR / name).read_text(encoding="utf-8")
        for key, value in values.items():
            text = text.replace("{{" + key + "}}", value)
        return HTMLResponse(text, headers={"Cache-Control": "no-store",
                                           "X-Frame-Options": "DENY",
                                           "Content-Security-Policy": CSP})

    @app.get("/", include_in_schema=False)
    def index() -> HTMLResponse:
        return page("index.html")

    @app.get("/docs", include_in_schema=False)
    def docs() -> HTMLResponse:
        return get_swagger_ui_html(openapi_url="/openapi.json", title="tfguess API",
                                   swagger_js_url="/docs-assets/swagger-ui-bundle.js",
                                   swagger_css_url="/docs-assets/swagger-ui.css",
                                   swagger_favicon_url="/docs-assets/favicon-32x32.png")

    try:  # Swagger UI's files from the swagger-ui-bundle package: /docs works offline
        from swagger_ui_bundle import swagger_ui_path

        app.mount("/docs-assets", StaticFiles(directory=str(swagger_ui_path)), name="docs-assets")
    except ImportError:  # pragma: no cover - the serve extra installs it
        pass

    if served.tf_files is not None:
        app.mount("/report", StaticFiles(directory=RunFolder.at(served.tf_files).report, html=True,
                                         check_dir=False), name="report")
        _review_routes(app, served, retrainer, token, page)
    else:
        @app.get("/review", include_in_schema=False)
        def no_review() -> Response:
            return Response("The review page needs a TF_FILES folder: tfguess serve TF_FILES\n",
                            404, media_type="text/plain")

    @app.get("/favicon.ico", include_in_schema=False)
    def favicon() -> FileResponse:
        return FileResponse(WEB_DIR / "favicon.svg", media_type="image/svg+xml")

    return _limit_body(app, int(limits.max_upload_mb * 2**20), limits.timeout_s)


def _review_routes(app, served: ServedModel, retrainer: Retrainer, token: str, page) -> None:
    """``/review`` and its API: suspects and misclassified images, moves, undo, re-train."""
    from fastapi import HTTPException, Request
    from fastapi.responses import Response
    from pydantic import BaseModel

    from .relabel import DataSetEditor, RelabelError
    tf_files = served.tf_files
    run = RunFolder.at(tf_files)

    def editor() -> DataSetEditor:
        try:
            summary = run.read_summary()
        except TfguessError as exc:
            raise HTTPException(409, str(exc)) from None
        return DataSetEditor(tf_files, run.image_dir(summary), summary["labels"])

    def check_write(request: Request) -> None:
        """Only this server's own review page may change the data set."""
        sent = request.headers.get(TOKEN_HEADER, "")
        if not hmac.compare_digest(sent.encode(), token.encode()):
            raise HTTPException(403, "missing or wrong page token: reload the review page")
        if request.headers.get("sec-fetch-site", "same-origin") not in ("same-origin", "none"):
            raise HTTPException(403, "cross-site request refused")
        origin = request.headers.get("origin")
        if origin is not None:
            own = f"{request.url.scheme}://{request.headers.get('host', '')}"
            if origin != own:
                raise HTTPException(403, f"request from another origin ({origin}) refused")

    @app.get("/review", include_in_schema=False)
    def review():
        return page("review.html", TOKEN=token)

    @app.get("/api/review", summary="what the review page lists (needs a report)")
    def review_items() -> dict:
        ed = editor()
        report_json = run.report / "report.json"
        if not report_json.is_file():
            return {"report": False, "labels": ed.labels, "items": [], "changes": [],
                    "hint": f"no evaluation report yet: tfguess evaluate {tf_files}"}
        from .report import load_report

        data = load_report(tf_files)
        items, seen = [], set()
        rows = [("suspect", s, s["given"], s["suggested"], s["suggested_prob"])
                for s in data.get("suspects", [])]
        rows += [("misclassified", m, m["label"], m["predicted"], m["score"])
                 for m in data.get("misclassified", [])]
        for kind, row, given, suggested, score in rows:
            if row["path"] in seen:
                continue
            seen.add(row["path"])
            now = ed.current_path(row["path"])
            where = "gone"
            if now.is_file():
                where = "removed" if ed.removed_dir in now.parents else "data"
            label = ed.label_of(now) if where == "data" else None
            items.append({"kind": kind, "original": row["path"], "path": ed._rel(now),
                          "name": now.name, "given": given, "label": label, "where": where,
                          "suggested": suggested, "score": score, "split": row.get("split"),
                          "digest": row.get("digest")})
        changes = [vars(c) for c in ed.journal()]
        undone = {c["undoes"] for c in changes if c["action"] == "undo"}
        for c in changes:
            c["undone"] = c["id"] in undone
        return {"report": True, "labels": ed.labels, "items": items, "changes": changes,
                "generated": data.get("generated"), "accuracy": data.get("metrics", {}).get("accuracy"),
                "split": data.get("eval_split")}

    @app.get("/api/review/image", summary="an image of the data set (or taken out of it)")
    def review_image(path: str) -> Response:
        ed = editor()
        p = Path(os.path.abspath(ed._abs(path)))
        inside = any(root == p.resolve() or root in p.resolve().parents
                     for root in (ed.image_dir, ed.removed_dir))
        if not inside or not p.is_file():
            raise HTTPException(404, "not an image of this data set")
        from .report import THUMB_SIZE

        return Response(_thumbnail(p, p.stat().st_mtime_ns, THUMB_SIZE * 2),
                        media_type="image/jpeg", headers={"Cache-Control": "no-cache"})

    class Move(BaseModel):
        path: str
        label: str | None = None   # None: take the image out of the data set

    class Undo(BaseModel):
        id: int

    @app.post("/api/review/move", summary="move an image to another label, or take it out")
    def review_move(body: Move, request: Request) -> dict:
        check_write(request)
        ed = editor()
        try:
            change = ed.move(body.path, body.label) if body.label else ed.remove(body.path)
        except (RelabelError, OSError) as exc:
            raise HTTPException(409, str(exc)) from None
        return vars(change)

    @app.post("/api/review/undo", summary="undo one change of the journal")
    def review_undo(body: Undo, request: Request) -> dict:
        check_write(request)
        try:
            return vars(editor().undo(body.id))
        except (RelabelError, OSError) as exc:
            raise HTTPException(409, str(exc)) from None

    @app.post("/api/review/retrain", summary="re-train with the last run's settings (worker thread)")
    def review_retrain(request: Request) -> dict:
        check_write(request)
        if not retrainer.start():
            raise HTTPException(409, "a re-training is already running")
        return retrainer.state

    @app.get("/api/review/retrain", summary="the state of the last re-training")
    def review_retrain_state() -> dict:
        return {**retrainer.state, "test_accuracy": served.card.get("test_accuracy")}


_THUMBS: dict[tuple[str, int], bytes] = {}


def _thumbnail(path: Path, mtime_ns: int, size: int) -> bytes:
    """A JPEG preview of ``path``, cached in memory (a few hundred at most)."""
    import io

    from PIL import Image

    from .images import decode_image

    key = (str(path), mtime_ns)
    if key not in _THUMBS:
        try:
            im = decode_image(path, draft_size=size)
        except ImageError:
            im = Image.new("RGB", (size, size), (228, 231, 235))
        im.thumbnail((size, size), Image.Resampling.LANCZOS)
        out = io.BytesIO()
        im.save(out, "JPEG", quality=85)
        if len(_THUMBS) > 500:
            _THUMBS.clear()
        _THUMBS[key] = out.getvalue()
    return _THUMBS[key]


def serve(model: str | Path, host: str = "127.0.0.1", port: int = 8080,
          limits: ServeLimits | None = None, log: Callable[[str], None] = print) -> None:
    """Serve ``model`` until interrupted (Ctrl-C)."""
    try:
        import fastapi  # noqa: F401
        import multipart  # noqa: F401
        import uvicorn
    except ImportError as exc:
        raise ServeError(f"{exc.name} is not installed: pip install 'tfguess[serve]'") from None

    limits = limits or ServeLimits()
    app = create_app(model, limits, host, log)
    warning = exposure_warning(host)
    if warning:
        log(warning)
    shown = f"[{host}]" if ":" in host else host
    if host in ("0.0.0.0", "::"):
        shown = "127.0.0.1"
    log(f"tfguess serve: http://{shown}:{port}/ (API docs: /docs, review: /review); Ctrl-C stops")
    uvicorn.run(app, host=host, port=port, log_level="warning", access_log=False,
                limit_concurrency=max(64, limits.queue_size * 2), timeout_keep_alive=5,
                timeout_graceful_shutdown=5)
