"""Unit tests of the switch's wire helpers, routing and simulated terminal against reference vectors."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from _fastcore import crypto
from switch.flows import wire
from switch.routing import Route, Router
from switch.sim_terminal import SimTerminal

# pos-8583-dialect.md §12 MAC-1: a full 0200 frame, TAK 0723C80DB5F4CD3D, UnionPay ECB MAC B3A092AE
MAC1_FRAME = bytes.fromhex(
    "007F6000030000603210320072020030200480" "00C08015000000000000001234000002030099"
    "3030303030303031393532373138313832323137383735313536001926000001000600000000"
    "00435F01123238343431323334353637383930313233345F03063136303033365F0406323030"
    "3832365C0230314233413039324145"
)


def test_mac1_vector_through_frame_and_mac_input():
    frame = wire.Frame.parse(MAC1_FRAME[2:])
    assert frame.tpdu == bytes.fromhex("6000030000") and frame.header == bytes.fromhex("603210320072")
    doc = wire.decode(frame.body)
    assert doc["64"] == "4233413039324145"
    data = wire.mac_input(frame.body)
    assert len(data) == 108
    assert crypto.mac_pos_ecb(bytes.fromhex("0723C80DB5F4CD3D"), data) == b"B3A092AE"
    assert wire.encode(doc) == frame.body


def test_reply_framing_helpers():
    assert wire.swap_tpdu(bytes.fromhex("6005250000")) == bytes.fromhex("6000000525")
    assert wire.reply_header(bytes.fromhex("603100311001"), 3) == bytes.fromhex("603103311001")
    assert wire.reply_header(bytes.fromhex("603103311001"), 0) == bytes.fromhex("603100311001")
    out = wire.frame_bytes(b"\x60" * 5, b"\x01" * 6, b"\x02" * 10)
    assert out[:2] == (21).to_bytes(2, "big") and len(out) == 23


@pytest.mark.parametrize("tpdu", [b"\x61\x00\x00\x00\x00", b"\x00" * 5])
def test_frame_rejects_bad_tpdu(tpdu):
    with pytest.raises(ValueError, match="TPDU"):
        wire.Frame.parse(tpdu + b"\x00" * 30)


def test_k62_vector_unwrapped_by_the_sim_terminal():
    """pos-8583-dialect.md §9.2 K62-1: the terminal side of sign-on recovers PIK and MAK, CVs check."""
    term = SimTerminal("127.0.0.1", 1, "00000001", "000000000000001", bytes.fromhex("CA5D92598DCA48CE8A4C76361A9269E9"))
    f62 = bytes.fromhex("6701EAD6A9AD51E51AA406E2C27FCFA98D0A74B8B651F9E9BACE9AE10000000000000000AB7153CA")
    term._install_keys("003", f62)
    assert term._pik == bytes.fromhex("807A23AD32B36D457AE91FDF927570EA")
    assert term._mak == bytes.fromhex("5BB5C72CD00B7338")
    bad = bytearray(f62)
    bad[-1] ^= 1
    with pytest.raises(Exception, match="check value"):
        term._install_keys("003", bytes(bad))


def test_field60_and_61_helpers():
    f60 = wire.Field60.parse("22000123000" "6")
    assert (f60.txn_type, f60.batch, f60.nmi, f60.contactless) == ("22", "000123", "000", True)
    assert str(f60) == "220001230006"
    f61 = wire.Field61.parse("0001230004561122")
    assert (f61.orig_batch, f61.orig_trace, f61.orig_date) == ("000123", "000456", "1122")
    assert wire.Field61.parse("123") is None


def test_pan_of_prefers_field_2_then_track_2():
    assert wire.pan_of({"2": "6212345678901234", "35": "999D"}) == "6212345678901234"
    assert wire.pan_of({"35": "6212345678901234D30122010000"}) == "6212345678901234"
    assert wire.pan_of({}) is None


def test_settlement_48_helpers():
    v = "000000001000002000000000500001" + "0" + "000000000000000000000000000000" + "0"
    assert wire.settlement_totals_48(v) == [(1000, 2, 500, 1), (0, 0, 0, 0)]
    out = wire.settlement_reply_48(v, True, False)
    assert out[30] == "1" and out[61] == "2" and len(out) == 62
    with pytest.raises(ValueError, match="offset 31"):
        wire.settlement_totals_48(v[:40])


def _router() -> Router:
    r = Router()
    for name in ("a", "b", "c"):
        r.add_route(Route(name, link=None))
    r.add_bin("62", "a")
    r.add_bin("621234", "b")
    r.add_bin("6212345", "c")
    return r


def test_longest_prefix_and_default():
    r = _router()
    assert r.lookup("6212345000000000").name == "c"
    assert r.lookup("6212340000000000").name == "b"
    assert r.lookup("6200000000000000").name == "a"
    assert r.lookup("4000000000000000") is None
    r.default = "a"
    assert r.lookup("4000000000000000").name == "a"
    with pytest.raises(ValueError, match="unknown route"):
        r.add_bin("4", "zzz")
    with pytest.raises(ValueError, match="digits"):
        r.add_bin("4x", "a")


@given(st.from_regex(r"[0-9]{12,19}", fullmatch=True))
def test_lookup_equals_brute_force_longest_prefix(pan):
    r = _router()
    table = {"62": "a", "621234": "b", "6212345": "c"}
    matches = [p for p in table if pan.startswith(p)]
    expected = table[max(matches, key=len)] if matches else None
    got = r.lookup(pan)
    assert (got.name if got else None) == expected


def test_qr_prefix_table():
    r = _router()
    r.add_qr_prefix("13", "a")
    r.add_qr_prefix("1345", "b")
    assert r.lookup_qr("134500000001123456").name == "b"
    assert r.lookup_qr("130000000001123456").name == "a"
    assert r.lookup_qr("990000000000000000") is None
