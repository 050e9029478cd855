"""The prediction API: ``POST /api/predict``, ``POST /api/explain`` (why: an occlusion map),
``GET /api/model``, ``GET /healthz``."""

import asyncio
import base64
import functools
import io
import time
from concurrent.futures import Future

import numpy as np
from fastapi import APIRouter, HTTPException, Query, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException

from tfguess.data.images import ImageError, load_image
from tfguess.serve.batching import Saturated
from tfguess.serve.context import ServeContext, ServeLimits
from tfguess.serve.deps import Ctx

# /docs shows a file picker for a multipart array of binary strings (OpenAPI 3.0 style).
PREDICT_BODY = {
    "required": True,
    "content": {"multipart/form-data": {"schema": {
        "type": "object", "required": ["files"],
        "properties": {"files": {"type": "array", "description": "image files (the field repeated)",
                                 "items": {"type": "string", "format": "binary"}}},
    }}},
}



class Prediction(BaseModel):
    """One label and its probability."""

    label: str
    score: float = Field(description="probability, 0 to 1")


class PredictResult(BaseModel):
    """The answer for one uploaded file."""

    path: str = Field(description="the uploaded file's name")
    error: str | None = Field(description="why the file could not be classified; null when it was")
    predictions: list[Prediction] = Field(description="best first (top_k of them); empty on an error")
    model_digest: str | None = Field(description="sha256 of the weights that answered")


DIGEST_EXAMPLE = "sha256:" + "3f1c9a" * 10 + "3f1c"
PREDICT_EXAMPLE = [
    {"path": "IMG_2041.jpg", "error": None,
     "predictions": [{"label": "ants", "score": 0.917342}, {"label": "bees", "score": 0.082658}],
     "model_digest": DIGEST_EXAMPLE},
    {"path": "notes.txt", "error": "not an image (looks like text)", "predictions": [],
     "model_digest": None},
]
PREDICT_RESPONSES = {
    200: {"model": list[PredictResult],
          "content": {"application/json": {"example": PREDICT_EXAMPLE}}},
    415: {"description": "no file could be classified: `detail` says why, `results` per file",
          "content": {"application/json": {"example": {
              "detail": "notes.txt: not an image (looks like text)", "results": PREDICT_EXAMPLE[1:]}}}},
}

router = APIRouter()


def error_status(reason: str) -> int:
    """415 for content that is not a (supported) image, 422 for a broken or oversized one."""
    return 415 if reason.startswith(("not an image", "unsupported format")) else 422


def deadline_left(request, timeout_s: float) -> float:
    """Seconds left of the request's time (the clock starts when the request arrives)."""
    deadline = request.scope.get("tfguess.deadline")
    return timeout_s if deadline is None else max(0.0, deadline - time.monotonic())


def register(app, ctx: ServeContext) -> None:
    app.include_router(router)


@router.get("/healthz", summary="liveness: the model is loaded; queue depth; the limits")
def healthz(ctx: Ctx) -> dict:
    batcher = ctx.batcher
    return {"status": "ok", "queued": batcher.admitted, "batches": batcher.batches,
            "images": batcher.images, "digest": ctx.served.digest, "limits": ctx.limits.public()}


@router.get("/api/model", summary="the model card: labels, backbone, settings, accuracy, date, "
            "weights digest, and the upload limits")
def model_card(request: Request, ctx: Ctx) -> dict:
    """The card, with ``model`` (whether one is trained yet) and ``inbox`` (whether /inbox is
    worth a link: a folder to sort, or a TF_FILES to start from nothing)."""
    card = ctx.served.card
    model = bool(card.get("digest"))
    inbox = ctx.served.tf_files is not None and (
        not model or getattr(request.app.state, "inbox_dir", None) is not None)
    return {**card, "model": model, "inbox": inbox, "review": bool(card.get("review")) and model,
            "limits": ctx.limits.public()}


@router.post("/api/predict", summary="classify one or more images (field 'files', repeated)",
             openapi_extra={"requestBody": PREDICT_BODY}, responses=PREDICT_RESPONSES,
             response_description="per file: path (the uploaded name), error, predictions best "
                                  "first, model_digest (the weights that answered)")
async def predict(request: Request, ctx: Ctx,
                  top_k: int = Query(0, ge=0, description="labels per image (0: all)")):
    files = await _uploads(request, ctx.limits)
    try:
        ctx.batcher.admit(len(files))
    except Saturated:
        raise HTTPException(503, "the server is busy (queue full); retry shortly",
                            headers={"Retry-After": "1"}) from None
    futures, errors = await _submit(ctx, files)
    waiting = [asyncio.wrap_future(f) for f in futures if f is not None]
    try:
        done = await asyncio.wait_for(asyncio.gather(*waiting),
                                      deadline_left(request, ctx.limits.timeout_s))
    except asyncio.TimeoutError:
        raise HTTPException(504, f"no answer within {ctx.limits.timeout_s:g} s") from None
    results, digests = _results(files, futures, errors, iter(done), top_k or None)
    headers = {"X-Model-Digest": ",".join(sorted(digests)) or ctx.served.digest}
    if all(r["error"] for r in results):
        status = max(error_status(r["error"]) for r in results)
        detail = "; ".join(f"{r['path']}: {r['error']}" for r in results)
        return JSONResponse({"detail": detail, "results": results}, status, headers=headers)
    return JSONResponse(results, headers=headers)


async def _uploads(request: Request, limits: ServeLimits) -> list[UploadFile]:
    """The request's files (413 past ``max_files``, 422 without any)."""
    try:  # the parser stops at one file past the limit: nothing more is read or spooled
        form = await request.form(max_files=limits.max_files, max_fields=limits.max_files + 16)
    except StarletteHTTPException as exc:
        if "number of files" in str(exc.detail):
            raise HTTPException(413, f"more than {limits.max_files} files in one request; "
                                f"at most {limits.max_files}") from None
        raise
    files = [f for f in form.getlist("files") if isinstance(f, UploadFile)]
    if not files:
        raise HTTPException(422, "no files: send the images as the multipart field 'files'")
    if len(files) > limits.max_files:
        raise HTTPException(413, f"{len(files)} files in one request; at most {limits.max_files}")
    return files


async def _submit(ctx: ServeContext, files: list[UploadFile]) -> tuple[list, list]:
    """Decode the admitted ``files`` in the decoder threads and queue the images for the network:
    per file its future (None when it could not be decoded) and its error (else None)."""
    predictor, _ = ctx.served.current
    loop = asyncio.get_running_loop()

    async def decode(upload: UploadFile) -> np.ndarray | str:
        try:
            data = await upload.read()
        finally:
            await upload.close()
        job = functools.partial(load_image, upload.filename or "upload", predictor.input_size,
                                predictor.resize, data=data)
        try:
            return await loop.run_in_executor(ctx.decoder, job)
        except ImageError as exc:
            return exc.reason

    futures: list[Future | None] = []
    errors: list[str | None] = []
    try:
        for decoded in await asyncio.gather(*(decode(u) for u in files)):
            futures.append(None if isinstance(decoded, str) else ctx.batcher.submit(decoded))
            errors.append(decoded if isinstance(decoded, str) else None)
    finally:  # the places of images that did not reach the network are given back
        ctx.batcher.release(len(files) - sum(f is not None for f in futures))
    return futures, errors


def _results(files, futures, errors, answers, k: int | None) -> tuple[list[dict], set[str]]:
    """Per file: its name, error, the top ``k`` predictions and the digest of the weights that
    answered; and the set of those digests."""
    results, digests = [], set()
    for upload, future, error in zip(files, futures, errors):
        entry = {"path": upload.filename or "upload", "error": error, "predictions": [],
                 "model_digest": None}
        if future is not None:
            labels, p, digest = next(answers)
            order = np.argsort(-p, kind="stable")[:k]
            entry["predictions"] = [{"label": labels[i], "score": round(float(p[i]), 6)}
                                    for i in order]
            entry["model_digest"] = digest
            digests.add(digest)
        results.append(entry)
    return results, digests


# ---- why: an occlusion map

GREY = 128           # what covers a cell of the image
HEAT_RGB = np.array([230, 40, 20], np.float32)
MIN_SHOWN_DROP = 0.02  # a drop of 2 points is red at most: noise of a sure result stays faint


@router.post("/api/explain", summary="why: which parts of one image the best label depends on "
             "(an occlusion map; field 'files', one image)", openapi_extra={"requestBody": PREDICT_BODY},
             response_description="label and score; grid: the best label's probability drop when "
                                  "each cell is covered (rows top to bottom); image: the model's "
                                  "input with the drops in red (PNG data URL); seconds")
async def explain(request: Request, ctx: Ctx,
                  grid: int = Query(7, ge=2, le=14, description="cells a side")) -> dict:
    files = await _uploads(request, ctx.limits)
    if len(files) != 1:
        raise HTTPException(422, "one image at a time: send it as the multipart field 'files'")
    upload = files[0]
    predictor, _ = ctx.served.current
    try:
        ctx.batcher.admit(1)
    except Saturated:
        raise HTTPException(503, "the server is busy (queue full); retry shortly",
                            headers={"Retry-After": "1"}) from None
    loop = asyncio.get_running_loop()
    try:
        data = await upload.read()
        name = upload.filename or "upload"
        try:
            pixels = await loop.run_in_executor(ctx.decoder, functools.partial(
                load_image, name, predictor.input_size, predictor.resize, data=data))
        except ImageError as exc:
            raise HTTPException(error_status(exc.reason), f"{name}: {exc.reason}") from None
        job = functools.partial(ctx.batcher.exclusive,
                                functools.partial(occlusion, pixels=pixels, grid=grid))
        result, digest = await asyncio.wait_for(loop.run_in_executor(ctx.decoder, job),
                                                deadline_left(request, ctx.limits.timeout_s))
    except asyncio.TimeoutError:
        raise HTTPException(504, f"no answer within {ctx.limits.timeout_s:g} s") from None
    finally:
        ctx.batcher.release(1)
        await upload.close()
    return {"path": name, **result, "model_digest": digest}


def occlusion(predictor, pixels: np.ndarray, grid: int = 7) -> dict:
    """How much the best label's probability drops when each cell of a ``grid`` x ``grid``
    over the model's input is covered with grey: where the model looks. ``grid ** 2 + 1`` runs
    of the network, in batches of 32."""
    t0 = time.perf_counter()
    edges = np.linspace(0, pixels.shape[0], grid + 1).round().astype(int)
    variants = [pixels]
    for i in range(grid):
        for j in range(grid):
            covered = pixels.copy()
            covered[edges[i]:edges[i + 1], edges[j]:edges[j + 1]] = GREY
            variants.append(covered)
    batch = np.stack(variants)
    probs = np.concatenate([predictor.probabilities(batch[k:k + 32])
                            for k in range(0, len(batch), 32)])
    best = int(np.argmax(probs[0]))
    drop = (probs[0, best] - probs[1:, best]).reshape(grid, grid)
    return {"label": predictor.labels[best], "score": round(float(probs[0, best]), 6),
            "grid": drop.round(4).tolist(), "image": heat_image(pixels, drop),
            "seconds": round(time.perf_counter() - t0, 3)}


def heat_image(pixels: np.ndarray, drop: np.ndarray) -> str:
    """``pixels`` with the cells whose cover lowers the score most in red, as a PNG data URL."""
    from PIL import Image

    size = pixels.shape[0]
    heat = np.clip(drop / max(float(drop.max()), MIN_SHOWN_DROP), 0, 1)
    cells = Image.fromarray((heat * 255).astype(np.uint8))
    alpha = 0.6 * np.asarray(cells.resize((size, size), Image.Resampling.BILINEAR),
                             np.float32)[..., None] / 255
    out = pixels.astype(np.float32) * (1 - alpha) + HEAT_RGB * alpha
    buf = io.BytesIO()
    Image.fromarray(out.round().astype(np.uint8)).save(buf, "PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")
