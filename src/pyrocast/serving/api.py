"""The gateway's API models: the contract of its routes for the web app, replay, load and any client."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field, model_validator

from pyrocast.errors import ServiceUnavailableError

API_VERSION = "1"
Source = Literal["api", "web", "replay", "load"]
Label = Literal["wildfire", "nowildfire"]
Variant = Literal["champion", "challenger", "champion-fallback"]


class ModelInfo(BaseModel):
    name: str = Field(..., examples=["pyrocast-wildfire"])
    version: str = Field(..., examples=["3"])


class PredictResponse(BaseModel):
    """One answer. `variant` says which model answered: champion, challenger, or champion-fallback (the
    challenger was chosen but failed, so the champion answered)."""

    request_id: str = Field(..., description="quote it in /v1/feedback")
    probability: float = Field(..., ge=0.0, le=1.0, description="P(wildfire)")
    label: Label
    model: ModelInfo
    variant: Variant
    latency_ms: float = Field(..., description="time spent in the gateway for this request")
    tile_sha256: str
    lat: float | None = None
    lon: float | None = None
    warnings: list[str] = Field(
        default_factory=list,
        description="why the answer may not be trusted: how the tile differs from the answering model's training "
        "tiles (out of distribution), most striking first; empty when it looks like them, or when the model's "
        "bundle has no drift reference",
        examples=[["much darker than the training tiles (mean brightness 0.00; training tiles 0.15-0.62)"]],
    )


class CoordinatesRequest(BaseModel):
    """Predict for a place: the gateway fetches its tile from the configured imagery provider."""

    # Strict: JSON numbers only (true would be read as 1, "46.2" as a number).
    lat: float = Field(..., ge=-90.0, le=90.0, allow_inf_nan=False, strict=True, examples=[45.5])
    lon: float = Field(..., ge=-180.0, le=180.0, allow_inf_nan=False, strict=True, examples=[-73.6])
    client_id: str | None = Field(None, max_length=128, description="sticky A/B assignment (or X-Client-Id)")
    source: Source = Field("api", description="who sends the request: api, web, replay or load")

    model_config = {"extra": "forbid"}


class UploadForm(BaseModel):
    """multipart/form-data fields of POST /v1/predict and /v1/explain with an image."""

    image: bytes = Field(..., description="a JPEG or PNG tile", json_schema_extra={"format": "binary"})
    client_id: str | None = Field(None, max_length=128)
    source: Source = "api"
    lat: float | None = Field(None, ge=-90.0, le=90.0, allow_inf_nan=False, description="where the tile is from")
    lon: float | None = Field(None, ge=-180.0, le=180.0, allow_inf_nan=False)


class ExplainCoordinates(CoordinatesRequest):
    version: str | None = Field(None, max_length=64, description="model version to explain (default: champion)")


# What a request id may hold (the gateway gives uuid4 hex): anything else names no request. A NUL sent on to
# PostgreSQL was a 503 "the store cannot be read" instead of a 4xx.
REQUEST_ID = r"^[A-Za-z0-9_.:-]+$"


class FeedbackRequest(BaseModel):
    """A verdict on an answer (`correct`), the true label, or both (they must agree)."""

    request_id: str = Field(
        ..., min_length=1, max_length=64, pattern=REQUEST_ID, description="as /v1/predict answered it"
    )
    correct: bool | None = Field(None, strict=True, description="true or false (JSON booleans only)")
    label: Label | None = Field(None, description="the true label, when known (e.g. delayed ground truth)")
    source: Literal["user", "replay", "feed"] = Field(
        "user",
        description="user: a person's verdict (the newest one counts). replay, feed: delayed ground truth, which "
        "outranks every verdict; when the gateway has an admin token it needs Authorization: Bearer <token>",
    )
    client_id: str | None = Field(None, max_length=128)

    model_config = {"extra": "forbid"}

    @model_validator(mode="after")
    def _something_to_say(self) -> FeedbackRequest:
        if self.correct is None and self.label is None:
            raise ValueError("give `correct` (true/false), `label` (wildfire/nowildfire), or both")
        return self


class FeedbackResponse(BaseModel):
    request_id: str
    correct: bool
    true_label: Label
    served_label: Label
    model: ModelInfo
    counts: bool | None = Field(
        description="this verdict now gives the request's label (live accuracy, the feedback page): true for ground "
        "truth and for a user verdict on a request without ground truth; false for a user verdict when ground truth "
        "(which outranks every verdict) is known, the verdict then being kept as history; null when the store could "
        "not be asked (the verdict is stored all the same)"
    )
    request_label: Label | None = Field(description="the request's label now (null when counts is null)")
    label_source: Literal["user", "replay", "feed"] | None = Field(
        description="where request_label comes from: user (a person's verdict), replay (the held-out test label), "
        "feed (a later fire feed); null when counts is null"
    )


class BackendStatus(BaseModel):
    role: str
    url: str
    up: bool
    model: ModelInfo | None = None
    precision: str | None = None
    source: str | None = None


class HealthResponse(BaseModel):
    status: Literal["ok", "degraded"] = Field(description="degraded when the champion does not answer")
    backends: dict[str, BackendStatus]
    explainer: BackendStatus | None = Field(
        None, description="the explainer (heatmaps) and whether it answers; null where none runs (serving.explainer)"
    )
    store_queue: int
    warnings: list[str] = Field(default_factory=list, description="what is wrong short of the champion being down")


class RolloutView(BaseModel):
    """The rollout state, what each role serves, live statistics and recent events."""

    mode: str
    challenger_share: float
    state: dict[str, Any]
    backends: dict[str, BackendStatus]
    events: list[dict[str, Any]]
    warnings: list[str] = Field(default_factory=list, description="e.g. an experiment whose challenger is down")


class ReasonBody(BaseModel):
    reason: str | None = Field(None, max_length=500)
    model_config = {"extra": "forbid"}


class PromoteBody(ReasonBody):
    force: bool = Field(
        False, strict=True, description="promote even a version its training run rejected (the reason is recorded)"
    )


class ShadowBody(BaseModel):
    sample: float = Field(1.0, gt=0.0, le=1.0, allow_inf_nan=False, description="share of requests copied")
    model_config = {"extra": "forbid"}


class ErrorResponse(BaseModel):
    detail: Any


class ImageryFailed(ServiceUnavailableError):
    """The imagery provider gave no tile for a valid place: not set up, not answering (503), or what it sent cannot
    be used (502). Its answers carry `"service": "imagery"`, so the web app says what is down."""

    def __init__(self, message: str, hint: str | None = None, status: int = 503) -> None:
        super().__init__(message, hint)
        self.status = status
