"""The inbox page (``/inbox``) and its API: sort a folder of unlabelled photos with the model's
help (:mod:`tfguess.curate.inbox`), or start a TF_FILES from nothing (labels, photos, first training).

Every route that changes something calls ``ctx.check_write`` (the page token and same origin).
"""

import threading
import time
from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Query, Request
from fastapi.responses import Response
from pydantic import BaseModel
from starlette.datastructures import UploadFile

from tfguess.core.errors import TfguessError, describe_os_error
from tfguess.core.runfolder import RunFolder
from tfguess.curate import inbox as inbox_mod
from tfguess.curate.inbox import Inbox
from tfguess.serve.context import ServeContext
from tfguess.serve.deps import Ctx
from tfguess.serve.model_card import ServedModel
from tfguess.serve.review import thumbnail

MAX_ITEMS = 200          # cards sent to the page at once (the most useful first)
ORDERS = ("uncertainty", "margin", "entropy", "label", "score", "random")

router = APIRouter()
no_tf_files_router = APIRouter()  # a model file served: /inbox says what it needs


class NoModelYet(ServedModel):
    """A TF_FILES without a model yet: the inbox page can start it from nothing; predictions
    answer 503 until the first training (:meth:`ServedModel.reload` then loads the model)."""

    def __init__(self, tf_files: Path, log) -> None:
        from tfguess.engine.model import MODEL_FILENAME

        self.tf_files, self.path, self.log = tf_files, tf_files / MODEL_FILENAME, log
        self.lock = threading.Lock()
        self.predictor, self.digest = None, ""
        self.card = {"name": tf_files.name, "file": None, "digest": "", "labels": [],
                     "input_size": None, "resize": None, "engine": None, "date": None,
                     "backbone": None, "mode": "no model yet: create labels on /inbox",
                     "config": None, "metrics": None, "test_accuracy": None, "report": False,
                     "review": True}

    @property
    def current(self):
        with self.lock:
            if self.predictor is None:
                raise HTTPException(503, "no model yet: create labels and train on /inbox")
            return self.predictor, self.digest


def served_model(model, log) -> ServedModel:
    """The served model; a TF_FILES folder with no model yet gets :class:`NoModelYet`."""
    arg = Path(model).expanduser().resolve()
    if arg.is_dir() and not RunFolder.at(arg).model.exists():
        log(f"no model in {arg} yet: open /inbox to create labels, add photos and train")
        return NoModelYet(arg, log)
    return ServedModel(model, log)


class InboxState:
    """The server's inbox (loaded on first use) and what the page needs to know."""

    def __init__(self, served: ServedModel, inbox_dir: str | None, auto_every: int, log) -> None:
        self.served, self.dir, self.auto_every, self.log = served, inbox_dir, auto_every, log
        self.tf_files = served.tf_files
        self.inbox = None
        self.lock = threading.Lock()
        self.finished: dict | None = None

    def get(self, required: bool = True):
        if self.dir is None:
            if required:
                raise HTTPException(409, "no inbox folder: start the server with --inbox DIR")
            return None
        with self.lock:
            if self.inbox is None:
                try:
                    self.inbox = Inbox(self.tf_files, self.dir, auto_every=self.auto_every,
                                       log=self.log)
                except (TfguessError, OSError) as exc:
                    raise HTTPException(409, _message(exc)) from None
            return self.inbox


def _quietly(fn) -> None:
    try:
        fn()
    except Exception:  # noqa: BLE001 - the page's first request reports the same error
        pass


def _message(exc: Exception) -> str:
    return describe_os_error(exc) if isinstance(exc, OSError) else str(exc)


def _call(fn, *args):
    """``fn(*args)``, a user's mistake (or the file system's) answered as 409 with its one line."""
    try:
        return fn(*args)
    except (TfguessError, OSError) as exc:
        raise HTTPException(409, _message(exc)) from None


class Label(BaseModel):
    name: str
    label: str | None = None   # None: none of these


class InboxUndo(BaseModel):
    id: int | None = None      # None: the last action


class Accept(BaseModel):
    label: str
    min_score: float


class NewLabel(BaseModel):
    name: str


def register(app, ctx: ServeContext) -> None:
    """``/inbox`` and its API on ``app.state.inbox`` (an :class:`InboxState` over
    ``app.state.inbox_dir``); without a TF_FILES folder, ``/inbox`` says what it needs."""
    if ctx.served.tf_files is None:
        app.include_router(no_tf_files_router)
        return
    state = InboxState(ctx.served, getattr(app.state, "inbox_dir", None),
                       getattr(app.state, "inbox_every", 20), ctx.log)
    app.state.inbox = state
    if state.dir is not None:  # features and scores ready before the page asks (it waits for them)
        threading.Thread(target=lambda: _quietly(state.get), name="tfguess-inbox-load",
                         daemon=True).start()
    app.include_router(router)


def get_state(request: Request) -> InboxState:
    return request.app.state.inbox


State = Annotated[InboxState, Depends(get_state)]


@no_tf_files_router.get("/inbox", include_in_schema=False)
def no_inbox() -> Response:
    return Response("The inbox page needs a TF_FILES folder: tfguess serve TF_FILES "
                    "--inbox DIR\n", 404, media_type="text/plain")


@router.get("/inbox", include_in_schema=False)
def inbox_page(ctx: Ctx):
    return ctx.page("inbox.html")


@router.get("/api/inbox", summary="the inbox: counts, figures, the images in the order asked")
def inbox_items(state: State, order: str = Query("uncertainty")) -> dict:
    if order not in ORDERS:
        raise HTTPException(422, f"unknown order {order!r}: one of {', '.join(ORDERS)}")
    tf_files = state.tf_files
    counts = inbox_mod.photo_counts(tf_files)
    base = {"model": RunFolder.at(tf_files).model.exists(), "photo_counts": counts,
            "min_photos": inbox_mod.MIN_PHOTOS_PER_LABEL,
            "not_ready": inbox_mod.ready_to_train(tf_files), "inbox_dir": state.dir,
            "finished": state.finished}
    ib = state.get(required=False)
    if ib is None:
        return {**base, "stats": None, "items": [], "journal": []}

    def read() -> dict:
        ib.refresh()  # photos added, deleted or replaced in DIR; rows of another server
        items = ib.items(order)
        journal = [vars(a) for a in ib.journal.read()[-50:]]
        return {"stats": ib.stats(), "items": items[:MAX_ITEMS], "journal": journal}

    return {**base, **_call(read)}


@router.get("/api/inbox/image", summary="a thumbnail of an image of the inbox folder")
def inbox_image(state: State, name: str) -> Response:
    ib = state.get()
    if name not in ib.digest:
        raise HTTPException(404, "not an image of the inbox")
    p = ib.dir / name
    try:
        jpeg = thumbnail(p, p.stat().st_mtime_ns)
    except OSError:  # deleted (or made unreadable) since the list was made
        raise HTTPException(404, f"{name} is no longer in the inbox folder: reload the page") from None
    return Response(jpeg, media_type="image/jpeg", headers={"Cache-Control": "no-cache"})


@router.post("/api/inbox/label", summary="copy an inbox image into data/<label>/ (or mark it none of these)")
def inbox_label(body: Label, request: Request, ctx: Ctx, state: State) -> dict:
    ctx.check_write(request)
    ib = state.get()
    return _call(ib.label, body.name, body.label) if body.label else _call(ib.none_of_these, body.name)


@router.post("/api/inbox/undo", summary="undo an action of the inbox journal (default: the last)")
def inbox_undo(body: InboxUndo, request: Request, ctx: Ctx, state: State) -> dict:
    ctx.check_write(request)
    return _call(state.get().undo, body.id)


@router.post("/api/inbox/accept", summary="label every image the model gives LABEL with score >= MIN_SCORE")
def inbox_accept(body: Accept, request: Request, ctx: Ctx, state: State) -> dict:
    ctx.check_write(request)
    done = _call(state.get().accept, body.label, body.min_score)
    return {"labelled": len(done)}


@router.post("/api/inbox/retrain", summary="re-fit the head on the labelled photos and re-order")
def inbox_retrain(request: Request, ctx: Ctx, state: State) -> dict:
    ctx.check_write(request)
    r = _call(state.get().retrain)
    return {"seconds": round(r.seconds, 2)}


@router.post("/api/inbox/finish", summary="train TF_FILES' model, then sort the inbox (guess-dir layout)")
def inbox_finish(request: Request, ctx: Ctx, state: State) -> dict:
    ctx.check_write(request)
    ib = state.get()
    t = time.perf_counter()
    result = _call(ib.finish)
    ctx.served.reload()
    state.finished = {"copied": len(result.copied), "resumed": result.resumed,
                      "skipped": len(result.skipped), "manifest": str(result.manifest),
                      "dst": str(result.manifest.parent),
                      "seconds": round(time.perf_counter() - t, 1)}
    return state.finished


# ---- start from nothing

@router.post("/api/inbox/labels", summary="create a label (a folder data/<label>/)")
def inbox_new_label(body: NewLabel, request: Request, ctx: Ctx) -> dict:
    ctx.check_write(request)
    _call(inbox_mod.create_label, ctx.served.tf_files, body.name)
    return {"photo_counts": inbox_mod.photo_counts(ctx.served.tf_files)}


@router.post("/api/inbox/photos", summary="add photos to a label (multipart field 'files')")
async def inbox_photos(request: Request, ctx: Ctx, label: str = Query(...)) -> dict:
    ctx.check_write(request)
    tf_files = ctx.served.tf_files
    form = await request.form(max_files=ctx.limits.max_files)
    files = [f for f in form.getlist("files") if isinstance(f, UploadFile)]
    if not files:
        raise HTTPException(422, "no files: send the photos as the multipart field 'files'")
    added, errors = [], []
    for f in files:
        data = await f.read()
        try:
            added.append(inbox_mod.add_photo(tf_files, label, f.filename or "photo.jpg", data).name)
        except (TfguessError, OSError) as exc:
            errors.append(str(exc))
    if not added:
        raise HTTPException(415 if errors else 422, "; ".join(errors))
    return {"added": added, "errors": errors, "photo_counts": inbox_mod.photo_counts(tf_files)}


@router.post("/api/inbox/train", summary="train the model once every label has enough photos")
def inbox_train(request: Request, ctx: Ctx, state: State) -> dict:
    ctx.check_write(request)
    t = time.perf_counter()
    lines: list[str] = []
    result = _call(inbox_mod.train_from_nothing, ctx.served.tf_files, lines.append)
    ctx.served.reload()
    if state.inbox is not None:
        _call(state.inbox.load)
    return {"labels": result.labels, "seconds": round(time.perf_counter() - t, 1),
            "test_accuracy": result.metrics.get("test", {}).get("accuracy"), "log": lines[-6:]}
