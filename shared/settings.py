"""Every knob of segcam, read once from the environment (prefix ``SEGCAM_``).

The gateway, the workers, the launcher and the tests all read this one class, so a
value set for a deployment means the same thing on both sides of the queue.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

ROOT = Path(__file__).resolve().parent.parent


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SEGCAM_", extra="ignore")

    # --- Redis and key layout ---
    redis_url: str = "redis://127.0.0.1:6379/0"
    key_prefix: str = Field("segcam", pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    redis_socket_timeout_s: float = 5.0
    redis_connect_timeout_s: float = 2.0

    # --- Gateway ---
    api_host: str = "127.0.0.1"
    api_port: int = 8000
    public_base_url: str = ""  # prefix for artifact URLs; empty: relative URLs
    max_upload_bytes: int = 20 * 1024 * 1024
    # At most Pillow's decompression-bomb guard, which the gateway turns into a refusal: a
    # higher cap would be a promise that Pillow breaks.
    max_pixels: int = Field(40_000_000, ge=1, le=89_478_485)
    max_side: int = 16_384
    allowed_formats: tuple[str, ...] = ("PNG", "JPEG", "WEBP", "BMP", "GIF", "TIFF")
    max_field_chars: int = 256  # longest accepted form field value
    max_queue_depth: int = 1000  # queued jobs per model queue; past it, submissions get 429
    idempotency_ttl_s: int = 24 * 3600
    # API keys: comma-separated sha256 hex digests of the accepted keys (`segcam hash-key KEY`).
    # Empty: no authentication. With keys on, a job is visible only to the key that created it.
    api_key_hashes: str = ""
    rate_limit_per_minute: int = 0  # submissions per API key per minute; 0: unlimited
    # Browser origins allowed to call the API from their pages (CORS), e.g. a labelling tool's;
    # "*" for any. Empty: no CORS headers and no middleware, so same-origin callers pay nothing.
    cors_origins: tuple[str, ...] = ()
    # With no SSE or ``?wait`` follower for this long, the gateway's event hub unsubscribes (it
    # keeps its connection, so the next follower pays one round trip, not a new connection).
    events_idle_s: float = Field(60.0, gt=0)
    # An SSE stream's queue position (and ETA) is refreshed at most this often: the gateway
    # reads every follower's position of a queue that moved in one round trip, not one each.
    events_position_interval_s: float = Field(1.0, gt=0, le=10)
    # After SIGTERM, how long requests still in flight (a slow upload) may finish before they
    # are cut; long polls and SSE streams answer at once. Under compose's 10 s stop grace.
    api_shutdown_grace_s: int = Field(8, ge=1)

    # --- Jobs and artifacts ---
    job_ttl_s: int = 24 * 3600
    upload_ttl_s: int = 24 * 3600
    artifact_ttl_s: int = 24 * 3600

    # --- Models ---
    model_dir: Path = ROOT / "models" / "store"
    default_model: str = "shapes"
    default_method: str = "gradcam"
    model_store_cache_s: float = 2.0  # how long the gateway and workers trust a read of the store
    # A worker that serves every model (no SEGCAM_WORKER_MODELS) looks at the store this often
    # for models imported since it started, and consumes their queues too; 0: off
    model_poll_s: float = 5.0

    # --- Completion webhooks ---
    webhook_secret: str = ""  # HMAC-SHA256 key for signing; empty: callback_url is refused
    webhook_max_attempts: int = 6
    webhook_backoff_s: float = 2.0  # first retry delay; doubles each attempt
    webhook_timeout_s: float = 5.0
    webhook_allow_private: bool = False  # allow loopback/private targets (tests, internal hooks)
    webhook_concurrency: int = 8

    # --- Worker ---
    device: str = Field("auto", pattern=r"^(auto|cpu|cuda|cuda:\d+)$")
    worker_models: str = ""  # comma-separated model names this worker serves; empty: all
    cpu_workers: int = 1  # worker processes the launcher starts when no GPU is used
    model_cache_size: int = 2  # loaded model versions kept per worker (LRU)
    channels_last: bool = True  # NHWC memory layout for conv models (measured faster; fp32 kept)
    # bf16 autocast for the layers before the CAM's target layer; the target layer's output, the
    # rest of the network, its backward pass and the CAM stay fp32. Off: exact fp32 results.
    bf16_backbone: bool = False
    max_batch_size: int = 1  # jobs of one model and method run as one forward/backward pass
    max_wait_ms: float = 0.0  # at low load, hold a claimed job up to this long for others to join its batch
    # After its job(s), a task keeps running its model's queued jobs for up to this long, taking
    # their then-spare Celery messages off the queue: no hand-off per job when busy. It ends
    # sooner when another of the worker's queues has a message waiting. 0: one round.
    drain_s: float = 10.0
    # Then, while within drain_s, an idle task listens this long for the next job of its queue
    # and claims it itself: no Celery hand-off at low load (worker/linger.py). 0: off.
    linger_ms: float = 250.0
    torch_threads: int = 0  # 0: leave torch's default
    # Threads sharing a batch's CPU work (decoding, resizing; label maps, statistics, PNGs): work
    # that a GPU would otherwise wait for image after image. 0: at most 8; on the CPU torch's
    # thread count, beside a GPU the process's cores.
    postprocess_threads: int = Field(0, ge=0)
    # Run one batch's CPU half (label maps, PNGs, storing it) on its own thread while the next
    # batch computes, and claim the batch after that meanwhile. auto: beside a GPU; on the CPU
    # where torch leaves a core idle (elsewhere both halves want the same cores).
    overlap: str = Field("auto", pattern=r"^(auto|on|off)$")
    # The overlay is a picture for people: auto makes it a JPEG for a JPEG upload (a lossless
    # overlay of a 12 MP photo was 7x the bytes and most of the job), a PNG otherwise. Mask
    # and heatmap are always PNG.
    overlay_format: str = Field("auto", pattern=r"^(auto|png|jpeg)$")
    overlay_jpeg_quality: int = Field(90, ge=1, le=95)
    task_soft_time_limit_s: int = 120
    task_time_limit_s: int = 150
    visibility_timeout_s: int = 600
    worker_proc_alive_timeout_s: float = 120.0
    worker_heartbeat_s: float = 5.0
    worker_max_tasks_per_child: int = 0  # 0: never recycle
    max_deliveries: int = 3  # a job whose worker died this many times running it fails as poison
    unacked_restore_interval_s: int = 10  # how often a worker sweeps for jobs of workers that vanished
    # A job still running this long after its claim has lost its Celery message (acknowledged
    # while Redis could not record the job's end, or lost by Redis): a worker puts it back on its
    # queue (worker/orphans.py). Above the visibility timeout, so Celery's own redelivery goes first.
    orphan_after_s: int = 900
    fault_injection: bool = False  # chaos testing only: honour `segcam-fault` PNG text chunks
    result_expires_s: int = 3600

    # --- Logging ---
    log_level: str = "INFO"
    log_json: bool = False  # one JSON object per line, with job_id on every line about a job

    @field_validator("task_soft_time_limit_s")
    @classmethod
    def _drain_within_limit(cls, v: int, info) -> int:
        # A job that a draining or lingering task claims runs under that task's time limits,
        # started when the task did: it keeps at least three quarters of its limit this way.
        if info.data.get("drain_s", 0.0) > v / 4:
            raise ValueError("drain_s must be at most a quarter of task_soft_time_limit_s")
        return v

    @field_validator("task_time_limit_s")
    @classmethod
    def _hard_after_soft(cls, v: int, info) -> int:
        soft = info.data.get("task_soft_time_limit_s", 0)
        if v <= soft:
            raise ValueError("task_time_limit_s must exceed task_soft_time_limit_s")
        return v

    @field_validator("visibility_timeout_s")
    @classmethod
    def _visibility_above_limit(cls, v: int, info) -> int:
        hard = info.data.get("task_time_limit_s", 0)
        if v <= hard:
            raise ValueError("visibility_timeout_s must exceed task_time_limit_s, or jobs run twice")
        return v

    @field_validator("orphan_after_s")
    @classmethod
    def _orphans_after_redelivery(cls, v: int, info) -> int:
        visibility = info.data.get("visibility_timeout_s", 0)
        if v <= visibility:
            raise ValueError("orphan_after_s must exceed visibility_timeout_s: Celery's own redelivery comes first")
        return v

    @property
    def api_keys_enabled(self) -> bool:
        return bool(self.key_hashes)

    @property
    def key_hashes(self) -> list[str]:
        return [h.strip().lower() for h in self.api_key_hashes.split(",") if h.strip()]

    @property
    def served_models(self) -> list[str]:
        return [m.strip() for m in self.worker_models.split(",") if m.strip()]


@lru_cache
def get_settings() -> Settings:
    return Settings()
