"""The detached WebSocket's frame reader, without I/O or an event loop.

Client frames are built by the `websockets` library (masked, as a client sends them),
so the reader is checked against an independent encoder: any message, fragmented any
way, with control frames between the fragments, arriving in chunks of any size, comes
out whole and in order.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from websockets.frames import Close, Frame, Opcode

from tornadose.transport.wsproto import (
    BINARY,
    CLOSE,
    PING,
    TEXT,
    FrameReader,
    ProtocolError,
    close_frame,
    data_frame,
)

from .wsframes import parse_frames


def client(opcode: Opcode, payload: bytes, fin: bool = True) -> bytes:
    return Frame(opcode, payload, fin=fin).serialize(mask=True, extensions=[])


def feed_in_chunks(reader: FrameReader, data: bytes, cuts: list[int]) -> list:
    events, start = [], 0
    for cut in sorted(set(c % (len(data) + 1) for c in cuts)) + [len(data)]:
        events += reader.feed(data[start:cut])
        start = cut
    return events


messages = st.lists(
    st.tuples(st.booleans(), st.text(max_size=300), st.integers(1, 4)), min_size=1, max_size=6
)


@settings(max_examples=200, deadline=None)
@given(messages=messages, cuts=st.lists(st.integers(0, 10_000), max_size=12))
def test_fragmented_messages_in_any_chunks_come_out_whole(messages, cuts):
    wire, expected = b"", []
    for binary, text, parts in messages:
        payload = text.encode()
        size = max(1, -(-len(payload) // parts))
        pieces = [payload[i:i + size] for i in range(0, len(payload), size)] or [b""]
        for index, piece in enumerate(pieces):
            opcode = (Opcode.BINARY if binary else Opcode.TEXT) if index == 0 else Opcode.CONT
            wire += client(opcode, piece, fin=index == len(pieces) - 1)
            if index == 0 and len(pieces) > 1:
                wire += client(Opcode.PING, b"between")  # control frames may interleave
                expected.append((PING, b"between"))
        expected.append((BINARY, payload) if binary else (TEXT, text))
    reader = FrameReader(max_size=1 << 20)
    assert feed_in_chunks(reader, wire, cuts) == expected
    assert reader.feed(b"") == []


def test_close_frames():
    reader = FrameReader(1024)
    bye = client(Opcode.CLOSE, Close(1000, "bye").serialize())
    assert reader.feed(bye) == [(CLOSE, (1000, "bye"))]
    assert reader.feed(client(Opcode.CLOSE, b"")) == [(CLOSE, (1005, ""))]


@pytest.mark.parametrize(
    ("wire", "code"),
    [
        (Frame(Opcode.TEXT, b"x").serialize(mask=False, extensions=[]), 1002),
        (client(Opcode.TEXT, b"x" * 2000), 1009),
        (client(Opcode.TEXT, b"\xc3\x28"), 1007),
        (client(Opcode.CONT, b"x"), 1002),
        (client(Opcode.TEXT, b"a", fin=False) + client(Opcode.TEXT, b"b"), 1002),
        (client(Opcode.CLOSE, b"\x03"), 1002),
        (client(Opcode.CLOSE, b"\x03\xed"), 1002),  # 1005 may not be sent
        (client(Opcode.CLOSE, b"\x03\xe8\xff"), 1007),
        (bytes([0xC1, 0x80, 0, 0, 0, 0]), 1002),  # RSV1 without an extension
    ],
    ids=["unmasked", "too-big", "bad-utf8", "orphan-continuation", "interleaved-data",
         "one-byte-close", "reserved-close-code", "bad-close-reason", "rsv1"],
)
def test_protocol_errors_carry_their_close_code(wire, code):
    with pytest.raises(ProtocolError) as error:
        FrameReader(1024).feed(wire)
    assert error.value.code == code


def test_the_size_limit_counts_every_fragment_and_needs_no_payload():
    reader = FrameReader(10)
    assert reader.feed(client(Opcode.TEXT, b"12345", fin=False)) == []
    with pytest.raises(ProtocolError):
        reader.feed(client(Opcode.CONT, b"123456")[:2])  # the header alone is enough


def test_server_frames_parse_back_with_websockets():
    for payload in (b"", b"x" * 125, b"y" * 126, b"z" * 70_000):
        (parsed,) = parse_frames(data_frame(payload, binary=True))
        assert parsed.opcode == Opcode.BINARY and parsed.data == payload
    (parsed,) = parse_frames(close_frame(1001, "é" * 100))
    assert Close.parse(parsed.data).code == 1001
    assert Close.parse(parsed.data).reason == "é" * 61  # cut to 123 bytes, on a character
