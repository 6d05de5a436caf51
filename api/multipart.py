"""The submission form, split at its boundaries in one pass over the body.

Starlette's parser (python-multipart) runs a callback per chunk and per part and spools the
file part into a temporary file (on disk past 1 MB): about 0.2 ms hot for a 124 KB image
here, against 0.03 ms to receive the same bytes as a raw body and 0.1 ms for this reader
(``python -m benchmarks.upload_body --kb 124``; docs/performance.md, twelfth round). A
submission is one bounded body (``api/limits.py`` caps it while it streams in) of an image
and a few short text fields, so it is read whole and cut with ``bytes.find``: the boundary
cannot occur inside a part (RFC 2046).

Only a body this parser is sure of is parsed here; anything else (no boundary, a preamble,
a charset other than UTF-8, a part without a name, more parts or a longer text part than
Starlette allows) returns None, and Starlette's parser, which the caller falls back to,
gives it the answer it always got. One answer is new: a body that ends before its closing
delimiter raises ``Truncated``. python-multipart accepts such a body and silently drops the
part it was cut in (a ``target_class`` lost, say, and the job run with the default).
"""

from __future__ import annotations

from dataclasses import dataclass

from python_multipart.multipart import parse_options_header

# Starlette's own limits: past them its parser refuses the form with 400.
MAX_PARTS = 1000
MAX_TEXT_PART = 1024 * 1024


class Truncated(ValueError):
    """The body ended inside a part, or before the closing delimiter."""


@dataclass(frozen=True)
class FilePart:
    """A part sent with a filename (a file input), whatever its content."""

    filename: str
    data: bytes


Parts = list[tuple[str, "str | FilePart"]]


def _decode(raw: bytes) -> str:
    """As Starlette decodes names and text: UTF-8, else Latin-1 (which never fails)."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("latin-1")


def parse(body: bytes, content_type: str) -> Parts | None:
    """The form's parts in order, or None to leave the body to Starlette's parser; raises
    ``Truncated`` for a body of this boundary that stops short."""
    kind, params = parse_options_header(content_type)
    boundary = params.get(b"boundary")
    charset = params.get(b"charset", b"utf-8").lower()
    if kind != b"multipart/form-data" or not boundary or charset not in (b"utf-8", b"utf8"):
        return None
    delimiter = b"--" + boundary
    separator = b"\r\n" + delimiter
    if not body.startswith(delimiter):
        return None  # a preamble, or not this boundary at all
    parts: Parts = []
    pos = len(delimiter)
    while True:
        if len(body) < pos + 2:
            raise Truncated("the multipart body ends before its closing boundary")
        if body.startswith(b"--", pos):  # the closing delimiter
            return parts if body[pos + 2 :] in (b"", b"\r\n") else None
        if not body.startswith(b"\r\n", pos) or len(parts) >= MAX_PARTS:
            return None
        head_end = body.find(b"\r\n\r\n", pos + 2)
        if head_end < 0:
            raise Truncated("the multipart body ends inside a part's headers")
        disposition = None
        for line in body[pos + 2 : head_end].split(b"\r\n"):
            name, colon, value = line.partition(b":")
            if not colon:
                return None
            if name.strip().lower() == b"content-disposition":
                disposition = value.strip()
        if disposition is None:
            return None
        end = body.find(separator, head_end + 4)
        if end < 0:
            raise Truncated("the multipart body ends inside a part, before its closing boundary")
        _, options = parse_options_header(disposition)
        if b"name" not in options:
            return None
        data = body[head_end + 4 : end]
        if b"filename" in options:
            parts.append((_decode(options[b"name"]), FilePart(_decode(options[b"filename"]), data)))
        elif len(data) > MAX_TEXT_PART:
            return None
        else:
            parts.append((_decode(options[b"name"]), _decode(data)))
        pos = end + len(separator)
