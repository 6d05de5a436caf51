"""A model imported into a running stack is served without a restart, by the workers that serve
every model (and only by those). Real API, Redis and two worker processes: one that serves
the whole store, one pinned to ``shapes`` with ``SEGCAM_WORKER_MODELS``."""

from __future__ import annotations

import httpx
import pytest
import redis

from shared.model_store import ModelStore
from tests.conftest import ROOT, cleanup_prefix
from tests.integration.procs import Procs, scene_png, wait_final, wait_until
from worker.model_import import import_model

pytestmark = pytest.mark.integration

DEMO = ROOT / "models" / "store" / "shapes" / "1"
LABELS = ["background", "circle", "square", "triangle"]
COMMON = dict(architecture="shapes_unet", labels=LABELS, arch_kwargs={"width": 16}, target_layer="dec1")


@pytest.fixture(scope="module")
def stack(redis_url, run_prefix, tmp_path_factory):
    store = ModelStore(tmp_path_factory.mktemp("store"))
    import_model(store, DEMO / "weights.pt", name="shapes", **COMMON)
    prefix = f"{run_prefix}-follow"
    env = {"SEGCAM_REDIS_URL": redis_url, "SEGCAM_KEY_PREFIX": prefix, "SEGCAM_MODEL_DIR": str(store.root),
           "SEGCAM_WORKER_HEARTBEAT_S": "1", "SEGCAM_MODEL_POLL_S": "1"}  # fmt: skip
    procs = Procs(env, tmp_path_factory.mktemp("follow-logs"))
    procs.api()
    procs.worker("wall@follow")
    procs.worker("wpin@follow", SEGCAM_WORKER_MODELS="shapes")
    procs.wait_workers(["wall@follow", "wpin@follow"])
    procs.store = store
    yield procs
    procs.close()
    cleanup_prefix(redis.Redis.from_url(redis_url), prefix)


def workers_of(url: str, model: str) -> list[str]:
    return next(m["workers"] for m in httpx.get(f"{url}/v1/models").json()["models"] if m["name"] == model)


def test_a_model_imported_after_the_workers_started_is_served_without_a_restart(stack):
    import_model(stack.store, DEMO / "weights.pt", name="tiles", **COMMON)  # what `segcam models import` does

    def accepted():  # the gateway's store reads follow the import within SEGCAM_MODEL_STORE_CACHE_S
        r = httpx.post(f"{stack.url}/v1/jobs", files={"image": ("a.png", scene_png(1))}, data={"model": "tiles"})
        assert r.status_code in (202, 422), r.text
        return r.status_code == 202 and r.json()

    first = wait_until(accepted, 15, "the gateway never accepted the imported model")
    final = wait_final(stack.url, first["id"], timeout=60)
    assert final["status"] == "succeeded", final
    assert final["worker"] == "wall@follow" and final["model"] == "tiles"
    assert final["result"]["model"]["sha256"] == stack.store.manifest("tiles", "1").sha256
    # The worker says it serves the model now; the pinned one does not.
    assert workers_of(stack.url, "tiles") == ["wall@follow"]
    assert workers_of(stack.url, "shapes") == ["wall@follow", "wpin@follow"]
    log = (stack.log_dir / "wall.log").read_text()
    assert "now serving tiles too" in log and "Started consuming from" in log
    assert "tiles" not in (stack.log_dir / "wpin.log").read_text()
