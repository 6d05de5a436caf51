"""The gateway and worker processes themselves: a start-up that fails, SIGTERM, a restart."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import threading
import time

import httpx
import redis

from client.http import SegcamClient
from stack.local import API_CMD, python_cmd
from tests.conftest import ROOT
from tests.integration.procs import Procs, scene_png, submit, wait_until


def test_an_api_whose_port_is_taken_exits_non_zero_promptly(redis_url, prefix, tmp_path):
    """Under ``segcam up``, compose or systemd a gateway that cannot bind must die so that it is
    reported or restarted; it used to hang for ever after uvicorn's bind error, deaf to SIGTERM,
    because its event reader swallowed the shutdown's cancellation."""
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        env = {**os.environ, "SEGCAM_REDIS_URL": redis_url, "SEGCAM_KEY_PREFIX": prefix,
               "SEGCAM_API_HOST": "127.0.0.1", "SEGCAM_API_PORT": str(port)}  # fmt: skip
        t0 = time.monotonic()
        with open(tmp_path / "api.log", "wb") as log:
            p = subprocess.Popen(python_cmd(API_CMD), cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
            try:
                rc = p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
                log_text = (tmp_path / "api.log").read_text()
                raise AssertionError(f"the API still ran 30 s after failing to bind:\n{log_text}") from None
        out = (tmp_path / "api.log").read_text()
        assert rc != 0, out
        assert "address already in use" in out.lower() or "error while attempting to bind" in out.lower(), out
        assert time.monotonic() - t0 < 30


def test_sigterm_answers_long_polls_and_ends_streams_at_once_then_exits(redis_url, prefix, tmp_path):
    """uvicorn waits for every open connection before it exits, and a job with no worker keeps
    its long poll and its SSE stream open: a rolling restart then waited for the orchestrator's
    SIGKILL and cut them mid-answer. Now they answer with the job as it stands, the process
    exits at once, and the job stays queued for the next gateway to report."""
    procs = Procs({"SEGCAM_REDIS_URL": redis_url, "SEGCAM_KEY_PREFIX": prefix}, tmp_path)
    try:
        api = procs.api()  # no worker: the job stays queued
        job_id = submit(procs.url, scene_png(1))["id"]
        got: dict[str, object] = {}

        def long_poll():
            got["poll"] = httpx.get(f"{procs.url}/v1/jobs/{job_id}", params={"wait": 60}, timeout=90)

        def stream():
            with httpx.stream("GET", f"{procs.url}/v1/jobs/{job_id}/events", timeout=90) as r:
                got["stream"] = [line for line in r.iter_lines() if line]

        def submit_and_wait():
            files = {"image": ("a.png", scene_png(2))}
            got["submit"] = httpx.post(f"{procs.url}/v1/jobs", params={"wait": 60}, files=files, timeout=90)

        threads = [threading.Thread(target=f) for f in (long_poll, stream, submit_and_wait)]
        for t in threads:
            t.start()
        time.sleep(1.0)  # all three are waiting on the job
        assert not got
        t0 = time.monotonic()
        api.send_signal(signal.SIGTERM)
        for t in threads:
            t.join(timeout=15)
        rc = api.wait(timeout=15)
        took = time.monotonic() - t0

        assert rc in (0, -signal.SIGTERM) and took < 5, (rc, took)  # uvicorn re-raises the signal it caught
        poll = got["poll"]
        assert poll.status_code == 200 and poll.json()["status"] == "queued", poll.text
        lines = got["stream"]
        assert lines[0] == "event: queued" and "retry: 1000" in lines, lines
        assert got["submit"].status_code == 202 and got["submit"].json()["status"] == "queued"

        procs.api()  # the next gateway still has the job, queued
        r = httpx.get(f"{procs.url}/v1/jobs/{job_id}", timeout=10)
        assert r.status_code == 200 and r.json()["status"] == "queued"
    finally:
        procs.close()


def test_an_upload_stalled_past_the_shutdown_grace_is_cut_and_the_api_exits(redis_url, prefix, tmp_path):
    """A client that stops sending mid-upload must not hold a gateway's shutdown for ever."""
    env = {"SEGCAM_REDIS_URL": redis_url, "SEGCAM_KEY_PREFIX": prefix, "SEGCAM_API_SHUTDOWN_GRACE_S": "1"}
    procs = Procs(env, tmp_path)
    try:
        api = procs.api()
        with socket.create_connection(("127.0.0.1", procs.api_port), timeout=10) as s:
            s.sendall(
                b"POST /v1/jobs HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=b\r\n"
                b'Content-Length: 100000\r\n\r\n--b\r\nContent-Disposition: form-data; name="image"; '
                b'filename="a.png"\r\n\r\n\x89PNG'
            )  # and nothing more
            time.sleep(0.5)
            t0 = time.monotonic()
            api.send_signal(signal.SIGTERM)
            rc = api.wait(timeout=15)
            assert rc in (0, -signal.SIGTERM) and 0.9 < time.monotonic() - t0 < 5, (rc, time.monotonic() - t0)
        assert "timeout graceful shutdown exceeded" in (tmp_path / "api.log").read_text()
    finally:
        procs.close()


def test_a_client_waiting_on_a_job_rides_out_a_gateway_restart(redis_url, prefix, tmp_path):
    """The job is in Redis, not in the gateway: a client following it through a restart gets
    its result from the next gateway instead of an error, and a client submitting while no
    gateway answers sends its job again (same Idempotency-Key) until the next one takes it."""
    procs = Procs({"SEGCAM_REDIS_URL": redis_url, "SEGCAM_KEY_PREFIX": prefix}, tmp_path)
    try:
        first = procs.api()
        port = procs.api_port
        job_id = submit(procs.url, scene_png(3))["id"]
        got: dict[str, object] = {}
        seen: list[str] = []

        def wait():
            with SegcamClient(procs.url) as c:
                try:
                    got["job"] = c.wait(job_id, timeout=120, on_update=lambda j: seen.append(j["status"]))
                except Exception as e:  # reported by the assertion below
                    got["error"] = e

        t = threading.Thread(target=wait)
        t.start()
        submitter = SegcamClient(procs.url)
        submitter.models()  # this client has talked to the gateway: a refusal from now on is a restart

        def submit_meanwhile():
            try:
                got["late"] = submitter.submit(scene_png(4))
            except Exception as e:  # reported by the assertion below
                got["late_error"] = e

        time.sleep(1.0)
        first.send_signal(signal.SIGTERM)
        first.wait(timeout=15)
        late = threading.Thread(target=submit_meanwhile)  # sent while nothing answers: refused, sent again
        late.start()
        time.sleep(1.0)  # nothing answers on the port for a while
        procs.api(port)
        procs.worker("restart@local")
        t.join(timeout=120)
        late.join(timeout=60)
        assert "error" not in got and "late_error" not in got, got
        assert got["job"]["status"] == "succeeded" and seen[0] == "queued", (got, seen)
        assert submitter.wait(got["late"]["id"], timeout=60)["status"] == "succeeded"
        submitter.close()
    finally:
        procs.close()


def test_a_worker_told_to_stop_finishes_its_batch_and_leaves_the_queue_to_the_next(redis_url, prefix, tmp_path):
    """Celery tells only the parent of a SIGTERM; the child's task, draining the queue, went on
    claiming jobs for up to ``drain_s``, so a scale-down waited for the queue. Now it stops after
    its batch in hand, and the jobs it did not claim are run by the next worker: none lost."""
    env = {"SEGCAM_REDIS_URL": redis_url, "SEGCAM_KEY_PREFIX": prefix, "SEGCAM_DRAIN_S": "100",
           "SEGCAM_TASK_SOFT_TIME_LIMIT_S": "400", "SEGCAM_TASK_TIME_LIMIT_S": "450"}  # fmt: skip
    procs = Procs(env, tmp_path)
    try:
        procs.api()
        with httpx.Client(base_url=procs.url, timeout=30) as c:
            data = scene_png(4)
            ids = [c.post("/v1/jobs", files={"image": ("a.png", data)}).json()["id"] for _ in range(300)]

            def succeeded() -> int:
                return sum(c.get(f"/v1/jobs/{i}").json()["status"] == "succeeded" for i in ids)

            first = procs.worker("first@local")
            wait_until(lambda: c.get(f"/v1/jobs/{ids[2]}").json()["status"] == "succeeded", 90, "no job ran")
            t0 = time.monotonic()
            first.send_signal(signal.SIGTERM)
            rc = first.wait(timeout=60)
            took, done = time.monotonic() - t0, succeeded()
            assert rc == 0 and took < 10, (rc, took)
            assert done < len(ids) - 50, f"the stopping worker ran {done} of {len(ids)} jobs"

            procs.worker("second@local")
            wait_until(lambda: succeeded() == len(ids), 180, "the jobs left queued did not all complete")
    finally:
        procs.close()


def test_stopping_the_local_stack_lets_the_running_job_finish(redis_url, prefix, tmp_path):
    """``segcam up``'s Ctrl-C and the demo's exit stop the stack through ``LocalStack.stop``. It
    signalled each process group, and Celery's pool children die of a SIGTERM of their own, so
    the running job was cut short (to be run again at the next start); now only the leaders are
    signalled and the warm shutdown finishes it."""
    from shared.jobs import JobStore
    from shared.keys import Keys
    from stack.local import LocalStack

    env = {"SEGCAM_REDIS_URL": redis_url, "SEGCAM_KEY_PREFIX": prefix, "SEGCAM_FAULT_INJECTION": "true",
           "SEGCAM_MODEL_DIR": str(ROOT / "models" / "store")}  # fmt: skip
    stack = LocalStack(env=env, workers=1, log_dir=tmp_path)
    with stack:
        job_id = submit(stack.url, scene_png(5, fault="sleep:3@preprocess"))["id"]
        wait_until(lambda: httpx.get(f"{stack.url}/v1/jobs/{job_id}").json()["status"] == "running", 30, "running")
        time.sleep(0.3)
    rec = JobStore(redis.Redis.from_url(redis_url), Keys(prefix), 60, 60).get(job_id)
    assert rec.status.value == "succeeded", (rec.status, (tmp_path / "workers.log").read_text()[-3000:])


def test_a_worker_restarted_under_its_name_takes_back_what_its_previous_run_left_running(redis_url, prefix, tmp_path):
    """A whole worker SIGKILLed mid-job (an OOM kill of its container, a host reboot) and started
    again under its name, as the launcher and a container's restart policy do: the job runs again
    at once, not after the visibility timeout (600 s here, the default), when kombu would return
    its message."""
    import json

    from shared.jobs import JobStore
    from shared.keys import Keys
    from tests.integration.procs import job, wait_final

    env = {"SEGCAM_REDIS_URL": redis_url, "SEGCAM_KEY_PREFIX": prefix, "SEGCAM_FAULT_INJECTION": "true",
           "SEGCAM_VISIBILITY_TIMEOUT_S": "600"}  # fmt: skip
    procs = Procs(env, tmp_path)
    r = redis.Redis.from_url(redis_url)
    token = None
    try:
        procs.api()
        first = procs.worker("solo@local")
        procs.wait_workers(["solo@local"])
        jid = submit(procs.url, scene_png(300, fault="sleep:3@preprocess"))["id"]
        wait_until(lambda: job(procs.url, jid)["status"] == "running", 30, "job running")
        token = JobStore(r, Keys(prefix), 60, 60).get(jid).token
        os.killpg(first.pid, signal.SIGKILL)  # the main process and its pool child at once
        first.wait()
        killed_at = time.monotonic()
        procs.worker("solo@local")
        final = wait_final(procs.url, jid, timeout=90)
        took = time.monotonic() - killed_at
        print(f"\nworker killed and started again; its job succeeded {took:.1f} s after the kill")
        assert final["status"] == "succeeded" and final["attempts"] == 2, final
        assert took < 60, f"came back {took:.0f} s after the kill (visibility timeout 600 s)"
        assert "left running by this worker's previous run (solo@local)" in (tmp_path / "solo.log").read_text()
    finally:
        procs.close()
        for tag, raw in r.hgetall("unacked").items():  # the dead run's message: no later test's to restore
            if json.loads(raw)[0]["headers"]["id"] == token:
                r.hdel("unacked", tag)
                r.zrem("unacked_index", tag)
