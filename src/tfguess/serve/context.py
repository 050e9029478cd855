"""What every page module of the server shares: the limits, the served model, the page token,
the write check and the page renderer (:class:`ServeContext`)."""

import hmac
import ipaddress
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from tfguess.core.config import ServeConfig, check
from tfguess.serve.batching import MicroBatcher
from tfguess.serve.model_card import ServedModel

WEB_DIR = Path(__file__).resolve().parent / "web"
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

    def __post_init__(self) -> None:  # a bad value: ConfigError (a ValueError), one line
        check([
            (self.max_upload_mb > 0, "max_upload_mb must be positive"),
            (self.max_files >= 1, "max_files must be at least 1"),
            (self.max_batch >= 1, "max_batch must be at least 1"),
            (self.max_wait_ms >= 0, "max_wait_ms must not be negative"),
            (self.queue_size >= 1, "queue_size must be at least 1"),
            (self.timeout_s > 0, "timeout_s must be positive"),
        ])

    @classmethod
    def from_config(cls, config: ServeConfig) -> "ServeLimits":
        """The limits ``config`` sets; ``max_files`` None: as many as the queue holds, at most
        :attr:`max_files`' default (64)."""
        max_files = config.max_files
        if max_files is None:
            max_files = min(cls.max_files, config.queue_size)
        return cls(max_upload_mb=config.max_upload_mb, max_files=max_files,
                   max_batch=config.max_batch, max_wait_ms=config.max_wait_ms,
                   queue_size=config.queue_size, timeout_s=config.timeout_s)

    def check_queue(self) -> None:
        """A request's files must fit in the queue: :class:`ConfigError` otherwise."""
        check([(self.queue_size >= self.max_files,
                f"queue_size ({self.queue_size}) must be at least max_files ({self.max_files})")])

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 2**20)

    def public(self) -> dict:
        """What a client needs to build requests the server accepts (the page batches by it)."""
        return {"max_upload_bytes": self.max_upload_bytes, "max_files": self.max_files,
                "timeout_s": self.timeout_s}


def is_loopback(host: str) -> bool:
    host = host.strip("[]")
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass
class ServeContext:
    """Handed to each page module's ``register(app, ctx)``, and to its routes as the dependency
    :data:`tfguess.serve.deps.Ctx` (it is ``app.state.ctx``).

    - ``served``: the model (``served.current`` is the predictor and its digest, ``served.card``);
    - ``page(name, **values)``: an HTML file of ``web/`` with ``{{KEY}}`` filled in, sent with the
      security headers every page carries; ``{{TOKEN}}`` is always filled with ``token``;
    - ``check_write(request)``: call it first in a route that changes anything: it raises 403
      unless the request carries this server's page token (a page puts
      ``<meta name="tfguess-token" content="{{TOKEN}}">`` and its script sends it as the
      ``X-Tfguess-Token`` header) and comes from the same origin. The API key, when the server
      has one, is checked for every route before it runs (see ``app.py``).
    """

    served: ServedModel
    limits: ServeLimits
    batcher: MicroBatcher
    decoder: ThreadPoolExecutor
    token: str
    log: Callable[[str], None] = print
    api_key: str | None = None
    started: float = field(default_factory=time.time)

    def page(self, name: str, **values: str):
        from fastapi.responses import HTMLResponse

        text = (WEB_DIR / name).read_text(encoding="utf-8")
        for key, value in {"TOKEN": self.token, **values}.items():
            text = text.replace("{{" + key + "}}", value)
        return HTMLResponse(text, headers={"Cache-Control": "no-store",
                                           "X-Frame-Options": "DENY",
                                           "Content-Security-Policy": CSP})

    def check_write(self, request) -> None:
        """Only this server's own pages may change anything (a 403 otherwise)."""
        from fastapi import HTTPException

        sent = request.headers.get(TOKEN_HEADER, "")
        if not hmac.compare_digest(sent.encode(), self.token.encode()):
            raise HTTPException(403, "missing or wrong page token: reload the page")
        if request.headers.get("sec-fetch-site", "same-origin") not in ("same-origin", "none"):
            raise HTTPException(403, "cross-site request refused")
        origin = request.headers.get("origin")
        if origin is not None:
            own = f"{request.url.scheme}://{request.headers.get('host', '')}"
            if origin != own:
                raise HTTPException(403, f"request from another origin ({origin}) refused")
