"""The review page (``/review``) and its API: suspected label errors and misclassified images,
moves to another label, take-outs, undo, and re-training in place."""

import dataclasses
import io
import os
import threading
import time
from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.responses import FileResponse, Response
from pydantic import BaseModel

from tfguess.core.errors import TfguessError
from tfguess.core.fsutil import path_text
from tfguess.core.runfolder import RunFolder
from tfguess.curate.relabel import DataSetEditor, RelabelError
from tfguess.data.images import ImageError
from tfguess.serve.context import ServeContext
from tfguess.serve.deps import Ctx
from tfguess.serve.model_card import ServedModel
from tfguess.training.evaluation import figure_note

THUMB_PX = 320  # the page shows 160 px tiles: twice that for high-density screens

router = APIRouter()
no_tf_files_router = APIRouter()  # a model file served: /review says what it needs


class Retrainer:
    """Re-fits the head of TF_FILES' model in a worker thread (``--head-only``: the settings and
    backbone of its last run), then reloads."""

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
        from tfguess.core.config import TrainConfig
        from tfguess.curate.retrain import train_with_report

        tf_files = self.served.tf_files
        run = RunFolder.at(tf_files)
        t0 = time.perf_counter()
        lines: list[str] = []
        try:
            # the head again on the model's own backbone (fine-tuned or not): seconds
            config = TrainConfig.from_dict(run.read_summary().get("config", {}))
            config = dataclasses.replace(config, head_only=run.model.exists())
            result = train_with_report(tf_files, config, log=lines.append)
            self.served.reload()
            test = result.metrics.get("test", {})
            state = {"state": "done", "accuracy": test.get("accuracy"), "n_test": test.get("n"),
                     "test_note": figure_note(test)}
        except Exception as exc:  # shown on the page; the served model stays the old one
            state = {"state": "failed", "error": f"{type(exc).__name__}: {exc}"}
        with self.lock:
            self.state = {**self.state, **state, "seconds": round(time.perf_counter() - t0, 2),
                          "log": lines[-12:]}


_THUMBS: dict[tuple[str, int], bytes] = {}
_THUMBS_LOCK = threading.Lock()


def thumbnail(path: Path, mtime_ns: int, size: int = THUMB_PX) -> bytes:
    """A JPEG preview of ``path``, cached in memory (a few hundred at most)."""
    from PIL import Image

    from tfguess.data.images import decode_image

    key = (str(path), mtime_ns)
    with _THUMBS_LOCK:
        cached = _THUMBS.get(key)
    if cached is not None:
        return cached
    try:
        im = decode_image(path, draft_size=size)
    except ImageError:
        im = Image.new("RGB", (size, size), (228, 231, 235))
    im.thumbnail((size, size), Image.Resampling.LANCZOS)
    out = io.BytesIO()
    im.convert("RGB").save(out, "JPEG", quality=85)
    with _THUMBS_LOCK:
        if len(_THUMBS) > 500:
            _THUMBS.clear()
        _THUMBS[key] = out.getvalue()
    return _THUMBS[key]


class Move(BaseModel):
    path: str
    label: str | None = None   # None: take the image out of the data set


class ReviewUndo(BaseModel):
    id: int


def register(app, ctx: ServeContext) -> None:
    """``/review`` and its API; without a TF_FILES folder, ``/review`` says what it needs."""
    if ctx.served.tf_files is None:
        app.include_router(no_tf_files_router)
        return
    app.state.retrainer = Retrainer(ctx.served)
    app.include_router(router)


def get_retrainer(request: Request) -> Retrainer:
    return request.app.state.retrainer


RetrainerDep = Annotated[Retrainer, Depends(get_retrainer)]


def editor(ctx: ServeContext) -> DataSetEditor:
    """The editor of the served TF_FILES' data set (409 when its run summary is unreadable)."""
    run = RunFolder.at(ctx.served.tf_files)
    try:
        summary = run.read_summary()
    except TfguessError as exc:
        raise HTTPException(409, str(exc)) from None
    return DataSetEditor(ctx.served.tf_files, run.image_dir(summary), summary["labels"])


def data_file(ctx: ServeContext, path: str) -> Path:
    """``path`` (relative to TF_FILES or absolute) when it is a file of the data set or of
    ``removed/``; else 404."""
    ed = editor(ctx)
    try:
        p = Path(os.path.abspath(ed._abs(path)))
    except RelabelError:   # a name no file can have (a NUL byte)
        raise HTTPException(404, "not an image of this data set") from None
    inside = any(root == p.resolve() or root in p.resolve().parents
                 for root in (ed.image_dir, ed.removed_dir))
    if not inside or not p.is_file():
        raise HTTPException(404, "not an image of this data set")
    return p


@no_tf_files_router.get("/review", include_in_schema=False)
def no_review() -> Response:
    return Response("The review page needs a TF_FILES folder: tfguess serve TF_FILES\n",
                    404, media_type="text/plain")


@router.get("/review", include_in_schema=False)
def review(ctx: Ctx):
    return ctx.page("review.html")


@router.get("/api/review", summary="what the review page lists (needs a report)")
def review_items(ctx: Ctx) -> dict:
    ed = editor(ctx)
    tf_files = ctx.served.tf_files
    report_json = RunFolder.at(tf_files).report / "report.json"
    if not report_json.is_file():
        changes = ed.journal_rows()
        return {"report": False, "labels": ed.labels, "items": [], "changes": changes,
                "pending": sum(c["pending"] for c in changes),
                "hint": f"no evaluation report yet: tfguess evaluate {tf_files}"}
    from tfguess.curate.report import load_report

    data = load_report(tf_files)
    # every change still in effect can be undone, whether or not a re-training came since
    changes = ed.journal_rows(seen=data.get("journal_seen"), since=data.get("generated"))
    return {"report": True, "labels": ed.labels, "items": _review_rows(ed, data),
            "changes": changes, "pending": sum(c["pending"] for c in changes),
            "generated": data.get("generated"),
            "accuracy": data.get("metrics", {}).get("accuracy"), "split": data.get("eval_split"),
            "accuracy_note": figure_note(data.get("metrics"))}


def _review_rows(ed: DataSetEditor, data: dict) -> list[dict]:
    """The report's suspects, then its misclassified images (each image once), with where each
    is now."""
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
        items.append({"kind": kind, "original": path_text(row["path"]), "path": ed._rel(now),
                      "name": path_text(now.name), "given": given, "label": label, "where": where,
                      "suggested": suggested, "score": score, "split": row.get("split"),
                      "digest": row.get("digest")})
    return items


@router.get("/api/review/image", summary="a thumbnail of an image of the data set (or taken out of it)")
def review_image(ctx: Ctx, path: str) -> Response:
    p = data_file(ctx, path)
    return Response(thumbnail(p, p.stat().st_mtime_ns), media_type="image/jpeg",
                    headers={"Cache-Control": "no-cache"})


@router.get("/api/review/file", summary="an image of the data set as it is on disk (the report links to it)")
def review_file(ctx: Ctx, path: str) -> Response:
    return FileResponse(data_file(ctx, path), headers={"Cache-Control": "no-cache"})


@router.post("/api/review/move", summary="move an image to another label, or take it out")
def review_move(body: Move, request: Request, ctx: Ctx) -> dict:
    ctx.check_write(request)
    ed = editor(ctx)
    try:
        change = ed.move(body.path, body.label) if body.label else ed.remove(body.path)
    except (RelabelError, OSError) as exc:
        raise HTTPException(409, str(exc)) from None
    return vars(change)


@router.post("/api/review/undo", summary="undo one change of the journal")
def review_undo(body: ReviewUndo, request: Request, ctx: Ctx) -> dict:
    ctx.check_write(request)
    try:
        return vars(editor(ctx).undo(body.id))
    except (RelabelError, OSError) as exc:
        raise HTTPException(409, str(exc)) from None


@router.post("/api/review/retrain", summary="re-train with the last run's settings (worker thread)")
def review_retrain(request: Request, ctx: Ctx, retrainer: RetrainerDep) -> dict:
    ctx.check_write(request)
    if not retrainer.start():
        raise HTTPException(409, "a re-training is already running")
    return retrainer.state


@router.get("/api/review/retrain", summary="the state of the last re-training")
def review_retrain_state(ctx: Ctx, retrainer: RetrainerDep) -> dict:
    return {**retrainer.state, "test_accuracy": ctx.served.card.get("test_accuracy")}
