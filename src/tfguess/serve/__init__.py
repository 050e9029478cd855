"""``serve``: a web page and a REST API for a trained model (FastAPI on uvicorn).

The model is loaded once. Uploaded images are decoded from memory in threads, then queued for a
single batching thread that runs the network on up to ``max_batch`` images at a time, waiting
at most ``max_wait_ms`` for more to arrive: concurrent requests share the network's batches. The
queue is bounded (``queue_size`` images admitted at once; beyond it: 503), request bodies are
bounded (413), non-images are refused (415), undecodable images and decompression bombs too
(422), and a request that takes longer than ``timeout_s`` gets a 408 or 504.

Serving a TF_FILES folder also serves its evaluation report at ``/report/`` and the review page
(``/review``), where suspected label errors can be moved to another label or taken out of the
data set (:mod:`tfguess.curate.relabel`) and the model re-trained in place.

One module per page or API, each with a FastAPI ``router`` of module-level routes and
``register(app, ctx)``: :mod:`.predict` (the prediction API), :mod:`.home` (the classify page,
the report), :mod:`.docs` (Swagger UI), :mod:`.review`, :mod:`.inbox`, :mod:`.metrics`
(Prometheus), :mod:`.auth` (the API key's login page); the application and its middleware in
:mod:`.app`, what they share in :mod:`.context` (a route gets it as the dependency
:data:`.deps.Ctx`). The page modules need FastAPI (the ``serve`` extra): they are imported when
an app is made, and their names below when first used.
"""

import importlib

from tfguess.serve.app import (
    API_KEY_ENV,
    PAGE_MODULES,
    ServeError,
    check_cors_origins,
    check_exposure,
    create_app,
    exposure_warning,
    host_name,
    serve,
)
from tfguess.serve.batching import MicroBatcher, Saturated
from tfguess.serve.context import TOKEN_HEADER, WEB_DIR, ServeContext, ServeLimits, is_loopback
from tfguess.serve.model_card import ServedModel, file_digest

# Names of the page modules (they import FastAPI): imported on first use.
_LAZY = {"error_status": "predict", "Retrainer": "review", "thumbnail": "review"}


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(f"tfguess.serve.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "API_KEY_ENV", "PAGE_MODULES", "check_cors_origins", "check_exposure", "TOKEN_HEADER", "WEB_DIR", "MicroBatcher", "Retrainer", "Saturated",
    "ServeContext", "ServeError", "ServeLimits", "ServedModel", "create_app", "error_status",
    "exposure_warning", "file_digest", "host_name", "is_loopback", "serve", "thumbnail",
]
