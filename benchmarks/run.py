"""segcam's benchmark: the in-process limit, segcam over HTTP, direct FastAPI, overload,
the gateway alone, worker memory, batch sizes and precision, side by side in one run.

    python -m benchmarks.run                 # full run (about 25 minutes on 2 cores)
    python -m benchmarks.run --quick         # short runs, for a smoke test

Writes benchmarks/results/<utc-time>.json and .md, and benchmarks/results/latest.md.
Every section uses the same models, the same images and the same torch thread count.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from datetime import UTC, datetime
from pathlib import Path

import httpx
import redis

from benchmarks import loadgen
from benchmarks.report import mean_stages
from benchmarks.wake import redis_round_trips
from stack.local import API_CMD, free_port, python_cmd, redis_answers, start_redis
from training.shapes import make_scene

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
DEMO_STORE = ROOT / "models" / "store"

MODELS = {  # name in the store, image size sent by clients
    "demo": ("shapes", (256, 192)),
    "realistic": ("deeplab", (384, 288)),
}


# ---------------------------------------------------------------- setup


def build_store(root: Path) -> Path:
    """The demo model plus deeplabv3_mobilenet_v3_large (locally initialised) at 384 px."""
    import torch

    from shared.model_store import ModelStore
    from worker.archs.registry import build
    from worker.model_import import import_state_dict

    shutil.copytree(DEMO_STORE / "shapes", root / "shapes")
    torch.manual_seed(0)
    state = build("deeplabv3_mobilenet_v3_large", 21)[0].net.state_dict()
    labels = ["background", *(f"class{i}" for i in range(1, 21))]
    import_state_dict(ModelStore(root), state, name="deeplab", architecture="deeplabv3_mobilenet_v3_large",
                      labels=labels, input_size=(384, 384))  # fmt: skip
    return root


def images(size: tuple[int, int], n: int = 16) -> list[bytes]:
    out = []
    for i in range(n):
        buf = io.BytesIO()
        make_scene(60_000_000 + i, size=256).image.resize(size).save(buf, "PNG")
        out.append(buf.getvalue())
    return out


def pct(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, int(p * len(s)))]


def memory_step(jobs: int) -> int:
    """How often the memory section samples (jobs, a multiple of its rounds of 8). Its first
    sample is the baseline, after the warm-up (allocator caches, lazy imports): every 200 jobs
    from 200 in a full run; proportionally fewer in a short rehearsal, which used to find no
    sample at 200 jobs and stop."""
    return 200 if jobs >= 400 else max(8, jobs // 4 // 8 * 8)  # four samples or so


class Procs:
    def __init__(self, env: dict[str, str], log_dir: Path) -> None:
        self.env = {**os.environ, **env}
        self.log_dir = log_dir
        self.procs: dict[str, subprocess.Popen] = {}

    def spawn(self, name: str, cmd: list[str], **extra: str) -> subprocess.Popen:
        with open(self.log_dir / f"{name}.log", "ab") as log:
            p = subprocess.Popen(python_cmd(cmd), cwd=ROOT, env={**self.env, **extra}, stdout=log,
                                 stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
        self.procs[name] = p
        return p

    def wait_http(self, url: str, timeout: float = 60, workers: int = 0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                r = httpx.get(url, timeout=2)
                if r.status_code == 200 and (not workers or len(r.json().get("workers", [])) >= workers):
                    return
            except (httpx.HTTPError, ValueError):
                pass
            time.sleep(0.2)
        raise RuntimeError(f"{url} not ready; logs in {self.log_dir}")

    def close(self) -> None:
        for p in self.procs.values():
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGTERM)
        for p in self.procs.values():
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
        self.procs.clear()


# ---------------------------------------------------------------- sections


def limit(
    store: Path,
    model: str,
    imgs: list[bytes],
    seconds: float,
    batch: int = 1,
    device: str = "cpu",
    threads: int = 1,
    overlap: bool = False,
) -> dict:
    """The worker's own pipeline in a tight loop: the ceiling for one worker (on ``device``, with
    ``threads`` post-processing threads, as the bench's workers get them). With ``overlap``, as
    a worker with the finishing lane runs it: each batch's ``finish`` on a thread of its own
    while the next batch computes, one batch in the lane at a time."""
    import torch

    from shared.model_store import ModelStore
    from shared.schemas import Method
    from worker.loader import load_model
    from worker.pipeline import Item, Pipeline

    ms = ModelStore(store)
    pipe = Pipeline(load_model(ms, ms.resolve(model), torch.device(device)), threads)
    reference = [explanation_key(pipe.run([Item("r", im)], Method.gradcam)[0].explanation.model_dump()) for im in imgs]
    lane = ThreadPoolExecutor(1) if overlap else None
    pending = None
    timings: list[dict[str, float]] = []  # each image's, as a job's result reports them
    with loadgen.steady_heap() as heap:  # the worker freezes its heap after loading too
        n, k, t0 = 0, 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            items = [Item(str(j), imgs[(k + j) % len(imgs)]) for j in range(batch)]
            if lane is None:
                timings += [r.timings_ms for r in pipe.run(items, Method.gradcam)]
            else:
                computed = pipe.compute(items, Method.gradcam)
                if pending is not None:
                    timings += [r.timings_ms for r in pending.result()]
                pending = lane.submit(pipe.finish, computed)
            n += batch
            k += batch
        if pending is not None:
            timings += [r.timings_ms for r in pending.result()]
            lane.shutdown()
        dt = time.perf_counter() - t0
    return {"images_per_s": n / dt, "ms_per_image": 1000 * dt / n, "images": n, "reference": reference, "gc": heap,
            "stage_ms_p50": stage_p50(timings)}  # fmt: skip


STAGES = ("preprocess_ms", "inference_ms", "cam_ms", "encode_ms")


def stage_p50(timings: list[dict[str, float]]) -> dict[str, float]:
    """Each stage's median, from the limit's images or the jobs' results alike: whether a gap to
    the limit lies in the pipeline itself running slower beside the stack, or between jobs."""
    return {s: pct([t[s] for t in timings], 0.5) for s in STAGES if timings and all(s in t for t in timings)}


def explanation_key(e: dict) -> tuple:
    """What must match a single-threaded run of the same image for a result to count as right."""
    peak = e.get("peak") or {}
    return (e.get("class_id"), peak.get("x"), peak.get("y"), round(e.get("energy_in_mask") or 0.0, 3))


def closed_loop(
    url: str,
    imgs: list[bytes],
    model: str,
    clients: int,
    seconds: float,
    ref: list | None = None,
    poll: bool = False,
    raw: bool = False,
) -> dict:
    """``clients`` users, each submitting and waiting for the result, then again. They wait the
    fastest way the API offers, in the submission itself (``POST ?wait``); with ``poll``,
    by a separate long-poll (``GET ?wait``) after the 202. With ``raw``, each user sends
    prebuilt ``POST ?wait`` requests over a plain socket (``loadgen.RawClient``) instead of
    httpx, so the overhead measured is the service's rather than the client library's.

    Each user's first job is untimed: it warms the user's connection and client library (an
    httpx client's first request cost it 12-24 ms of its own in ``make trace``), and on a
    fresh stack it is the stack's first job, kept apart as ``first_job_overhead_ms`` (a cold
    start is not low load). The window opens when every user has had its first answer."""
    lat, compute, queue_wait, errors, batch_sizes, wrong, first, stages = [], [], [], [], [], [], [], []
    lock = threading.Lock()
    window = loadgen.Window(clients, seconds)
    prebuilt = [loadgen.multipart_request(f"{url}/v1/jobs?wait=30", im, {"model": model}) for im in imgs]

    def one(c: httpx.Client, rc, idx: int) -> tuple[float, float, dict | int]:
        """One job end to end: when it was sent and answered, and the final job (or the refusal's status)."""
        t0 = time.perf_counter()
        if raw:
            status, body = rc.send(prebuilt[idx])
        else:
            r = c.post("/v1/jobs", files={"image": ("a.png", imgs[idx])}, data={"model": model},
                       params=None if poll else {"wait": 30})  # fmt: skip
            status, body = r.status_code, r.content
        if status not in (200, 202):
            return t0, time.perf_counter(), status
        job = json.loads(body)
        while job["status"] in ("queued", "running"):
            job = c.get(f"/v1/jobs/{job['id']}", params={"wait": 30}).json()
        return t0, time.perf_counter(), job

    def user(i: int) -> None:
        raw_client = loadgen.RawClient(url) if raw else nullcontext()  # a connection only when it is used
        with httpx.Client(base_url=url, timeout=120) as c, raw_client as rc:
            try:
                t0, t1, job = one(c, rc, i % len(imgs))
                if isinstance(job, dict) and job["status"] == "succeeded":
                    with lock:
                        first.append((t1 - t0) * 1000 - job["result"]["timings_ms"]["total_ms"])
            finally:
                window.arrive()
            k = i + clients
            while time.perf_counter() < window.stop:
                idx = k % len(imgs)
                k += clients
                t0, t1, job = one(c, rc, idx)
                with lock:
                    if not isinstance(job, dict) or job["status"] != "succeeded":
                        errors.append(job if not isinstance(job, dict) else job["status"])
                        continue
                    lat.append((t1 - t0) * 1000)
                    if ref is not None and explanation_key(job["result"]["explanation"]) != ref[idx]:
                        wrong.append(idx)
                    compute.append(job["result"]["timings_ms"]["total_ms"])
                    stages.append(job["result"]["timings_ms"])
                    queue_wait.append(job["result"]["timings_ms"]["queue_wait_ms"])
                    batch_sizes.append(job["result"]["batch_size"])

    with loadgen.steady_heap() as heap, ThreadPoolExecutor(clients) as pool:
        list(pool.map(user, range(clients)))
        wall = time.perf_counter() - window.start
    overhead = [a - b for a, b in zip(lat, compute, strict=True)]
    return {
        "clients": clients,
        "completed": len(lat),
        "errors": len(errors),
        "wrong_results": len(wrong),
        "throughput_per_s": len(lat) / wall,
        "latency_ms": {"p50": pct(lat, 0.5), "p95": pct(lat, 0.95), "p99": pct(lat, 0.99)},
        "overhead_ms": {"p50": pct(overhead, 0.5), "p99": pct(overhead, 0.99)},
        "compute_ms_p50": pct(compute, 0.5),
        "stage_ms_p50": stage_p50(stages),
        "queue_wait_ms_p50": pct(queue_wait, 0.5),
        "mean_batch": statistics.mean(batch_sizes) if batch_sizes else 0,
        "first_job_overhead_ms": sorted(first),
        "client_gc": heap,
    }


def direct_closed_loop(
    url: str, imgs: list[bytes], clients: int, seconds: float, ref: list | None = None, timeout: float = 60
) -> dict:
    """The same users against the direct endpoint, each warmed by one untimed request as in
    ``closed_loop``."""
    lat, errors, timeouts, wrong = [], [], 0, []
    lock = threading.Lock()
    window = loadgen.Window(clients, seconds)

    def user(i: int) -> None:
        nonlocal timeouts
        with httpx.Client(base_url=url, timeout=timeout) as c:
            try:
                c.post("/segment", files={"image": ("a.png", imgs[i % len(imgs)])})
            except httpx.HTTPError:
                pass  # counted, if it persists, by the timed requests
            finally:
                window.arrive()
            k = i
            while time.perf_counter() < window.stop:
                t0 = time.perf_counter()
                idx = k % len(imgs)
                try:
                    r = c.post("/segment", files={"image": ("a.png", imgs[idx])})
                    ok = r.status_code == 200
                except httpx.TimeoutException:
                    with lock:
                        timeouts += 1
                    continue
                except httpx.HTTPError as e:
                    with lock:
                        errors.append(type(e).__name__)
                    time.sleep(0.5)
                    continue
                k += clients
                with lock:
                    if not ok:
                        errors.append(r.status_code)
                        continue
                    lat.append((time.perf_counter() - t0) * 1000)
                    if ref is not None and explanation_key(r.json()["explanation"]) != ref[idx]:
                        wrong.append(idx)

    with loadgen.steady_heap() as heap, ThreadPoolExecutor(clients) as pool:
        list(pool.map(user, range(clients)))
        wall = time.perf_counter() - window.start
    return {
        "clients": clients,
        "completed": len(lat),
        "errors": len(errors),
        "error_kinds": sorted({str(e) for e in errors}),
        "timeouts": timeouts,
        "wrong_results": len(wrong),
        "throughput_per_s": len(lat) / wall,
        "latency_ms": {"p50": pct(lat, 0.5), "p95": pct(lat, 0.95), "p99": pct(lat, 0.99)},
        "client_gc": heap,
    }


def open_loop(send, rate: float, seconds: float) -> list:
    """Fire ``send`` at a fixed arrival rate, whatever the answers: an overload, not a queue of users."""
    results: list = []
    lock = threading.Lock()

    def one() -> None:
        out = send()
        with lock:
            results.append(out)

    with ThreadPoolExecutor(64) as pool:
        t0 = time.perf_counter()
        n = 0
        while (now := time.perf_counter()) - t0 < seconds:
            due = t0 + n / rate
            if now < due:
                time.sleep(due - now)
            pool.submit(one)
            n += 1
    return results


def overload_segcam(
    url: str, imgs: list[bytes], model: str, rate: float, seconds: float, ref: list | None = None
) -> dict:
    """Open-loop arrivals from an asyncio client (a threaded Python client would add its own
    scheduling stalls to the refusal latency being measured)."""
    import asyncio

    requests = [loadgen.multipart_request(f"{url}/v1/jobs", im, {"model": model}) for im in imgs]
    with loadgen.steady_heap() as heap:
        results = asyncio.run(loadgen.at_rate(f"{url}/v1/jobs", requests, rate, seconds))
    accepted = [(json.loads(body)["id"], n % len(imgs)) for n, code, _, body in results if code == 202]
    refused = [dt * 1000 for _, code, dt, _ in results if code == 429]
    other = sorted(
        {f"{code} {body[:80].decode(errors='replace')}" for _, code, _, body in results if code not in (202, 429)}
    )
    finals, wrong = {}, 0
    with httpx.Client(base_url=url, timeout=60) as client:
        for jid, idx in accepted:
            while (job := client.get(f"/v1/jobs/{jid}", params={"wait": 30}).json())["status"] in ("queued", "running"):
                pass
            finals[jid] = job["status"]
            if job["status"] == "succeeded" and ref is not None:
                wrong += explanation_key(job["result"]["explanation"]) != ref[idx]
    return {
        "offered": len(results),
        "accepted": len(accepted),
        "refused_429": len(refused),
        "other": len(results) - len(accepted) - len(refused),
        "other_kinds": other[:5],
        "refusal_ms": {"p50": pct(refused, 0.5), "p99": pct(refused, 0.99)},
        "accepted_completed": sum(1 for s in finals.values() if s == "succeeded"),
        "accepted_lost": sum(1 for s in finals.values() if s != "succeeded"),
        "wrong_results": wrong,
        "client_gc": heap,
    }


def overload_direct(
    url: str, imgs: list[bytes], rate: float, seconds: float, ref: list | None = None, timeout: float = 30
) -> dict:
    client = httpx.Client(base_url=url, timeout=timeout, limits=httpx.Limits(max_connections=64))
    counter = iter(range(10**9))
    wrong = []

    def send():
        i = next(counter)
        t0 = time.perf_counter()
        try:
            r = client.post("/segment", files={"image": ("a.png", imgs[i % len(imgs)])})
            if (
                r.status_code == 200
                and ref is not None
                and explanation_key(r.json()["explanation"]) != ref[i % len(imgs)]
            ):
                wrong.append(i)
            return r.status_code, (time.perf_counter() - t0) * 1000
        except httpx.TimeoutException:
            return "timeout", (time.perf_counter() - t0) * 1000
        except httpx.HTTPError as e:
            return type(e).__name__, (time.perf_counter() - t0) * 1000

    with loadgen.steady_heap() as heap:
        results = open_loop(send, rate, seconds)
    client.close()
    ok = [ms for code, ms in results if code == 200]
    return {
        "offered": len(results),
        "completed": len(ok),
        "timeouts": sum(1 for code, _ in results if code == "timeout"),
        "errors": sum(1 for code, _ in results if code not in (200, "timeout")),
        "wrong_results": len(wrong),
        "latency_ms": {"p50": pct(ok, 0.5), "p99": pct(ok, 0.99)},
        "client_gc": heap,
    }


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def gpu_memory_mb(pid: int) -> float | None:
    """The GPU memory a process holds as the driver sees it (what ``nvidia-smi`` lists: the
    caching allocator's reserve included), or None where no driver answers for it."""
    try:
        out = subprocess.run(["nvidia-smi", "--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits"],
                             capture_output=True, text=True, timeout=20).stdout  # fmt: skip
    except (OSError, subprocess.TimeoutExpired):
        return None
    for line in out.splitlines():
        fields = [f.strip() for f in line.split(",")]
        if len(fields) == 2 and fields[0] == str(pid) and fields[1].isdigit():
            return float(fields[1])
    return None


def bench_device(setting: str) -> str:
    """The worker's own rule (``auto``: the first GPU when there is one). A GPU asked for and
    absent stops the run: a GPU benchmark that quietly ran on the CPU would record the wrong
    machine."""
    from worker.device import DeviceUnavailable, resolve_device

    try:
        return resolve_device(setting)
    except DeviceUnavailable as e:
        raise SystemExit(f"--device {setting}: no GPU usable here: {e}") from None


def children(pid: int) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True)
    return [int(x) for x in out.stdout.split()]


def process_tree(pid: int) -> list[int]:
    """``pid`` and its descendants, each before its own children (a worker's pool child last)."""
    return [pid] + [p for k in children(pid) for p in process_tree(k)]


# ---------------------------------------------------------------- orchestration


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        import torch

        from worker.pipeline import default_threads

        self.args = args
        torch.set_num_threads(args.threads)
        self.device = bench_device(getattr(args, "device", "cpu"))
        # One count everywhere: the in-process limit, the workers and the direct endpoint.
        self.post_threads = getattr(args, "postprocess_threads", 0) or default_threads(torch.device(self.device))
        # The finishing lane as a worker on this device decides it (auto: on beside a GPU, or
        # where torch leaves a core idle), in the in-process limit and the workers alike.
        self.lane_setting = getattr(args, "overlap", "auto")
        self.overlap = self.lane_for(1)
        self.tmp = Path(tempfile.mkdtemp(prefix="segcam-bench-"))
        self.store = build_store(self.tmp / "store")
        self.imgs = {k: images(size) for k, (_, size) in MODELS.items()}
        self.redis_proc = None
        url = os.environ.get("SEGCAM_REDIS_URL", "redis://127.0.0.1:6379/12")
        if not redis_answers(url):
            port = free_port()
            self.redis_proc = start_redis(port, self.tmp / "redis")
            url = f"redis://127.0.0.1:{port}/0"
        self.redis_url = url
        self.out: dict = {"sections": {}}
        self.refs: dict[str, list] = {}

    def lane_for(self, workers: int) -> bool:
        """The finishing lane each of ``workers`` workers on this host decides for itself."""
        import torch

        from worker.runtime import overlap_wanted

        cores = len(os.sched_getaffinity(0))
        return overlap_wanted(self.lane_setting, torch.device(self.device), self.args.threads, cores, workers)

    def env(self, **extra) -> dict[str, str]:
        prefix = f"bench{uuid.uuid4().hex[:8]}"
        return {"SEGCAM_REDIS_URL": self.redis_url, "SEGCAM_KEY_PREFIX": prefix, "SEGCAM_MODEL_DIR": str(self.store),
                "SEGCAM_DEVICE": self.device, "SEGCAM_TORCH_THREADS": str(self.args.threads),
                "SEGCAM_POSTPROCESS_THREADS": str(self.post_threads), "SEGCAM_LOG_LEVEL": "WARNING",
                "SEGCAM_OVERLAP": self.lane_setting,
                "SEGCAM_WORKER_HEARTBEAT_S": "1", **{k: str(v) for k, v in extra.items()}}  # fmt: skip

    def segcam(self, workers: int = 1, models: str = "", **extra) -> tuple[Procs, str]:
        env = self.env(SEGCAM_WORKER_MODELS=models, SEGCAM_CPU_WORKERS=workers, **extra)
        procs = Procs(env, self.tmp)
        port = free_port()
        procs.spawn("api", API_CMD, SEGCAM_API_PORT=str(port), SEGCAM_API_HOST="127.0.0.1")
        for i in range(workers):
            procs.spawn(f"worker{i}", ["python", "-m", "worker", "--name", f"bench{i}@host"])
        url = f"http://127.0.0.1:{port}"
        procs.wait_http(f"{url}/readyz", timeout=120, workers=workers)
        procs.prefix = env["SEGCAM_KEY_PREFIX"]
        return procs, url

    def cleanup(self, procs: Procs) -> None:
        procs.close()
        r = redis.Redis.from_url(self.redis_url)
        for pattern in (f"{procs.prefix}:*", f"{procs.prefix}.*", f"_kombu.binding.{procs.prefix}.*"):
            for key in r.scan_iter(match=pattern, count=1000):
                r.delete(key)

    def direct(self, model: str) -> tuple[Procs, str]:
        procs = Procs(self.env(BENCH_MODEL_DIR=str(self.store), BENCH_MODEL=model, BENCH_DEVICE=self.device), self.tmp)
        port = free_port()
        procs.spawn("direct", ["python", "-m", "uvicorn", "benchmarks.direct_app:app", "--host", "127.0.0.1",
                               "--port", str(port), "--log-level", "warning"])  # fmt: skip
        url = f"http://127.0.0.1:{port}"
        procs.wait_http(f"{url}/docs", timeout=120)
        procs.prefix = "none"
        return procs, url

    def limit(self, model: str, key: str, seconds: float, batch: int = 1, overlap: bool | None = None) -> dict:
        lane = self.overlap if overlap is None else overlap
        return limit(self.store, model, self.imgs[key], seconds, batch, self.device, self.post_threads, lane)

    def log(self, msg: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)

    # each section stores its numbers under self.out["sections"][name]

    def run_limit_and_http(self) -> None:
        import torch

        torch.set_num_threads(self.args.threads)
        d = self.args.seconds
        for key, (model, _) in MODELS.items():
            self.log(f"limit: {key}")
            lim = self.limit(model, key, d / 2)
            ref = lim.pop("reference")
            self.refs[key] = ref
            runs = {}
            limits = [lim["images_per_s"]]
            limit_stages = [lim.pop("stage_ms_p50")]
            for label, workers, batch, clients in (
                ("segcam_low_load", 1, 1, 1),
                ("segcam_low_load_raw", 1, 1, 1),
                ("segcam_low_load_poll", 1, 1, 1),
                ("segcam_saturated", 1, 1, 4),
                ("segcam_saturated_batch8", 1, 8, 12),
                ("segcam_2_workers", 2, 1, 4),
            ):
                # Saturated twice, each between two limit runs (limit, saturated, limit, saturated,
                # limit): on this noisy machine one pair alone moves by ~10 %.
                for again in range(2 if label == "segcam_saturated" else 1):
                    name = f"{label}_repeat" if again else label
                    self.log(f"segcam: {key} {name}")
                    procs, url = self.segcam(workers=workers, models=model, SEGCAM_MAX_BATCH_SIZE=batch)
                    try:
                        poll, raw = label.endswith("_poll"), label.endswith("_raw")
                        res = closed_loop(url, self.imgs[key], model, clients, d, ref, poll=poll, raw=raw)
                        runs[name] = {**res, "workers": workers, "max_batch": batch, "poll": poll, "raw_client": raw,
                                      "overlap": self.lane_for(workers)}  # fmt: skip
                    finally:
                        self.cleanup(procs)
                    if label == "segcam_saturated":
                        self.log(f"limit again: {key}")
                        again_lim = self.limit(model, key, d / 2)
                        limits.append(again_lim["images_per_s"])
                        limit_stages.append(again_lim["stage_ms_p50"])
            self.log(f"direct FastAPI: {key}")
            procs, url = self.direct(model)
            try:
                direct = direct_closed_loop(url, self.imgs[key], 4, d, ref)
                direct["server_died"] = procs.procs["direct"].poll() is not None
            finally:
                self.cleanup(procs)
            # Efficiency: the mean of the two saturated runs against the mean of the three limits
            # around them; each saturated run against its two neighbours is kept too.
            limit_mean = statistics.mean(limits)
            saturated = [runs[n]["throughput_per_s"] for n in ("segcam_saturated", "segcam_saturated_repeat")]
            self.out["sections"][f"compare_{key}"] = {
                "limit": {**lim, "samples_images_per_s": limits, "images_per_s": limit_mean,
                          "ms_per_image": 1000 / limit_mean, "stage_ms_p50": mean_stages(limit_stages)},
                **runs,
                "direct": direct,
                "efficiency": statistics.mean(saturated) / limit_mean,
                "efficiency_per_pair": [t / statistics.mean(limits[i : i + 2]) for i, t in enumerate(saturated)],
            }  # fmt: skip

    def run_overload(self) -> None:
        d = self.args.seconds
        for key, (model, _) in MODELS.items():
            if f"compare_{key}" in self.out["sections"]:
                capacity = self.out["sections"][f"compare_{key}"]["limit"]["images_per_s"]
            else:  # overload on its own: measure the capacity (and the reference results) here
                lim = self.limit(model, key, d / 2)
                self.refs[key] = lim.pop("reference")
                capacity = lim["images_per_s"]
            rate = self.args.overload_factor * capacity
            self.log(f"overload: {key} at {rate:.1f}/s")
            procs, url = self.segcam(models=model, SEGCAM_MAX_QUEUE_DEPTH=8)
            try:
                seg = overload_segcam(url, self.imgs[key], model, rate, d, self.refs.get(key))
            finally:
                self.cleanup(procs)
            procs, url = self.direct(model)
            try:
                direct = overload_direct(url, self.imgs[key], rate, d, self.refs.get(key))
                direct["server_died"] = procs.procs["direct"].poll() is not None
            finally:
                self.cleanup(procs)
            self.out["sections"][f"overload_{key}"] = {"rate_per_s": rate, "segcam": seg, "direct": direct}

    def run_gateway(self, max_depth: int = 10**9) -> None:
        """The API alone, no worker. With a ``max_depth`` of 1, every submission but the first
        is refused: what a refusal costs the gateway (``overhead_ab --refusals``)."""
        self.log("gateway alone" if max_depth > 1 else "gateway alone, its queue full")
        env = self.env(SEGCAM_MAX_QUEUE_DEPTH=max_depth)
        procs = Procs(env, self.tmp)
        procs.prefix = env["SEGCAM_KEY_PREFIX"]
        port = free_port()
        api = procs.spawn("api-gw", API_CMD, SEGCAM_API_PORT=str(port), SEGCAM_API_HOST="127.0.0.1")
        url = f"http://127.0.0.1:{port}"
        try:
            procs.wait_http(f"{url}/healthz")
            buf = io.BytesIO()
            make_scene(3, size=176).image.save(buf, "PNG")  # ~55 KB of noisy PNG
            image = buf.getvalue()
            request = loadgen.multipart_request(f"{url}/v1/jobs", image)
            import asyncio

            asyncio.run(loadgen.run(f"{url}/v1/jobs", request, 1.0, 4))  # warm up
            with loadgen.steady_heap() as heap:
                res = asyncio.run(loadgen.run(f"{url}/v1/jobs", request, self.args.seconds, 16))
            maps = Path(f"/proc/{api.pid}/maps").read_text()
            res.update(image_bytes=len(image), api_rss_mb=rss_mb(api.pid), torch_loaded="libtorch" in maps,
                       client_gc=heap)  # fmt: skip
        finally:
            self.cleanup(procs)
        self.out["sections"]["gateway"] = res

    def run_memory(self) -> None:
        n = self.args.memory_jobs
        step = memory_step(n)
        self.log(f"worker memory over {n} jobs")
        procs, url = self.segcam(models="shapes")
        try:
            main = procs.procs["worker0"].pid
            samples, gpu = [], []
            done = 0
            imgs = self.imgs["demo"]
            with httpx.Client(base_url=url, timeout=60) as c:
                while done < n:
                    ids = [c.post("/v1/jobs", files={"image": ("a.png", imgs[(done + i) % len(imgs)])}).json()["id"]
                           for i in range(8)]  # fmt: skip
                    for jid in ids:
                        while c.get(f"/v1/jobs/{jid}", params={"wait": 30}).json()["status"] in ("queued", "running"):
                            pass
                    done += 8
                    if done % step == 0:
                        child = children(main)
                        samples.append((done, rss_mb(child[0]) if child else float("nan")))
                        if self.device.startswith("cuda") and child:
                            gpu.append((done, gpu_memory_mb(child[0])))
        finally:
            self.cleanup(procs)
        start_after, base = samples[0]  # the first sample, after the warm-up
        self.out["sections"]["memory"] = {
            "jobs": done, "samples_mb": samples, "start_after": start_after, "start_mb": base,
            "end_mb": samples[-1][1],
            "drift_pct": 100 * (samples[-1][1] - base) / base,
        }  # fmt: skip
        if gpu:
            held = [mb for _, mb in gpu if mb is not None]
            self.out["sections"]["memory"]["gpu"] = {
                "samples_mb": gpu, "start_mb": held[0] if held else None, "end_mb": held[-1] if held else None,
                "drift_pct": 100 * (held[-1] - held[0]) / held[0] if held else None,
            }  # fmt: skip

    def saturated(self, batch: int, overlap: bool | None = None) -> dict:
        """The realistic model at ``batch``: the in-process limit and one saturated worker, with
        the finishing lane as the run has it unless ``overlap`` says."""
        import torch

        torch.set_num_threads(self.args.threads)
        model, key = "deeplab", "realistic"
        lane = self.overlap if overlap is None else overlap
        lim = self.limit(model, key, self.args.seconds / 2, batch=batch, overlap=lane)
        lim.pop("reference")
        procs, url = self.segcam(models=model, SEGCAM_MAX_BATCH_SIZE=batch, SEGCAM_OVERLAP="on" if lane else "off")
        try:
            seg = closed_loop(url, self.imgs[key], model, 2 * batch + 2, self.args.seconds)
        finally:
            self.cleanup(procs)
        return {"batch": batch, "limit": lim, "segcam": seg}

    def run_batching(self) -> None:
        rows = []
        for b in (1, 2, 4, 8):
            self.log(f"batch {b}")
            rows.append(self.saturated(b))
        self.out["sections"]["batching"] = rows

    def run_overlap(self) -> None:
        """The finishing lane off and on, side by side (alternating), at batch 1 and 8."""
        rows = []
        for b in (1, 8):
            for lane in (False, True):
                self.log(f"batch {b}, finishing lane {'on' if lane else 'off'}")
                rows.append({**self.saturated(b, overlap=lane), "overlap": lane, "workers": 1})
        # On the CPU, one worker per core as well: there torch's threads take every core and the
        # lane's thread has none of its own, which is why ``auto`` leaves it off there.
        workers = len(os.sched_getaffinity(0)) // self.args.threads
        if self.device == "cpu" and workers >= 2:
            for lane in (False, True):
                self.log(f"{workers} workers, finishing lane {'on' if lane else 'off'}")
                procs, url = self.segcam(workers=workers, models="deeplab", SEGCAM_OVERLAP="on" if lane else "off")
                try:
                    seg = closed_loop(url, self.imgs["realistic"], "deeplab", 2 * workers + 2, self.args.seconds)
                finally:
                    self.cleanup(procs)
                rows.append({"batch": 1, "limit": None, "segcam": seg, "overlap": lane, "workers": workers})
        self.out["sections"]["overlap"] = rows

    def run_precision(self) -> None:
        """channels_last and autocast for the segmentation forward (the CAM path stays fp32):
        bf16 on the CPU; bf16 and fp16 on a GPU, at batch 1 and 8 (where batching is the point)."""
        import torch

        from shared.model_store import ModelStore
        from worker.loader import load_model
        from worker.pipeline import Pipeline

        self.log("precision and memory layout")
        torch.set_num_threads(self.args.threads)
        device = torch.device(self.device)
        cuda = device.type == "cuda"
        ms = ModelStore(self.store)
        loaded = load_model(ms, ms.resolve("deeplab"), device)
        from PIL import Image

        image = Image.open(io.BytesIO(self.imgs["realistic"][0])).convert("RGB")
        clock = Pipeline(loaded).clock  # waits for the GPU's queued work first
        net = loaded.module
        dtypes = {"fp32": None, "bf16": torch.bfloat16, **({"fp16": torch.float16} if cuda else {})}
        rows = []
        for batch in (1, 8) if cuda else (1,):
            x = Pipeline(loaded).preprocess([image] * batch)
            for layout in ("contiguous", "channels_last"):
                fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
                net.to(memory_format=fmt)
                xi = x.contiguous(memory_format=fmt)
                ref = None
                for dtype, dt in dtypes.items():

                    def fwd(inp=xi, dt=dt):
                        with torch.no_grad(), torch.autocast(device.type, dtype=dt or torch.float32, enabled=bool(dt)):
                            return net(inp)

                    out = fwd()
                    ref = out if ref is None else ref  # fp32 comes first
                    t0, n = clock(), 0
                    while time.perf_counter() - t0 < max(2.0, self.args.seconds / 4):
                        out = fwd()
                        n += 1
                    elapsed = clock() - t0
                    agree = float((out.float().argmax(1) == ref.float().argmax(1)).float().mean())
                    rows.append({"batch": batch, "layout": layout, "dtype": dtype, "mask_agreement": agree,
                                 "forward_ms": 1000 * elapsed / n})  # fmt: skip
        self.out["sections"]["precision"] = rows
        self.out["sections"]["bf16_backbone"] = self.bf16_backbone_jobs(ms)

    def bf16_backbone_jobs(self, ms) -> list[dict]:
        """Whole jobs (decode to encode, Grad-CAM included) with SEGCAM_BF16_BACKBONE off and on:
        autocast before the target layer only, the CAM's part in fp32 (channels_last both)."""
        import numpy as np
        import torch

        from shared.schemas import Method
        from worker.loader import load_model
        from worker.pipeline import Item, Pipeline

        rows = []
        for key, (model, _) in MODELS.items():
            loaded = [load_model(ms, ms.resolve(model), torch.device(self.device), True, b) for b in (False, True)]
            pipes = [Pipeline(m, self.post_threads) for m in loaded]
            items = [Item(str(i), im) for i, im in enumerate(self.imgs[key][:8])]
            timed = []
            for pipe in pipes:
                pipe.run(items[:1], Method.gradcam)
                t0, out = time.perf_counter(), []
                while time.perf_counter() - t0 < max(2.0, self.args.seconds / 4) or len(out) < len(items):
                    out.append(pipe.run([items[len(out) % len(items)]], Method.gradcam)[0])
                timed.append((1000 * (time.perf_counter() - t0) / len(out), out[: len(items)]))
            (t32, r32), (t16, r16) = timed
            pairs = list(zip(r32, r16, strict=True))
            rows.append({
                "model": key, "fp32_job_ms": t32, "bf16_backbone_job_ms": t16, "speedup": t32 / t16,
                "mask_agreement": float(np.mean([np.mean(a.labels == b.labels) for a, b in pairs])),
                "cam_max_abs_diff": max(float(np.abs(a.cam - b.cam).max()) for a, b in pairs),
                "same_class": float(np.mean([a.explanation.class_id == b.explanation.class_id for a, b in pairs])),
            })  # fmt: skip
        return rows

    def close(self) -> None:
        if self.redis_proc is not None:
            self.redis_proc.terminate()
        shutil.rmtree(self.tmp, ignore_errors=True)


def save_result(kind: str, args: argparse.Namespace, doc: dict, device: str = "cpu") -> Path:
    """Keep a side benchmark's figures, as ``make bench`` keeps its own:
    ``benchmarks/results/<kind>-<utc-time>.json``, with the command's arguments, the machine and
    the commit, so that a figure quoted later can be read against its host and rerun on its code."""
    out = RESULTS / f"{kind}-{datetime.now(UTC).strftime('%Y%m%dT%H%M%SZ')}.json"
    head = {"args": vars(args), "machine": machine(device), "code": code_version()}
    out.write_text(json.dumps({**head, **doc}, indent=1) + "\n")
    print(f"wrote {out.relative_to(ROOT) if out.is_relative_to(ROOT) else out}")
    return out


def machine(device: str = "cpu") -> dict:
    """The host as far as the figures depend on it. Hosts behind the same model name differ: the
    vector extensions decide, e.g., whether bf16 is fast (avx512_bf16, amx) or emulated."""
    cpu, flags = "unknown", set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and cpu == "unknown":
                cpu = line.split(":", 1)[1].strip()
            elif line.startswith("flags") and not flags:
                flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    import torch

    wanted = ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16")
    return {"cpu": cpu, "cpu_features": [f for f in wanted if f in flags], "cores": os.cpu_count(),
            "python": platform.python_version(), "torch": torch.__version__,
            "device": f"{device} {torch.cuda.get_device_name(device)}" if "cuda" in device else "cpu"}  # fmt: skip


def code_version(root: Path = ROOT) -> dict:
    """The commit the run measured, and whether tracked files differed from it: a figure quoted
    later can then be rerun on the same code (``benchmarks.overhead_ab`` takes the commit)."""
    try:
        git = ["git", "-C", str(root)]
        commit = subprocess.run([*git, "rev-parse", "--short=7", "HEAD"], capture_output=True, text=True,
                                check=True, timeout=10).stdout.strip()  # fmt: skip
        status = subprocess.run([*git, "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                                text=True, check=True, timeout=10).stdout  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "local_changes": None}  # not a git checkout (a GPU kit's copy)
    return {"commit": commit, "local_changes": bool(status.strip())}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    ap.add_argument("--quick", action="store_true", help="short runs (5 s), fewer memory jobs")
    ap.add_argument("--seconds", type=float, default=20.0, help="duration of each timed run")
    ap.add_argument("--threads", type=int, default=1, help="torch threads, everywhere (the same in every section)")
    ap.add_argument(
        "--device", default="auto", help="auto (the first GPU when there is one), cpu, cuda:N: every section"
    )
    ap.add_argument("--postprocess-threads", type=int, default=0,
                    help="post-processing threads, everywhere; 0: a worker's default on --device")  # fmt: skip
    ap.add_argument("--overlap", choices=["auto", "on", "off"], default="auto",
                    help="the finishing lane (SEGCAM_OVERLAP) everywhere; auto: as each worker decides")  # fmt: skip
    ap.add_argument("--overload-factor", type=float, default=4.0)
    ap.add_argument("--memory-jobs", type=int, default=2000, help="at least 16")
    ap.add_argument(
        "--only", help="comma-separated sections: compare,overload,gateway,memory,batching,overlap,precision"
    )
    args = ap.parse_args(argv)
    if args.memory_jobs < 16:
        ap.error("--memory-jobs must be at least 16 (two rounds of 8 jobs)")
    if args.quick:
        args.seconds, args.memory_jobs = 5.0, 400
    only = (
        set(args.only.split(","))
        if args.only
        else {"compare", "overload", "gateway", "memory", "batching", "overlap", "precision"}
    )
    bench = Bench(args)
    started = datetime.now(UTC)
    try:
        host = {**machine(bench.device), "loopback": redis_round_trips(bench.redis_url)}  # before any load
        bench.out.update(machine=host, code=code_version(), started=started.isoformat(timespec="seconds"),
                         args=vars(args), postprocess_threads=bench.post_threads, overlap=bench.overlap)  # fmt: skip
        if "compare" in only:
            bench.run_limit_and_http()
        if "overload" in only:
            bench.run_overload()
        if "gateway" in only:
            bench.run_gateway()
        if "memory" in only:
            bench.run_memory()
        if "batching" in only:
            bench.run_batching()
        if "overlap" in only:
            bench.run_overlap()
        if "precision" in only:
            bench.run_precision()
    finally:
        bench.close()
    from benchmarks.report import markdown

    RESULTS.mkdir(parents=True, exist_ok=True)
    stamp = started.strftime("%Y%m%dT%H%M%SZ")
    (RESULTS / f"{stamp}.json").write_text(json.dumps(bench.out, indent=2) + "\n")
    md = markdown(bench.out)
    (RESULTS / f"{stamp}.md").write_text(md)
    (RESULTS / "latest.md").write_text(md)
    print(md)
    print(f"wrote {RESULTS / stamp}.json and .md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
