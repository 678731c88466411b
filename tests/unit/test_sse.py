"""The SSE decoder fed awkward splits."""

from __future__ import annotations

import pytest

from proxy.sse import DONE, SSEDecoder

STREAM = (
    b'data: {"choices":[{"delta":{"role":"assistant","content":""}}]}\n\n'
    b'data: {"choices":[{"delta":{"content":"caf\xc3\xa9 \\"q\\"\\n"}}]}\n\n'
    b": keep-alive\n\n"
    b'data: {"choices":[],"usage":{"prompt_tokens":3}}\n\n'
    b"data: [DONE]\n\n"
)
EVENTS = [
    b'{"choices":[{"delta":{"role":"assistant","content":""}}]}',
    b'{"choices":[{"delta":{"content":"caf\xc3\xa9 \\"q\\"\\n"}}]}',
    b'{"choices":[],"usage":{"prompt_tokens":3}}',
    DONE,
]


def decode(chunks: list[bytes]) -> list[bytes]:
    decoder = SSEDecoder()
    out = [e for c in chunks for e in decoder.feed(c)]
    return out + decoder.close()


def test_whole_stream() -> None:
    assert decode([STREAM]) == EVENTS


@pytest.mark.parametrize("framing", [pytest.param(b"\n", id="LF"), pytest.param(b"\r\n", id="CRLF")])
def test_split_at_every_byte_boundary(framing: bytes) -> None:
    stream = STREAM.replace(b"\n", framing)
    for cut in range(1, len(stream)):
        assert decode([stream[:cut], stream[cut:]]) == EVENTS, cut


def test_one_byte_at_a_time() -> None:
    assert decode([STREAM[i : i + 1] for i in range(len(STREAM))]) == EVENTS


@pytest.mark.parametrize(
    ("raw", "events"),
    [
        pytest.param(b"data:no-space\n\n", [b"no-space"], id="data without a space"),
        pytest.param(b"data: a\ndata: b\n\n", [b"a\nb"], id="multi-line data joins with newline"),
        pytest.param(b"event: x\nid: 1\ndata: y\n\n", [b"y"], id="other fields ignored"),
        pytest.param(b": comment only\n\n", [], id="comment-only event yields nothing"),
        pytest.param(b"data: tail-without-blank-line", [b"tail-without-blank-line"], id="tail is returned on close"),
        pytest.param(b"\r\ndata: x\r\r", [b"x"], id="lone CR line endings"),
    ],
)
def test_framing_rows(raw: bytes, events: list[bytes]) -> None:
    assert decode([raw]) == events


@pytest.mark.parametrize(
    ("line_end", "blank"),
    [
        pytest.param(b"\n", b"\n", id="LF"),
        pytest.param(b"\r\n", b"\r\n", id="CRLF"),
        pytest.param(b"\r\n", b"\n", id="CRLF-line-LF-blank"),
        pytest.param(b"\r", b"\r", id="CR"),
    ],
)
def test_one_event_per_read(line_end: bytes, blank: bytes) -> None:
    """How a relay reads vLLM: each upstream read is one whole event."""
    reads = [b"data: " + e + line_end + blank for e in EVENTS]
    assert decode(reads) == EVENTS
