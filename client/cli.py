"""The ``segcam`` command."""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from pathlib import Path

import httpx


def cmd_up(args: argparse.Namespace) -> int:
    from stack.local import LocalStack, StackError

    env = {"SEGCAM_CPU_WORKERS": str(args.workers)}
    stack = LocalStack(
        env=env, api_port=args.port, workers=args.workers, flower_port=args.flower_port, log_dir=Path(args.logs)
    )

    def interrupt(*_args) -> None:
        raise KeyboardInterrupt

    # Before starting anything: a SIGTERM or Ctrl-C while the stack comes up stops what started.
    signal.signal(signal.SIGTERM, interrupt)
    try:
        try:
            stack.start()
        except StackError as e:
            print(f"segcam up: {e}", file=sys.stderr)
            return 1
        print(f"segcam is up: API {stack.url} (docs {stack.url}/docs)", flush=True)
        if args.flower_port:
            print(f"Flower: http://127.0.0.1:{args.flower_port}", flush=True)
        print(f"logs in {stack.log_dir}; Ctrl-C stops everything", flush=True)
        while all(p.poll() is None for p in stack.procs.values()):
            time.sleep(0.5)
        print("segcam up: a process exited; stopping", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0
    finally:
        stack.stop()


def cmd_demo(args: argparse.Namespace) -> int:
    from stack.demo import run_demo
    from stack.local import LocalStack, StackError

    out = Path(args.out)
    if args.url:
        rows = run_demo(args.url, out, args.images)
    else:
        stack = LocalStack(env={"SEGCAM_CPU_WORKERS": str(args.workers)}, workers=args.workers, log_dir=out / "logs")
        try:
            with stack:
                print(f"segcam demo: stack up at {stack.url} with {args.workers} worker(s)", flush=True)
                rows = run_demo(stack.url, out, args.images)
        except StackError as e:
            print(f"segcam demo: {e}", file=sys.stderr)
            return 1
    failed = [r["name"] for r in rows if r["job"]["status"] != "succeeded"]
    if failed:
        print(f"segcam demo: {len(failed)} job(s) did not succeed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


def cmd_hash_key(args: argparse.Namespace) -> int:
    import hashlib

    print(hashlib.sha256(args.key.encode()).hexdigest())
    return 0


class Parser(argparse.ArgumentParser):
    """No abbreviated options, in every subcommand (their parsers are of this class too): with
    them, ``segcam submit --api URL`` was taken for ``--api-key URL`` and the URL sent as a key."""

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def parse_known_args(self, args=None, namespace=None):
        """An unknown argument is refused by the subcommand it was given to, so the message shows
        that subcommand's usage (``submit``'s ``--url``), not the top level's list of commands."""
        namespace, extras = super().parse_known_args(args, namespace)
        if extras:
            self.error(f"unrecognized arguments: {' '.join(extras)}")
        return namespace, extras


def build_parser() -> argparse.ArgumentParser:
    ap = Parser(prog="segcam", description="Asynchronous segmentation with Grad-CAM explanations")
    sub = ap.add_subparsers(dest="command", required=True)

    up = sub.add_parser("up", help="run Redis (if needed), the API, workers and Flower on this machine")
    up.add_argument("--port", type=int, default=int(os.environ.get("SEGCAM_API_PORT", 8000)))
    up.add_argument("--workers", type=int, default=1, help="CPU workers when no GPU is visible")
    up.add_argument("--flower-port", type=int, default=5555, help="0 disables Flower")
    up.add_argument("--logs", default=".segcam/logs")
    up.set_defaults(func=cmd_up)

    demo = sub.add_parser("demo", help="start the stack, run real jobs end to end, write the results")
    demo.add_argument("--out", default="demo_out")
    demo.add_argument("--images", type=int, default=8)
    demo.add_argument("--workers", type=int, default=1)
    demo.add_argument("--url", help="use a running API instead of starting a local stack")
    demo.set_defaults(func=cmd_demo)

    from client import models_cli, submit_cli

    submit_cli.add_parsers(sub)
    models_cli.add_parser(sub)

    hk = sub.add_parser("hash-key", help="print the sha256 of an API key, for SEGCAM_API_KEY_HASHES")
    hk.add_argument("key")
    hk.set_defaults(func=cmd_hash_key)
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "models":
            from client import models_cli

            return models_cli.run(args)
        return args.func(args)
    except httpx.TransportError as e:  # no API there, or it stopped answering: say so, not a traceback
        print(
            f"segcam {args.command}: cannot reach the API at {getattr(args, 'url', '?')} ({e or type(e).__name__}); "
            "start it with `segcam up`, or point --url or SEGCAM_URL at it",
            file=sys.stderr,
        )
        return 1


if __name__ == "__main__":
    sys.exit(main())
