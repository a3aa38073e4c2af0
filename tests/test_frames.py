"""Frame building, without sockets or an event loop."""

from __future__ import annotations

import json

import pytest

from .sseclient import SSEParser
from .wsframes import Opcode, parse_frames


def parse_sse(data: bytes):
    return SSEParser().feed(data)


@pytest.mark.parametrize(
    ("message", "payload", "json_value"),
    [
        ("héllo", "héllo".encode(), b'"h\xc3\xa9llo"'),
        (b"raw \xe2\x82\xac", b"raw \xe2\x82\xac", '"raw €"'.encode()),
        ({"a": [1, 2.5, None]}, b'{"a":[1,2.5,null]}', b'{"a":[1,2.5,null]}'),
        (0.5, b"0.5", b"0.5"),
        ("", b"", b'""'),
    ],
)
def test_encode_message(impl, message, payload, json_value):
    assert impl.frames.encode_message(message) == (payload, json_value)


def test_invalid_utf8_bytes_is_value_error(impl):
    with pytest.raises(ValueError, match="not valid UTF-8"):
        impl.frames.encode_message(b"\xff\xfe")


def test_lone_surrogate_is_value_error(impl):
    with pytest.raises(ValueError, match="UTF-8"):
        impl.frames.encode_message("bad \ud800")


def test_unserializable_is_type_error_naming_the_type(impl):
    with pytest.raises(TypeError, match="'object'"):
        impl.frames.encode_message(object())


def test_newlines_cannot_inject_fields(impl):
    event = impl.frames.sse_event(b"a\n\nevent: x\ndata: y", b"7")
    assert event == b"id: 7\ndata: a\ndata: \ndata: event: x\ndata: data: y\n\n"
    (parsed,) = parse_sse(event)
    assert (parsed.type, parsed.data, parsed.id) == ("message", "a\n\nevent: x\ndata: y", "7")


@pytest.mark.parametrize(
    ("payload", "data"),
    [
        (b"a\rb", "a\nb"),
        (b"a\r\nb", "a\nb"),
        (b"a\r\n\r\nb\n", "a\n\nb\n"),
        (b"\r", "\n"),
        (b"", ""),
        (b" leading space", " leading space"),
        (b":not a comment", ":not a comment"),
    ],
)
def test_every_line_end_starts_a_data_line(impl, payload, data):
    (parsed,) = parse_sse(impl.frames.sse_event(payload))
    assert parsed.data == data


def test_event_field(impl):
    (parsed,) = parse_sse(impl.frames.sse_event(b"x", b"1", b"tick"))
    assert (parsed.type, parsed.data) == ("tick", "x")


@pytest.mark.parametrize(("size", "header_len"), [(0, 2), (125, 2), (126, 4), (65535, 4), (65536, 10), (70000, 10)])
def test_ws_frame_lengths(impl, size, header_len):
    body = b"x" * size
    frame = impl.frames.ws_text_frame(body)
    assert len(frame) == size + header_len
    (parsed,) = parse_frames(frame)
    assert parsed.opcode is Opcode.TEXT and parsed.fin and parsed.data == body


def test_build_frames_of_a_dict(impl):
    sse, ws, size = impl.frames.build_frames({"price": 1.5}, b"e-3")
    (event,) = parse_sse(sse)
    assert (event.id, json.loads(event.data)) == ("e-3", {"price": 1.5})
    (frame,) = parse_frames(ws)
    assert json.loads(frame.data) == {"id": "e-3", "data": {"price": 1.5}}
    assert size == len(b'{"price":1.5}')
    assert impl.frames.ws_data_body(b"1") == b'{"data":1}'


def test_build_frames_of_text_keeps_it_text_in_json(impl):
    _, ws, _ = impl.frames.build_frames('say "hi"\n')
    (frame,) = parse_frames(ws)
    assert json.loads(frame.data) == {"data": 'say "hi"\n'}


def test_ws_body_with_id_and_event(impl):
    body = impl.frames.ws_data_body(b"[1]", b"ab-7", b'we"ird')
    assert json.loads(body) == {"id": "ab-7", "event": 'we"ird', "data": [1]}
    (frame,) = parse_frames(impl.frames.build_frames([1], b"ab-7", b"tick")[1])
    assert json.loads(frame.data) == {"id": "ab-7", "event": "tick", "data": [1]}
