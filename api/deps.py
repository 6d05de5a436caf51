"""The gateway's collaborators, built once per app and handed to routes by dependency."""

from __future__ import annotations

from dataclasses import dataclass

from celery import Celery
from fastapi import Request

from api.eta import Etas
from shared.artifacts import ArtifactStore
from shared.celery_app import make_celery
from shared.jobs import JobStore
from shared.keys import Keys
from shared.model_store import ModelStore
from shared.redis_conn import get_redis
from shared.settings import Settings


@dataclass
class Services:
    settings: Settings
    keys: Keys
    jobs: JobStore
    artifacts: ArtifactStore
    models: ModelStore
    celery: Celery
    etas: Etas

    @classmethod
    def build(cls, settings: Settings) -> Services:
        client = get_redis(settings)
        keys = Keys(settings.key_prefix)
        jobs = JobStore(client, keys, settings.job_ttl_s, settings.upload_ttl_s)
        return cls(
            settings=settings,
            keys=keys,
            jobs=jobs,
            artifacts=ArtifactStore(client, keys, settings.artifact_ttl_s),
            models=ModelStore(settings.model_dir, cache_ttl_s=settings.model_store_cache_s),
            celery=make_celery(settings, results=False),
            etas=Etas(jobs, client, keys, settings.events_position_interval_s),
        )

    @property
    def redis(self):
        return self.jobs.r


async def services(request: Request) -> Services:
    return request.app.state.services


async def event_hub(request: Request):
    return request.app.state.events
