"""The classify page (``/``), its static files, the favicon and the evaluation report."""

import html
import re
from urllib.parse import quote, unquote, urlsplit

from fastapi import APIRouter
from fastapi.responses import FileResponse, HTMLResponse
from fastapi.staticfiles import StaticFiles

from tfguess.core.runfolder import RunFolder
from tfguess.serve.context import WEB_DIR, ServeContext
from tfguess.serve.deps import Ctx

_FILE_LINK = re.compile(r'href="(file://[^"]*)"')

router = APIRouter()
report_router = APIRouter()  # only when a TF_FILES folder is served


def web_links(page: str) -> str:
    """The report links its images as ``file://`` URLs (it is a file on disk too); served over
    HTTP, they point at the review API's copy of the same file instead."""
    def swap(match: re.Match) -> str:
        path = unquote(urlsplit(html.unescape(match.group(1))).path)
        return f'href="/api/review/file?path={quote(path, safe="")}"'
    return _FILE_LINK.sub(swap, page)


def register(app, ctx: ServeContext) -> None:
    app.mount("/static", StaticFiles(directory=WEB_DIR), name="static")
    app.include_router(router)
    if ctx.served.tf_files is not None:
        app.include_router(report_router)  # before the mount: its routes answer first
        app.mount("/report", StaticFiles(directory=RunFolder.at(ctx.served.tf_files).report,
                                         html=True, check_dir=False), name="report")


@router.get("/", include_in_schema=False)
def index(ctx: Ctx) -> HTMLResponse:
    return ctx.page("index.html")


@router.get("/favicon.ico", include_in_schema=False)
def favicon() -> FileResponse:
    return FileResponse(WEB_DIR / "favicon.svg", media_type="image/svg+xml")


@report_router.get("/report/", include_in_schema=False)
@report_router.get("/report/index.html", include_in_schema=False)
def report_index(ctx: Ctx) -> HTMLResponse:
    index = RunFolder.at(ctx.served.tf_files).report / "index.html"
    if not index.is_file():
        return HTMLResponse(f"No evaluation report yet: tfguess evaluate "
                            f"{html.escape(str(ctx.served.tf_files))}", 404)
    return HTMLResponse(web_links(index.read_text(encoding="utf-8")),
                        headers={"Cache-Control": "no-cache"})
