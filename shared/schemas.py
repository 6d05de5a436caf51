"""The data that crosses the queue and the HTTP boundary, as pydantic models.

The gateway writes a :class:`JobSpec`, the worker reads it and writes a
:class:`JobResult`; clients read both through :class:`JobView`. Keeping them here
means neither side can drift from the other.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field


class Method(StrEnum):
    """Grad-CAM variants that cost one forward (and at most one backward) per batch."""

    gradcam = "gradcam"
    gradcam_pp = "gradcam++"
    hirescam = "hirescam"
    xgradcam = "xgradcam"
    layercam = "layercam"
    eigencam = "eigencam"


class Priority(StrEnum):
    """Queue order: every ``high`` job runs before any ``normal`` one, which run before ``low``."""

    high = "high"
    normal = "normal"
    low = "low"

    @property
    def band(self) -> int:
        return {"high": 0, "normal": 1, "low": 2}[self.value]


class JobStatus(StrEnum):
    queued = "queued"
    running = "running"
    succeeded = "succeeded"
    failed = "failed"
    cancelled = "cancelled"

    @property
    def final(self) -> bool:
        return self in (JobStatus.succeeded, JobStatus.failed, JobStatus.cancelled)


FINAL_STATUSES = frozenset(s.value for s in JobStatus if s.final)

ARTIFACT_NAMES = ("mask", "heatmap", "overlay")
STAGES = ("preprocess", "inference", "cam", "encode")


class ErrorInfo(BaseModel):
    code: str = Field(description="Stable machine-readable code, e.g. `invalid_image`.")
    message: str = Field(description="What went wrong, in words.")


class ErrorResponse(BaseModel):
    error: ErrorInfo


class ImageInfo(BaseModel):
    format: str
    width: int
    height: int
    bytes: int


class JobSpec(BaseModel):
    """What the worker needs to run a job; validated by the gateway before queueing."""

    model: str = Field(description="Model name in the store.")
    model_version: str = Field(description="The version the gateway resolved the request to.")
    method: Method = Method.gradcam
    target_class: int | None = Field(
        None, description="Class index to explain; null: the largest predicted non-background class."
    )
    priority: Priority = Priority.normal
    variant: str | None = Field(None, description="The traffic-table entry (alias or version) that chose the version.")
    callback_url: str | None = None
    image: ImageInfo


class ModelRef(BaseModel):
    name: str
    version: str
    sha256: str


class ClassStat(BaseModel):
    id: int
    label: str
    pixel_fraction: float = Field(description="Share of the image's pixels predicted as this class (exact).")
    mean_confidence: float = Field(
        description="Mean top-class softmax probability over those pixels: exact along class boundaries, "
        "bilinearly upsampled from the model's resolution inside a class's regions (within about 0.01)."
    )
    color: str = Field("", description="The class's colour in the mask PNG's palette, as #rrggbb.")


class Peak(BaseModel):
    x: int
    y: int


class Explanation(BaseModel):
    class_id: int | None = Field(description="The explained class; null when there was nothing to explain.")
    class_label: str | None
    method: Method
    target_layer: str
    empty: bool = Field(
        description="True when the explained class is absent from the prediction: the heatmap is all zero."
    )
    reason: str | None = Field(None, description="Why the explanation is empty.")
    peak: Peak | None = Field(None, description="Heatmap maximum, in original image pixels.")
    energy_in_mask: float | None = Field(
        None, description="Share of the heatmap's total that lies inside the explained class's mask."
    )


class Timings(BaseModel):
    queue_wait_ms: float
    preprocess_ms: float
    inference_ms: float
    cam_ms: float
    encode_ms: float
    total_ms: float = Field(description="Worker compute time for this job (preprocess to encode).")


class ImageSize(BaseModel):
    width: int
    height: int


class Reproduction(BaseModel):
    """Everything needed to recompute this result exactly from the image and the model store."""

    architecture: str
    format: str
    input_size: tuple[int, int]
    resize: str = Field(description="How the image was brought to input_size.")
    normalization: dict[str, tuple[float, float, float]]
    decode: str = Field(description="How the upload became RGB.")
    method: Method
    target_layer: str
    target: str = Field(description="The score whose gradient Grad-CAM uses.")
    requested_class: int | None
    variant: str | None = None
    device: str
    software: dict[str, str]


class JobResult(BaseModel):
    model: ModelRef
    image: ImageSize
    classes: list[ClassStat]
    explanation: Explanation
    timings_ms: Timings
    batch_size: int = Field(1, description="How many jobs shared this job's forward and backward pass.")
    media_types: dict[str, str] = Field(
        default_factory=lambda: dict.fromkeys(ARTIFACT_NAMES, "image/png"),
        description="Artifact name to what its bytes are: always image/png for the mask and heatmap; "
        "the overlay is image/jpeg for a JPEG upload (SEGCAM_OVERLAY_FORMAT=auto).",
    )
    reproduce: Reproduction | None = None
    artifacts: dict[str, str] = Field(default_factory=dict, description="Artifact name to URL.")


class WebhookAttempt(BaseModel):
    at: datetime
    status_code: int | None = None
    error: str | None = None


class WebhookStatus(BaseModel):
    url: str
    delivered: bool = False
    attempts: list[WebhookAttempt] = Field(default_factory=list)


class JobView(BaseModel):
    """A job as a client sees it."""

    model_config = ConfigDict(use_enum_values=True)

    id: str
    status: JobStatus
    model: str
    model_version: str
    method: Method
    target_class: int | None
    priority: Priority = Priority.normal
    variant: str | None = None
    created_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    position: int | None = Field(None, description="Jobs ahead of this one while queued (0: next).")
    stage: str | None = Field(None, description="While running: preprocess, inference, cam or encode.")
    cancel_requested: bool = Field(False, description="A cancellation was asked for while it was running.")
    attempts: int = Field(
        0, description="How many times a worker started it (more than 1 after a crash or a Redis failure)."
    )
    worker: str | None = Field(None, description="The worker that ran (or runs) it.")
    eta_s: float | None = Field(
        None, description="Estimated seconds until it finishes (queue position, live workers, recent service times)."
    )
    workers: int | None = Field(
        None,
        description="While queued: the live workers that serve its model. 0: none does, and the job waits until "
        "one starts (a worker that serves every model takes up a newly imported one within SEGCAM_MODEL_POLL_S).",
    )
    callback_url: str | None = Field(None, description="Where the final status is posted (signed).")
    webhook: WebhookStatus | None = Field(None, description="Delivery attempts of the completion webhook.")
    error: ErrorInfo | None = None
    result: JobResult | None = None


class JobAccepted(BaseModel):
    id: str
    status: JobStatus
    position: int | None
    url: str


class ModelInfo(BaseModel):
    name: str
    version: str
    architecture: str
    labels: list[str]
    input_size: tuple[int, int]
    target_layer: str
    sha256: str
    workers: list[str] = Field(default_factory=list, description="Live workers serving this model.")


class ModelDetail(BaseModel):
    name: str
    default_version: str
    versions: list[ModelInfo]
    aliases: dict[str, str]
    traffic: dict[str, int] = Field(description="A/B weights for jobs that name no version.")
    submitted_by_variant: dict[str, int] = Field(description="Jobs routed to each traffic variant so far.")
    workers: list[str]


class ModelList(BaseModel):
    default: str
    methods: list[Method]
    models: list[ModelInfo]


class Health(BaseModel):
    status: str
    redis: bool | None = None
    workers: list[str] | None = None
