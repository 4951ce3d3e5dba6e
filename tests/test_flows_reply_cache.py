"""Reply building with its small caches (reply MTI per request MTI, field 44 per route) gives what the
plain formatting gives; the sale path's payment method reads 60.5 in place as ``Field60.parse`` does."""

from __future__ import annotations

import types

import pytest
from hypothesis import given
from hypothesis import strategies as st

from switch.flows import context, upstream, wire
from switch.flows.context import Context

_SVC = types.SimpleNamespace(acquirer_id="48020000")


@pytest.mark.parametrize("mti", ["0100", "0200", "0220", "0320", "0400", "0500", "0800", "0820"])
def test_reply_mti_is_the_request_mti_plus_10(mti: str) -> None:
    for _ in range(2):  # formatted, then cached
        reply = Context({"t": mti, "11": "000001"}, b"", _SVC).start_reply("00")
        assert reply["t"] == f"{int(mti) + 10:04d}"
        assert list(reply) == ["t", "11", "12", "13", "32", "39"]


def test_a_bad_mti_fails_every_time_and_the_cache_stays_small() -> None:
    for _ in range(2):
        with pytest.raises(ValueError):
            Context({"t": "02x0"}, b"", _SVC).start_reply("00")
    for i in range(200):
        Context({"t": f"{i:04d}"}, b"", _SVC).start_reply("00")
    assert len(context._REPLY_MTI) <= 64
    assert Context({"t": "0199"}, b"", _SVC).start_reply("00")["t"] == "0209"


@given(issuer=st.text(max_size=15), acquirer=st.text(max_size=15))
def test_field44_is_both_names_padded_to_11(issuer: str, acquirer: str) -> None:
    for _ in range(2):
        assert upstream._field44(issuer, acquirer) == f"{issuer[:11]:<11}{acquirer[:11]:<11}"
    assert len(upstream._F44) <= 256


@given(f22=st.one_of(st.none(), st.sampled_from(["021", "022", "02", "051", "071", "981", "011", ""]), st.text(max_size=4)),
       f60=st.one_of(st.none(), st.text(alphabet="0126x", max_size=16)))
def test_payment_method_reads_60_as_field60_parse(f22: str | None, f60: str | None) -> None:
    req = {k: v for k, v in (("22", f22), ("60", f60)) if v is not None}
    prefix = req.get("22", "")[:2]
    if prefix == "02" and wire.Field60.parse(req.get("60")).rest[1:2] == "2":
        expected = "fallback"
    else:
        expected = upstream._METHOD.get(prefix, "keyed")
    assert upstream.payment_method(req) == expected
