"""Unit tests for the test-suite's own SSE client (parser + chunked decoder).

No network here: these check that ``tests/sseclient.py`` follows the WHATWG
event-stream rules, so that the server tests built on it can be trusted.
"""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from .sseclient import ChunkedDecoder, Event, SSEParser, encode_event


def parse(*chunks: bytes, parser: SSEParser | None = None) -> list[Event]:
    parser = parser if parser is not None else SSEParser()
    events: list[Event] = []
    for chunk in chunks:
        events.extend(parser.feed(chunk))
    return events


def bytewise(data: bytes) -> list[bytes]:
    return [data[i : i + 1] for i in range(len(data))]


# ---------------------------------------------------------------------------
# Examples from the spec's event-stream sections
# ---------------------------------------------------------------------------


def test_multiline_data_joined_with_lf():
    events = parse(b"data: YHOO\ndata: +2\ndata: 10\n\n")
    assert events == [Event(type="message", data="YHOO\n+2\n10", id="", retry=None)]


def test_comment_id_and_unterminated_block():
    parser = SSEParser()
    stream = (
        b": test stream\n"
        b"\n"
        b"data: first event\n"
        b"id: 1\n"
        b"\n"
        b"data:second event\n"
        b"id\n"
        b"\n"
        b"data:  third event\n"
    )
    events = parse(stream, parser=parser)
    # The comment block dispatches nothing; the third block is not finished.
    assert [(e.data, e.id) for e in events] == [
        ("first event", "1"),
        ("second event", ""),  # "id" with no colon resets the id to ""
    ]
    assert parser.comments == 1
    assert parser.last_event_id == ""
    # Finishing the third block: only ONE leading space is stripped.
    (third,) = parser.feed(b"\n")
    assert third.data == " third event"


def test_data_field_without_colon():
    events = parse(b"data\n\ndata\ndata\n\ndata:")
    # first block: data buffer "\n" -> ""; second: "\n\n" -> "\n";
    # the trailing "data:" never gets its blank line.
    assert [e.data for e in events] == ["", "\n"]


def test_space_after_colon_is_optional():
    events = parse(b"data:test\n\ndata: test\n\n")
    assert [e.data for e in events] == ["test", "test"]


def test_event_type_and_typed_events():
    stream = (
        b"event: add\ndata: 73857293\n\nevent: remove\ndata: 2153\n\nevent: add\ndata: 113411\n\n"
    )
    events = parse(stream)
    assert [(e.type, e.data) for e in events] == [
        ("add", "73857293"),
        ("remove", "2153"),
        ("add", "113411"),
    ]


def test_empty_event_field_means_message():
    (event,) = parse(b"event:\ndata: x\n\n")
    assert event.type == "message"


# ---------------------------------------------------------------------------
# Field handling
# ---------------------------------------------------------------------------


def test_value_split_at_first_colon_only():
    (event,) = parse(b"data: a: b:c\n\n")
    assert event.data == "a: b:c"


def test_only_one_leading_space_removed_and_trailing_kept():
    (event,) = parse(b"data:   x  \n\n")
    assert event.data == "  x  "


def test_unknown_and_wrong_case_fields_ignored():
    parser = SSEParser()
    events = parse(b"Data: no\nfoo: bar\nDATA: no\ndata: yes\n\n", parser=parser)
    assert events == [Event(data="yes")]


def test_unknown_field_alone_dispatches_nothing():
    assert parse(b"foo: bar\n\n") == []


def test_id_persists_across_events():
    parser = SSEParser()
    events = parse(
        b"id: 7\ndata: a\n\ndata: b\n\nid: 8\ndata: c\n\ndata: d\n\n",
        parser=parser,
    )
    assert [(e.data, e.id) for e in events] == [
        ("a", "7"),
        ("b", "7"),
        ("c", "8"),
        ("d", "8"),
    ]
    assert parser.last_event_id == "8"


def test_id_set_after_data_in_same_block_applies_to_that_event():
    (event,) = parse(b"data: a\nid: 42\n\n")
    assert event.id == "42"


def test_id_containing_nul_is_ignored():
    parser = SSEParser()
    events = parse(b"id: 1\ndata: a\n\nid: 2\x003\ndata: b\n\n", parser=parser)
    assert [e.id for e in events] == ["1", "1"]
    assert parser.last_event_id == "1"


def test_empty_id_resets_last_event_id():
    parser = SSEParser()
    events = parse(b"id: 5\ndata: a\n\nid:\ndata: b\n\n", parser=parser)
    assert [e.id for e in events] == ["5", ""]
    assert parser.last_event_id == ""


def test_block_without_data_not_dispatched_but_updates_id():
    parser = SSEParser()
    events = parse(b"id: 99\nevent: ping\n\n", parser=parser)
    assert events == []
    assert parser.last_event_id == "99"
    # The event type buffer was reset by that blank line.
    (event,) = parser.feed(b"data: later\n\n")
    assert event == Event(type="message", data="later", id="99")


def test_blank_lines_alone_dispatch_nothing():
    parser = SSEParser()
    assert parse(b"\n\n\r\n\r\r", parser=parser) == []
    assert parser.events_dispatched == 0


def test_empty_data_value_is_still_an_event():
    (event,) = parse(b"data:\n\n")
    assert event.data == ""


def test_only_one_trailing_lf_removed():
    (event,) = parse(b"data: a\ndata:\n\n")
    assert event.data == "a\n"


def test_incomplete_block_at_end_is_not_dispatched():
    parser = SSEParser()
    assert parse(b"data: a\n\ndata: b\n", parser=parser) == [Event(data="a")]
    assert parser.events_dispatched == 1


def test_comments_counted_and_ignored():
    parser = SSEParser()
    events = parse(b":\n: heartbeat\n:x\ndata: a\n: inside\n\n:\n\n", parser=parser)
    assert events == [Event(data="a")]
    assert parser.comments == 5


def test_comment_only_stream_dispatches_nothing():
    parser = SSEParser()
    for _ in range(3):
        assert parser.feed(b": keepalive\n\n") == []
    assert parser.comments == 3


def test_colon_not_at_line_start_is_not_a_comment():
    parser = SSEParser()
    (event,) = parse(b" : x\ndata: y\n\n", parser=parser)
    # " " is an (unknown) field name, not a comment
    assert parser.comments == 0
    assert event.data == "y"


# ---------------------------------------------------------------------------
# retry
# ---------------------------------------------------------------------------


def test_retry_sets_reconnection_time():
    parser = SSEParser()
    (event,) = parse(b"retry: 1500\ndata: x\n\n", parser=parser)
    assert event.retry == 1500
    assert parser.retry == 1500


@pytest.mark.parametrize(
    "value",
    [
        b"",
        b" ",
        b"10a",
        b"-1",
        b"+5",
        b"1.5",
        b"1 000",
        b"0x10",
        "\u0661\u0662".encode(),
        "\uff11".encode(),
    ],  # Arabic-Indic and fullwidth digits
)
def test_retry_ignored_unless_ascii_digits(value):
    parser = SSEParser()
    parse(b"retry: 300\n\n", parser=parser)
    (event,) = parse(b"retry:" + value + b"\ndata: x\n\n", parser=parser)
    assert event.retry is None
    assert parser.retry == 300


def test_retry_leading_space_stripped_and_leading_zeros_ok():
    (event,) = parse(b"retry: 0042\ndata: x\n\n")
    assert event.retry == 42


def test_retry_only_block_updates_parser_not_next_event():
    parser = SSEParser()
    events = parse(b"retry: 2000\n\ndata: x\n\n", parser=parser)
    assert events == [Event(data="x", retry=None)]
    assert parser.retry == 2000


def test_retry_last_value_wins():
    parser = SSEParser()
    (event,) = parse(b"retry: 1\nretry: 2\ndata: x\n\n", parser=parser)
    assert event.retry == 2 and parser.retry == 2


# ---------------------------------------------------------------------------
# Line endings
# ---------------------------------------------------------------------------

TWO_EVENTS = ["id: 1", "data: a", "data: b", "", ": c", "event: e", "data: z", ""]


@pytest.mark.parametrize("eol", [b"\n", b"\r", b"\r\n"])
def test_each_line_ending(eol):
    stream = eol.join(line.encode() for line in TWO_EVENTS) + eol
    events = parse(stream)
    assert events == [
        Event(data="a\nb", id="1"),
        Event(type="e", data="z", id="1"),
    ]


def test_mixed_line_endings():
    stream = b"data: a\rdata: b\r\ndata: c\n\r\ndata: d\r\r"
    assert [e.data for e in parse(stream)] == ["a\nb\nc", "d"]


def test_lf_cr_is_two_line_ends():
    # "\n\r" is LF followed by a lone CR: the CR is the blank line.
    assert [e.data for e in parse(b"data: a\n\r")] == ["a"]


def test_crlf_split_across_feeds_is_one_line_end():
    parser = SSEParser()
    assert parser.feed(b"data: a\r") == []
    # If that LF were taken as a blank line, "a" would be dispatched alone.
    assert parser.feed(b"\ndata: b\r\n\r\n") == [Event(data="a\nb")]


def test_crlf_split_with_empty_feed_between():
    parser = SSEParser()
    events = parse(b"data: a\r", b"", b"\n", b"data: b\r", b"", b"\n\r", b"\n", parser=parser)
    assert events == [Event(data="a\nb")]
    assert parser.feed(b"data: c\n\n") == [Event(data="c")]


def test_cr_ends_line_without_waiting_for_next_byte():
    parser = SSEParser()
    # The second CR is the blank line: dispatch must happen now, not on the
    # next feed (the server may send nothing more for a long time).
    assert parser.feed(b"data: now\r\r") == [Event(data="now")]


def test_cr_cr_split_across_feeds_is_two_line_ends():
    parser = SSEParser()
    assert parser.feed(b"data: x\r") == []
    assert parser.feed(b"\r") == [Event(data="x")]


def test_other_unicode_line_breaks_are_not_line_ends():
    data = "a\u2028b\u0085c\x0bd\x0ce\x1cf"
    (event,) = parse(b"data: " + data.encode() + b"\n\n")
    assert event.data == data


def test_every_byte_split_gives_same_result():
    stream = (
        b"\xef\xbb\xbf: hi\r\nid: \xe2\x82\xac1\r\n"
        b"event: upd\rdata: caf\xc3\xa9\r\ndata: \xf0\x9f\x98\x80\n\r\n"
        b"retry: 10\ndata:x\r\r"
    )
    expected = [
        Event(type="upd", data="caf\u00e9\n\U0001f600", id="\u20ac1"),
        Event(data="x", id="\u20ac1", retry=10),
    ]
    assert parse(stream) == expected
    for i in range(len(stream) + 1):
        for j in range(i, len(stream) + 1):
            parser = SSEParser()
            got = parse(stream[:i], stream[i:j], stream[j:], parser=parser)
            assert got == expected, (i, j)
            assert parser.comments == 1
    assert parse(*bytewise(stream)) == expected


# ---------------------------------------------------------------------------
# UTF-8 decoding and BOM
# ---------------------------------------------------------------------------


def test_multibyte_utf8_split_across_feeds():
    text = "\u00e9\u20ac\U0001f600\u4e2d"
    raw = b"data: " + text.encode() + b"\n\n"
    assert parse(*bytewise(raw)) == [Event(data=text)]


def test_invalid_utf8_becomes_replacement_character():
    (event,) = parse(b"data: a\xffb\xc3(c\n\n")
    assert event.data == "a\ufffdb\ufffd(c"


def test_replacement_follows_maximal_subpart_rule():
    # Truncated 4-byte sequence -> one U+FFFD; C0 80 -> two; surrogate
    # encoding ED A0 80 -> three (WHATWG UTF-8 decoder behaviour).
    (event,) = parse(b"data: \xf0\x9f\x98A\xc0\x80B\xed\xa0\x80\n\n")
    assert event.data == "\ufffdA\ufffd\ufffdB\ufffd\ufffd\ufffd"


def test_invalid_sequence_split_across_feeds():
    (event,) = parse(b"data: \xe2\x82", b"A\n\n")
    assert event.data == "\ufffdA"


def test_truncated_char_before_line_end():
    (event,) = parse(b"data: \xe2\x82\n\n")
    assert event.data == "\ufffd"


def test_leading_bom_stripped():
    parser = SSEParser()
    events = parse(b"\xef\xbb\xbfdata: x\n\n", parser=parser)
    assert events == [Event(data="x")]


def test_leading_bom_split_across_feeds():
    events = parse(b"\xef", b"\xbb", b"\xbf", b"data: x\n\n")
    assert events == [Event(data="x")]


def test_bom_before_comment():
    parser = SSEParser()
    assert parse(b"\xef\xbb\xbf: hello\n", parser=parser) == []
    assert parser.comments == 1


def test_only_one_bom_stripped():
    # The second BOM becomes part of the field name "\ufeffdata" (ignored).
    assert parse(b"\xef\xbb\xbf\xef\xbb\xbfdata: x\n\n") == []


def test_bom_later_in_stream_is_data():
    (first, second) = parse(b"data: a\n\n\xef\xbb\xbfdata: b\n\ndata: \xef\xbb\xbfc\n\n")
    assert first.data == "a"
    assert second.data == "\ufeffc"


def test_nul_allowed_in_data():
    (event,) = parse(b"data: a\x00b\n\n")
    assert event.data == "a\x00b"


# ---------------------------------------------------------------------------
# encode_event helper
# ---------------------------------------------------------------------------


def test_encode_event_round_trip():
    raw = encode_event("l1\r\nl2\rl3\nl4", event="t", id="9", retry=5)
    assert raw == b"event: t\nid: 9\nretry: 5\ndata: l1\ndata: l2\ndata: l3\ndata: l4\n\n"
    assert parse(raw) == [Event(type="t", data="l1\nl2\nl3\nl4", id="9", retry=5)]


# ---------------------------------------------------------------------------
# Chunked transfer decoding
# ---------------------------------------------------------------------------

CHUNKED_BODY = (
    b"5\r\nhello\r\n"
    b"1;name=value\r\n,\r\n"
    b'A ; ext ; other="q;x"\r\n 01234567\n\r\n'
    b"1a\r\nabcdefghijklmnopqrstuvwxyz\r\n"
    b"0\r\n"
    b"X-Trailer: yes\r\n"
    b"\r\n"
)
CHUNKED_PAYLOAD = b"hello, 01234567\nabcdefghijklmnopqrstuvwxyz"


def test_chunked_whole_body():
    dec = ChunkedDecoder()
    assert dec.feed(CHUNKED_BODY) == CHUNKED_PAYLOAD
    assert dec.done
    assert dec.chunk_sizes == [5, 1, 10, 26, 0]
    assert dec.trailers == [b"X-Trailer: yes"]
    assert dec.unconsumed == b""


def test_chunked_split_at_every_offset():
    for i in range(len(CHUNKED_BODY) + 1):
        dec = ChunkedDecoder()
        first = dec.feed(CHUNKED_BODY[:i])
        assert dec.done == (i == len(CHUNKED_BODY)), i  # only after the final CRLF
        second = dec.feed(CHUNKED_BODY[i:])
        assert first + second == CHUNKED_PAYLOAD, i
        assert dec.done, i
        assert dec.trailers == [b"X-Trailer: yes"], i


def test_chunked_split_at_every_pair_of_offsets():
    n = len(CHUNKED_BODY)
    for i in range(n + 1):
        for j in range(i, n + 1):
            dec = ChunkedDecoder()
            parts = (CHUNKED_BODY[:i], CHUNKED_BODY[i:j], CHUNKED_BODY[j:])
            out = b"".join(dec.feed(p) for p in parts)
            assert out == CHUNKED_PAYLOAD and dec.done, (i, j)


def test_chunked_bytewise_and_done_only_at_end():
    dec = ChunkedDecoder()
    out = bytearray()
    pieces = bytewise(CHUNKED_BODY)
    for k, piece in enumerate(pieces):
        assert not dec.done, k
        out += dec.feed(piece)
    assert dec.done
    assert bytes(out) == CHUNKED_PAYLOAD


def test_chunked_terminator_without_trailers_and_extra_bytes():
    dec = ChunkedDecoder()
    assert dec.feed(b"3\r\nabc\r\n0\r\n\r\nHTTP/1.1 200") == b"abc"
    assert dec.done
    assert dec.trailers == []
    assert dec.unconsumed == b"HTTP/1.1 200"
    assert dec.feed(b" OK") == b""
    assert dec.unconsumed == b"HTTP/1.1 200 OK"


def test_chunked_terminal_chunk_with_extension():
    dec = ChunkedDecoder()
    assert dec.feed(b"2\r\nok\r\n0;last\r\n\r\n") == b"ok"
    assert dec.done


def test_chunked_not_done_before_final_crlf():
    dec = ChunkedDecoder()
    assert dec.feed(b"2\r\nok\r\n0\r\n") == b"ok"
    assert not dec.done
    dec.feed(b"\r\n")
    assert dec.done


@pytest.mark.parametrize(
    "body",
    [b"zz\r\n", b"\r\n", b";ext\r\n", b"-1\r\n", b"3\r\nabcX\r\n", b"0x3\r\nabc\r\n"],
)
def test_chunked_malformed_raises(body):
    dec = ChunkedDecoder()
    with pytest.raises(ValueError):
        dec.feed(body)


def test_chunked_carrying_sse_split_everywhere():
    sse = b"id: 1\r\ndata: \xc3\xa9t\xc3\xa9\r\n\r\n: ping\r\ndata: b\r\n\r\n"
    body = (
        b"".join(b"%x\r\n%s\r\n" % (len(part), part) for part in (sse[:9], sse[9:15], sse[15:]))
        + b"0\r\n\r\n"
    )
    expected = [Event(data="\u00e9t\u00e9", id="1"), Event(data="b", id="1")]
    for i in range(len(body) + 1):
        dec, parser = ChunkedDecoder(), SSEParser()
        events = parser.feed(dec.feed(body[:i])) + parser.feed(dec.feed(body[i:]))
        assert events == expected, i
        assert parser.comments == 1 and dec.done


# ---------------------------------------------------------------------------
# Property: round trip of arbitrary messages
# ---------------------------------------------------------------------------

_EOL = re.compile(r"\r\n|\r|\n")

# Bias the text towards the interesting characters while keeping full range.
_message = st.one_of(
    st.text(),
    st.lists(
        st.sampled_from(
            ["\r", "\n", "\r\n", ":", " ", "\ufeff", "\u00e9", "\U0001f600", "a", "\x00"]
        )
    ).map("".join),
)


@settings(max_examples=300, deadline=None)
@given(
    messages=st.lists(_message, max_size=8),
    cuts=st.lists(st.integers(min_value=1, max_value=7), max_size=200),
)
def test_property_round_trip_random_chunking(messages, cuts):
    stream = b"".join(
        b"".join(b"data: " + line.encode("utf-8") + b"\n" for line in _EOL.split(m)) + b"\n"
        for m in messages
    )
    pieces = []
    pos = 0
    for size in cuts:
        if pos >= len(stream):
            break
        pieces.append(stream[pos : pos + size])
        pos += size
    pieces.append(stream[pos:])
    assert b"".join(pieces) == stream

    parser = SSEParser()
    events = parse(*pieces, parser=parser)
    assert [e.data for e in events] == [_EOL.sub("\n", m) for m in messages]
    assert all(e.type == "message" and e.id == "" for e in events)
    assert parser.events_dispatched == len(messages)


@settings(max_examples=200, deadline=None)
@given(
    messages=st.lists(st.text(), min_size=1, max_size=5),
    chunk_sizes=st.lists(st.integers(min_value=1, max_value=9), min_size=1, max_size=50),
)
def test_property_chunked_sse_round_trip(messages, chunk_sizes):
    sse = b"".join(encode_event(m, id=str(i)) for i, m in enumerate(messages))
    # frame the SSE bytes in chunks of the given sizes (cycled)
    body, pos, k = bytearray(), 0, 0
    while pos < len(sse):
        part = sse[pos : pos + chunk_sizes[k % len(chunk_sizes)]]
        body += b"%X\r\n%s\r\n" % (len(part), part)
        pos += len(part)
        k += 1
    body += b"0\r\n\r\n"
    dec, parser = ChunkedDecoder(), SSEParser()
    events = []
    step = chunk_sizes[0] + 2
    for i in range(0, len(body), step):
        events += parser.feed(dec.feed(bytes(body[i : i + step])))
    assert dec.done
    assert [(e.data, e.id) for e in events] == [
        (_EOL.sub("\n", m), str(i)) for i, m in enumerate(messages)
    ]
