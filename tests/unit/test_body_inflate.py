"""proxy/body.py's inflater on its own: whole bodies come out exactly, however they are
split, and it never hands out more than the room it was given."""

from __future__ import annotations

import gzip
import random
import zlib
from collections.abc import Callable

import pytest

from proxy import body as body_mod
from proxy.body import Inflater
from proxy.errors import BadRequest

PIECE = body_mod._PIECE


def raw_deflate(data: bytes) -> bytes:
    compressor = zlib.compressobj(wbits=-zlib.MAX_WBITS)
    return compressor.compress(data) + compressor.flush()


ENCODERS: dict[str, tuple[str, Callable[[bytes], bytes]]] = {
    "gzip": ("gzip", gzip.compress),
    "deflate": ("deflate", zlib.compress),
    "raw-deflate": ("deflate", raw_deflate),
}


def inflate(encoding: str, wire: bytes, split: int, room: int = 1 << 40) -> bytes:
    inflater, out = Inflater(encoding), bytearray()
    for at in range(0, len(wire), split):
        inflater.feed(wire[at : at + split], out, room - len(out))
    inflater.finish()
    return bytes(out)


@pytest.mark.parametrize("encoder", list(ENCODERS))
@pytest.mark.parametrize(
    "size", [pytest.param(n, id=str(n)) for n in (1, PIECE - 1, PIECE, PIECE + 1, 2 * PIECE, 12 * PIECE + 5)]
)
@pytest.mark.parametrize("text", ["spaces", "random"])
@pytest.mark.parametrize("split", [pytest.param(1 << 30, id="one-piece"), pytest.param(7, id="7-byte-pieces")])
def test_a_body_inflates_exactly_however_it_is_split(encoder: str, size: int, text: str, split: int) -> None:
    data = b" " * size if text == "spaces" else random.Random(size).randbytes(size)
    encoding, encode = ENCODERS[encoder]
    if split == 7 and size > 2 * PIECE and text == "random":
        split = 4096  # the same paths, fewer calls
    assert inflate(encoding, encode(data), split) == data


def test_it_never_hands_out_more_than_its_room() -> None:
    inflater, out = Inflater("gzip"), bytearray()
    inflater.feed(gzip.compress(b" " * (8 * PIECE)), out, 1000)
    assert len(out) == 1000


def test_two_gzip_members_are_one_body_and_trailing_bytes_after_deflate_are_refused() -> None:
    assert inflate("gzip", gzip.compress(b"ab") + gzip.compress(b"cd"), 3) == b"abcd"
    with pytest.raises(BadRequest, match="data after the end of the deflate stream"):
        inflate("deflate", zlib.compress(b"ab") + b"x", 100)
