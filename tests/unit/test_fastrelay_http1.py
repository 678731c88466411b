"""The HTTP/1.1 response framing under the streaming hot path (proxy/http1.py): chunked
bodies split at every byte boundary, Content-Length and close-delimited bodies, heads."""

from __future__ import annotations

import pytest

from proxy.http1 import MAX_HEAD, BodyReader, ChunkedDecoder, parse_head, read_head

CHUNKED = [
    pytest.param([b"data: {}\n\n"], b"", id="one-chunk"),
    pytest.param([b"Hello", b", ", b"world!"], b"", id="three-chunks"),
    pytest.param([b"x" * 300, b"y" * 4097], b"", id="multi-digit-sizes"),
    pytest.param([b"\r\n\r\n", b"0\r\n"], b"", id="payload-that-looks-like-framing"),
    pytest.param([b"data: a\n\n"], b"Expires: never\r\nX-Other: 1\r\n", id="trailers"),
]


def chunked(pieces: list[bytes], trailers: bytes = b"", *, upper: bool = False, ext: bool = False) -> bytes:
    out = b""
    for piece in pieces:
        size = b"%X" % len(piece) if upper else b"%x" % len(piece)
        out += size + (b";name=value" if ext else b"") + b"\r\n" + piece + b"\r\n"
    return out + b"0\r\n" + trailers + b"\r\n"


def feed_all(decoder: ChunkedDecoder | BodyReader, parts: list[bytes]) -> bytes:
    out = b""
    for part in parts:
        out += decoder.feed(part)
    return out


@pytest.mark.parametrize("upper", [False, True])
@pytest.mark.parametrize("ext", [False, True])
@pytest.mark.parametrize(("pieces", "trailers"), CHUNKED)
def test_chunked_body_split_at_every_byte_boundary(pieces: list[bytes], trailers: bytes, upper: bool, ext: bool) -> None:
    raw = chunked(pieces, trailers, upper=upper, ext=ext)
    for cut in range(len(raw) + 1):
        decoder = ChunkedDecoder()
        assert feed_all(decoder, [raw[:cut], raw[cut:]]) == b"".join(pieces), cut
        assert decoder.done, cut


@pytest.mark.parametrize(("pieces", "trailers"), CHUNKED)
def test_chunked_body_byte_by_byte_and_in_three_parts(pieces: list[bytes], trailers: bytes) -> None:
    raw = chunked(pieces, trailers)
    decoder = ChunkedDecoder()
    assert feed_all(decoder, [raw[i : i + 1] for i in range(len(raw))]) == b"".join(pieces)
    assert decoder.done
    step = max(1, len(raw) // 40)
    for first in range(0, len(raw), step):
        for second in range(first, len(raw), step):
            decoder = ChunkedDecoder()
            assert feed_all(decoder, [raw[:first], raw[first:second], raw[second:]]) == b"".join(pieces)
            assert decoder.done


def test_chunked_body_is_not_done_before_the_terminator() -> None:
    raw = chunked([b"abc"])
    decoder = ChunkedDecoder()
    assert decoder.feed(raw[:-2]) == b"abc"
    assert not decoder.done
    assert decoder.feed(raw[-2:]) == b""
    assert decoder.done


def test_bytes_after_the_terminator_are_ignored() -> None:
    decoder = ChunkedDecoder()
    assert decoder.feed(chunked([b"abc"]) + b"HTTP/1.1 200 OK\r\n") == b"abc"
    assert decoder.done


@pytest.mark.parametrize(
    "raw",
    [
        pytest.param(b"zz\r\nab\r\n", id="not-hex"),
        pytest.param(b"-1\r\n", id="negative"),
        pytest.param(b"0x3\r\nabc\r\n", id="0x-prefix"),
        pytest.param(b"\r\n", id="empty-size"),
        pytest.param(b"3\r\nabcXY", id="data-without-crlf"),
        pytest.param(b"1" * 5000, id="endless-size-line"),
    ],
)
def test_malformed_chunked_framing_raises(raw: bytes) -> None:
    with pytest.raises(ValueError):
        ChunkedDecoder().feed(raw)


def test_content_length_body_split_everywhere_drops_what_follows() -> None:
    body = b"data: {}\n\ndata: [DONE]\n\n"
    raw = body + b"garbage after the body"
    for cut in range(len(raw) + 1):
        reader = BodyReader(200, {"content-length": str(len(body))})
        out = reader.feed(raw[:cut])
        if not reader.done:
            out += reader.feed(raw[cut:])
        assert out == body and reader.done and not reader.ends_at_close


@pytest.mark.parametrize(
    ("status", "headers", "done", "at_close"),
    [
        pytest.param(200, {"content-length": "0"}, True, False, id="empty-length"),
        pytest.param(204, {}, True, False, id="204"),
        pytest.param(304, {"content-length": "10"}, True, False, id="304"),
        pytest.param(200, {}, False, True, id="close-delimited"),
        pytest.param(200, {"transfer-encoding": "gzip, Chunked"}, False, False, id="chunked-last"),
        pytest.param(200, {"transfer-encoding": "chunked", "content-length": "5"}, False, False, id="chunked-wins"),
    ],
)
def test_body_framing_follows_the_head(status: int, headers: dict[str, str], done: bool, at_close: bool) -> None:
    reader = BodyReader(status, headers)
    assert (reader.done, reader.ends_at_close) == (done, at_close)


def test_close_delimited_body_passes_everything_through() -> None:
    reader = BodyReader(200, {})
    assert reader.feed(b"abc") + reader.feed(b"\r\n0\r\n\r\n") == b"abc\r\n0\r\n\r\n"
    assert not reader.done


@pytest.mark.parametrize("value", ["-1", "1e3", "", "5, 6"])
def test_invalid_content_length_raises(value: str) -> None:
    with pytest.raises(ValueError):
        BodyReader(200, {"content-length": value})


def test_read_head_waits_for_the_blank_line_and_skips_1xx() -> None:
    raw = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nX-A: 1\r\nx-a: 2\r\n\r\ndata: "
    for cut in range(len(raw)):
        if cut < raw.index(b"data: "):
            assert read_head(raw[:cut]) is None, cut
    assert read_head(raw) == (200, {"content-type": "text/event-stream", "x-a": "1, 2"}, b"data: ")


def test_read_head_gives_up_on_an_endless_head() -> None:
    with pytest.raises(ValueError, match="too large"):
        read_head(b"HTTP/1.1 200 OK\r\n" + b"X: y\r\n" * (MAX_HEAD // 6))


@pytest.mark.parametrize(
    "raw",
    [
        pytest.param(b"SSH-2.0-OpenSSH_9.6", id="not-http"),
        pytest.param(b"HTTP/1.1 2xx OK", id="status-not-numeric"),
        pytest.param(b"HTTP/2 200", id="http2"),
        pytest.param(b"HTTP/1.1 200 OK\r\nno colon here", id="header-without-colon"),
    ],
)
def test_malformed_heads_raise(raw: bytes) -> None:
    with pytest.raises(ValueError):
        parse_head(raw)


def test_status_line_without_reason_is_accepted() -> None:
    assert parse_head(b"HTTP/1.0 503") == (503, {})
