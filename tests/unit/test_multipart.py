"""api/multipart.py splits a submission form exactly as Starlette's parser does, or declines it
(None) so that Starlette's parser answers; the gateway serves both paths alike."""

from __future__ import annotations

import asyncio
import io

import httpx
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from starlette.datastructures import Headers
from starlette.formparsers import MultiPartParser

from api import multipart
from api.main import create_app
from api.validation import form_parts
from benchmarks.loadgen import multipart_request

BOUNDARY = "segcamtestboundary"
CTYPE = f"multipart/form-data; boundary={BOUNDARY}"


def png(w: int = 40, h: int = 30) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (w, h), (10, 200, 30)).save(buf, "PNG")
    return buf.getvalue()


def starlette(body: bytes, ctype: str) -> list:
    """What Starlette's own parser makes of the body, in this module's terms."""

    async def parse():
        async def stream():
            yield body

        return await form_parts(await MultiPartParser(Headers({"content-type": ctype}), stream()).parse())

    return asyncio.run(parse())


def form(*parts: tuple[str, str], end: bytes = b"--\r\n") -> bytes:
    """A body from (part headers, content) pairs with this module's boundary."""
    out = b""
    for headers, content in parts:
        out += f"--{BOUNDARY}\r\n{headers}\r\n\r\n".encode() + (
            content if isinstance(content, bytes) else content.encode()
        )
        out += b"\r\n"
    return out + f"--{BOUNDARY}".encode() + end


def httpx_form(files: dict, data: dict) -> tuple[bytes, str]:
    req = httpx.Request("POST", "http://x/v1/jobs", files=files, data=data)
    return req.read(), req.headers["content-type"]


def raw_client_form() -> tuple[bytes, str]:
    head, _, body = multipart_request("http://x/v1/jobs", png(), {"model": "shapes"}).partition(b"\r\n\r\n")
    ctype = next(h.split(b": ", 1)[1] for h in head.split(b"\r\n") if h.lower().startswith(b"content-type"))
    return body, ctype.decode()


DISPOSITION = "Content-Disposition: form-data; "


WELL_FORMED = {
    "httpx, image last": httpx_form({"image": ("a.png", png())}, {"model": "shapes", "target_class": "3"}),
    "httpx, no text fields": httpx_form({"image": ("photo of me.png", png(300, 200))}, {}),
    "the benchmark's raw client": raw_client_form(),
    "image first, then text with CRLF inside": (
        form(
            (DISPOSITION + 'name="image"; filename="x.png"\r\nContent-Type: image/png', png()),
            (DISPOSITION + 'name="method"', "grad\r\ncam\r\n--almost"),
        ),
        CTYPE,
    ),
    "data holding the boundary's prefix and an empty field": (
        form(
            ('content-disposition: form-data; name="image"; filename="b.bin"', b"\x89PNG\r\n--segcam\r\n--x"),
            (DISPOSITION + 'name="priority"', ""),
        ),
        CTYPE,
    ),
    "UTF-8 names and filename, quoted boundary": (
        form(
            (DISPOSITION + 'name="r\u00e9sum\u00e9"', "caf\u00e9 \u2615"),
            (DISPOSITION + 'name="image"; filename="\u00e9t\u00e9.png"', png()),
        ),
        f'multipart/form-data; boundary="{BOUNDARY}"',
    ),
    "an empty file and a repeated field": (
        form(
            (DISPOSITION + 'name="image"; filename=""', b""),
            (DISPOSITION + 'name="model"', "a"),
            (DISPOSITION + 'name="model"', "b"),
        ),
        CTYPE,
    ),
    "no closing CRLF, no parts at all": (f"--{BOUNDARY}--".encode(), CTYPE),
}


@pytest.mark.parametrize("case", sorted(WELL_FORMED))
def test_a_well_formed_form_splits_exactly_as_starlettes_parser_splits_it(case):
    body, ctype = WELL_FORMED[case]
    ours = multipart.parse(body, ctype)
    assert ours is not None, "declined a form it should parse"
    assert ours == starlette(body, ctype)
    assert ours or case.endswith("no parts at all")


DECLINED = {
    "not multipart": (b"model=shapes", "application/x-www-form-urlencoded"),
    "no boundary": (form(('Content-Disposition: form-data; name="a"', "1")), "multipart/form-data"),
    "another charset": (form(('Content-Disposition: form-data; name="a"', "1")), CTYPE + "; charset=latin-1"),
    "a preamble": (b"preamble\r\n" + form(('Content-Disposition: form-data; name="a"', "1")), CTYPE),
    "bytes after the closing delimiter": (form(('Content-Disposition: form-data; name="a"', "1")) + b"junk", CTYPE),
    "a part without a name": (form(("Content-Disposition: form-data", "1")), CTYPE),
    "a part without Content-Disposition": (form(("Content-Type: text/plain", "1")), CTYPE),
    "a header line without a colon": (form(('Content-Disposition: form-data; name="a"\r\nbogus', "1")), CTYPE),
    "LF line endings": (form(('Content-Disposition: form-data; name="a"', "1")).replace(b"\r\n", b"\n"), CTYPE),
    "a text part over Starlette's 1 MB": (
        form(('Content-Disposition: form-data; name="a"', "x" * (multipart.MAX_TEXT_PART + 1))),
        CTYPE,
    ),
    "more parts than Starlette allows": (
        form(*[('Content-Disposition: form-data; name="a"', "1")] * (multipart.MAX_PARTS + 1)),
        CTYPE,
    ),
}


@pytest.mark.parametrize("case", sorted(DECLINED))
def test_a_form_it_is_not_sure_of_is_left_to_starlette(case):
    body, ctype = DECLINED[case]
    assert multipart.parse(body, ctype) is None


def _cut(body: bytes) -> dict[str, bytes]:
    return {
        "after a delimiter": body[: body.rindex(f"--{BOUNDARY}".encode()) + len(BOUNDARY) + 2],
        "inside the closing delimiter": body[:-3],
        "inside a part's data": body[: body.index(b"hirescam") + 4],
        "inside a part's headers": body[: body.index(b'name="method"')],
        "right after the first delimiter": f"--{BOUNDARY}".encode(),
    }


def test_a_body_cut_short_raises_truncated_wherever_it_was_cut():
    body = form((DISPOSITION + 'name="image"; filename="x.png"', png()), (DISPOSITION + 'name="method"', "hirescam"))
    for where, cut in _cut(body).items():
        with pytest.raises(multipart.Truncated):
            multipart.parse(cut, CTYPE)
            pytest.fail(f"cut {where}: parsed")


@pytest.fixture
def client(settings):
    with TestClient(create_app(settings)) as c:
        yield c


def test_the_gateway_accepts_a_form_only_starlette_parses_and_refuses_broken_ones_as_before(client, rclient):
    """A form in another charset is declined here and parsed by Starlette: still a job. One
    with a preamble, which python-multipart refuses, gets Starlette's JSON 400, as it always
    did; one cut short gets a 400 naming that (python-multipart would have dropped the part it
    was cut in and queued the rest). Nothing broken is queued."""
    image_part = (DISPOSITION + 'name="image"; filename="x.png"', png())
    body = form(image_part, (DISPOSITION + 'name="method"', "hirescam"))
    latin1 = CTYPE + "; charset=latin-1"
    assert multipart.parse(body, latin1) is None
    r = client.post("/v1/jobs", content=body, headers={"content-type": latin1})
    assert r.status_code == 202, r.text
    assert client.get(r.json()["url"]).json()["method"] == "hirescam"

    queued = rclient.dbsize()
    r = client.post("/v1/jobs", content=b"a preamble\r\n" + body, headers={"content-type": CTYPE})
    assert r.status_code == 400 and r.json()["error"]["code"] == "bad_request", r.text
    for where, cut in _cut(body).items():
        r = client.post("/v1/jobs", content=cut, headers={"content-type": CTYPE})
        assert r.status_code == 400, (where, r.text)
        assert r.json()["error"]["code"] == "truncated_form" and "cut short" in r.json()["error"]["message"]
    assert rclient.dbsize() == queued


def test_the_gateway_stores_the_image_bytes_it_was_sent(client, rclient, settings):
    from shared.keys import Keys

    data = png(123, 45)
    r = client.post("/v1/jobs", files={"image": ("x.png", data)}, data={"model": "shapes"})
    assert r.status_code == 202, r.text
    assert rclient.get(Keys(settings.key_prefix).upload(r.json()["id"])) == data
