"""Dispatch and reply-framing fast paths give the bytes the general forms give.

``wire.reply_frame`` caches the reply TPDU + header per (TPDU, header, digit 6); it must frame
exactly as ``frame_bytes(swap_tpdu(tpdu), reply_header(header, pr), body)`` and fail the same way.

``dispatch._mac_input`` encodes the reply once with a zero field 64 set in place (no dict copy);
the reply body is its result plus the MAC, as ``encode({**reply, "64": zeros})[:-8] + mac`` was.
"""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from switch.flows import wire
from switch.flows.dispatch import _mac_input
from switch.flows.wire import frame_bytes, reply_frame, reply_header, swap_tpdu

_DIGITS = "0123456789"
_ALNUM = "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 "


def _reply_docs():
    return st.fixed_dictionaries(
        {"t": st.sampled_from(["0110", "0210", "0230", "0410", "0510", "0810"]),
         "39": st.text(alphabet="0123456789A", min_size=2, max_size=2)},
        optional={
            "2": st.text(alphabet=_DIGITS, min_size=12, max_size=19),
            "3": st.text(alphabet=_DIGITS, min_size=6, max_size=6),
            "4": st.text(alphabet=_DIGITS, min_size=12, max_size=12),
            "11": st.text(alphabet=_DIGITS, min_size=6, max_size=6),
            "12": st.text(alphabet=_DIGITS, min_size=6, max_size=6),
            "13": st.text(alphabet=_DIGITS, min_size=4, max_size=4),
            "32": st.text(alphabet=_DIGITS, min_size=1, max_size=11),
            "37": st.text(alphabet=_ALNUM, min_size=12, max_size=12),
            "38": st.text(alphabet=_ALNUM, min_size=6, max_size=6),
            "41": st.text(alphabet=_ALNUM, min_size=8, max_size=8),
            "42": st.text(alphabet=_ALNUM, min_size=15, max_size=15),
            "44": st.text(alphabet=_ALNUM, max_size=25),
            "49": st.just("156"),
            "60": st.text(alphabet=_DIGITS, min_size=11, max_size=17),
            "63": st.text(alphabet=_ALNUM, max_size=40),
            "64": st.text(alphabet="0123456789ABCDEF", min_size=16, max_size=16),
        },
    )


def _outcome(fn, *args):
    try:
        return ("ok", fn(*args))
    except Exception as exc:  # the same encode error either way
        return ("error", type(exc).__name__, str(exc))


@given(_reply_docs(), st.binary(min_size=8, max_size=8))
def test_mac_input_equals_the_copied_reply_encode(reply: dict[str, str], mac: bytes) -> None:
    before = dict(reply)

    def general() -> bytes:
        body_out = wire.encode({**reply, "64": "0" * 16})
        return wire.mac_input(body_out), body_out[:-8] + mac

    expected = _outcome(general)
    got = _outcome(lambda: (_mac_input(reply), _mac_input(reply) + mac))
    assert got == expected
    assert reply == before and list(reply) == list(before)  # the reply dict is left as it was


@given(
    st.one_of(st.binary(min_size=5, max_size=5).map(lambda b: b"\x60" + b[1:]), st.binary(max_size=6)),
    st.one_of(st.binary(min_size=6, max_size=6), st.binary(max_size=7)),
    st.integers(min_value=0, max_value=15),
    st.one_of(st.binary(max_size=300), st.just(b"\x00" * (0xFFFF - 11)), st.just(b"\x00" * (0xFFFF - 10))),
)
def test_reply_frame_equals_the_general_framing(tpdu: bytes, header: bytes, pr: int, body: bytes) -> None:
    expected = _outcome(lambda: frame_bytes(swap_tpdu(tpdu), reply_header(header, pr), body))
    assert _outcome(reply_frame, tpdu, header, pr, body) == expected
    assert _outcome(reply_frame, tpdu, header, pr, body) == expected  # from the cache


def test_reply_frame_cache_stays_bounded(monkeypatch) -> None:
    monkeypatch.setattr(wire, "_REPLY_PREFIXES_MAX", 4)
    wire._REPLY_PREFIXES.clear()
    for i in range(40):
        tpdu, header = bytes([0x60, 0, i, 0, 3]), bytes([0x60, 0x31, 0, 0, 0, i])
        assert reply_frame(tpdu, header, i % 16, b"body") == frame_bytes(
            swap_tpdu(tpdu), reply_header(header, i % 16), b"body")
        assert len(wire._REPLY_PREFIXES) <= 4
