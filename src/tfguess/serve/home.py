"""The classify page (``/``), its static files, the favicon and the evaluation report."""

import html
import re
from urllib.parse import quote, unquote, urlsplit

from tfguess.core.runfolder import RunFolder
from tfguess.serve.context import WEB_DIR, ServeContext

_FILE_LINK = re.compile(r'href="(file://[^"]*)"')


def web_links(page: str) -> str:
    """The report links its images as ``file://`` URLs (it is a file on disk too); served over
    HTTP, they point at the review API's copy of the same file instead."""
    def swap(match: re.Match) -> str:
        path = unquote(urlsplit(html.unescape(match.group(1))).path)
        return f'href="/api/review/file?path={quote(path, safe="")}"'
    return _FILE_LINK.sub(swap, page)


def register(app, ctx: ServeContext) -> None:
    from fastapi.responses import FileResponse, HTMLResponse
    from fastapi.staticfiles import StaticFiles

    app.mount("/static", StaticFiles(directory=WEB_DIR), name="static")

    @app.get("/", include_in_schema=False)
    def index() -> HTMLResponse:
        return ctx.page("index.html")

    @app.get("/favicon.ico", include_in_schema=False)
    def favicon() -> FileResponse:
        return FileResponse(WEB_DIR / "favicon.svg", media_type="image/svg+xml")

    if ctx.served.tf_files is not None:
        report_dir = RunFolder.at(ctx.served.tf_files).report

        @app.get("/report/", include_in_schema=False)
        @app.get("/report/index.html", include_in_schema=False)
        def report_index() -> HTMLResponse:
            index = report_dir / "index.html"
            if not index.is_file():
                return HTMLResponse(f"No evaluation report yet: tfguess evaluate "
                                    f"{html.escape(str(ctx.served.tf_files))}", 404)
            return HTMLResponse(web_links(index.read_text(encoding="utf-8")),
                                headers={"Cache-Control": "no-cache"})

        app.mount("/report", StaticFiles(directory=RunFolder.at(ctx.served.tf_files).report,
                                         html=True, check_dir=False), name="report")
