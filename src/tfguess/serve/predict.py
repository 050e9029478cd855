"""The prediction API: ``POST /api/predict``, ``GET /api/model``, ``GET /healthz``."""

import asyncio
import functools
import time
from concurrent.futures import Future

import numpy as np
from fastapi import APIRouter, HTTPException, Query, Request
from fastapi.responses import JSONResponse
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
def model_card(ctx: Ctx) -> dict:
    return {**ctx.served.card, "limits": ctx.limits.public()}


@router.post("/api/predict", summary="classify one or more images (field 'files', repeated)",
             openapi_extra={"requestBody": PREDICT_BODY},
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
