"""The whole path for real: HTTP gateway -> Redis queue -> Celery worker process -> artifacts."""

from __future__ import annotations

import ast
import io
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest
import redis
from PIL import Image

from client.http import SegcamClient
from shared.keys import Keys
from tests.conftest import ROOT, cleanup_prefix
from training.shapes import make_scene

pytestmark = pytest.mark.integration


def scene_png(seed: int, size: tuple[int, int]) -> bytes:
    img = make_scene(30_000_000 + seed, size=128).image.resize(size)
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


def test_twenty_concurrent_jobs_all_succeed_with_valid_artifacts(stack, rclient):
    sizes = [(64 + 16 * i, 48 + 8 * i) for i in range(20)]
    methods = ["gradcam", "gradcam++", "hirescam", "xgradcam", "layercam", "eigencam"]
    with SegcamClient(stack.url) as client:
        t0 = time.perf_counter()

        def submit(i: int) -> tuple[dict, float]:
            started = time.perf_counter()
            acc = client.submit(scene_png(i, sizes[i]), method=methods[i % len(methods)])
            return acc, time.perf_counter() - started

        with ThreadPoolExecutor(20) as pool:
            accepted = list(pool.map(submit, range(20)))
        assert all(a["status"] == "queued" for a, _ in accepted)
        assert max(dt for _, dt in accepted) < 5.0, "submission must not wait for the workers"
        jobs = [client.wait(a["id"], timeout=240) for a, _ in accepted]
        assert [j["status"] for j in jobs] == ["succeeded"] * 20, [j.get("error") for j in jobs]
        assert time.perf_counter() - t0 < 240

        for i, job in enumerate(jobs):
            w, h = sizes[i]
            res = job["result"]
            assert res["image"] == {"width": w, "height": h}
            assert res["model"]["name"] == "shapes" and len(res["model"]["sha256"]) == 64
            assert job["started_at"] >= job["created_at"] and job["finished_at"] >= job["started_at"]
            assert res["explanation"]["method"] == methods[i % len(methods)]
            assert abs(sum(c["pixel_fraction"] for c in res["classes"]) - 1.0) < 1e-3
            t = res["timings_ms"]
            assert all(t[k] >= 0 for k in ("queue_wait_ms", "preprocess_ms", "inference_ms", "cam_ms", "encode_ms"))
            imgs = {n: Image.open(io.BytesIO(client.download(job["id"], n))) for n in ("mask", "heatmap", "overlay")}
            assert all(im.format == "PNG" and im.size == (w, h) for im in imgs.values())
            assert (imgs["mask"].mode, imgs["heatmap"].mode, imgs["overlay"].mode) == ("P", "L", "RGB")
            labels = np.asarray(imgs["mask"])
            assert labels.max() < 4
            present = {c["id"] for c in res["classes"]}
            assert set(np.unique(labels).tolist()) == present
            ex = res["explanation"]
            if not ex["empty"]:
                heat = np.asarray(imgs["heatmap"])
                assert heat[ex["peak"]["y"], ex["peak"]["x"]] >= heat.max() - 1
    # The job record holds the result: Celery's result backend gets nothing (a write and a
    # PUBLISH per task saved; the task id is the submitting job's id).
    assert not any(rclient.exists(f"celery-task-meta-{a['id']}") for a, _ in accepted)


def test_a_jpeg_uploads_overlay_is_served_as_a_jpeg_and_its_mask_and_heatmap_as_pngs(stack):
    """A photo's lossless overlay would be eight times the upload (the worker's default,
    SEGCAM_OVERLAY_FORMAT=auto, follows the upload's format); the data artifacts stay PNG."""
    buf = io.BytesIO()
    make_scene(30_000_100, size=128).image.resize((200, 150)).save(buf, "JPEG", quality=90)
    with SegcamClient(stack.url) as client:
        job = client.wait(client.submit(buf.getvalue())["id"], timeout=120)
        assert job["status"] == "succeeded", job.get("error")
        assert job["result"]["media_types"] == {"mask": "image/png", "heatmap": "image/png", "overlay": "image/jpeg"}
        for name, fmt in [("mask", "PNG"), ("heatmap", "PNG"), ("overlay", "JPEG")]:
            r = client.http.get(f"/v1/jobs/{job['id']}/artifacts/{name}")
            assert r.headers["content-type"] == f"image/{fmt.lower()}"
            im = Image.open(io.BytesIO(r.content))
            assert (im.format, im.size) == (fmt, (200, 150))


def test_unknown_job_is_404(stack):
    r = httpx.get(f"{stack.url}/v1/jobs/{'f' * 32}")
    assert r.status_code == 404 and r.json()["error"]["code"] == "job_not_found"


def test_non_image_upload_is_refused_and_nothing_is_queued(stack, redis_url, stack_prefix):
    client = redis.Redis.from_url(redis_url)
    keys = Keys(stack_prefix)
    before = client.get(keys.sequence())
    r = httpx.post(f"{stack.url}/v1/jobs", files={"image": ("photo.png", b"%PDF-1.4 not an image")})
    assert r.status_code == 415 and r.json()["error"]["code"] == "not_an_image"
    assert client.get(keys.sequence()) == before  # no job was created
    assert client.llen(keys.celery_queue("shapes")) == 0


def test_readiness_and_models_see_the_live_worker(stack):
    ready = httpx.get(f"{stack.url}/readyz").json()
    assert ready["status"] == "ready" and ready["workers"] == [w for w in ready["workers"] if w.startswith("cpu0@")]
    shapes = next(m for m in httpx.get(f"{stack.url}/v1/models").json()["models"] if m["name"] == "shapes")
    assert shapes["workers"] and shapes["workers"][0].startswith("cpu0@")


def ran(tasks: dict, job_id: str) -> dict:
    """Flower's record of the task that ran ``job_id``: the one sent for it, or a task that was
    still running when the job came (draining or lingering) and lists it in its result."""
    if job_id in tasks:
        return tasks[job_id]
    return next((t for t in tasks.values() if job_id in (t.get("result") or "")), {})


def test_flower_shows_the_worker_and_its_jobs(stack):
    """Every job shows in Flower under the task that ran it, whose result lists it: also in a
    task that drained more jobs than Celery's 1024-character cut of a result holds (20 or so;
    before stop 39 the jobs past it were missing)."""
    with SegcamClient(stack.url) as client, ThreadPoolExecutor(30) as pool:
        accepted = list(pool.map(lambda i: client.submit(scene_png(700 + i, (80, 60))), range(30)))
        job_ids = [client.wait(a["id"], timeout=120)["id"] for a in accepted]
    base = f"http://127.0.0.1:{stack.flower_port}"
    deadline = time.monotonic() + 60
    workers, tasks = {}, {}
    while time.monotonic() < deadline:
        try:
            workers = httpx.get(f"{base}/api/workers", params={"refresh": "1"}, timeout=10).json()
            tasks = httpx.get(f"{base}/api/tasks", timeout=10).json()
        except (httpx.HTTPError, ValueError):
            pass
        done = all(ran(tasks, j).get("state") == "SUCCESS" for j in job_ids)
        if any(name.startswith("cpu0@") for name in workers) and done:
            break
        time.sleep(1)
    assert any(name.startswith("cpu0@") for name in workers), workers
    # The task that ran each job went through received, started and succeeded: the worker sends
    # every task event (it flushes them just after handing the job to its pool child).
    missing = [j for j in job_ids if not ran(tasks, j)]
    assert not missing, f"{len(missing)} of 30 jobs in no task's result: {list(tasks.values())[:2]}"
    for task in {ran(tasks, j)["uuid"]: ran(tasks, j) for j in job_ids}.values():
        assert task.get("name") == "segcam.segment" and task.get("state") == "SUCCESS", task
        assert task.get("received") and task.get("started") and task.get("succeeded"), task
    longest = max(len(ast.literal_eval(ran(tasks, j)["result"])["jobs"]) for j in job_ids)
    assert longest > 20, f"no task drained more than 20 jobs ({longest}): the long result went untested"


@pytest.mark.parametrize("module", ["worker", "worker.launch"])
def test_worker_told_to_use_cuda_on_a_gpu_less_machine_refuses_to_start(module, redis_url):
    env = {**os.environ, "SEGCAM_DEVICE": "cuda", "SEGCAM_REDIS_URL": redis_url, "CUDA_VISIBLE_DEVICES": ""}
    out = subprocess.run([sys.executable, "-m", module], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 2, out.stderr[-2000:]
    assert "Refusing to fall back to the CPU" in out.stderr
    assert "ready" not in out.stdout + out.stderr.replace("refusing", "")


def test_demo_command_runs_real_jobs_and_writes_results(stack, tmp_path):
    out = tmp_path / "demo"
    cmd = [sys.executable, "-m", "client.cli", "demo", "--url", stack.url, "--out", str(out), "--images", "4"]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    job_dirs = sorted(p for p in out.iterdir() if p.is_dir())
    assert len(job_dirs) == 4
    for d in job_dirs:
        for name in ("input", "mask", "heatmap", "overlay"):
            assert Image.open(d / f"{name}.png").size == Image.open(d / "input.png").size
    assert "4 jobs" in (out / "summary.md").read_text()
    assert Image.open(out / "contact_sheet.png").size == (4 * 168 + 8, 4 * 168 + 8)  # a row per job, a column per image


def launch_up(redis_url: str, tmp_path, prefix: str) -> tuple[subprocess.Popen, int, dict[str, str]]:
    """``segcam up`` on a free port, without Flower, logging under ``tmp_path``."""
    from stack.local import free_port

    port = free_port()
    env = {**os.environ, "SEGCAM_REDIS_URL": redis_url, "SEGCAM_KEY_PREFIX": prefix, "SEGCAM_DEVICE": "cpu"}
    cmd = [sys.executable, "-m", "client.cli", "up", "--port", str(port), "--flower-port", "0", "--logs", str(tmp_path)]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    return proc, port, env


def test_segcam_up_brings_the_stack_up_and_takes_it_down(redis_url, tmp_path):
    import signal

    proc, port, env = launch_up(redis_url, tmp_path, f"up{os.getpid()}")
    try:
        deadline = time.monotonic() + 120
        ready = False
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                ready = httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200
            except httpx.HTTPError:
                pass
            if ready:
                break
            time.sleep(0.5)
        assert ready, proc.stdout.read() if proc.poll() is not None else "not ready in time"
        acc = httpx.post(f"http://127.0.0.1:{port}/v1/jobs", files={"image": ("a.png", scene_png(99, (96, 96)))}).json()
        with SegcamClient(f"http://127.0.0.1:{port}") as c:
            assert c.wait(acc["id"], timeout=120)["status"] == "succeeded"
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, out
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2)
    cleanup_prefix(redis.Redis.from_url(redis_url), env["SEGCAM_KEY_PREFIX"])


def test_segcam_up_stopped_while_starting_stops_what_it_started(redis_url, tmp_path):
    """A SIGTERM (or Ctrl-C) before the workers are ready: exit 0, nothing left serving."""
    import signal

    proc, port, env = launch_up(redis_url, tmp_path, f"upx{os.getpid()}")
    starting = False
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and proc.poll() is None:
            try:  # the API answers, the workers are not ready yet (they are still importing torch)
                up = httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200
                starting = up and httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code != 200
            except httpx.HTTPError:
                up = False
            if up:
                break
            time.sleep(0.05)
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=60)
    if not starting:
        pytest.skip("the stack was ready before the test could catch it starting")
    assert proc.returncode == 0, out
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2)
    assert "segcam is up" not in out
    cleanup_prefix(redis.Redis.from_url(redis_url), env["SEGCAM_KEY_PREFIX"])


def test_worker_metrics_reach_prometheus_through_flower(stack):
    from prometheus_client.parser import text_string_to_metric_families

    with SegcamClient(stack.url) as client:
        assert client.wait(client.submit(scene_png(77, (64, 64)))["id"], timeout=60)["status"] == "succeeded"
    base = f"http://127.0.0.1:{stack.flower_port}"
    text = wait_until_text(f"{base}/metrics", "flower_events_total")
    names = {f.name for f in text_string_to_metric_families(text)}
    assert {"flower_events", "flower_worker_online", "flower_task_runtime_seconds"} <= names, names
    assert 'task="segcam.segment"' in text and 'worker="cpu0@' in text


def wait_until_text(url: str, needle: str, timeout: float = 60) -> str:
    deadline = time.monotonic() + timeout
    text = ""
    while time.monotonic() < deadline:
        try:
            text = httpx.get(url, timeout=10).text
        except httpx.HTTPError:
            text = ""
        if needle in text and "segcam.segment" in text:
            return text
        time.sleep(1)
    return text
