"""What a route asks for by dependency: the server's :class:`~tfguess.serve.context.ServeContext`.

:func:`~tfguess.serve.app.create_app` keeps the context on ``app.state.ctx``; a route takes it as
a parameter annotated :data:`Ctx`. A page module's router therefore works on any FastAPI app
that has ``app.state.ctx`` (a test's own included)::

    @router.get("/healthz")
    def healthz(ctx: Ctx) -> dict: ...
"""

from typing import Annotated

from fastapi import Depends, Request

from tfguess.serve.context import ServeContext


def get_ctx(request: Request) -> ServeContext:
    """The context of the app that answers ``request``."""
    return request.app.state.ctx


Ctx = Annotated[ServeContext, Depends(get_ctx)]
