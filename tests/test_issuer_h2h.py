"""switch.h2h: framing, builders, field 54/55/90 helpers and classification."""

from __future__ import annotations

import iso8583
import pytest
from hypothesis import given
from hypothesis import strategies as st
from iso8583.specs import default_ascii

from switch import h2h

PAN = "6212345678901234"


def sale(**kw):
    args = dict(terminal_id="T0000001", merchant_id="898310048990001", rrn="000000000001",
                amount=12345, pan=PAN, stan="000017")
    args.update(kw)
    return h2h.financial_request("sale", **args)


def test_frame_is_length_prefixed_default_ascii():
    msg = sale()
    wire = h2h.frame(msg)
    assert int.from_bytes(wire[:2], "big") == len(wire) - 2
    # independent decode with pyiso8583 itself
    doc, _ = iso8583.decode(wire[2:], default_ascii)
    assert doc["t"] == "0200" and doc["2"] == PAN and doc["4"] == "000000012345"
    assert doc["41"] == "T0000001" and doc["11"] == "000017"
    assert h2h.decode(wire[2:]) == msg


@given(st.lists(st.integers(min_value=1, max_value=40), min_size=1, max_size=30))
def test_frame_reader_reassembles_any_split(cuts):
    msgs = [sale(stan=f"{i:06d}", amount=i * 7) for i in range(5)]
    stream = b"".join(h2h.frame(m) for m in msgs)
    reader = h2h.FrameReader()
    out, pos = [], 0
    for c in cuts * 20:
        if pos >= len(stream):
            break
        out += reader.feed(stream[pos:pos + c])
        pos += c
    out += reader.feed(stream[pos:])
    assert [h2h.decode(b) for b in out] == msgs
    assert reader.buffered == 0


@pytest.mark.parametrize("prefix", [b"\x00\x00", (h2h.MAX_FRAME + 1).to_bytes(2, "big")])
def test_frame_reader_rejects_bad_length(prefix):
    with pytest.raises(h2h.H2HError, match="bad frame length"):
        h2h.FrameReader().feed(prefix + b"0200")


def test_decode_error_names_field_and_offset():
    body = bytearray(h2h.encode(sale()))
    body[4] = ord("Z")  # corrupt the primary bitmap
    with pytest.raises(h2h.H2HError, match=r"field p"):
        h2h.decode(bytes(body))


@pytest.mark.parametrize(("kind", "mti", "proc"), [
    ("sale", "0200", "000000"), ("balance", "0200", "310000"), ("preauth", "0100", "030000"),
    ("completion", "0200", "000000"), ("completion_advice", "0220", "000000"),
    ("void", "0200", "200000"), ("refund", "0220", "200000"),
])
def test_builders_and_classify_agree(kind, mti, proc):
    msg = h2h.financial_request(kind, terminal_id="T1", merchant_id="M1", rrn="000000000002",
                                amount=None if kind == "balance" else 100, pan=PAN)
    assert (msg["t"], msg["3"]) == (mti, proc)
    assert h2h.classify(msg) == h2h.TxnKind(kind)
    assert h2h.classify(h2h.response_to(msg, "00")) == h2h.TxnKind(kind)
    assert ("4" in msg) == (kind != "balance")


def test_reversal_drops_sensitive_data_and_carries_field90():
    icc = {"9F26": bytes(8), "95": b"\x00" * 5, "9F36": b"\x00\x07", "9F10": b"\x06\x01\x0a\x03\xa0\x00\x00"}
    orig = sale(track2=PAN + "=30121010000000000000", pin_block="0123456789ABCDEF", icc=icc,
                auth_code="123456")
    rev = h2h.reversal_for(orig, "98", stan="000099")
    assert rev["t"] == "0420" and rev["39"] == "98" and rev["11"] == "000099"
    for f in ("35", "52", "38"):
        assert f not in rev
    assert set(h2h.field55_tags(rev["55"])) == {"95", "9F36", "9F10"}
    f90 = h2h.parse_field90(rev["90"])
    assert f90["mti"] == "0200" and f90["stan"] == "000017" and f90["transmission"] == orig["7"]
    assert h2h.decode(h2h.encode(rev)) == rev  # field 90 forces the secondary bitmap
    assert h2h.is_reversible(orig) and not h2h.is_reversible(rev)


def test_field54_roundtrip_and_layout():
    v = h2h.field54_balance(123456)
    assert v == "0002156C000000123456" and v[7] == "C" and v[8:20] == "000000123456"
    assert h2h.parse_field54(v) == 123456
    assert h2h.parse_field54(h2h.field54_balance(-5)) == -5
    with pytest.raises(h2h.H2HError, match="field 54"):
        h2h.parse_field54("0002156X000000000001")


@given(st.dictionaries(st.sampled_from(["9F26", "95", "9F36", "82", "9F10", "5F2A", "DF31", "71"]),
                       st.binary(max_size=300), max_size=8))
def test_tlv_roundtrip(tags):
    assert h2h.tlv_decode(h2h.tlv_encode(tags)) == tags


def test_tlv_errors_name_offset():
    with pytest.raises(h2h.H2HError, match="overruns.*offset 2"):
        h2h.tlv_decode(bytes.fromhex("9505000000"))


def test_repeats_classify_like_their_originals():
    refund = h2h.financial_request("refund", terminal_id="T1", merchant_id="M1", rrn="000000000003",
                                   amount=5, pan=PAN)
    repeat = dict(refund, t="0221")
    assert h2h.classify(repeat) is h2h.TxnKind.REFUND and h2h.is_advice(repeat)
    assert h2h.response_mti("0221") == "0230" and h2h.response_mti("0421") == "0430"
    assert h2h.classify(dict(refund, t="0421")) is h2h.TxnKind.REVERSAL
    assert h2h.classify(dict(refund, t="0230")) is h2h.TxnKind.REFUND
    with pytest.raises(h2h.H2HError, match="not a request MTI"):
        h2h.response_mti("0210")
