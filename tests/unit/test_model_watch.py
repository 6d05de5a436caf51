"""A worker that serves every model follows the store: the parent's ModelWatch, the heartbeat's
update, and the pool child's queue watch (``runtime.follow_new_models``)."""

from __future__ import annotations

import json
import shutil
import time

import pytest

from shared.keys import Keys
from shared.model_store import ModelStore
from shared.presence import Heartbeat, live_workers
from shared.settings import Settings
from tests.conftest import ROOT
from worker import runtime
from worker.model_watch import ModelWatch, servable

DEMO = ROOT / "models" / "store" / "shapes"


@pytest.fixture
def store(tmp_path) -> ModelStore:
    shutil.copytree(DEMO, tmp_path / "shapes")
    return ModelStore(tmp_path)


def add_model(store: ModelStore, name: str) -> None:
    """An import as the store sees it: a version directory appears with its manifest."""
    (store.root / name).mkdir()
    shutil.copytree(DEMO / "1", store.root / name / "1")
    manifest = json.loads((store.root / name / "1" / "manifest.json").read_text())
    (store.root / name / "1" / "manifest.json").write_text(json.dumps({**manifest, "name": name}))


def test_a_model_imported_later_is_handed_over_once(store):
    seen: list[list[str]] = []
    watch = ModelWatch(store, ["shapes"], seen.append, interval_s=60)
    assert watch.poll() == [] and seen == []
    add_model(store, "roads")
    assert watch.poll() == ["roads"]
    assert watch.poll() == []  # handed over once, not at every look
    assert seen == [["roads"]] and watch.served == ["shapes", "roads"]


def test_a_model_that_does_not_resolve_yet_waits_until_it_does(store):
    seen: list[list[str]] = []
    watch = ModelWatch(store, ["shapes"], seen.append, interval_s=60)
    (store.root / "roads").mkdir()  # a model directory with no version yet
    assert watch.poll() == []
    add_model(store, "lanes")
    manifest = store.root / "lanes" / "1" / "manifest.json"
    good = manifest.read_text()
    manifest.write_text("{not json")  # edited by hand and broken
    assert watch.poll() == [] and servable(store) == ["shapes"]
    manifest.write_text(good)
    assert watch.poll() == ["lanes"] and seen == [["lanes"]]


def test_a_model_that_could_not_be_handed_over_is_tried_again(store):
    calls: list[list[str]] = []

    def on_new(new: list[str]) -> None:
        calls.append(new)
        if len(calls) == 1:
            raise RuntimeError("the consumer could not take the queue")

    watch = ModelWatch(store, ["shapes"], on_new, interval_s=60)
    add_model(store, "roads")
    with pytest.raises(RuntimeError):
        watch.poll()
    assert watch.served == ["shapes"]
    assert watch.poll() == ["roads"] and calls == [["roads"], ["roads"]]


def test_the_watch_thread_polls_until_stopped(store):
    seen: list[list[str]] = []
    watch = ModelWatch(store, ["shapes"], seen.append, interval_s=0.02)
    watch.start()
    try:
        add_model(store, "roads")
        deadline = time.monotonic() + 5
        while not seen:
            assert time.monotonic() < deadline, "the new model was never noticed"
            time.sleep(0.02)
    finally:
        watch.stop()
        watch.join(timeout=2)
    assert not watch.is_alive() and seen == [["roads"]]


def test_a_deleted_model_stays_served(store):
    """Jobs still queued for it get a clear failure from a worker instead of no consumer."""
    watch = ModelWatch(store, ["shapes"], lambda new: None, interval_s=60)
    add_model(store, "roads")
    watch.poll()
    shutil.rmtree(store.root / "roads")
    assert watch.poll() == [] and watch.served == ["shapes", "roads"]


def test_a_heartbeat_update_is_visible_at_once(rclient, prefix):
    keys = Keys(prefix)
    beat = Heartbeat(rclient, keys, "w1@host", {"device": "cpu", "models": ["shapes"]}, interval_s=60)
    beat.beat()
    beat.update(models=["shapes", "roads"])  # no wait for the next beat, a minute away
    (w,) = live_workers(rclient, keys)
    assert w["models"] == ["shapes", "roads"] and w["device"] == "cpu" and w["name"] == "w1@host"


@pytest.mark.parametrize("pinned", [False, True], ids=["serves-all", "pinned"])
def test_the_child_listens_to_a_new_models_queue_unless_pinned(store, rclient, prefix, redis_url, pinned):
    keys = Keys(prefix)
    settings = Settings(
        redis_url=redis_url, key_prefix=prefix, model_dir=store.root, worker_models="shapes" if pinned else ""
    )
    watch = runtime.queue_watch(settings, rclient, keys, store, ["shapes"])
    add_model(store, "roads")
    assert watch.start()  # when a task's queue runs dry, after its last job's result went out
    expected = ["shapes"] if pinned else ["roads", "shapes"]
    assert sorted(watch.queues) == sorted(keys.celery_queue(m) for m in expected)
    rclient.publish(keys.queue_events(keys.celery_queue("roads")), "queued " + "a" * 32)
    heard = watch.wait(keys.celery_queue("roads"), time.monotonic() + (5 if not pinned else 0.3))
    assert heard == (None if pinned else "a" * 32)
    watch.stop()
