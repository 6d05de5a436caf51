"""``segcam submit``, ``segcam status`` and ``segcam models`` (the API's view): the command-line client."""

from __future__ import annotations

import json
import os
import shutil
import sys
import threading
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path, PurePosixPath
from typing import NamedTuple

import httpx

from client.http import ARTIFACTS, FINAL, SegcamClient, SegcamError, artifact_file

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff"}


def default_url() -> str:
    return os.environ.get("SEGCAM_URL", "http://127.0.0.1:8000")


class Inputs(NamedTuple):
    """What ``segcam submit`` was given, each image once, with the name it is shown and stored under."""

    files: list[Path]
    names: list[str]  # the path under the folder given (or the folder the files given share), unique
    skipped: list[Path]  # files in the folders given whose suffix is not an image's


def collect(paths: list[str]) -> Inputs:
    """Files as given; folders walked for images (sorted), hidden files and folders passed over.

    Names keep the folders below the one given: ``a/cat.png`` and ``b/cat.png`` are two images,
    and their results must not land in one ``cat/`` folder, the second overwriting the first."""
    files: list[Path] = []
    skipped: list[Path] = []
    for p in map(Path, paths):
        if not p.is_dir():
            files.append(p)
            continue
        for f in sorted(p.rglob("*")):
            if any(part.startswith(".") for part in f.relative_to(p).parts) or not f.is_file():
                continue
            (files if f.suffix.lower() in IMAGE_SUFFIXES else skipped).append(f)
    roots = [os.path.abspath(p if Path(p).is_dir() else Path(p).parent) for p in paths]
    base = os.path.commonpath(roots) if roots else "."
    seen: dict[str, Path] = {}
    for f in files:  # the same file given twice (a folder and a file in it) is submitted once
        seen.setdefault(Path(os.path.relpath(os.path.abspath(f), base)).as_posix(), f)
    return Inputs(list(seen.values()), list(seen), skipped)


def result_dirs(names: list[str]) -> list[str]:
    """Where each image's results go under ``--out``: its name without the suffix (``sub/cat``),
    unless two would share it (``cat.png`` and ``cat.jpg``), which keep theirs."""
    stems = [PurePosixPath(n).with_suffix("").as_posix() for n in names]
    counts = Counter(stems)
    dirs = [stem if counts[stem] == 1 else name for stem, name in zip(stems, names, strict=True)]
    return dirs if len(set(dirs)) == len(dirs) else list(names)  # names are unique; stems mixed with them may not be


class Progress:
    """One line per job: queue position or stage, then the outcome.

    On a terminal, a job's line is redrawn in place while it is in progress and printed for good
    once it ends; only the jobs in progress (at most ``--parallel`` at a time) and a count stay
    live at the bottom. Redrawing every image's line at each change, as before, wrote a million
    lines for a folder of a thousand images and broke once they were taller than the screen."""

    def __init__(self, names: list[str], stream=None) -> None:
        self.names = names
        self.lines = dict.fromkeys(names, "submitting")
        self.stream = stream or sys.stderr  # looked up now: a redirected stderr is the one to write to
        self.tty = self.stream.isatty()
        self.lock = threading.Lock()
        self.width = max((len(n) for n in names), default=10)
        self.live: dict[str, str] = {}  # jobs in progress, in the order they started
        self.ended = self.not_ok = 0
        self.drawn = 0  # lines of the live region on screen

    def update(self, name: str, job: dict) -> None:
        status = job.get("status", "?")
        if status == "queued":
            eta = f", eta {job['eta_s']:.1f}s" if job.get("eta_s") is not None else ""
            if job.get("workers") == 0:
                eta = f", no worker serves {job.get('model')} yet"
            text = f"queued, position {job.get('position')}{eta}"
        elif status == "running":
            text = f"running: {job.get('stage') or 'starting'}"
        elif status == "failed":
            text = f"failed: {job['error']['code']}: {job['error']['message']}"
        else:
            text = status
        self.set(name, text, final=status in FINAL, ok=status == "succeeded")

    def set(self, name: str, text: str, final: bool = False, ok: bool = False) -> None:
        with self.lock:
            if self.lines[name] == text and not (final and name in self.live):
                return
            self.lines[name] = text
            if not self.tty:
                self.stream.write(f"{name:{self.width}}  {text}\n")
                self.stream.flush()
                return
            if self.drawn:  # back to the top of the live region, and clear it
                self.stream.write(f"\x1b[{self.drawn}F\x1b[J")
            if final:
                self.live.pop(name, None)
                self.ended += 1
                self.not_ok += not ok
                self.stream.write(f"{name:{self.width}}  {text}\n")
            else:
                self.live[name] = text
            self._draw_live()
            self.stream.flush()

    def _draw_live(self) -> None:
        room = max(3, shutil.get_terminal_size((80, 24)).lines - 2)
        shown = list(self.live.items())[:room]
        for n, t in shown:
            self.stream.write(f"\x1b[2K{n:{self.width}}  {t}\n")
        hidden = len(self.live) - len(shown)
        more = f", {hidden} more not shown" if hidden else ""
        failed = f", {self.not_ok} did not succeed" if self.not_ok else ""
        self.stream.write(f"\x1b[2K[{self.ended}/{len(self.names)} done{failed}, {len(self.live)} in progress{more}]\n")
        self.drawn = len(shown) + 1


def cmd_submit(args) -> int:
    files, names, skipped = collect(args.images)
    if skipped:  # a folder's other files are not sent, but not in silence: a .jpe or .ico would be missed
        shown = ", ".join(str(f) for f in skipped[:5]) + (f" and {len(skipped) - 5} more" if len(skipped) > 5 else "")
        print(f"segcam submit: skipped {len(skipped)} file(s) whose suffix is not an image's: {shown}",
              file=sys.stderr)  # fmt: skip
    if not files:
        print("segcam submit: no images found", file=sys.stderr)
        return 2
    missing = [str(f) for f in files if not f.is_file()]
    if missing:  # before anything is submitted: half a folder queued is harder to redo than none
        print(f"segcam submit: no such file: {', '.join(missing)}", file=sys.stderr)
        return 2
    dirs = dict(zip(names, result_dirs(names), strict=True))
    out_dir = Path(args.out) if args.out else None
    if args.skip_done:
        if not out_dir:
            print("segcam submit: --skip-done needs --out (where earlier results are)", file=sys.stderr)
            return 2
        done = {n for n in names if (out_dir / dirs[n] / "result.json").is_file()}
        if done:  # an interrupted run of a large folder goes on where it stopped
            print(f"segcam submit: skipped {len(done)} image(s) with results under {out_dir}/ (--skip-done)",
                  file=sys.stderr)  # fmt: skip
            keep = [i for i, n in enumerate(names) if n not in done]
            files, names = [files[i] for i in keep], [names[i] for i in keep]
        if not files:
            return 0
    progress = Progress(names)
    with SegcamClient(args.url, api_key=args.api_key) as client:

        def run(item: tuple[str, Path]) -> dict:
            """What became of one image: its line in ``OUT/summary.jsonl``."""
            name, path = item
            out = {"image": name, "job_id": None, "status": "refused", "error": None}
            try:
                acc = client.submit(path, model=args.model, target_class=args.target_class, method=args.method,
                                    priority=args.priority)  # fmt: skip
            except SegcamError as e:
                progress.set(name, f"refused: {e.code}: {e.message}", final=True)
                return {**out, "error": {"code": e.code, "message": e.message}}
            out.update(job_id=acc["id"], status="queued")
            progress.update(name, {**acc, "status": "queued"})
            if not (args.wait or out_dir):
                progress.set(name, f"queued as {acc['id']}", final=True, ok=True)
                return out
            # Accepted, so whatever happens from here the job goes on: say where to find it, and let
            # the other images' jobs finish instead of ending the command with a traceback.
            follow = f"segcam status {acc['id']} --wait 60"
            try:
                job = client.wait(acc["id"], timeout=args.timeout, on_update=lambda j: progress.update(name, j))
                progress.update(name, job)
                out.update(status=job["status"], error=job.get("error"))
                if out_dir and job["status"] == "succeeded":
                    d = out_dir / dirs[name]
                    d.mkdir(parents=True, exist_ok=True)
                    for a in ARTIFACTS:
                        (d / artifact_file(job, a)).write_bytes(client.download(job["id"], a))
                    (d / "result.json").write_text(json.dumps(job, indent=2) + "\n")
                    out["dir"] = dirs[name]
            except TimeoutError:
                progress.set(name, f"not finished after --timeout {args.timeout:g}s; follow it: {follow}", final=True)
                return {**out, "status": "unfinished", "error": {"code": "timeout", "message": f"follow it: {follow}"}}
            except (SegcamError, httpx.TransportError) as e:
                progress.set(name, f"lost track of it ({e or type(e).__name__}); follow it: {follow}", final=True)
                return {**out, "status": "unfinished", "error": {"code": "lost", "message": str(e) or type(e).__name__}}
            return out

        with ThreadPoolExecutor(max_workers=min(args.parallel, len(files))) as pool:
            results = list(pool.map(run, zip(names, files, strict=True)))
    failures = sum(r["status"] not in ("queued", "succeeded") for r in results)
    if not args.wait and not out_dir:
        for r in results:
            if r["job_id"]:
                print(f"{r['job_id']}  {r['image']}")
    elif out_dir:
        # One line per image of this run, what failed and why included: what a script reads to
        # redo or report the failures, where the progress lines went to a terminal.
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "summary.jsonl").write_text("".join(json.dumps(r) + "\n" for r in results))
        written = sum(r["status"] == "succeeded" for r in results)
        print(f"wrote {written} result(s) under {out_dir}/; each image's outcome in {out_dir / 'summary.jsonl'}",
              file=sys.stderr)  # fmt: skip
    return 1 if failures else 0


def cmd_status(args) -> int:
    with SegcamClient(args.url, api_key=args.api_key) as client:
        try:
            job = client.status(args.job_id, wait=args.wait)
        except SegcamError as e:
            print(f"segcam status: {e}", file=sys.stderr)
            return 1
    print(json.dumps(job, indent=2))
    return 0


def cmd_models_remote(args) -> int:
    with SegcamClient(args.url, api_key=args.api_key) as client:
        try:
            listing = client.models()
        except SegcamError as e:
            print(f"segcam models: {e}", file=sys.stderr)
            return 1
    for m in listing["models"]:
        default = " (default)" if m["name"] == listing["default"] else ""
        workers = ", ".join(m["workers"]) or "no live worker"
        print(f"{m['name']}:{m['version']}{default}  {m['architecture']}  [{workers}]")
        print(f"  labels: {', '.join(f'{i}={label}' for i, label in enumerate(m['labels']))}")
    print(f"methods: {', '.join(listing['methods'])}")
    return 0


def _positive(text: str) -> int:
    import argparse

    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError("expected a whole number of at least 1")
    return int(text)


def add_common(p) -> None:
    p.add_argument("--url", default=default_url(), help="API base URL (default: $SEGCAM_URL or http://127.0.0.1:8000)")
    p.add_argument("--api-key", default=os.environ.get("SEGCAM_API_KEY"), help="default: $SEGCAM_API_KEY")


def add_parsers(sub) -> None:
    s = sub.add_parser("submit", help="submit images (files or folders); --wait shows progress, --out saves results")
    s.add_argument("images", nargs="+")
    s.add_argument("--model")
    s.add_argument("--class", dest="target_class", help="class index or label to explain")
    s.add_argument("--method")
    s.add_argument("--priority", choices=["high", "normal", "low"])
    s.add_argument("--wait", action="store_true", help="follow each job until it is done")
    s.add_argument(
        "--out",
        help="write each job's mask, heatmap, overlay and result.json under OUT/<image path without suffix>/, "
        "and each image's outcome (job ID, status, error) as a line of OUT/summary.jsonl",
    )
    s.add_argument("--timeout", type=float, default=600)
    s.add_argument("--parallel", type=_positive, default=16,
                   help="jobs in flight at once (default 16); more keeps more workers busy")  # fmt: skip
    s.add_argument("--skip-done", action="store_true",
                   help="with --out: images whose result.json is already there are not sent again")  # fmt: skip
    add_common(s)
    s.set_defaults(func=cmd_submit)

    st = sub.add_parser("status", help="a job's status as JSON")
    st.add_argument("job_id")
    st.add_argument("--wait", type=float, default=0, help="long-poll up to this many seconds for the final state")
    add_common(st)
    st.set_defaults(func=cmd_status)
