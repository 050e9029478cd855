"""``/docs``: Swagger UI served from the ``swagger-ui-bundle`` package (offline), and an OpenAPI
description it renders.

The bundled Swagger UI (4.15) renders OpenAPI 2.0 and 3.0.x only, while FastAPI writes 3.1;
:func:`openapi_3_0` rewrites the few 3.1 constructs FastAPI emits into their 3.0 spelling. Its
form for a multipart array of files (the 3.0 spelling of several uploads) has no file picker
until "Add string item" is clicked: the page gives it one (:data:`FILE_PICKER_PLUGIN`).
"""

import functools
from typing import Any

from fastapi import APIRouter
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.openapi.utils import get_openapi
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

from tfguess.serve.context import ServeContext

OPENAPI_VERSION = "3.0.3"

router = APIRouter()


def _schema_3_0(node: Any) -> Any:
    if isinstance(node, list):
        return [_schema_3_0(n) for n in node]
    if not isinstance(node, dict):
        return node
    out = {k: _schema_3_0(v) for k, v in node.items()}
    for key in ("anyOf", "oneOf"):
        options = out.get(key)
        if isinstance(options, list) and {"type": "null"} in options:
            rest = [o for o in options if o != {"type": "null"}]
            del out[key]
            if len(rest) == 1:
                out.update({k: v for k, v in rest[0].items() if k not in out})
            else:
                out[key] = rest
            out["nullable"] = True
    if isinstance(out.get("type"), list):  # type: [X, "null"]
        types = [t for t in out["type"] if t != "null"]
        if len(types) < len(out["type"]):
            out["nullable"] = True
        out["type"] = types[0] if len(types) == 1 else types
    if "const" in out:
        out["enum"] = [out.pop("const")]
    if isinstance(out.get("examples"), list) and "type" in out:  # a schema's examples list
        examples = out.pop("examples")
        if examples:
            out["example"] = examples[0]
    if out.get("contentMediaType") == "application/octet-stream" or "contentEncoding" in out:
        out.pop("contentMediaType", None)
        out.pop("contentEncoding", None)
        out["format"] = "binary"
    for bound, flag in (("exclusiveMinimum", "minimum"), ("exclusiveMaximum", "maximum")):
        if isinstance(out.get(bound), (int, float)) and not isinstance(out[bound], bool):
            out[flag] = out[bound]
            out[bound] = True
    return out


def openapi_3_0(spec: dict) -> dict:
    """``spec`` (OpenAPI 3.1 as FastAPI writes it) in OpenAPI 3.0 terms."""
    out = _schema_3_0(spec)
    out["openapi"] = OPENAPI_VERSION
    out.pop("webhooks", None)
    out.pop("jsonSchemaDialect", None)
    out.get("info", {}).pop("summary", None)
    return out


def register(app, ctx: ServeContext) -> None:
    """``/docs``, its assets, and ``app.openapi`` (the 3.0 description, with the API key's
    security scheme when the server has one)."""
    app.openapi = functools.partial(openapi, app, ctx.api_key)
    app.include_router(router)
    try:  # Swagger UI's files from the swagger-ui-bundle package: /docs works offline
        from swagger_ui_bundle import swagger_ui_path

        app.mount("/docs-assets", StaticFiles(directory=str(swagger_ui_path)), name="docs-assets")
    except ImportError:  # pragma: no cover - the serve extra installs it
        pass


def openapi(app, api_key: str | None) -> dict:
    """``app``'s OpenAPI description in 3.0 terms, made once."""
    if app.openapi_schema is None:
        spec = get_openapi(title=app.title, version=app.version, description=app.description,
                           routes=app.routes)
        if api_key:
            spec.setdefault("components", {})["securitySchemes"] = {
                "apiKey": {"type": "http", "scheme": "bearer",
                           "description": "the server's API key (--api-key)"}}
            spec["security"] = [{"apiKey": []}]
        _restore_examples(spec, app.routes)
        app.openapi_schema = openapi_3_0(spec)
    return app.openapi_schema


def _restore_examples(spec: dict, routes) -> None:
    """The response examples of ``routes`` as written: FastAPI leaves out every null when it
    writes the description, a null of an example's answer too (``"error": null``)."""
    from fastapi.routing import APIRoute

    from tfguess.serve.app import flat_routes

    for route in flat_routes(routes):
        if not isinstance(route, APIRoute):
            continue
        for status, answer in route.responses.items():
            for media, content in answer.get("content", {}).items():
                if "example" not in content:
                    continue
                for method in route.methods:
                    op = spec.get("paths", {}).get(route.path_format, {}).get(method.lower())
                    shown = (op or {}).get("responses", {}).get(str(status), {}).get("content", {})
                    if media in shown:
                        shown[media]["example"] = content["example"]


# Swagger UI 4.15 shows a multipart array of files as an "Add string item" button, and asks for a
# component it does not have (JsonSchema_string_binary: a console error): one file picker for
# one or several files instead, right when "Try it out" opens the form.
FILE_PICKER_PLUGIN = """
function FilePickerPlugin(system) {
  const h = system.React.createElement;
  const binary = (s) => !!(s && s.get && s.get("type") === "string" &&
    ["binary", "base64"].includes(s.get("format")));
  const picker = (props, multiple) => h("input", {
    type: "file", multiple: multiple, disabled: props.disabled,
    onChange: (e) => props.onChange(multiple ? system.Im.List([...e.target.files]) : e.target.files[0]),
  });
  return {
    components: { JsonSchema_string_binary: (props) => picker(props, false) },
    wrapComponents: {
      JsonSchema_array: (Original) => (props) =>
        binary(props.schema && props.schema.get && props.schema.get("items")) ?
          picker(props, true) : h(Original, props),
    },
  };
}
"""


@router.get("/docs", include_in_schema=False)
def docs() -> HTMLResponse:
    page = get_swagger_ui_html(openapi_url="/openapi.json", title="tfguess API",
                               swagger_js_url="/docs-assets/swagger-ui-bundle.js",
                               swagger_css_url="/docs-assets/swagger-ui.css",
                               swagger_favicon_url="/docs-assets/favicon-32x32.png")
    html = page.body.decode("utf-8")
    start = "const ui = SwaggerUIBundle({"
    if start in html:  # the file picker: a plugin of Swagger UI's own
        html = html.replace(start, FILE_PICKER_PLUGIN + start + "\n    plugins: [FilePickerPlugin],", 1)
    return HTMLResponse(html)
