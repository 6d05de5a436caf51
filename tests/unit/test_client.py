"""The Python client's error mapping, Retry-After handling and SSE-to-polling fallback
(an in-memory transport stands in for the server)."""

from __future__ import annotations

import json
import time

import httpx
import pytest

from client.http import BadRequest, RateLimited, SegcamClient, ServerError

JOB = {"id": "a" * 32, "status": "queued", "position": 0, "url": "/v1/jobs/" + "a" * 32}


def err(status: int, code: str, **headers: str) -> httpx.Response:
    return httpx.Response(status, json={"error": {"code": code, "message": f"{code} happened"}}, headers=headers)


def test_submit_waits_out_retry_after_on_429_then_succeeds():
    calls = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(time.monotonic())
        return err(429, "queue_full", **{"Retry-After": "1"}) if len(calls) == 1 else httpx.Response(202, json=JOB)

    with SegcamClient("http://x", transport=httpx.MockTransport(handler)) as c:
        assert c.submit(b"img")["id"] == JOB["id"]
    assert len(calls) == 2 and calls[1] - calls[0] >= 0.95


def test_submit_with_wait_asks_the_server_to_hold_the_answer():
    seen = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(dict(request.url.params))
        return httpx.Response(200, json={**JOB, "status": "succeeded"})

    with SegcamClient("http://x", transport=httpx.MockTransport(handler)) as c:
        assert c.submit(b"img", wait=12)["status"] == "succeeded"
        c.submit(b"img")
    assert seen == [{"wait": "12"}, {}]


def handler_ok(request: httpx.Request, keys: list) -> httpx.Response:
    keys.append(request.headers.get("Idempotency-Key"))
    return httpx.Response(202, json=JOB)


def test_a_submission_whose_answer_was_lost_is_sent_again_with_its_key_and_gets_its_one_job(monkeypatch):
    """A gateway restart refuses the connection, or cuts it after the job was queued: the client
    sends the same request with the same Idempotency-Key, so the answer is that job, not a second."""
    monkeypatch.setattr("client.http.time.sleep", lambda s: None)
    keys: list[str | None] = []
    answers = iter(["cut after queueing", "refused", "replay"])

    def handler(request: httpx.Request) -> httpx.Response:
        keys.append(request.headers.get("Idempotency-Key"))
        a = next(answers)
        if a == "refused":
            raise httpx.ConnectError("connection refused")
        if a == "cut after queueing":
            raise httpx.RemoteProtocolError("Server disconnected without sending a response.")
        return httpx.Response(202, json=JOB, headers={"Idempotent-Replayed": "true"})

    with SegcamClient("http://x", transport=httpx.MockTransport(handler)) as c:
        assert c.submit(b"img")["id"] == JOB["id"]
        assert len(keys) == 3 and keys[0] and len(set(keys)) == 1
    with SegcamClient("http://x", transport=httpx.MockTransport(lambda r: handler_ok(r, keys))) as c:
        c.submit(b"img")
        c.submit(b"img", idempotency_key="mine")
    assert keys[3] not in (keys[0], None) and keys[4] == "mine"  # a fresh key per submission; a given one kept

    clock = iter(range(0, 1000, 10))  # each look at the clock 10 s later: a gateway that stays down
    monkeypatch.setattr("client.http.time.monotonic", lambda: next(clock))
    tries = []

    def down(request: httpx.Request) -> httpx.Response:
        tries.append(1)
        raise httpx.ConnectError("connection refused")

    with SegcamClient("http://x", transport=httpx.MockTransport(down)) as c, pytest.raises(httpx.ConnectError):
        c.submit(b"img", reconnect_s=30)
    assert len(tries) == 1  # nothing ever answered at this URL: said at once, not after 30 s
    up = iter([True])  # answers once (GET /v1/models), then refuses: a restart to wait out, not a wrong URL

    def restarting(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json={"models": []}) if next(up, False) else down(request)

    with SegcamClient("http://x", transport=httpx.MockTransport(restarting)) as c, pytest.raises(httpx.ConnectError):
        c.models()
        c.submit(b"img", reconnect_s=30)
    assert len(tries) == 1 + 4


def test_errors_map_to_exceptions_with_code_and_retry_after():
    responses = iter(
        [err(429, "rate_limited", **{"Retry-After": "7"}), err(415, "not_an_image"), err(500, "internal_error")]
    )
    with SegcamClient("http://x", transport=httpx.MockTransport(lambda r: next(responses))) as c:
        with pytest.raises(RateLimited) as e:
            c.submit(b"x", retries=0)
        assert e.value.retry_after == 7 and e.value.code == "rate_limited" and e.value.status == 429
        with pytest.raises(BadRequest) as e:
            c.submit(b"x")
        assert e.value.code == "not_an_image" and not isinstance(e.value, RateLimited)
        with pytest.raises(ServerError):
            c.submit(b"x")  # a 500 is not retried


def test_wait_follows_sse_and_reports_each_update():
    events = [{"id": JOB["id"], "status": s, "position": 0} for s in ("queued", "running", "succeeded")]
    body = "".join(f"event: {e['status']}\ndata: {json.dumps(e)}\n\n" for e in events)

    def handler(request: httpx.Request) -> httpx.Response:
        assert request.url.path.endswith("/events")
        return httpx.Response(200, text=body, headers={"content-type": "text/event-stream"})

    seen = []
    with SegcamClient("http://x", transport=httpx.MockTransport(handler)) as c:
        assert c.wait(JOB["id"], on_update=lambda j: seen.append(j["status"]))["status"] == "succeeded"
    assert seen == ["queued", "running", "succeeded"]


def test_wait_falls_back_to_long_polling_when_the_stream_breaks():
    polls = []

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/events"):
            raise httpx.RemoteProtocolError("proxy cut the stream")
        polls.append(request.url.params.get("wait"))
        return httpx.Response(200, json={**JOB, "status": "running" if len(polls) < 2 else "succeeded"})

    with SegcamClient("http://x", transport=httpx.MockTransport(handler)) as c:
        assert c.wait(JOB["id"], timeout=30)["status"] == "succeeded"
    assert len(polls) == 2 and all(float(w) > 0 for w in polls)  # long polls, not a tight loop


def test_wait_rides_out_a_gateway_restart_and_gives_up_on_one_that_stays_down(monkeypatch):
    """A gateway stopped mid-wait ends its stream with ``retry:`` and stops answering for a
    moment; the job is in Redis, so the client waits for the next gateway, not for an error."""
    monkeypatch.setattr("client.http.time.sleep", lambda s: None)
    answers = iter(["refused", "refused", 503, "queued", "succeeded"])

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/events"):  # the shutting-down gateway's last words
            body = f"event: queued\ndata: {json.dumps({**JOB, 'status': 'queued'})}\n\nretry: 1000\n\n"
            return httpx.Response(200, text=body, headers={"content-type": "text/event-stream"})
        a = next(answers)
        if a == "refused":
            raise httpx.ConnectError("connection refused")
        if a == 503:
            return httpx.Response(503, json={"error": {"code": "unavailable", "message": "redis"}})
        return httpx.Response(200, json={**JOB, "status": a})

    seen = []
    with SegcamClient("http://x", transport=httpx.MockTransport(handler)) as c:
        assert c.wait(JOB["id"], on_update=lambda j: seen.append(j["status"]))["status"] == "succeeded"
    assert seen == ["queued", "queued", "succeeded"]

    clock = iter(range(0, 1000, 10))  # each look at the clock 10 s later
    monkeypatch.setattr("client.http.time.monotonic", lambda: next(clock))

    def down(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused")

    with SegcamClient("http://x", transport=httpx.MockTransport(down)) as c, pytest.raises(httpx.ConnectError):
        c.wait(JOB["id"], timeout=600, reconnect_s=30)
    broken = httpx.MockTransport(lambda r: httpx.Response(500, json={}))
    with SegcamClient("http://x", transport=broken) as c, pytest.raises(ServerError):
        c.wait(JOB["id"])  # a 500 is a bug to report, not a restart to wait out


def test_a_stream_that_ends_with_an_error_event_is_raised_as_the_answer_it_stands_for(monkeypatch):
    """An expired job is a 404 to report; Redis gone is a 503 to wait out by polling. Either
    used to end ``wait`` in a KeyError on the event's body."""
    monkeypatch.setattr("client.http.time.sleep", lambda s: None)

    def stream_ending_with(code: str, polls: list):
        def handler(request: httpx.Request) -> httpx.Response:
            if request.url.path.endswith("/events"):
                body = (f"event: queued\ndata: {json.dumps({**JOB, 'status': 'queued'})}\n\n"
                        f"event: error\ndata: {json.dumps({'error': {'code': code, 'message': 'm'}})}\n\n")  # fmt: skip
                return httpx.Response(200, text=body, headers={"content-type": "text/event-stream"})
            polls.append(request.url.path)
            return httpx.Response(200, json={**JOB, "status": "succeeded"})

        return httpx.MockTransport(handler)

    polls: list[str] = []
    with SegcamClient("http://x", transport=stream_ending_with("job_not_found", polls)) as c:
        with pytest.raises(BadRequest) as e:
            c.wait(JOB["id"])
        assert e.value.status == 404 and e.value.code == "job_not_found" and polls == []
    with SegcamClient("http://x", transport=stream_ending_with("backend_unavailable", polls)) as c:
        assert c.wait(JOB["id"])["status"] == "succeeded" and len(polls) == 1


def test_the_cli_names_a_missing_file_and_submits_nothing(tmp_path, capsys):
    from client.cli import main

    there = tmp_path / "a.png"
    there.write_bytes(b"not submitted either")
    # No API at this URL: had it tried to submit a.png first, the answer would be "cannot reach".
    rc = main(["submit", str(there), str(tmp_path / "nope.png"), "--url", "http://127.0.0.1:9"])
    assert rc == 2
    assert f"no such file: {tmp_path / 'nope.png'}" in capsys.readouterr().err


@pytest.mark.parametrize("argv", [["status", "abc"], ["submit", "IMAGE"], ["models"]])
def test_the_cli_says_it_cannot_reach_the_api_instead_of_a_traceback(tmp_path, capsys, argv):
    from client.cli import main
    from stack.local import free_port

    image = tmp_path / "a.png"
    image.write_bytes(b"x")
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    rc = main([a.replace("IMAGE", str(image)) for a in argv] + ["--url", url])
    err = capsys.readouterr().err
    assert rc == 1 and f"cannot reach the API at {url}" in err and "segcam up" in err
    assert "Traceback" not in err


@pytest.mark.parametrize(
    "argv",
    [["submit", "a.png", "--api", "http://127.0.0.1:9"], ["status", "abc", "--url=http://x", "--api", "k"],
     ["models", "import", "w.pt", "--name", "n", "--arch", "a", "--labels", "l.txt", "--vers", "2"]],
)  # fmt: skip
def test_the_cli_refuses_an_abbreviated_option_instead_of_guessing_which_one(capsys, argv):
    """``--api`` is the start of ``--api-key``: taken for it, a URL would be sent as a key."""
    from client.cli import main

    with pytest.raises(SystemExit) as e:
        main(argv)
    err = capsys.readouterr().err
    assert e.value.code == 2 and "unrecognized arguments: " in err
    # Refused by the subcommand, whose usage lists the option meant (submit's --url), not the top level's.
    command = " ".join(a for a in argv[:2] if a in ("submit", "status", "models", "import"))
    assert f"segcam {command}: error:" in err and f"usage: segcam {command}" in err


def test_the_cli_says_when_no_worker_serves_a_queued_jobs_model():
    import io

    from client.submit_cli import Progress

    out = io.StringIO()
    p = Progress(["a.png", "b.png"], stream=out)
    p.update("a.png", {"status": "queued", "position": 0, "model": "roads", "workers": 0, "eta_s": None})
    p.update("b.png", {"status": "queued", "position": 1, "model": "shapes", "workers": 1, "eta_s": 2.0})
    assert p.lines["a.png"] == "queued, position 0, no worker serves roads yet"
    assert p.lines["b.png"] == "queued, position 1, eta 2.0s"


def test_submit_keeps_a_folders_subfolders_so_no_two_images_share_a_result_folder(tmp_path, capsys):
    """``a/cat.png`` and ``b/cat.png``, or ``cat.png`` and ``cat.jpg``, once wrote into one ``cat/``,
    the second job's results overwriting the first's while the CLI counted both as written."""
    from client.submit_cli import collect, result_dirs

    root = tmp_path / "photos"
    for rel in ["cat.png", "cat.jpg", "dog.png", "a/cat.png", "b/cat.PNG", "notes.txt", ".cache/x.png", "b/.x.png"]:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(b"x")
    got = collect([str(root), str(root / "dog.png")])  # dog.png twice: once through its folder
    assert got.names == ["a/cat.png", "b/cat.PNG", "cat.jpg", "cat.png", "dog.png"]
    assert got.files == [root / n for n in got.names]
    assert got.skipped == [root / "notes.txt"]  # hidden files and folders are passed over, not reported
    assert result_dirs(got.names) == ["a/cat", "b/cat", "cat.jpg", "cat.png", "dog"]
    # Two folders given: each keeps its own name, so their images stay apart too.
    (tmp_path / "more").mkdir()
    (tmp_path / "more" / "cat.png").write_bytes(b"x")
    assert collect([str(root / "a"), str(tmp_path / "more")]).names == ["photos/a/cat.png", "more/cat.png"]
    # A stem that equals another image's kept name falls back to every name.
    assert result_dirs(["x.png", "x.jpg", "x.png.gif"]) == ["x.png", "x.jpg", "x.png.gif"]

    from client.cli import main

    # The folder's other files are named, not dropped in silence (no API here: nothing to submit).
    assert main(["submit", str(root), "--url", "http://127.0.0.1:9"]) == 1
    assert "skipped 1 file(s) whose suffix is not an image's: " in capsys.readouterr().err


def test_a_download_cut_by_a_gateway_restart_is_asked_for_again(monkeypatch):
    """``segcam submit --out`` downloads three artifacts per job; one refused mid-restart used to
    end the whole command with the other jobs' results unwritten."""
    monkeypatch.setattr("client.http.time.sleep", lambda s: None)
    answers = iter(["ok", "refused", "refused", "ok"])

    def handler(request: httpx.Request) -> httpx.Response:
        if next(answers) == "refused":
            raise httpx.ConnectError("connection refused")
        return httpx.Response(200, content=b"\x89PNG")

    with SegcamClient("http://x", transport=httpx.MockTransport(handler)) as c:
        assert c.download(JOB["id"], "mask") == b"\x89PNG"
        assert c.download(JOB["id"], "overlay") == b"\x89PNG"


def test_the_cli_names_a_job_it_stopped_following_and_finishes_the_others(tmp_path, capsys, monkeypatch):
    """``--timeout`` passed, or the job expired: that image's line says how to follow its job, the
    other images' jobs are still waited for and written, and the exit status is 1. It used to
    end the whole command with a TimeoutError traceback."""
    from client import submit_cli
    from client.cli import main

    ids = {"slow.png": "1" * 32, "fast.png": "2" * 32, "gone.png": "3" * 32}

    def handler(request: httpx.Request) -> httpx.Response:
        if request.method == "POST":
            name = request.content.split(b'filename="')[1].split(b'"')[0].decode()
            return httpx.Response(202, json={**JOB, "id": ids[name]})
        job_id = request.url.path.split("/")[3]
        if job_id == ids["gone.png"]:
            return err(404, "job_not_found")
        if request.url.path.endswith("/events"):
            return httpx.Response(503, json={"error": {"code": "x", "message": "no stream"}})
        if "/artifacts/" in request.url.path:
            return httpx.Response(200, content=b"png")
        done = job_id == ids["fast.png"]
        return httpx.Response(200, json={**JOB, "id": job_id, "status": "succeeded" if done else "queued"})

    real = submit_cli.SegcamClient
    monkeypatch.setattr(
        submit_cli, "SegcamClient", lambda *a, **k: real(*a, transport=httpx.MockTransport(handler), **k)
    )
    for n in ids:
        (tmp_path / "in").mkdir(exist_ok=True)
        (tmp_path / "in" / n).write_bytes(b"x")
    rc = main(["submit", str(tmp_path / "in"), "--out", str(tmp_path / "out"), "--timeout", "0.3", "--url", "http://x"])
    err_text = capsys.readouterr().err
    assert rc == 1 and "Traceback" not in err_text
    assert f"not finished after --timeout 0.3s; follow it: segcam status {ids['slow.png']} --wait 60" in err_text
    assert (
        f"lost track of it (404 job_not_found: job_not_found happened); follow it: segcam status {ids['gone.png']}"
        in err_text
    )
    assert (tmp_path / "out" / "fast" / "mask.png").read_bytes() == b"png"
    assert "wrote 1 result(s)" in err_text
    summary = {(r := json.loads(line))["image"]: r for line in (tmp_path / "out" / "summary.jsonl").open()}
    assert summary["fast.png"] == {"image": "fast.png", "job_id": ids["fast.png"], "status": "succeeded",
                                   "error": None, "dir": "fast"}  # fmt: skip
    assert summary["slow.png"]["status"] == "unfinished" and summary["slow.png"]["error"]["code"] == "timeout"
    assert summary["gone.png"]["status"] == "unfinished" and summary["gone.png"]["job_id"] == ids["gone.png"]


class Terminal:
    """Just enough of a terminal for Progress: lines, the cursor's row, and the three sequences
    it writes (up N lines to column 0, clear to the end of the screen, clear the line)."""

    def __init__(self) -> None:
        self.rows: list[str] = []
        self.row = 0
        self.written = 0

    def isatty(self) -> bool:
        return True

    def flush(self) -> None:
        pass

    def write(self, text: str) -> None:
        import re

        self.written += len(text)
        for token in re.split(r"(\x1b\[\d*[FJK]|\n)", text):
            if not token:
                continue
            if token == "\n":
                self.row += 1
            elif token.endswith("F"):
                self.row -= int(token[2:-1])
            elif token == "\x1b[J":
                del self.rows[self.row :]
            elif token == "\x1b[2K":
                pass  # the line is written whole right after
            else:
                while len(self.rows) <= self.row:
                    self.rows.append("")
                self.rows[self.row] = token


def test_progress_on_a_terminal_keeps_ended_jobs_above_and_only_those_in_progress_live(monkeypatch):
    """A folder of 300 images: each job's line is printed once when it ends; the live region
    holds the jobs in progress (cut to the screen's height) and a count. Redrawing all 300 lines
    at every change wrote 300 lines per update and could not move above the screen's top."""
    import os

    from client.submit_cli import Progress

    monkeypatch.setattr("client.submit_cli.shutil.get_terminal_size", lambda fallback: os.terminal_size((80, 12)))
    names = [f"img{i:03}.png" for i in range(300)]
    term = Terminal()
    p = Progress(names, stream=term)
    for start in range(0, 300, 16):  # sixteen at a time, as the CLI's pool runs them
        batch = names[start : start + 16]
        for n in batch:
            p.update(n, {"status": "queued", "position": 3, "eta_s": 1.0, "workers": 1})
            p.update(n, {"status": "running", "stage": "inference"})
        assert len(term.rows) - p.ended == 10 + 1  # 12 lines of screen: 10 jobs, the count, the prompt
        assert term.rows[-1].startswith(f"[{start}/300 done, ") and term.rows[-1].endswith(
            f"{len(batch)} in progress, {len(batch) - 10} more not shown]"
        )
        for i, n in enumerate(batch):
            failed = start == 0 and i == 0
            job = (
                {"status": "failed", "error": {"code": "timeout", "message": "x"}}
                if failed
                else {"status": "succeeded"}
            )
            p.update(n, job)
            p.update(n, job)  # the CLI reports the final state twice (the stream's last event, then wait's answer)
    assert term.rows[:-1] == ["img000.png  failed: timeout: x"] + [f"{n}  succeeded" for n in names[1:]]
    assert term.rows[-1] == "[300/300 done, 1 did not succeed, 0 in progress]"
    assert term.written < 300 * 16 * 30 * 12  # about a live region per change, not every image's line


@pytest.mark.parametrize("argv", [["--parallel", "0"], ["--parallel", "x"], ["--skip-done"]])
def test_submit_refuses_a_parallelism_below_one_and_skip_done_without_out(tmp_path, capsys, argv):
    from client.cli import main

    image = tmp_path / "a.png"
    image.write_bytes(b"x")
    try:
        rc = main(["submit", str(image), "--url", "http://127.0.0.1:9", *argv])
    except SystemExit as e:
        rc = e.code
    err = capsys.readouterr().err
    assert rc == 2 and ("--parallel" in err or "--skip-done needs --out" in err), err
