"""The Pyrocast web app: map + prediction + explanation + feedback, feedback, models and monitoring pages.

FastAPI with server-rendered Jinja2 pages, default http://127.0.0.1:8080 (`Settings.serving.webapp_port`).
The browser talks to this one origin only: the app's `/api/...` routes call the gateway server-side (httpx),
Leaflet and plotly.js are served from their installed Python packages, and the map's imagery is the synthetic
region's XYZ tiles (`/tiles/{z}/{x}/{y}.jpg`) unless `Settings.imagery.xyz_url` names another tile server.
Nothing is loaded from a CDN.

A stable client id (cookie `pyrocast_client`) travels to the gateway as `X-Client-Id`, so an A/B test keeps a
browser on one model. Run with `run(settings)` or `python -m pyrocast.webapp.app --port 8080`; see docs/WEBAPP.md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import math
import re
import threading
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

import anyio
import anyio.to_thread
from fastapi import FastAPI, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from pydantic import BaseModel, Field, StrictBool, StrictFloat
from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError
from starlette.exceptions import HTTPException as StarletteHTTPException

from pyrocast.errors import InvalidInputError, PyrocastError, ServiceUnavailableError, scrub_log_secrets
from pyrocast.ports import service_url
from pyrocast.serving.api import REQUEST_ID
from pyrocast.serving.guards import BodyLimit, BodyTooLarge, too_big
from pyrocast.serving.rollout import share_text
from pyrocast.settings import Region, Settings, get_settings
from pyrocast.webapp.proxy import EXPLAIN_TIMEOUT_S, PREDICT_TIMEOUT_S, GatewayClient, GatewayError, gateway_url
from pyrocast.webapp.tiles import MARGIN_DEG, MAX_ZOOM, MIN_ZOOM, TileRenderer

log = logging.getLogger("pyrocast.webapp")

HERE = Path(__file__).resolve().parent
COOKIE = "pyrocast_client"
COOKIE_MAX_AGE = 365 * 86400
_CLIENT_ID = re.compile(r"^[0-9a-f]{32}$")
REGISTRY_TTL_S = 30.0
REGISTRY_TIMEOUT_S = 20.0
MONITORING_TTL_S = 5.0
WINDOWS = ("15m", "1h", "6h", "24h", "7d")
NAV = (("map", "/", "Map"), ("feedback", "/feedback", "Feedback"), ("models", "/models", "Models"))
NAV += (("monitoring", "/monitoring", "Monitoring"),)


# --- input validation (the browser checks the same rules; this is the one that counts) -------------------------
class Place(BaseModel):
    # Strict: JSON `true` is not latitude 1 (lax floats accept booleans and numeric strings).
    lat: StrictFloat
    lon: StrictFloat

    model_config = {"extra": "forbid"}


class ExplainBody(Place):
    version: str | None = Field(None, max_length=64)


MAX_BODY_BYTES = 64 * 1024
# In the feedback table, for an answer given on another image than the place's tile (an upload; new imagery since).
NOT_THIS_TILE_SVG = (
    '<svg xmlns="http://www.w3.org/2000/svg" width="72" height="72" viewBox="0 0 72 72">'
    '<rect width="72" height="72" fill="#e8e8e8"/>'
    '<text x="36" y="33" font-size="10" font-family="sans-serif" text-anchor="middle" fill="#555">uploaded</text>'
    '<text x="36" y="47" font-size="10" font-family="sans-serif" text-anchor="middle" fill="#555">image</text></svg>'
)


class FeedbackBody(BaseModel):
    request_id: str = Field(..., min_length=1, max_length=64, pattern=REQUEST_ID)
    correct: StrictBool | None = None  # as the gateway: "yes" or 1 is refused, not read as true
    label: Literal["wildfire", "nowildfire"] | None = None

    model_config = {"extra": "forbid"}


def service_area(settings: Settings) -> Region:
    """Where the web app accepts places: the synthetic region, or (other imagery) where the models were trained."""
    return settings.region if settings.imagery.provider == "synthetic" else settings.dataset_bounds


def check_place(settings: Settings, lat: float, lon: float) -> tuple[float, float]:
    """(lat, lon) if the place is on Earth and inside the service area, else InvalidInputError saying why."""
    if not (math.isfinite(lat) and math.isfinite(lon)):
        raise InvalidInputError("Latitude and longitude must be finite numbers.")
    if not -90.0 <= lat <= 90.0:
        raise InvalidInputError(
            f"Latitude {lat:g} is not on Earth: it must lie between -90 and 90.",
            "Latitude comes first (e.g. 46.2), then longitude (e.g. -73.5).",
        )
    if not -180.0 <= lon <= 180.0:
        raise InvalidInputError(f"Longitude {lon:g} is not on Earth: it must lie between -180 and 180.")
    area = service_area(settings)
    if not area.contains(lon, lat):
        raise InvalidInputError(
            f"({lat:g}, {lon:g}) is outside the region {area.name}: latitude {area.lat_min:g} to {area.lat_max:g}, "
            f"longitude {area.lon_min:g} to {area.lon_max:g}.",
            "Click on the map inside the outlined region, or type coordinates inside it.",
        )
    return lat, lon


# --- state -----------------------------------------------------------------------------------------------------
@dataclass
class WebState:
    """What the app holds between requests: settings, the gateway client, tiles, the store engine, caches."""

    settings: Settings
    gateway: GatewayClient
    tiles: TileRenderer
    _engine: Engine | None = None
    _engine_lock: threading.Lock = field(default_factory=threading.Lock)
    # (when read, listing, the rollout then as `rollout_key` gives it: None when unknown, as after warming);
    # one tuple, so the warming thread cannot pair a listing with another read's rollout.
    registry: tuple[float, dict[str, Any], tuple[Any, ...] | None] | None = None
    monitoring: dict[float, tuple[float, dict[str, Any]]] = field(default_factory=dict)  # by span (s)
    stop: threading.Event = field(default_factory=threading.Event)

    def engine(self) -> Engine:
        with self._engine_lock:
            if self._engine is None:
                from pyrocast.monitoring.live import open_engine

                try:
                    self._engine = open_engine(self.settings)
                except (SQLAlchemyError, OSError) as exc:
                    raise store_error(self.settings, exc) from exc
            return self._engine

    def close(self) -> None:
        self.stop.set()
        if self._engine is not None:
            self._engine.dispose()


def content_security_policy(settings: Settings) -> str:
    """The browser itself refuses anything from outside: scripts, styles, fetches and images from this origin
    only (plus a configured XYZ tile server for map images). Plotly injects <style> elements, hence inline styles."""
    img = "'self' data: blob:"
    if settings.imagery.xyz_url:
        u = urlsplit(settings.imagery.xyz_url)
        if u.scheme and u.netloc:
            img += f" {u.scheme}://{u.netloc}"
    return (
        f"default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src {img}; "
        "connect-src 'self'; font-src 'self' data:; object-src 'none'; base-uri 'self'; form-action 'self'; "
        "frame-ancestors 'none'"
    )


def store_error(settings: Settings, exc: BaseException) -> ServiceUnavailableError:
    """The prediction store cannot be read: say which one (credentials removed) and what to check."""
    from pyrocast.registry.mlflow_store import redact

    return ServiceUnavailableError(
        f"The prediction store ({redact(settings.store_database_url)}) cannot be read: {type(exc).__name__}.",
        "Check that the database is up and PYROCAST_STORE_URL points at it; the map still works.",
    )


def mlflow_ui_url(settings: Settings) -> str:
    """Where people open MLflow: `mlflow.ui_url` if set, else the tracking server, else the UI `pyrocast up`
    starts (on serving.host: a link to 127.0.0.1 only works on this machine, hence the setting)."""
    if settings.mlflow.ui_url:
        return settings.mlflow.ui_url.rstrip("/")
    uri = settings.mlflow_tracking_uri
    if uri.startswith(("http://", "https://")):
        from pyrocast.registry.mlflow_store import redact

        return redact(uri).rstrip("/")
    return service_url(settings.serving.host, settings.mlflow.port)


def registry_snapshot(settings: Settings) -> dict[str, Any]:
    """The registry's versions (newest first) or why they cannot be shown; never raises."""
    name = settings.mlflow.model_name
    uri = settings.mlflow_tracking_uri
    if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).is_file():
        return {"versions": [], "error": None, "empty": "No model registry yet: train a model with `pyrocast train`."}
    try:
        from pyrocast.registry.models import list_models

        versions = list_models(settings)
    except PyrocastError as exc:
        return {"versions": [], "error": exc.message, "hint": exc.hint}
    except Exception as exc:  # MLflow raises many kinds; the page must still render
        log.warning("registry listing failed: %s", exc)
        return {"versions": [], "error": f"The model registry could not be read ({type(exc).__name__}).", "hint": None}
    empty = None if versions else f"No versions of {name} are registered yet: train one with `pyrocast train`."
    return {"versions": versions, "error": None, "empty": empty}


def rollout_key(rollout: dict[str, Any] | None) -> tuple[Any, ...] | None:
    """What in the gateway's /v1/rollout answer changes when the registry aliases move: the roles' versions and
    the newest event. The event matters too: the gateway switches roles before it has moved the aliases and records
    the promotion only after, so a listing read in between is re-read once the event appears."""
    if rollout is None:
        return None
    st = rollout.get("state") or {}
    events = rollout.get("events") or []
    newest = events[0] if events else None
    return (
        (st.get("champion") or {}).get("version"),
        (st.get("challenger") or {}).get("version"),
        tuple(newest.get(k) for k in ("id", "ts", "action")) if newest else None,
    )


# --- the app ---------------------------------------------------------------------------------------------------
def create_app(settings: Settings | None = None, *, gateway: str | None = None, warm: bool = False) -> FastAPI:
    """The web app. `gateway` overrides the gateway URL from the settings; `warm` renders the map's overview
    tiles and reads the registry in a background thread at start (so the first visitor does not wait)."""
    settings = settings or get_settings()
    templates = Jinja2Templates(directory=str(HERE / "templates"))
    templates.env.filters["pct"] = _pct
    templates.env.filters["share"] = share_text
    templates.env.filters["num"] = _num
    templates.env.filters["when"] = _when
    templates.env.filters["g"] = _g

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        state = WebState(settings, GatewayClient(gateway or gateway_url(settings)), TileRenderer(settings))
        app.state.web = state
        if warm:
            threading.Thread(target=_warm, args=(state,), name="webapp-warmer", daemon=True).start()
        try:
            yield
        finally:
            state.close()
            await state.gateway.close()

    app = FastAPI(title="Pyrocast", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    # The browser sends a place or a verdict, never an image: a larger body is refused before it is read.
    app.add_middleware(BodyLimit, max_bytes=MAX_BODY_BYTES)

    def web(request: Request) -> WebState:
        return request.app.state.web

    security_headers = {
        "Content-Security-Policy": content_security_policy(settings),
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "same-origin",
        "X-Frame-Options": "DENY",
    }

    # --- client id cookie, security headers and errors -----------------------------------------------------------
    @app.middleware("http")
    async def client_cookie(request: Request, call_next: Any) -> Response:
        cid = request.cookies.get(COOKIE, "")
        fresh = not _CLIENT_ID.match(cid)
        request.state.client_id = uuid.uuid4().hex if fresh else cid
        response = await call_next(request)
        for k, v in security_headers.items():
            response.headers.setdefault(k, v)
        if fresh:
            response.set_cookie(
                COOKIE, request.state.client_id, max_age=COOKIE_MAX_AGE, httponly=True, samesite="lax", path="/"
            )
        return response

    def is_api(request: Request) -> bool:
        return request.url.path.startswith(("/api/", "/tiles/"))

    @app.exception_handler(GatewayError)
    async def _gateway_error(request: Request, exc: GatewayError) -> Response:
        return JSONResponse(exc.to_dict(), status_code=exc.status)

    @app.exception_handler(InvalidInputError)
    async def _invalid(request: Request, exc: InvalidInputError) -> Response:
        body = {"error": exc.message, **({"hint": exc.hint} if exc.hint else {})}
        if is_api(request):
            return JSONResponse(body, status_code=422)
        return page_error(request, 400, exc.message, exc.hint)

    @app.exception_handler(SQLAlchemyError)
    async def _store(request: Request, exc: SQLAlchemyError) -> Response:
        log.warning("prediction store error on %s: %s", request.url.path, exc)
        return _unavailable(request, store_error(settings, exc))

    @app.exception_handler(ServiceUnavailableError)
    async def _unavailable_handler(request: Request, exc: ServiceUnavailableError) -> Response:
        return _unavailable(request, exc)

    def _unavailable(request: Request, exc: ServiceUnavailableError) -> Response:
        if is_api(request):
            return JSONResponse({"error": exc.message, "hint": exc.hint}, status_code=503)
        return page_error(request, 503, exc.message, exc.hint)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> Response:
        if any(e.get("type") == "json_invalid" for e in exc.errors()):  # as a body nested too deep: a 400
            return JSONResponse({"error": "The request body is not valid JSON."}, status_code=400)
        msg = _validation_message(exc.errors())
        if is_api(request):
            return JSONResponse({"error": msg}, status_code=422)
        return page_error(request, 400, msg)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> Response:
        if isinstance(exc.__cause__, BodyTooLarge):  # a chunked body past the limit, read by FastAPI
            return JSONResponse(too_big(None, MAX_BODY_BYTES), status_code=413)
        msg = "Page not found." if exc.status_code == 404 else str(exc.detail)
        if msg == "There was an error parsing the body":  # FastAPI's words for a body that is not JSON
            msg = "The request body is not valid JSON."
        if is_api(request) or request.url.path.startswith("/static/"):
            return JSONResponse({"error": msg}, status_code=exc.status_code)
        return page_error(request, exc.status_code, msg, "Use the navigation bar to find your way.")

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> Response:
        log.exception("unexpected error on %s", request.url.path)
        msg = "Something went wrong on our side; the error was logged."
        if is_api(request):
            response: Response = JSONResponse({"error": msg}, status_code=500)
        else:
            response = page_error(request, 500, msg, "Try again; if it persists, check the web app's log.")
        # Answered outside the middleware that adds them (Starlette runs this handler outermost).
        for k, v in security_headers.items():
            response.headers.setdefault(k, v)
        return response

    def render(request: Request, name: str, active: str, **ctx: Any) -> HTMLResponse:
        area = service_area(settings)
        return templates.TemplateResponse(
            request,
            name,
            {"nav": NAV, "active": active, "area": area, "settings": settings, **ctx},
        )

    def page_error(request: Request, status: int, message: str, hint: str | None = None) -> HTMLResponse:
        resp = render(request, "error.html", "", status=status, message=message, hint=hint)
        resp.status_code = status
        return resp

    # --- pages ---------------------------------------------------------------------------------------------------
    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def map_page(request: Request) -> HTMLResponse:
        area = service_area(settings)
        synthetic = not settings.imagery.xyz_url
        config = {
            "tiles": settings.imagery.xyz_url or "/tiles/{z}/{x}/{y}.jpg",
            "synthetic_tiles": synthetic,
            # The map asks only for tiles /tiles serves: the rendered region plus the server's margin.
            "tile_region": _bounds(settings.region) if synthetic else None,
            "tile_margin_deg": MARGIN_DEG,
            "min_zoom": MIN_ZOOM,
            "max_zoom": MAX_ZOOM if not settings.imagery.xyz_url else 18,
            "area": {"name": area.name, **_bounds(area)},
        }
        return render(request, "map.html", "map", config=config)

    @app.get("/feedback", response_class=HTMLResponse, include_in_schema=False)
    async def feedback_page(request: Request, limit: Annotated[int, Query(ge=1, le=500)] = 60) -> HTMLResponse:
        from pyrocast.monitoring.live import live_accuracy, make_span, recent_feedback

        state = web(request)

        def load() -> tuple[list[dict[str, Any]], dict[str, Any]]:
            engine = state.engine()
            return recent_feedback(engine, limit), live_accuracy(engine, make_span("7d"))

        rows, accuracy = await run_in_threadpool(load)
        return render(request, "feedback.html", "feedback", rows=rows, accuracy=accuracy["versions"], limit=limit)

    @app.get("/models", response_class=HTMLResponse, include_in_schema=False)
    async def models_page(request: Request) -> HTMLResponse:
        state = web(request)
        rollout, rollout_error = None, None
        try:
            # A page waits a few seconds for the gateway, not the 90 s a prediction may take (a hung gateway kept
            # the models page blank for 30 s).
            call = state.gateway.call("GET", "/v1/rollout", what="reading the rollout state", timeout=5.0)
            rollout = (await call).json()
        except GatewayError as exc:
            rollout_error = exc.to_dict()
        registry = await registry_cached(state, rollout_key(rollout))
        return render(
            request,
            "models.html",
            "models",
            rollout=rollout,
            rollout_error=rollout_error,
            registry=registry,
            mlflow=mlflow_ui_url(settings),
            model_name=settings.mlflow.model_name,
        )

    @app.get("/monitoring", response_class=HTMLResponse, include_in_schema=False)
    async def monitoring_page(request: Request, window: str = "1h") -> HTMLResponse:
        data = await monitoring_data(request, window)
        return render(request, "monitoring.html", "monitoring", data=data, windows=WINDOWS, window=window)

    async def registry_cached(state: WebState, rollout: tuple[Any, ...] | None) -> dict[str, Any]:
        """The registry listing, cached; a promote or rollback since it was read (seen in `rollout`) re-reads it, so
        the table's aliases never contradict the rollout cards above it."""
        now = time.monotonic()
        hit = state.registry
        # With the gateway down (no rollout key) there are no cards to contradict: the age alone decides.
        if hit is not None and now - hit[0] < REGISTRY_TTL_S and (rollout is None or rollout == hit[2]):
            return hit[1]
        try:
            snap = await asyncio.wait_for(run_in_threadpool(registry_snapshot, settings), REGISTRY_TIMEOUT_S)
        except TimeoutError:
            return {"versions": [], "error": "The model registry did not answer in time.", "hint": None}
        state.registry = (now, snap, rollout)
        return snap

    async def monitoring_data(request: Request, window: str) -> dict[str, Any]:
        from pyrocast.monitoring.live import overview, parse_window

        span_s = parse_window(window).total_seconds()  # a clear 4xx for a bad window before touching the store
        state = web(request)
        # Several open monitoring pages share one computation (a 100k-row window costs about a second). Keyed by the
        # span, not its spelling ("1h", "60m", "1.0001h" were each a full scan kept forever), and expired entries go.
        now = time.monotonic()
        hit = state.monitoring.get(span_s)
        if hit is not None and now - hit[0] < MONITORING_TTL_S and hit[1].get("window") == window:
            return hit[1]
        data = await run_in_threadpool(lambda: overview(state.engine(), window))
        for key in [k for k, (at, _) in state.monitoring.items() if now - at >= MONITORING_TTL_S]:
            del state.monitoring[key]
        state.monitoring[span_s] = (now, data)
        return data

    # --- API (same origin; the browser never calls the gateway itself) -------------------------------------------
    @app.get("/healthz", include_in_schema=False)
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/api/status")
    async def status(request: Request) -> JSONResponse:
        """Whether the gateway answers and which models it serves (the nav bar's indicator)."""
        try:
            r = await web(request).gateway.call("GET", "/healthz", what="health check", timeout=3.0)
        except GatewayError as exc:
            return JSONResponse({"gateway": "down", **exc.to_dict()})
        body = r.json()
        return JSONResponse(
            {
                "gateway": body.get("status", "ok"),
                "backends": body.get("backends", {}),
                # What is wrong short of the champion being down (store refusing writes, explainer gone, ...).
                "warnings": body.get("warnings", []),
            }
        )

    @app.post("/api/predict")
    async def predict(request: Request, place: Place) -> JSONResponse:
        lat, lon = check_place(settings, place.lat, place.lon)
        r = await web(request).gateway.call_watched(
            "POST",
            "/v1/predict",
            what="prediction",
            json={"lat": lat, "lon": lon, "source": "web"},
            headers={"X-Client-Id": request.state.client_id},
            timeout=PREDICT_TIMEOUT_S,
        )
        return JSONResponse(r.json())

    @app.post("/api/explain")
    async def explain(request: Request, body: ExplainBody) -> Response:
        lat, lon = check_place(settings, body.lat, body.lon)
        payload: dict[str, Any] = {"lat": lat, "lon": lon, "source": "web"}
        if body.version:
            payload["version"] = body.version
        r = await web(request).gateway.call_watched(
            "POST",
            "/v1/explain",
            what="explanation",
            json=payload,
            timeout=max(EXPLAIN_TIMEOUT_S, settings.serving.explain_timeout_s + 30),
        )
        headers = {
            k: v for k, v in r.headers.items() if k.lower().startswith("x-model") or k.lower() == "x-probability"
        }
        return Response(r.content, media_type="image/png", headers={**headers, "Cache-Control": "no-store"})

    @app.post("/api/feedback")
    async def feedback(request: Request, body: FeedbackBody) -> JSONResponse:
        if body.correct is None and body.label is None:
            raise InvalidInputError("Say whether the answer was right or wrong, or give the true label.")
        payload = body.model_dump(exclude_none=True) | {"source": "user", "client_id": request.state.client_id}
        r = await web(request).gateway.call("POST", "/v1/feedback", what="feedback", json=payload)
        return JSONResponse(r.json())

    @app.get("/api/tile")
    async def tile(
        request: Request,
        lat: Annotated[float, Query(allow_inf_nan=False)],
        lon: Annotated[float, Query(allow_inf_nan=False)],
        sha: Annotated[str | None, Query(pattern="^[0-9a-f]{64}$")] = None,
    ) -> Response:
        """The place's tile; with `sha` (a stored answer's tile hash), a placeholder unless it is that very image:
        an uploaded image with coordinates was shown as the place's tile, next to the verdict on another image."""
        cache = {"Cache-Control": "private, max-age=3600"}
        try:
            lat, lon = check_place(settings, lat, lon)
            r = await web(request).gateway.call("GET", "/v1/tile", what="tile", params={"lat": lat, "lon": lon})
        except (InvalidInputError, GatewayError):
            if sha is None:
                raise
            # A stored answer's image whose place has no tile (an upload with coordinates off the imagery): it
            # was not that tile either.
            return Response(NOT_THIS_TILE_SVG, media_type="image/svg+xml", headers=cache)
        if sha is not None and r.headers.get("x-tile-sha256") != sha:
            return Response(NOT_THIS_TILE_SVG, media_type="image/svg+xml", headers=cache)
        return Response(r.content, media_type="image/jpeg", headers=cache)

    @app.get("/api/monitoring")
    async def monitoring_api(request: Request, window: str = "1h") -> JSONResponse:
        return JSONResponse(await monitoring_data(request, window))

    @app.get("/api/feedback")
    async def feedback_api(request: Request, limit: Annotated[int, Query(ge=1, le=500)] = 50) -> JSONResponse:
        from pyrocast.monitoring.live import recent_feedback

        state = web(request)
        return JSONResponse(await run_in_threadpool(lambda: recent_feedback(state.engine(), limit)))

    # --- map tiles and static files ------------------------------------------------------------------------------
    # Threads of their own for map tiles: a burst of new tiles (a zoom) waits on two render slots, and in the shared
    # pool of 40 it held up the pages and the feedback that run there too.
    tile_threads = anyio.CapacityLimiter(6)

    @app.get("/tiles/{z}/{x}/{y}.jpg", include_in_schema=False)
    async def xyz_tile(request: Request, z: int, x: int, y: int) -> Response:
        tiles = web(request).tiles
        etag = tiles.etag(z, x, y)
        headers = {"Cache-Control": "public, max-age=86400", "ETag": etag}
        if request.headers.get("if-none-match") == etag:
            return Response(status_code=304, headers=headers)
        try:
            data = await anyio.to_thread.run_sync(tiles.get, z, x, y, limiter=tile_threads)
        except InvalidInputError as exc:
            return JSONResponse({"error": exc.message}, status_code=404)
        return Response(data, media_type="image/jpeg", headers=headers)

    app.mount("/static/app", StaticFiles(directory=str(HERE / "static")), name="static")
    app.mount("/static/vendor/leaflet", StaticFiles(directory=_leaflet_dir()), name="leaflet")
    plotly_js = _plotly_js()

    @app.get("/static/vendor/plotly.min.js", include_in_schema=False)
    async def plotly() -> FileResponse:
        return FileResponse(plotly_js, media_type="text/javascript", headers={"Cache-Control": "public, max-age=86400"})

    return app


def _leaflet_dir() -> str:
    import xstatic.pkg.leaflet as leaflet

    return str(leaflet.BASE_DIR)


def _plotly_js() -> Path:
    import plotly

    path = Path(plotly.__file__).resolve().parent / "package_data" / "plotly.min.js"
    if not path.is_file():
        raise PyrocastError(f"plotly.js is missing from the plotly package ({path})", "reinstall plotly")
    return path


def _warm(state: WebState) -> None:
    """Render the overview tiles and read the registry once (importing MLflow takes seconds)."""
    try:
        if not state.settings.imagery.xyz_url:
            n = state.tiles.warm(stop=state.stop)
            if n:
                log.info("rendered %d overview map tiles", n)
        if not state.stop.is_set():
            state.registry = (time.monotonic(), registry_snapshot(state.settings), None)
    except Exception:  # warming is a courtesy: a failure shows up when the page is asked for
        log.exception("warming the web app failed")


_FIELD_NAMES = {
    "lat": "Latitude",
    "lon": "Longitude",
    "request_id": "Request id",
    "correct": "Verdict",
    "label": "Label",
    "version": "Version",
    "limit": "Limit",
    "window": "Window",
}


def _validation_message(errors: Any) -> str:
    """Plain words for pydantic's errors: people read these, so no 'Input should be a valid integer'."""
    parts = []
    for e in list(errors)[:3]:
        kind = str(e.get("type", ""))
        if kind == "json_invalid":
            parts.append("The request body is not valid JSON")
            continue
        # Integer parts are list indexes (a JSON body that is not an object): they name nothing useful.
        loc = [str(p) for p in e.get("loc", ()) if p not in ("body", "query", "path") and not isinstance(p, int)]
        key = loc[-1] if loc else ""
        field_name = _FIELD_NAMES.get(key, key) if key else "The request"
        ctx = e.get("ctx") or {}
        if kind in ("float_parsing", "float_type"):
            msg = "must be a number" + {"lat": ", like 46.25", "lon": ", like -73.5"}.get(key, "")
        elif kind in ("int_parsing", "int_type", "int_from_float"):
            msg = "must be a whole number"
        elif kind in ("bool_parsing", "bool_type"):
            msg = "must be true or false"
        elif kind == "missing":
            msg = "is missing"
        elif kind == "extra_forbidden":
            msg = "is not an expected field"
            field_name = f"'{key}'"
        elif kind in ("greater_than_equal", "greater_than"):
            msg = f"must be at least {ctx.get('ge', ctx.get('gt'))}"
        elif kind in ("less_than_equal", "less_than"):
            msg = f"must be at most {ctx.get('le', ctx.get('lt'))}"
        elif kind == "string_too_short":
            msg = "must not be empty"
        elif kind == "string_too_long":
            msg = f"is too long (at most {ctx.get('max_length')} characters)"
        elif kind in ("model_type", "model_attributes_type", "dict_type"):
            msg = "must be a JSON object"
        else:
            msg = str(e.get("msg", "is invalid")).replace("Input should be", "must be")
        parts.append(f"{field_name} {msg}".strip())
    return ("; ".join(parts) + ".") if parts else "The request is invalid."


def _bounds(region: Region) -> dict[str, float]:
    return {"lat_min": region.lat_min, "lat_max": region.lat_max, "lon_min": region.lon_min, "lon_max": region.lon_max}


# --- template filters ------------------------------------------------------------------------------------------
def _g(x: float) -> str:
    """A number as the error messages write it (45, 47.5), not 45.0."""
    return f"{x:g}"


def _pct(x: float | None, digits: int = 1) -> str:
    if x is None:
        return "–"
    smallest = 10.0**-digits
    if 0 < 100 * x < smallest / 2:  # some, though fewer than the digits show: never "0.0%" for 3 errors in 7000
        return f"<{smallest:g}%"
    return f"{100 * x:.{digits}f}%"


def _num(x: float | None, digits: int = 3) -> str:
    return "–" if x is None else f"{x:.{digits}f}"


def _when(ts: str | float | datetime | None) -> str:
    if ts is None:
        return "–"
    if isinstance(ts, int | float):
        ts = datetime.fromtimestamp(ts, UTC)
    if isinstance(ts, str):
        try:
            ts = datetime.fromisoformat(ts.replace("Z", "+00:00"))
        except ValueError:
            return ts
    if ts.tzinfo is None:
        ts = ts.replace(tzinfo=UTC)
    return ts.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


# --- running ---------------------------------------------------------------------------------------------------
def run(settings: Settings | None = None, host: str | None = None, port: int | None = None) -> None:
    """Serve the web app with uvicorn until interrupted (overview map tiles are rendered in the background)."""
    import uvicorn

    settings = settings or get_settings()
    uvicorn.run(
        create_app(settings, warm=True),
        host=host or settings.serving.host,
        port=port or settings.serving.webapp_port,
        log_level="warning",
        access_log=False,
        log_config=None,  # uvicorn's lines go through the root's scrubbing handler
    )


def main(argv: list[str] | None = None, settings: Settings | None = None) -> None:
    """`python -m pyrocast.webapp.app [--host H] [--port P]` (also `pyrocast serve webapp`)."""
    settings = settings or get_settings()
    p = argparse.ArgumentParser(description="Pyrocast web app")
    p.add_argument("--host", default=settings.serving.host)
    p.add_argument("--port", type=int, default=settings.serving.webapp_port)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    scrub_log_secrets()
    logging.getLogger("httpx").setLevel(logging.WARNING)
    run(settings, args.host, args.port)


if __name__ == "__main__":
    main()
