"""Submit a job, read its status, cancel it, download its artifacts."""

from __future__ import annotations

import dataclasses
import json
import logging
import re
import time

import redis
from fastapi import APIRouter, Depends, Header, Path, Query, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from api.auth import Principal, enforce_rate_limit, principal
from api.deps import Services, event_hub, services
from api.errors import BACKEND_DOWN, ApiError, responses
from api.events import DRAINING, POSITION, EventHub, Follower
from api.queueing import enqueue, new_job_id
from api.validation import SUBMIT_BODY, Submission, build_spec, checked_form
from shared import webhooks
from shared.artifacts import media_type
from shared.jobs import JobRecord
from shared.schemas import ARTIFACT_NAMES, STAGES, JobAccepted, JobStatus, JobView
from shared.views import job_url, job_view

log = logging.getLogger("segcam.api")

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])

_JOB_ID = re.compile(r"^[0-9a-f]{32}$")


def view(svc: Services, rec: JobRecord) -> JobView:
    return job_view(rec, svc.settings.public_base_url, svc.etas.of(rec), svc.etas.serving(rec))


def load(svc: Services, job_id: str, who: Principal) -> JobRecord:
    rec = svc.jobs.get(job_id) if _JOB_ID.match(job_id) else None
    if rec is None or rec.owner != who.owner:  # another key's job is indistinguishable from none
        raise ApiError(404, "job_not_found", f"no job with ID '{job_id[:64]}' (unknown or expired)")
    return rec


async def until_final(
    svc: Services, follower: Follower, job_id: str, who: Principal, wait: float, fresh: bool = False
) -> JobRecord:
    """The job's record once it is final, or as it stands after ``wait`` seconds.

    The caller subscribed ``follower`` first; the record is read after that, so a job that
    finishes at any moment is either seen final here or heard of by the follower. With
    ``fresh`` the caller has just queued the job (after subscribing): nothing to read yet.
    The final event carries the record, so the answer needs no read either."""
    deadline = time.monotonic() + wait
    rec = None if fresh else load(svc, job_id, who)
    while (rec is None or not rec.status.final) and (left := deadline - time.monotonic()) > 0:
        messages = await follower.wait(left)
        for m in messages:
            if (final := JobRecord.from_event(m)) is not None and final.owner == who.owner:
                return final
        if messages and all(m in STAGES for m in messages):
            continue  # a running job moved to its next stage: nothing final to read
        rec = load(svc, job_id, who)
        if DRAINING in messages:
            break  # the gateway is shutting down: the job as it stands, now
    return rec if rec is not None else load(svc, job_id, who)


@router.post(
    "",
    status_code=202,
    response_model=JobAccepted,
    summary="Submit an image for segmentation and Grad-CAM",
    responses={
        200: {"model": JobView, "description": "With `?wait=S`: the job ended within S seconds."},
        **responses(400, 401, 413, 415, 422, 429, 503),
    },
    openapi_extra=SUBMIT_BODY,
)
async def submit(
    form: Submission = Depends(checked_form),
    idempotency_key: str | None = Header(
        None, max_length=255, description="Repeat a submission safely: the same key returns the same job."
    ),
    wait: float = Query(
        0,
        ge=0,
        le=60,
        description="Hold the answer up to this many seconds: 200 with the final job if it ends in time, "
        "else 202 as without it. One request instead of submit + `GET ?wait`.",
    ),
    who: Principal = Depends(principal),
    svc: Services = Depends(services),
    hub: EventHub = Depends(event_hub),
) -> Response:
    enforce_rate_limit(svc, who)
    data = form.image.data
    f = form.fields
    routing = f["routing_key"] or (f"{who.owner}:{idempotency_key}" if idempotency_key else None)
    spec = build_spec(svc, data, f["model"], f["target_class"], f["method"], f["priority"], routing, f["callback_url"])
    job_id = new_job_id()
    # Listening before the job is queued: no completion can slip past unheard.
    follower = await hub.follow(job_id) if wait > 0 else None
    try:
        out = enqueue(svc, spec, data, who, idempotency_key, job_id)  # sub-millisecond on loopback: no thread hop
        url = job_url(svc.settings.public_base_url, out.job_id)
        headers = {"Location": url, **({"Idempotent-Replayed": "true"} if out.replayed else {})}
        if out.replayed and follower is not None:  # wait for the earlier job, not the unused ID
            await hub.unfollow(follower)
            follower = await hub.follow(out.job_id)
        body = {"id": out.job_id, "status": JobStatus.queued.value, "position": out.position, "url": url}
        if follower is not None or out.replayed:  # the job as it stands now
            rec = (
                await until_final(svc, follower, out.job_id, who, wait, fresh=not out.replayed)
                if follower
                else load(svc, out.job_id, who)
            )
            if follower is not None and rec.status.final:
                return Response(view(svc, rec).model_dump_json(), media_type="application/json", headers=headers)
            body.update(status=rec.status.value, position=rec.position)
        return JSONResponse(body, status_code=202, headers=headers)
    finally:
        if follower is not None:
            await hub.unfollow(follower)


@router.get(
    "/{job_id}",
    response_model=JobView,
    summary="A job's status and, when done, its result; `?wait=S` long-polls until it is final",
    responses=responses(401, 404),
)
async def get_job(
    job_id: str,
    wait: float = Query(0, ge=0, le=60, description="Hold the request up to this many seconds until the job is final."),
    who: Principal = Depends(principal),
    svc: Services = Depends(services),
    hub: EventHub = Depends(event_hub),
) -> Response:
    rec = load(svc, job_id, who)
    if wait > 0 and not rec.status.final:
        follower = await hub.follow(job_id)
        try:
            rec = await until_final(svc, follower, job_id, who, wait)
        finally:
            await hub.unfollow(follower)
    # Already a validated JobView: serialise it once, not again through response_model.
    return Response(view(svc, rec).model_dump_json(), media_type="application/json")


def error_event(code: str, message: str) -> str:
    """An SSE stream's last event when it cannot go on; the body is an error answer's."""
    return f"event: error\ndata: {json.dumps({'error': {'code': code, 'message': message}})}\n\n"


@router.get(
    "/{job_id}/events",
    summary="Server-Sent Events: each status change (queued with position, running with stage, then final)",
    response_class=StreamingResponse,
    responses={200: {"content": {"text/event-stream": {}}}, **responses(401, 404)},
)
async def job_events(
    job_id: str,
    request: Request,
    who: Principal = Depends(principal),
    svc: Services = Depends(services),
    hub: EventHub = Depends(event_hub),
) -> StreamingResponse:
    rec = load(svc, job_id, who)  # 404 before the stream starts
    follower = await hub.follow(job_id, rec.queue)

    async def stream():
        last = None

        async def event(rec: JobRecord, stage: str | None = None):
            nonlocal last
            if stage is not None:  # a stage the record may already have moved past
                rec = dataclasses.replace(rec, status=JobStatus.running, stage=stage)
            state = (rec.status, rec.position, rec.stage, rec.cancel_requested)
            if state == last:
                return None
            last = state
            body = view(svc, rec).model_dump_json()
            return f"event: {rec.status.value}\ndata: {body}\n\n"

        try:
            current = load(svc, job_id, who)
            while True:
                if chunk := await event(current):
                    yield chunk
                if current.status.final or await request.is_disconnected():
                    return
                messages = await follower.wait(15.0)
                if not messages:
                    yield ": keep-alive\n\n"
                moves = [m for m in messages if m.startswith(POSITION)]
                if len(moves) < len(messages) or not messages:
                    current = load(svc, job_id, who)  # its own news, or a quiet spell
                elif current.status is JobStatus.queued:  # only its place moved: the hub read it
                    current = dataclasses.replace(current, position=int(moves[-1].removeprefix(POSITION)))
                for m in messages:
                    if m in STAGES and (chunk := await event(current, stage=m)):
                        yield chunk
                if DRAINING in messages:  # the gateway is shutting down: end cleanly, the client reconnects
                    if chunk := await event(current):
                        yield chunk
                    yield "retry: 1000\n: the gateway is shutting down; reconnect to follow the job\n\n"
                    return
        except ApiError:  # the job expired mid-stream
            yield error_event("job_not_found", "job expired")
        except redis.RedisError as e:  # the headers are sent: no 503 now, but a last event saying why
            log.warning("event stream for %s ended, redis unavailable: %s", job_id, e)
            yield "retry: 5000\n" + error_event(*BACKEND_DOWN)
        finally:
            await hub.unfollow(follower)

    headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    return StreamingResponse(stream(), media_type="text/event-stream", headers=headers)


@router.delete(
    "/{job_id}",
    response_model=JobView,
    summary="Cancel a job: a queued job never runs; a running one stops within two stage boundaries",
    responses={202: {"model": JobView}, **responses(401, 404, 409)},
)
def cancel_job(job_id: str, who: Principal = Depends(principal), svc: Services = Depends(services)) -> JSONResponse:
    rec = load(svc, job_id, who)
    outcome = svc.jobs.cancel(job_id, rec.queue)
    if outcome == "cancelled" and rec.spec.callback_url:
        webhooks.schedule(svc.celery, svc.keys, job_id)
    if outcome not in ("cancelled", "cancelling"):
        raise ApiError(409, "already_finished", f"job is already {outcome}; there is nothing to cancel")
    body = view(svc, load(svc, job_id, who)).model_dump(mode="json")
    return JSONResponse(body, status_code=200 if outcome == "cancelled" else 202)


@router.get(
    "/{job_id}/artifacts/{name}",
    summary="Download an artifact: mask (PNG, palette of class indices), heatmap (PNG, 8-bit gray) or overlay "
    "(RGB: JPEG for a JPEG upload, PNG otherwise; the result's media_types says which)",
    response_class=Response,
    responses={200: {"content": {"image/png": {}, "image/jpeg": {}}}, **responses(401, 404, 409)},
)
def get_artifact(
    job_id: str,
    name: str = Path(description="mask, heatmap or overlay"),
    who: Principal = Depends(principal),
    svc: Services = Depends(services),
) -> Response:
    if name not in ARTIFACT_NAMES:
        raise ApiError(404, "unknown_artifact", f"no artifact '{name[:64]}'; use one of {', '.join(ARTIFACT_NAMES)}")
    rec = load(svc, job_id, who)
    if rec.status is not JobStatus.succeeded:
        raise ApiError(409, "not_ready", f"job is {rec.status.value}; artifacts exist only for succeeded jobs")
    data = svc.artifacts.get(job_id, name)
    if data is None:
        raise ApiError(404, "artifact_expired", f"artifact '{name}' of job {job_id} has expired")
    return Response(data, media_type=media_type(data))
