"""The API key (``--api-key``): required on every route but the static files, ``/login`` and
``/healthz``. Programs send ``Authorization: Bearer KEY`` (or ``X-API-Key: KEY``); a person
types the key once on ``/login`` and the browser keeps a same-site, HTTP-only cookie."""

import hashlib
import hmac
from html import escape
from urllib.parse import parse_qs, quote

from fastapi import APIRouter, Request
from fastapi.responses import RedirectResponse

from tfguess.serve.context import ServeContext
from tfguess.serve.deps import Ctx

COOKIE = "tfguess_session"
PUBLIC_PREFIXES = ("/static/", "/docs-assets/")
PUBLIC_PATHS = ("/login", "/logout", "/favicon.ico", "/healthz")
KEY_HINT = "missing or wrong API key: send the header 'Authorization: Bearer KEY'"

router = APIRouter()  # only when the server has an API key


def session_value(api_key: str) -> str:
    """What the cookie holds: derived from the key, so the key itself is not stored."""
    return hmac.new(api_key.encode(), b"tfguess browser session", hashlib.sha256).hexdigest()


def _cookie(headers: dict, name: str) -> str | None:
    for part in headers.get(b"cookie", b"").decode("latin-1").split(";"):
        key, _, value = part.strip().partition("=")
        if key == name:
            return value
    return None


def authorized(headers: dict, api_key: str) -> bool:
    auth = headers.get(b"authorization", b"").decode("latin-1")
    sent = auth[7:].strip() if auth.lower().startswith("bearer ") else \
        headers.get(b"x-api-key", b"").decode("latin-1")
    if sent and hmac.compare_digest(sent.encode(), api_key.encode()):
        return True
    cookie = _cookie(headers, COOKIE)
    return bool(cookie) and hmac.compare_digest(cookie.encode(), session_value(api_key).encode())


def _safe_next(target: str) -> str:
    return target if target.startswith("/") and not target.startswith("//") else "/"


def require_key(app, api_key: str):
    """ASGI middleware: 401 without the key (a page asked for by a browser: to ``/login``)."""
    from starlette.responses import JSONResponse

    async def middleware(scope, receive, send):
        if scope["type"] != "http" or scope.get("method") == "OPTIONS":
            return await app(scope, receive, send)
        path = scope.get("path", "")
        if path in PUBLIC_PATHS or path.startswith(PUBLIC_PREFIXES):
            return await app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        if authorized(headers, api_key):
            return await app(scope, receive, send)
        wants_page = scope.get("method") == "GET" and b"text/html" in headers.get(b"accept", b"")
        if wants_page:
            query = scope.get("query_string", b"").decode("latin-1")
            target = path + ("?" + query if query else "")
            response = RedirectResponse("/login?next=" + quote(target, safe=""), 303)
        else:
            response = JSONResponse({"detail": KEY_HINT}, 401,
                                    headers={"WWW-Authenticate": 'Bearer realm="tfguess"'})
        return await response(scope, receive, send)

    return middleware


def register(app, ctx: ServeContext) -> None:
    """``/login`` and ``/logout`` (only when the server has an API key)."""
    if ctx.api_key:
        app.include_router(router)


def _login_page(ctx: ServeContext, next_url: str, error: str = "", status: int = 200):
    response = ctx.page("login.html", NEXT=escape(_safe_next(next_url)), ERROR=escape(error))
    response.status_code = status
    return response


@router.get("/login", include_in_schema=False)
def login(ctx: Ctx, next: str = "/"):
    return _login_page(ctx, next)


@router.post("/login", include_in_schema=False)
async def login_post(request: Request, ctx: Ctx):
    body = parse_qs((await request.body()).decode("utf-8", "replace"))
    key = (body.get("key") or [""])[0]
    target = _safe_next((body.get("next") or ["/"])[0])
    if not hmac.compare_digest(key.encode(), ctx.api_key.encode()):
        return _login_page(ctx, target, "That key is not the API key of this server.", 401)
    response = RedirectResponse(target, 303)
    response.set_cookie(COOKIE, session_value(ctx.api_key), httponly=True, samesite="strict",
                        secure=request.url.scheme == "https", path="/")
    return response


@router.get("/logout", include_in_schema=False)
def logout():
    response = RedirectResponse("/login", 303)
    response.delete_cookie(COOKIE, path="/")
    return response
