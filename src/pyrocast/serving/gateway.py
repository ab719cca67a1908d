"""The gateway: the one public entry point. Routes predictions between champion and challenger, stores them.

FastAPI + uvicorn, default http://127.0.0.1:8000, OpenAPI at /docs and /openapi.json. Run it with
`pyrocast serve gateway` or `python -m pyrocast.serving.gateway --port 8000`. The API is a contract for the
web app, replay and load tools; see docs/SERVING.md.

The routes and their request parsing live here; what they call is in `routing` (the Gateway's state), `backends`
(the services behind it), `api` (the contract's models) and `gateway_metrics`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hmac
import json
import logging
import os
import re
import time
from collections.abc import AsyncIterator
from typing import Annotated, Any

import httpx
from fastapi import Depends, FastAPI, Header, HTTPException, Path, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from prometheus_client import CONTENT_TYPE_LATEST, Counter, generate_latest
from pydantic import ValidationError
from sqlalchemy.exc import SQLAlchemyError
from starlette.exceptions import HTTPException as StarletteHTTPException

from pyrocast.errors import InvalidInputError, PyrocastError, ServiceUnavailableError, scrub_log_secrets
from pyrocast.registry.refs import check_model_ref
from pyrocast.serving.api import (
    API_VERSION,
    REQUEST_ID,
    CoordinatesRequest,
    ErrorResponse,
    ExplainCoordinates,
    FeedbackRequest,
    FeedbackResponse,
    HealthResponse,
    ImageryFailed,
    ModelInfo,
    PredictResponse,
    PromoteBody,
    ReasonBody,
    RolloutView,
    ShadowBody,
    UploadForm,
)
from pyrocast.serving.backends import BackendError, ExplainerProbe, backend_message, describe_error
from pyrocast.serving.guards import MULTIPART_SLACK, BodyLimit, BodyTooLarge, UploadRejected, too_big
from pyrocast.serving.rollout import ABPlan, CanaryPlan, RolloutError
from pyrocast.serving.routing import Gateway, Prepared, Upload
from pyrocast.serving.store import GROUND_TRUTH_SOURCES, LABELS, USER_FEEDBACK, PredictionStore, brief_error
from pyrocast.settings import Settings, get_settings

log = logging.getLogger("pyrocast.gateway")


# --- request parsing -------------------------------------------------------------------------------------------
def _detail(message: str, hint: str | None) -> dict[str, str]:
    """The body of every error: the message, and a hint only where there is one (never "hint": null)."""
    return {"error": message, **({"hint": hint} if hint else {})}


_EXPLAINER_DOWN = "heatmaps fail until it answers again (GET /healthz says when); predictions are not affected"


def _refuse_if_explainer_gone(gw: Gateway) -> None:
    """A 503 at once when the explainer's probes find it gone (`ExplainerProbe.gone`), rather than a heatmap waited for;
    and where none runs (`pyrocast up --no-explainer`), without calling its port (another service may hold it)."""
    if gw.explainer is None:
        raise HTTPException(
            503,
            detail={
                **_detail(
                    "no explainer runs with this gateway (it was started without one: `pyrocast up --no-explainer`, "
                    "serving.explainer off), so there are no heatmaps",
                    "start Pyrocast without --no-explainer for heatmaps; predictions are not affected",
                ),
                "service": "explainer-off",
            },
        )
    if gw.explainer.gone:
        raise _bad_request(
            503, f"the explainer at {gw.explainer_url} does not answer its health probes", _EXPLAINER_DOWN
        )


class _ProbeFailed(Exception):
    """The service's health probe failed while a call to it waited."""


async def _unless_probe_fails(call: asyncio.Future[httpx.Response], probe: ExplainerProbe | None) -> httpx.Response:
    """Await `call`, given up (`_ProbeFailed`) once the service's probes find it gone (`ExplainerProbe.gone`): a hung
    explainer held every caller for the whole `serving.explain_timeout_s` (120 s), long after /healthz said so."""
    try:
        while True:
            done, _ = await asyncio.wait({call}, timeout=0.5)
            if done:
                return call.result()
            if probe is not None and probe.gone:
                raise _ProbeFailed
    finally:  # given up, or the caller went away: the call goes too
        if not call.done():
            call.cancel()


def _bad_request(status: int, message: str, hint: str | None = None) -> HTTPException:
    return HTTPException(status, detail=_detail(message, hint))


def _error(status: int, message: str, hint: str | None = None) -> JSONResponse:
    return JSONResponse({"detail": _detail(message, hint)}, status_code=status)


def _utf8(header: str | None) -> str | None:
    """A header value as the client meant it: clients send UTF-8, the server decodes headers as Latin-1, so a
    client id "Zoë" in a header would otherwise land in another sticky bucket than the same id in the body."""
    if header is None:
        return None
    try:
        return header.encode("latin-1").decode("utf-8")
    except (UnicodeEncodeError, UnicodeDecodeError):
        return header


def media_type(declared: str | None) -> str:
    """The upload's declared type as it is passed on to the model services: a well-formed `type/subtype` (its
    parameters dropped), else application/octet-stream. A control character in it made the call to the classifier
    fail with a 500 (aiohttp refuses such a header); the services judge the bytes anyway."""
    main = (declared or "").split(";", 1)[0].strip().lower()
    return (
        main
        if re.fullmatch(r"[a-z0-9][a-z0-9!#$&^_.+-]*/[a-z0-9][a-z0-9!#$&^_.+-]*", main)
        else "application/octet-stream"
    )


def _model_ref(version: str | None) -> str | None:
    """The model version an explain request names (None: the champion), or a 422 when it names none."""
    if version is None or not version.strip():
        return None
    try:
        return check_model_ref(version)
    except InvalidInputError as exc:
        raise _bad_request(422, exc.message, exc.hint) from exc


def _explained(gw: Gateway, version: str | None) -> tuple[str, str | None]:
    """The version an explain request is about, and the precision the classifier serving it scores in.

    A role's alias is the version this gateway serves in that role (the registry's alias may already name another
    during a promotion); a version no classifier serves is explained in the explainer's default precision."""
    roles = {"champion": gw.controller.state.champion, "challenger": gw.controller.state.challenger}
    if not version or version in roles:
        role = version or "champion"
        ref = roles[role]
        if ref is None:
            if role == "champion":
                raise _bad_request(503, "no champion model is being served")
            raise _bad_request(409, "no challenger model is being served", "name a model version instead")
        return ref.version, (gw.backend(role).info or {}).get("precision")
    if version[:1] in ("v", "V") and version[1:].isdigit():
        version = version[1:]
    precision = next(
        (
            (b.info or {}).get("precision")
            for b in gw.backends.values()
            if b.ref is not None and b.ref.version == version and (b.info or {}).get("precision")
        ),
        None,
    )
    return version, precision


async def _read_input(request: Request, gw: Gateway, explain: bool = False) -> tuple[Prepared | Upload, dict[str, Any]]:
    """The tile of a predict/explain request (multipart image, checked in the background, or JSON coordinates)
    and its other fields."""
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype == "multipart/form-data":
        try:
            form = await request.form(max_files=1, max_fields=20)
        except BodyTooLarge:  # BodyLimit answers 413 for a chunked body over the limit
            raise
        except StarletteHTTPException as exc:  # Starlette's own refusals (too many files or fields)
            raise _bad_request(exc.status_code, f"malformed multipart body: {exc.detail}") from exc
        except Exception as exc:
            raise _bad_request(400, f"malformed multipart body: {exc}") from exc
        fields = {k: v for k, v in form.items() if k != "image"}
        upload = form.get("image")
        if upload is None or isinstance(upload, str):
            raise _bad_request(422, "multipart request needs a file field 'image'", "curl -F image=@tile.jpg ...")
        bad = [k for k, v in fields.items() if not isinstance(v, str)]
        if bad:
            raise _bad_request(422, f"only one file ('image') is accepted; unexpected file field(s): {bad}")
        allowed = {"client_id", "source", "lat", "lon"} | ({"version"} if explain else set())
        extra = set(fields) - allowed
        if extra:
            raise _bad_request(422, f"unknown form field(s): {sorted(extra)}", f"allowed: {sorted(allowed)}")
        try:
            meta = UploadForm.model_validate({"image": b"", **fields}).model_dump(exclude={"image"})
        except ValidationError as exc:
            raise RequestValidationError(exc.errors(include_url=False, include_context=False)) from exc
        if (meta["lat"] is None) != (meta["lon"] is None):
            raise _bad_request(422, "give both lat and lon for an uploaded tile, or neither")
        data = await upload.read()
        meta["received_at"] = time.perf_counter()  # the upload is the client's time, checking it the gateway's
        meta["version"] = _model_ref(fields.get("version"))
        return gw.check_upload(data, media_type(upload.content_type), meta["lon"], meta["lat"]), meta
    if ctype in ("application/json", ""):
        raw = await request.body()
        received_at = time.perf_counter()  # a place's tile fetch is the gateway's time: it counts in latency_ms
        if not raw:
            raise _bad_request(422, "empty request body", JSON_HINT)
        if raw.startswith((b"\xff\xd8", b"\x89PNG")):  # an image sent as the whole body
            raise _bad_request(
                415, "an image must come as a multipart file field 'image'", "curl -F image=@tile.jpg ..."
            )
        try:
            payload = json.loads(raw, parse_constant=_no_constants)
        except (ValueError, UnicodeDecodeError) as exc:
            why = str(exc)
            if "int_max_str_digits" in why:  # Python's advice is for the server's programmer, not the client
                why = "a number in it has more than 4300 digits"
            raise _bad_request(400, f"body is not valid JSON: {why}") from exc
        except RecursionError as exc:  # a 2 kB body of nested brackets
            raise _bad_request(400, "body is not valid JSON: nested too deeply", JSON_HINT) from exc
        model = ExplainCoordinates if explain else CoordinatesRequest
        try:
            req = model.model_validate(payload)
        except ValidationError as exc:
            raise RequestValidationError(exc.errors(include_url=False, include_context=False)) from exc
        meta = {**req.model_dump(), "received_at": received_at}
        if explain:
            meta["version"] = _model_ref(meta["version"])
            _refuse_if_explainer_gone(gw)  # before the imagery provider is asked for a tile nobody will see
        return await gw.tile_for(req.lon, req.lat), meta
    raise _bad_request(
        415,
        f"unsupported content type {ctype!r}",
        "send an image as multipart/form-data with a file field 'image' (curl -F image=@tile.jpg ...), or a place as "
        "application/json {'lat': .., 'lon': ..}",
    )


JSON_HINT = "send JSON {'lat': .., 'lon': ..} or a multipart 'image' file"


def _body_hint(request: Request) -> str:
    """What the route wants: a place or a tile for predictions and heatmaps, a JSON object elsewhere."""
    if request.url.path in ("/v1/predict", "/v1/explain"):
        return JSON_HINT
    return "send a JSON object (see /docs for this route's fields)"


def _local_docs(app: FastAPI) -> None:
    """`/docs`: Swagger UI over the OpenAPI document, its files served from the installed fastapi-offline package."""
    import fastapi_offline
    from fastapi.openapi.docs import get_swagger_ui_html
    from fastapi.staticfiles import StaticFiles

    static = os.path.join(os.path.dirname(fastapi_offline.__file__), "static")
    app.mount("/static/docs", StaticFiles(directory=static), name="docs-static")

    @app.get("/docs", include_in_schema=False)
    async def docs() -> Response:
        return get_swagger_ui_html(
            openapi_url=app.openapi_url or "/openapi.json",
            title=f"{app.title}: API",
            swagger_js_url="/static/docs/swagger-ui-bundle.js",
            swagger_css_url="/static/docs/swagger-ui.css",
            swagger_favicon_url="/static/docs/favicon.png",
        )


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not a number JSON allows")


_UPLOAD_SCHEMA = UploadForm.model_json_schema()
_COORD_SCHEMA = CoordinatesRequest.model_json_schema()
_EXPLAIN_COORD_SCHEMA = ExplainCoordinates.model_json_schema()
_EXPLAIN_UPLOAD_SCHEMA = {
    **_UPLOAD_SCHEMA,
    "properties": {**_UPLOAD_SCHEMA["properties"], "version": {"type": "string", "title": "Version"}},
}


def _body_doc(upload: dict[str, Any], coords: dict[str, Any]) -> dict[str, Any]:
    return {
        "requestBody": {
            "required": True,
            "content": {"multipart/form-data": {"schema": upload}, "application/json": {"schema": coords}},
        }
    }


_ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorResponse, "description": "malformed body"},
    404: {"model": ErrorResponse, "description": "no imagery for this place"},
    413: {"model": ErrorResponse, "description": "upload too large"},
    415: {"model": ErrorResponse, "description": "not a JPEG/PNG, or wrong content type"},
    422: {"model": ErrorResponse, "description": "invalid fields or unusable image"},
    502: {"model": ErrorResponse, "description": "a service behind the gateway failed (imagery, explainer)"},
    503: {"model": ErrorResponse, "description": "the champion model service (or the explainer) does not answer"},
}

# A JSON body's own refusals, on the routes that take a JSON object.
_BODY_ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorResponse, "description": "the body is not valid JSON"},
    415: {"model": ErrorResponse, "description": "a JSON body sent with another Content-Type"},
}

_bearer = HTTPBearer(auto_error=False)
# Where a request can be refused before routing (its body is over the limit): counted under these paths.
PUBLIC_PATHS = ("/v1/predict", "/v1/explain", "/v1/feedback")


class CountRequests:
    """ASGI middleware counting responses per route template and status (cheaper than BaseHTTPMiddleware).

    A response given before routing (BodyLimit's 413) is counted under its path when that is one of the app's
    fixed paths, so that a refused upload counts for /v1/predict; any other path is "unmatched" (bounded labels).
    """

    def __init__(self, app: Any, counter: Counter, paths: frozenset[str] = frozenset()) -> None:
        self.app = app
        self.counter = counter
        self.paths = paths

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 500

        async def send_wrapper(message: Any) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            route = scope.get("route")
            path = scope.get("path", "")
            label = getattr(route, "path", None) or (path if path in self.paths else "unmatched")
            self.counter.labels(label, str(status)).inc()


# --- the app ---------------------------------------------------------------------------------------------------
def create_app(settings: Settings | None = None, store: PredictionStore | None = None) -> FastAPI:
    """The gateway app (one Gateway per app; its lifespan starts the store writer and the rollout ticker)."""
    settings = settings or get_settings()
    gw = Gateway(settings, store)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await gw.startup()
        try:
            yield
        finally:
            await gw.shutdown()

    app = FastAPI(
        title="Pyrocast gateway",
        version=API_VERSION,
        description="Wildfire-risk predictions from satellite tiles, with champion/challenger rollout. "
        "See docs/SERVING.md.",
        lifespan=lifespan,
        docs_url=None,  # FastAPI's page loads Swagger UI from a CDN: blank on a machine without the internet
        redoc_url=None,
    )
    app.state.gateway = gw
    _local_docs(app)
    app.add_middleware(BodyLimit, max_bytes=settings.serving.max_upload_bytes + MULTIPART_SLACK, envelope="detail")

    app.add_middleware(CountRequests, counter=gw.metrics.http, paths=frozenset(PUBLIC_PATHS))

    @app.exception_handler(UploadRejected)
    async def _upload_rejected(_: Request, exc: UploadRejected) -> JSONResponse:
        return _error(exc.status, exc.message, exc.hint)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> Response:
        # The framework's own refusals (an unknown path, a body it cannot parse) in the one error envelope.
        if isinstance(exc.__cause__, BodyTooLarge):  # a chunked body past the limit, read by FastAPI for a model
            limit = settings.serving.max_upload_bytes + MULTIPART_SLACK
            return JSONResponse({"detail": too_big(None, limit)}, status_code=413)
        if exc.detail == "There was an error parsing the body":  # FastAPI's words (a body nested too deep)
            return _error(400, "body is not valid JSON (nested too deeply?)", _body_hint(request))
        detail = exc.detail if isinstance(exc.detail, dict) else _detail(str(exc.detail), None)
        if exc.status_code in (204, 304):
            return Response(status_code=exc.status_code, headers=exc.headers)
        return JSONResponse({"detail": detail}, status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        bad_json = next((e for e in exc.errors() if e.get("type") == "json_invalid"), None)
        if bad_json is not None:  # a body that is not JSON is a 400, as on every other route
            why = (bad_json.get("ctx") or {}).get("error") or bad_json.get("msg")
            return _error(400, f"body is not valid JSON: {why}", _body_hint(request))
        # A body FastAPI did not read as JSON (its Content-Type is not JSON's) where a JSON object is wanted: said
        # as such, not as "Input should be a valid dictionary" (a 422 the same bytes never got on /v1/predict).
        ctype = (request.headers.get("content-type") or "").split(";", 1)[0].strip().lower()
        sent_as_json = ctype == "application/json" or ctype.endswith("+json")  # then parsed: a string is a JSON string
        raw = next(
            (
                e.get("input")
                for e in exc.errors()
                if tuple(e.get("loc") or ()) == ("body",)
                and e.get("type") in ("model_attributes_type", "dict_type")
                and isinstance(e.get("input"), bytes)
            ),
            None,
        )
        if raw and not sent_as_json:
            try:
                json.loads(raw)
            except ValueError as err:
                return _error(400, f"body is not valid JSON: {type(err).__name__}", _body_hint(request))
            return _error(
                415, f"body is JSON sent as {ctype or 'no type'!r}", "send it with Content-Type: application/json"
            )
        # FastAPI's own handler echoes the inputs; a NaN or bytes among them would turn a 422 into a 500.
        errors = [{k: v for k, v in e.items() if k not in ("input", "ctx", "url")} for e in exc.errors()]
        return JSONResponse({"detail": jsonable_encoder(errors)}, status_code=422)

    @app.exception_handler(BackendError)
    async def _backend_error(_: Request, exc: BackendError) -> JSONResponse:
        if exc.client_error:
            return JSONResponse({"detail": {"error": f"the model service refused the image: {exc}"}}, status_code=422)
        if exc.status == 429:
            return JSONResponse(
                {
                    "detail": {
                        "error": f"the champion model service is at its limit: {exc}",
                        "hint": "try again shortly",
                    }
                },
                status_code=503,
                headers={"Retry-After": "1"},
            )
        return JSONResponse(
            {"detail": {"error": f"the champion model service does not answer: {exc}", "hint": "check /healthz"}},
            status_code=503,
        )

    @app.exception_handler(RolloutError)
    async def _rollout_error(_: Request, exc: RolloutError) -> JSONResponse:
        return _error(409, exc.message, exc.hint)

    @app.exception_handler(PyrocastError)
    async def _pyrocast_error(_: Request, exc: PyrocastError) -> JSONResponse:
        from pyrocast.data.imagery import NoImageryError

        if isinstance(exc, ImageryFailed):
            return JSONResponse(
                {"detail": {**_detail(exc.message, exc.hint), "service": "imagery"}}, status_code=exc.status
            )
        if isinstance(exc, NoImageryError):
            status = 404
        elif isinstance(exc, InvalidInputError):
            status = 422
        elif isinstance(exc, ServiceUnavailableError):
            status = 503
        else:
            status = 502
        return _error(status, exc.message, exc.hint)

    def require_token(
        creds: HTTPAuthorizationCredentials | None, refused: str = "missing or wrong admin token"
    ) -> None:
        """401 unless the request carries the gateway's admin token (compared in constant time)."""
        token = gw.admin_token
        if token is None or creds is None or not hmac.compare_digest(creds.credentials.encode(), token.encode()):
            raise HTTPException(
                401,
                detail={"error": refused, "hint": "send Authorization: Bearer $PYROCAST_ADMIN_TOKEN"},
                headers={"WWW-Authenticate": "Bearer"},
            )

    def admin(creds: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]) -> None:
        if gw.admin_token is None:
            raise HTTPException(
                403,
                detail={
                    "error": "rollout changes are disabled: the gateway has no admin token",
                    "hint": "start the gateway with PYROCAST_ADMIN_TOKEN set",
                },
            )
        require_token(creds)

    @app.post(
        "/v1/predict",
        response_model=PredictResponse,
        responses=_ERRORS,
        openapi_extra=_body_doc(_UPLOAD_SCHEMA, _COORD_SCHEMA),
        summary="P(wildfire) for an uploaded tile (multipart 'image') or a place (JSON lat/lon)",
    )
    async def predict(
        request: Request, x_client_id: Annotated[str | None, Header(max_length=128)] = None
    ) -> PredictResponse:
        tile, meta = await _read_input(request, gw)
        client = meta.get("client_id") or _utf8(x_client_id)
        return await gw.predict(tile, client, meta.get("source") or "api", meta["received_at"])

    @app.get(
        "/v1/tile",
        responses={200: {"content": {"image/jpeg": {}}, "description": "the 350x350 tile"}, **_ERRORS},
        response_class=Response,
        summary="The imagery provider's tile for a place (JPEG)",
    )
    async def tile(
        lat: Annotated[float, Query(ge=-90.0, le=90.0, allow_inf_nan=False)],
        lon: Annotated[float, Query(ge=-180.0, le=180.0, allow_inf_nan=False)],
    ) -> Response:
        t = await gw.tile_for(lon, lat)
        return Response(t.data, media_type="image/jpeg", headers={"X-Tile-Sha256": t.sha256})

    @app.post(
        "/v1/explain",
        responses={200: {"content": {"image/png": {}}, "description": "the tile with its heatmap"}, **_ERRORS},
        response_class=Response,
        openapi_extra=_body_doc(_EXPLAIN_UPLOAD_SCHEMA, _EXPLAIN_COORD_SCHEMA),
        summary="Attribution heatmap (PNG) of a model version for a tile or a place",
    )
    async def explain(request: Request) -> Response:
        incoming, meta = await _read_input(request, gw, explain=True)
        tile = await incoming.check if isinstance(incoming, Upload) else incoming
        version, precision = _explained(gw, meta.get("version"))
        _refuse_if_explainer_gone(gw)
        probe = gw.explainer
        call = asyncio.ensure_future(
            gw.client.post(
                gw.explainer_url + "/explain",
                files={"image": ("tile", tile.data, tile.content_type)},
                data={"version": version, **({"precision": precision} if precision else {})},
                timeout=gw.explain_timeout_s,
            )
        )
        try:
            r = await _unless_probe_fails(call, probe)
        except _ProbeFailed:
            raise _bad_request(
                503,
                f"the explainer at {gw.explainer_url} stopped answering while drawing this heatmap",
                _EXPLAINER_DOWN,
            ) from None
        except httpx.ConnectError as exc:
            # Refused (or unreachable): no process listens, so /healthz says so now, not at the next probe.
            if gw.explainer is not None:
                gw.explainer.up = False
            gw._warn("explainer", "explainer at %s does not answer: %r", gw.explainer_url, exc)
            raise _bad_request(
                503, f"the explainer at {gw.explainer_url} does not answer: {describe_error(exc)}", _EXPLAINER_DOWN
            ) from exc
        except httpx.TimeoutException as exc:
            # A live explainer busy with slow heatmaps: only this caller is failed. Whether it is hung is for its probe
            # (/readyz) to tell; marking it down here made "stopped answering" / "answers" pairs and false warnings.
            gw._warn("explainer-slow", "explainer at %s did not answer in time: %r", gw.explainer_url, exc)
            raise _bad_request(
                503,
                f"the explainer at {gw.explainer_url} did not answer in time ({gw.explain_timeout_s:g} s): it may be "
                "busy with other heatmaps; try again later",
            ) from exc
        except httpx.HTTPError as exc:
            # Reset mid-answer and the like: the probe finds out within seconds whether the process is gone.
            gw._warn("explainer", "explainer at %s failed: %r", gw.explainer_url, exc)
            raise _bad_request(
                503, f"the explainer at {gw.explainer_url} failed: {describe_error(exc)}", _EXPLAINER_DOWN
            ) from exc
        if r.status_code != 200:
            # A 503 is the explainer's own word that something it needs (the model registry) does not answer.
            status = r.status_code if 400 <= r.status_code < 500 or r.status_code == 503 else 502
            if status >= 500:
                msg = "explainer failed (HTTP %d): %s; its log has the cause"
                gw._warn("explainer", msg, r.status_code, backend_message(r))
            raise _bad_request(status, f"explainer: {backend_message(r)}")
        headers = {k: v for k, v in r.headers.items() if k.lower().startswith("x-")}
        return Response(r.content, media_type="image/png", headers=headers)

    @app.post(
        "/v1/feedback",
        response_model=FeedbackResponse,
        responses={
            401: {
                "model": ErrorResponse,
                "description": "source replay or feed (ground truth) without the admin token, when the gateway has "
                "one (without one, every source is taken)",
            },
            400: _BODY_ERRORS[400],
            404: {"model": ErrorResponse, "description": "unknown request id"},
            415: _BODY_ERRORS[415],
            422: _ERRORS[422],
            503: {"model": ErrorResponse, "description": "the request is not in memory and the store cannot be read"},
        },
        summary="Say whether an answer was right, or give the true label (delayed ground truth)",
    )
    async def post_feedback(
        body: FeedbackRequest, creds: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
    ) -> FeedbackResponse:
        # Ground truth outranks every person's verdict in live accuracy, so a gateway guarded by a token takes it
        # only from its holder; without a token (one machine, `pyrocast demo`) anyone local may send it.
        if body.source != USER_FEEDBACK and gw.admin_token is not None:
            require_token(creds, f"feedback with source {body.source!r} is ground truth: missing or wrong admin token")
        try:
            served = await gw.served(body.request_id)
        except (SQLAlchemyError, OSError) as exc:  # an answer no longer held in memory, and the database is down
            raise _bad_request(
                503,
                f"the prediction store ({gw.store.shown_url}) cannot be read to find request {body.request_id!r}: "
                f"{brief_error(exc)}",
                "send the feedback again once it answers (GET /healthz says when)",
            ) from exc
        if served is None:
            raise _bad_request(
                404, f"no prediction with request id {body.request_id!r}", "quote a request_id from /v1/predict"
            )
        served_label = served["label"]
        if body.label is not None:
            true_label = body.label
            if body.correct is not None and body.correct != (true_label == served_label):
                raise _bad_request(
                    422,
                    f"label {true_label!r} contradicts correct={body.correct} (the answer was {served_label!r})",
                )
        else:
            true_label = served_label if body.correct else LABELS[1 - LABELS.index(served_label)]
        correct = true_label == served_label
        counts, request_label, label_source = await _label_after(body.request_id, body.source, true_label)
        gw.store.put_feedback(
            {
                "request_id": body.request_id,
                "correct": body.correct if body.correct is not None else correct,
                "label": body.label,
                "true_label": true_label,
                "served_label": served_label,
                "model_version": served["model_version"],
                "source": body.source,
                "client_id": body.client_id,
            }
        )
        return FeedbackResponse(
            request_id=body.request_id,
            correct=correct,
            true_label=true_label,  # type: ignore[arg-type]
            served_label=served_label,
            model=ModelInfo(name=served["model_name"], version=served["model_version"]),
            counts=counts,
            request_label=request_label,  # type: ignore[arg-type]
            label_source=label_source,  # type: ignore[arg-type]
        )

    async def _label_after(request_id: str, source: str, true_label: str) -> tuple[bool | None, str | None, str | None]:
        """(counts, label, its source) of a request once this verdict is stored, by `request_labels`' rule.

        A person told "your verdict counts" when a replayed test label outranks it would be misled, so a user
        verdict is checked against the ground truth already stored; ground truth always counts (the newest wins)."""
        if source in GROUND_TRUTH_SOURCES:
            return True, true_label, source

        def known() -> dict[str, Any] | None:
            gw.store.flush(1.0)  # ground truth sent a moment ago may still wait in the write queue
            return gw.store.label_of(request_id)

        try:
            before = await run_in_threadpool(known)
        except Exception as exc:  # the store refuses: the verdict is still queued (and spilled), only this is unknown
            gw._warn("feedback-label", "feedback: cannot read the label of a request (%s)", brief_error(exc))
            return None, None, None
        if before is not None and before["source"] in GROUND_TRUTH_SOURCES:
            return False, before["true_label"], before["source"]
        return True, true_label, USER_FEEDBACK

    @app.get(
        "/v1/predictions/{request_id}",
        responses={
            404: {"model": ErrorResponse},
            503: {"model": ErrorResponse, "description": "the store cannot be read, or has not stored this answer yet"},
        },
        summary="Every stored row of one request (served answer, shadow copy, failed attempts)",
    )
    async def get_predictions(
        request_id: Annotated[str, Path(max_length=64, pattern=REQUEST_ID)],
    ) -> list[dict[str, Any]]:
        # Only an answer this gateway gave may still wait in its write queue (others' are in their own queues).
        flushed = await run_in_threadpool(gw.store.flush, 5.0) if request_id in gw.recent else True
        try:
            rows = await run_in_threadpool(gw.store.predictions_for, request_id)
        except Exception as exc:  # the database is down: predictions are still answered meanwhile
            raise _bad_request(
                503,
                f"the prediction store ({gw.store.shown_url}) cannot be read: {brief_error(exc)}",
                "try again once it answers (GET /healthz says when)",
            ) from exc
        if not rows and request_id in gw.recent and (not flushed or gw.store.trouble()):
            # Answered a moment ago, but the store refuses writes or lags: "no such prediction" would be false.
            why = gw.store.trouble() or "the store's writer is behind (its queue was not written within 5 s)"
            raise _bad_request(
                503,
                f"request {request_id!r} was answered but is not stored yet: {why}",
                "try again once the store takes rows again (GET /healthz says when)",
            )
        if not rows:
            raise _bad_request(404, f"no prediction with request id {request_id!r}")
        return [{**r, "ts": r["ts"].isoformat()} for r in rows]

    @app.get("/v1/rollout", response_model=RolloutView, summary="Rollout state, backends and recent events")
    async def get_rollout() -> RolloutView:
        return await gw.view()

    async def _change(action: str, body: Any) -> RolloutView:
        await gw.change(action, body)
        return await gw.view()

    _admin_responses: dict[int | str, dict[str, Any]] = {
        **_BODY_ERRORS,
        401: {"model": ErrorResponse, "description": "missing or wrong token"},
        403: {"model": ErrorResponse, "description": "no admin token configured"},
        409: {"model": ErrorResponse, "description": "not possible now (no challenger, nothing to roll back)"},
        422: _ERRORS[422],
        503: {"model": ErrorResponse, "description": "the store or the registry refused the change: nothing changed"},
    }

    @app.post(
        "/v1/rollout/champion", response_model=RolloutView, responses=_admin_responses, dependencies=[Depends(admin)]
    )
    async def rollout_champion(body: ReasonBody | None = None) -> RolloutView:
        """Champion only: stop any A/B test, canary or shadow traffic."""
        return await _change("champion", body)

    @app.post("/v1/rollout/ab", response_model=RolloutView, responses=_admin_responses, dependencies=[Depends(admin)])
    async def rollout_ab(body: ABPlan) -> RolloutView:
        """A/B test: the challenger answers weight/(sum of weights) of the clients, sticky by client id."""
        return await _change("ab", body)

    @app.post(
        "/v1/rollout/canary", response_model=RolloutView, responses=_admin_responses, dependencies=[Depends(admin)]
    )
    async def rollout_canary(body: CanaryPlan) -> RolloutView:
        """Canary: the challenger's share ramps through `steps`; guardrails stop it."""
        return await _change("canary", body)

    @app.post(
        "/v1/rollout/shadow", response_model=RolloutView, responses=_admin_responses, dependencies=[Depends(admin)]
    )
    async def rollout_shadow(body: ShadowBody | None = None) -> RolloutView:
        """Shadow: the champion answers, the challenger gets a copy of `sample` of the requests."""
        return await _change("shadow", body or ShadowBody())

    @app.post(
        "/v1/rollout/promote", response_model=RolloutView, responses=_admin_responses, dependencies=[Depends(admin)]
    )
    async def rollout_promote(body: PromoteBody | None = None) -> RolloutView:
        """The challenger becomes the champion (registry aliases move too); the old champion is kept for rollback.

        A version its training run rejected is promoted only with `force`."""
        return await _change("promote", body)

    @app.post(
        "/v1/rollout/rollback", response_model=RolloutView, responses=_admin_responses, dependencies=[Depends(admin)]
    )
    async def rollout_rollback(body: ReasonBody | None = None) -> RolloutView:
        """Restore the previous champion (or, without one, stop a running experiment)."""
        return await _change("rollback", body)

    @app.get(
        "/healthz",
        response_model=HealthResponse,
        summary="Liveness, and which backends answer",
    )
    async def healthz() -> HealthResponse:
        statuses = gw.backend_statuses()
        ok = statuses["champion"].up
        return HealthResponse(
            status="ok" if ok else "degraded",
            backends=statuses,
            explainer=gw.explainer.status() if gw.explainer is not None else None,
            store_queue=gw.store.queue_depth,
            warnings=gw.warnings(statuses) + gw.explainer_warnings(),
        )

    @app.get(
        "/readyz",
        summary="200 when the champion answers, else 503",
        responses={503: {"description": "the champion does not answer"}},
    )
    async def readyz() -> JSONResponse:
        up = gw.backend("champion").up
        return JSONResponse({"ready": up}, status_code=200 if up else 503)

    # HEAD for load balancers' probes, outside the schema: one route with both methods gave the OpenAPI document two
    # operations with the same id, which client generators refuse.
    app.add_api_route("/healthz", healthz, methods=["HEAD"], include_in_schema=False)
    app.add_api_route("/readyz", readyz, methods=["HEAD"], include_in_schema=False)

    @app.get("/metrics", response_class=Response, summary="Prometheus metrics")
    async def metrics() -> Response:
        gw._update_gauges()
        return Response(generate_latest(gw.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return app


def main(argv: list[str] | None = None, settings: Settings | None = None) -> None:
    """`python -m pyrocast.serving.gateway [--host H] [--port P]`: run the gateway with uvicorn."""
    import uvicorn

    settings = settings or get_settings()
    p = argparse.ArgumentParser(description="Pyrocast gateway")
    p.add_argument("--host", default=settings.serving.host)
    p.add_argument("--port", type=int, default=settings.serving.gateway_port)
    p.add_argument("--log-level", default="warning")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    scrub_log_secrets()
    # httpx logs every backend call at INFO: far too much for a log that should show rollout changes.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    uvicorn.run(
        create_app(settings),
        host=args.host,
        port=args.port,
        log_level=args.log_level,
        access_log=False,
        timeout_graceful_shutdown=20,
        log_config=None,  # uvicorn's lines (an ASGI exception's traceback) go through the root's scrubbing handler
    )


if __name__ == "__main__":
    main()
