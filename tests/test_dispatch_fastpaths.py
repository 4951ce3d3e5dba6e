"""Dispatch and reply-framing fast paths give the bytes the general forms give.

``dispatch._mac_input`` encodes the reply once with a zero field 64 set in place (no dict copy);
the reply body is its result plus the MAC, as ``encode({**reply, "64": zeros})[:-8] + mac`` was.
"""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from switch.flows import wire
from switch.flows.dispatch import _mac_input

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
