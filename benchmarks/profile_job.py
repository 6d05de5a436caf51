"""Where one job's time goes: a pyinstrument profile of the worker side, and the hop-by-hop
timeline of jobs sent over HTTP through the real stack.

    python -m benchmarks.profile_job            # prints both; used for docs/performance.md
"""

from __future__ import annotations

import io
import json
import shutil
import statistics
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

import httpx
import redis
import torch

from benchmarks.loadgen import RawClient, multipart_request
from benchmarks.run import build_store, images
from shared.artifacts import ArtifactStore
from shared.jobs import JobStore
from shared.keys import Keys
from shared.model_store import ModelStore
from shared.schemas import ImageInfo, JobSpec
from stack.local import LocalStack

REDIS = "redis://127.0.0.1:6379/12"


def worker_profile(store_root: Path, model: str, size: tuple[int, int], n: int = 15) -> str:
    from pyinstrument import Profiler

    from worker.loader import ModelCache
    from worker.runner import JobRunner

    torch.set_num_threads(1)
    client = redis.Redis.from_url(REDIS)
    keys = Keys("profile")
    jobs = JobStore(client, keys, 600, 600)
    store = ModelStore(store_root, cache_ttl_s=2)
    runner = JobRunner(jobs, ArtifactStore(client, keys, 600), store, ModelCache(store, torch.device("cpu")), "prof")
    manifest = store.resolve(model)
    imgs = images(size, n)
    spec = JobSpec(model=manifest.name, model_version=manifest.version,
                   image=ImageInfo(format="PNG", width=size[0], height=size[1], bytes=len(imgs[0])))  # fmt: skip
    for i in range(2):  # warm up
        jobs.create(f"w{i:031d}", spec, "q", imgs[i])
        runner.run_token(f"warm{i}", "q")
    prof = Profiler(interval=0.0005)
    prof.start()
    for i, data in enumerate(imgs):
        jobs.create(f"{i:032x}", spec, "q", data)
        runner.run_token(f"t{i}", "q")
    prof.stop()
    for key in client.scan_iter(match="profile:*"):
        client.delete(key)
    return prof.output_text(unicode=False, color=False)


def timeline(n: int = 120) -> str:
    """Hop by hop, from the raw-socket client's jobs; every other job is sent with httpx
    instead, for the overhead a Python client library adds on the same stack."""
    buf = io.BytesIO()
    from training.shapes import make_scene

    make_scene(1, size=256).image.resize((256, 192)).save(buf, "PNG")
    img = buf.getvalue()
    env = {"SEGCAM_REDIS_URL": REDIS, "SEGCAM_KEY_PREFIX": "timeline", "SEGCAM_DEVICE": "cpu",
           "SEGCAM_TORCH_THREADS": "1", "SEGCAM_LOG_LEVEL": "WARNING"}  # fmt: skip
    rows, httpx_overhead = [], []
    with (
        LocalStack(env=env, workers=1, log_dir=Path(tempfile.mkdtemp())) as s,
        httpx.Client(base_url=s.url) as c,
        RawClient(s.url) as rc,
    ):
        request = multipart_request(f"{s.url}/v1/jobs?wait=30", img)
        for i in range(n):
            t0 = time.time()
            if i % 2:
                j = c.post("/v1/jobs", files={"image": ("a.png", img)}, params={"wait": 30}).json()  # submit and wait
            else:
                j = json.loads(rc.send(request)[1])
            t2 = time.time()

            def ts(k: str, job=j) -> float:
                return datetime.fromisoformat(job[k]).timestamp()

            compute = j["result"]["timings_ms"]["total_ms"] / 1000
            time.sleep(0.05)
            if i < 10:
                continue  # warm-up
            if i % 2:
                httpx_overhead.append(t2 - t0 - compute)
                continue
            rows.append({
                "client -> record created (HTTP, multipart, validation)": ts("created_at") - t0,
                "record + message -> worker claimed it (lingering task or BRPOP + prefork)": ts("started_at")
                - ts("created_at"),
                "worker: claimed -> final, minus compute (Redis I/O)": ts("finished_at") - ts("started_at") - compute,
                "final -> client has the result (pub/sub, the held POST answers)": t2 - ts("finished_at"),
                "compute (decode, preprocess, forward + CAM, encode)": compute,
                "end to end": t2 - t0,
                "overhead (end to end - compute)": t2 - t0 - compute,
            })  # fmt: skip
    out = ["| hop (demo model, one raw-socket client, sequential jobs) | p50 ms | p90 ms |", "|---|---|---|"]
    for k in rows[0]:
        v = sorted(r[k] * 1000 for r in rows)
        out.append(f"| {k} | {statistics.median(v):.2f} | {v[int(0.9 * len(v))]:.2f} |")
    v = sorted(x * 1000 for x in httpx_overhead)
    out.append(f"| overhead with httpx as the client (the other jobs) | {statistics.median(v):.2f} "
               f"| {v[int(0.9 * len(v))]:.2f} |")  # fmt: skip
    return "\n".join(out)


def main() -> int:
    tmp = Path(tempfile.mkdtemp())
    try:
        root = build_store(tmp / "store")
        print("## Worker side, realistic model (15 jobs, 1 torch thread)\n")
        print("```\n" + worker_profile(root, "deeplab", (384, 288)) + "```\n")
        print("## Hop by hop over HTTP\n")
        print(timeline())
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
