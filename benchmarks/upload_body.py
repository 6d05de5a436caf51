"""What a multipart form costs a submission, against the same image sent as a raw body.

    python -m benchmarks.upload_body [--kb 54]

Prints a table and writes ``benchmarks/results/upload_body-<utc-time>.json``.

Why segcam takes uploads as a multipart form only: a raw-body upload (the image as the whole
request body, options in the query) would save the httpx client's encoding and the form
parsing, and this prints what those cost, in microseconds, in a hot loop: the form read by
Starlette's parser, and by the gateway's own (``api.validation.read_form``, which splits a plain
form itself, ``api/multipart.py``). Low-load overhead measured with httpx is about a
millisecond above the raw-socket client's (docs/performance.md); this shows how little of it a
raw body could buy back.
"""

from __future__ import annotations

import argparse
import asyncio
import os

import httpx
from starlette.requests import Request

from api.validation import read_form
from benchmarks.lua_blob import p50_us  # the same hot-loop timer


def parse(loop: asyncio.AbstractEventLoop, body: bytes, content_type: str, how: str) -> bytes:
    """The image, read from the form by Starlette's parser (``starlette``) or by the gateway's
    (``segcam``), or as the whole body (``raw``)."""

    async def receive() -> dict:
        return {"type": "http.request", "body": body, "more_body": False}

    async def read() -> bytes:
        headers = [(b"content-type", content_type.encode())]
        req = Request({"type": "http", "method": "POST", "headers": headers, "query_string": b"model=demo"}, receive)
        if how == "starlette":
            f = await req.form()
            data = await f["image"].read()  # type: ignore[union-attr]
            await f.close()
            return data
        if how == "segcam":
            return dict(await read_form(req))["image"].data
        return await req.body()

    return loop.run_until_complete(read())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.upload_body", description=__doc__)
    ap.add_argument("--kb", type=int, default=54)
    ap.add_argument("--rounds", type=int, default=2000, help="timed calls per figure")
    ap.add_argument("--no-save", action="store_true", help="print the table only")
    args = ap.parse_args(argv)
    img = os.urandom(args.kb * 1000)
    loop = asyncio.new_event_loop()
    with httpx.Client(base_url="http://127.0.0.1:8000") as c:

        def build(multipart: bool) -> httpx.Request:
            if multipart:
                req = c.build_request("POST", "/v1/jobs", files={"image": ("a.png", img)}, data={"model": "demo"})
            else:
                req = c.build_request("POST", "/v1/jobs", content=img, headers={"content-type": "image/png"},
                                      params={"model": "demo"})  # fmt: skip
            req.read()
            return req

        form_req, raw_req = build(True), build(False)
        form = (form_req.content, form_req.headers["content-type"])
        as_raw = (raw_req.content, "image/png", "raw")
        delivered = {parse(loop, *form, "starlette"), parse(loop, *form, "segcam"), parse(loop, *as_raw)}
        assert delivered == {img}, "every way must deliver the same image"
        raw_us = p50_us(lambda: parse(loop, *as_raw), args.rounds)
        rows = {
            "client: httpx builds and encodes the request": (
                p50_us(lambda: build(True), args.rounds),
                p50_us(lambda: build(False), args.rounds),
            ),
            "API: Starlette's form parser reads the image": (
                p50_us(lambda: parse(loop, *form, "starlette"), args.rounds),
                raw_us,
            ),
            "API: segcam's form reader (api/multipart.py)": (
                p50_us(lambda: parse(loop, *form, "segcam"), args.rounds),
                raw_us,
            ),
        }
    loop.close()
    print(f"| {args.kb} KB image | multipart form p50 us | raw body p50 us | difference us |\n|---|---|---|---|")
    for name, (form_us, raw_us) in rows.items():
        print(f"| {name} | {form_us:.0f} | {raw_us:.0f} | {form_us - raw_us:.0f} |")
    client, _, segcam = (f - r for f, r in rows.values())
    print(f"| both, with segcam's form reader | | | {client + segcam:.0f} |")
    if not args.no_save:
        from benchmarks import run

        figures = {name: {"multipart_p50_us": round(f, 1), "raw_p50_us": round(r, 1)} for name, (f, r) in rows.items()}
        run.save_result("upload_body", args, {"rows": figures})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
