"""The gateway pushes Celery's message itself (in the job-creating Lua call): it must be the
message ``send_task`` would have pushed, and kombu must read it back as such."""

from __future__ import annotations

import base64
import json

from kombu import Connection, Consumer, Queue

from shared.celery_app import TASK_SEGMENT, make_celery, task_message
from shared.settings import Settings

KWARGS = {"model": "shapes", "job_id": "ab" * 16}


def pushed(rclient, queue: str) -> dict:
    (raw,) = rclient.lrange(queue, 0, -1)
    rclient.delete(queue)
    msg = json.loads(raw)
    msg["body"] = json.loads(base64.b64decode(msg["body"]))
    return msg


def test_the_message_is_the_one_send_task_pushes(rclient, redis_url, prefix):
    app = make_celery(Settings(redis_url=redis_url, key_prefix=prefix), results=False)
    queue = f"{prefix}.jobs.shapes"
    kwargsrepr = "{'model': 'shapes', 'job_id': '" + "ab" * 16 + "'}"
    app.send_task(TASK_SEGMENT, kwargs=KWARGS, task_id="ab" * 16, queue=queue, argsrepr="()", kwargsrepr=kwargsrepr)
    theirs = pushed(rclient, queue)
    rclient.lpush(queue, task_message(app, TASK_SEGMENT, "ab" * 16, queue, KWARGS))
    ours = pushed(rclient, queue)

    assert ours["body"] == theirs["body"] == [[], KWARGS, {"callbacks": None, "errbacks": None, "chain": None,
                                                             "chord": None}]  # fmt: skip
    assert {k: ours[k] for k in ("content-type", "content-encoding")} == {
        k: theirs[k] for k in ("content-type", "content-encoding")
    }
    # ignore_result unset, as send_task leaves it: the worker applies the task's own (True).
    assert ours["headers"]["ignore_result"] is None
    assert ours["headers"] == theirs["headers"]
    same = ("correlation_id", "delivery_mode", "delivery_info", "priority", "body_encoding")
    assert {k: ours["properties"][k] for k in same} == {k: theirs["properties"][k] for k in same}
    assert ours["properties"]["delivery_tag"] != theirs["properties"]["delivery_tag"]  # fresh per message


def test_kombu_reads_it_back_as_the_task_message(rclient, redis_url, prefix):
    app = make_celery(Settings(redis_url=redis_url, key_prefix=prefix), results=False)
    queue = f"{prefix}.jobs.shapes"
    rclient.lpush(queue, task_message(app, TASK_SEGMENT, "cd" * 16, queue, KWARGS))
    got = []
    with Connection(redis_url) as conn, Consumer(conn, [Queue(queue)], accept=["json"], callbacks=[
        lambda body, message: (got.append((body, message.headers)), message.ack())
    ]):  # fmt: skip
        conn.drain_events(timeout=5)
    ((body, headers),) = got
    assert body[1] == KWARGS and headers["task"] == TASK_SEGMENT and headers["id"] == "cd" * 16
    assert rclient.llen(queue) == 0
