"""_fastcore.fields: sub-field helpers against the reference's examples, round trips and errors."""

from __future__ import annotations

import iso8583
import pytest
from Crypto.Cipher import DES, DES3
from hypothesis import given
from hypothesis import strategies as st

from _fastcore import fields as F
from _fastcore.spec import POS_SPEC

# ------------------------------------------------------------------ field 60


def test_field60_signon_example_of_reference() -> None:
    # §5: 00 + 000001 + 003 -> LLL 0011, data 00 00 00 01 00 30
    value = F.build_field60("00", 1, "003")
    assert value == "00000001003"
    _, enc = iso8583.encode({"t": "0800", "60": value}, POS_SPEC)
    assert enc["60"]["len"] + enc["60"]["data"] == bytes.fromhex("0011000000010030")
    f = F.parse_field60(value)
    assert (f.type_code, f.batch, f.network_code, f.read_capability) == ("00", "000001", "003", None)
    assert f.batch_number == 1


def test_field60_of_mac1_round_trips() -> None:
    f = F.parse_field60("2600000100060000000")
    assert f.type_code == "26" and f.batch == "000001" and f.network_code == "000"
    assert f.read_capability == "6" and f.ic_condition == "0" and f.partial_approval == "0"
    assert f.account_type == "000" and f.rest == "00"
    assert f.to_str() == "2600000100060000000"


def test_field60_sale() -> None:
    assert F.build_field60("22", "000123", "000", "5", "0") == "2200012300050"
    with pytest.raises(F.FieldFormatError, match="field 60"):
        F.build_field60("22", 1, None, "5")
    with pytest.raises(F.FieldFormatError, match="batch"):
        F.build_field60("22", 1234567)


@pytest.mark.parametrize("bad, offset", [("2200001", 7), ("22000001A0", 8), ("220000010", 8)])
def test_field60_errors_name_offset(bad: str, offset: int) -> None:
    with pytest.raises(F.FieldFormatError) as ei:
        F.parse_field60(bad)
    assert ei.value.field == "60" and ei.value.offset == offset


@given(st.text(alphabet="0123456789", min_size=8, max_size=32))
def test_field60_parse_build_round_trip(value: str) -> None:
    try:
        f = F.parse_field60(value)
    except F.FieldFormatError:
        return
    assert f.to_str() == value


# ------------------------------------------------------------------ field 61


def test_field61() -> None:
    assert F.build_field61(1, 2) == "000001000002"
    assert F.build_field61("000001", 2, "1122") == "0000010000021122"
    f = F.parse_field61("0000010000021122")
    assert f == F.Field61("000001", "000002", "1122")
    assert F.parse_field61("000001000002").orig_date is None
    long = "000001000002112201234"
    assert F.parse_field61(long).rest == "01234" and F.parse_field61(long).to_str() == long
    with pytest.raises(F.FieldFormatError, match="truncated"):
        F.parse_field61("00000100000211")


# ------------------------------------------------------------------ field 48


def test_settlement_totals_layout() -> None:
    dom = F.SettlementHalf(123456, 3, 1000, 1)
    value = F.build_settlement_totals(dom, F.SettlementHalf())
    assert len(value) == 62
    assert value[:31] == "000000123456003000000001000001" + "0"
    assert value[31:] == "0" * 31
    assert F.parse_settlement_totals(value) == (dom, F.SettlementHalf())
    reply = F.settlement_result(value, "1", "2")
    assert reply[30] == "1" and reply[61] == "2" and reply[:30] == value[:30]
    assert F.parse_settlement_totals(reply)[1].result == "2"
    with pytest.raises(F.FieldFormatError, match="62 digits"):
        F.parse_settlement_totals(value[:-1])
    with pytest.raises(F.FieldFormatError, match="debit_count"):
        F.build_settlement_totals(F.SettlementHalf(debit_count=1000), F.SettlementHalf())


halves = st.builds(F.SettlementHalf, st.integers(0, 10**12 - 1), st.integers(0, 999),
                   st.integers(0, 10**12 - 1), st.integers(0, 999), st.sampled_from("0123"))


@given(halves, halves)
def test_settlement_round_trip(dom: F.SettlementHalf, fgn: F.SettlementHalf) -> None:
    value = F.build_settlement_totals(dom, fgn)
    assert F.parse_settlement_totals(value) == (dom, fgn)
    _, enc = iso8583.encode({"t": "0500", "48": value}, POS_SPEC)
    assert enc["48"]["len"] == b"\x00\x62" and len(enc["48"]["data"]) == 31


def test_batch_upload_records() -> None:
    recs = [F.BatchRecord("00", "000012", "6222020000000001", 1234), F.BatchRecord("01", "000013", "4111111111111111", 5)]
    value = F.build_batch_upload(recs)
    assert len(value) == 82 and value[:2] == "02"
    assert value[2:42] == "00" + "000012" + "00006222020000000001" + "000000001234"
    assert F.parse_batch_upload(value) == recs
    with pytest.raises(F.FieldFormatError, match="2 records need 82"):
        F.parse_batch_upload(value[:-1])
    with pytest.raises(F.FieldFormatError, match="at most 8"):
        F.build_batch_upload(recs * 5)


# ------------------------------------------------------------------ field 62 (K62-1 of §9.2)

TMK = bytes.fromhex("CA5D92598DCA48CE8A4C76361A9269E9")
K62 = "6701EAD6A9AD51E51AA406E2C27FCFA9" "8D0A74B8" "B651F9E9BACE9AE1" "0000000000000000" "AB7153CA"


def test_k62_vector_parses_and_check_values_verify() -> None:
    keys = F.parse_working_keys(K62)
    assert keys.mode == "003"
    assert keys.pik_cv.hex().upper() == "8D0A74B8" and keys.mak_cv.hex().upper() == "AB7153CA"
    # independent check with pycryptodome: decrypt under the TMK, recompute the check values
    tmk = DES3.new(TMK, DES3.MODE_ECB)
    pik = tmk.decrypt(keys.pik)
    mak = tmk.decrypt(keys.mak)
    assert pik.hex().upper() == "807A23AD32B36D457AE91FDF927570EA"
    assert mak.hex().upper() == "5BB5C72CD00B7338"
    assert DES3.new(pik, DES3.MODE_ECB).encrypt(bytes(8))[:4] == keys.pik_cv
    assert DES.new(mak, DES.MODE_ECB).encrypt(bytes(8))[:4] == keys.mak_cv
    assert F.build_working_keys(keys).hex().upper() == K62
    assert "807A" not in repr(keys) and "8D0A74B8" in repr(keys)


def test_working_key_layouts_001_and_004() -> None:
    single = F.WorkingKeys(b"\x01" * 8, b"\xaa" * 4, b"\x02" * 8, b"\xbb" * 4)
    raw = F.build_working_keys(single)
    assert len(raw) == 24 and F.parse_working_keys(raw) == single and F.parse_working_keys(raw).mode == "001"
    tdk = F.WorkingKeys(b"\x01" * 16, b"\xaa" * 4, b"\x02" * 8, b"\xbb" * 4, b"\x03" * 16, b"\xcc" * 4)
    raw = F.build_working_keys(tdk)
    assert len(raw) == 60 and raw[40:56] == b"\x03" * 16 and raw[56:] == b"\xcc" * 4
    assert F.parse_working_keys(raw.hex(), "004") == tdk
    with pytest.raises(F.FieldFormatError, match="mode 003 needs 40"):
        F.parse_working_keys(raw, "003")
    with pytest.raises(F.FieldFormatError, match="no layout"):
        F.parse_working_keys(raw[:56])
    bad = bytearray(F.build_working_keys(F.parse_working_keys(K62)))
    bad[30] = 1
    with pytest.raises(F.FieldFormatError, match="filler") as ei:
        F.parse_working_keys(bytes(bad))
    assert ei.value.offset == 28


# ------------------------------------------------------------------ 54, 63, 53, 22, tracks


def test_balance() -> None:
    assert F.build_balance(100000) == "0002156C000000100000"
    assert F.parse_balance("1002156D000000001000") == F.Balance(-1000, "156", "10", "02")
    with pytest.raises(F.FieldFormatError, match="sign") as ei:
        F.parse_balance("0002156X000000100000")
    assert ei.value.offset == 7


def test_field63_gbk_texts() -> None:
    value = F.build_field63("CUP", "中国工商银行", "中国银联", "")
    raw = value.encode("gbk")
    assert len(raw) == 3 + 40 and raw[3:15] == "中国工商银行".encode("gbk")
    f = F.parse_field63(value)
    assert f == F.Field63("CUP", "中国工商银行", "中国银联", "") and f.domestic
    # a text longer than 20 bytes is cut at a character boundary
    cut = F.build_field63("VIS", "一二三四五六七八九十壹")
    assert len(cut.encode("gbk")) == 23 and F.parse_field63(cut).issuer_text == "一二三四五六七八九十"
    assert F.parse_field63("01 ") == F.Field63("01 ")
    _, enc = iso8583.encode({"t": "0210", "63": value}, POS_SPEC)
    assert enc["63"]["data"] == raw
    with pytest.raises(F.FieldFormatError):
        F.build_field63("CU")


def test_field53_entry_mode_tracks() -> None:
    assert F.build_field53() == "2600000000000000"
    assert F.build_field53(False, False, True) == "1010000000000000"
    assert F.parse_entry_mode("051") == ("05", "1")
    assert F.track_to_wire("6222020000000001=2512101") == "6222020000000001D2512101"
    assert F.track_from_wire("6222020000000001d2512101") == "6222020000000001=2512101"
    with pytest.raises(F.FieldFormatError, match="offset 3"):
        F.track_to_wire("622X")


TDK = bytes.fromhex("0123456789ABCDEFFEDCBA9876543210")


@pytest.mark.parametrize("track", ["6222020000000001D2512101", "6222020000000001D25121010000000123456",
                                   "1234D5678", "6212345678901234D301222012345678901"])
def test_tdk_track_encryption_positions(track: str) -> None:
    padded, start, block = F.tdk_block(track)
    n = len(padded)
    assert n == max(len(track), 17) and padded.endswith(track)
    assert start == (n - 17 if n % 2 else n - 18)
    # the last digit (odd) or two (even) stay in clear; so does everything before the window
    enc_block = DES3.new(TDK, DES3.MODE_ECB).encrypt(block)
    wire = F.tdk_replace(padded, start, enc_block)
    assert len(wire) == n and wire[:start] == padded[:start] and wire[start + 16 :] == padded[start + 16 :]
    # host side: same positions on the received value, decrypt, strip the F padding
    p2, s2, b2 = F.tdk_block(wire)
    assert (p2, s2, b2) == (wire, start, enc_block)
    clear = F.tdk_replace(p2, s2, DES3.new(TDK, DES3.MODE_ECB).decrypt(b2)).lstrip("F")
    assert clear == track
    with pytest.raises(F.FieldFormatError):
        F.tdk_replace(padded, start, b"\x00" * 7)


def test_check_numeric_fields() -> None:
    raw, _ = iso8583.encode({"t": "0200", "4": "0000000000AB", "41": "ABCDEFGH"}, POS_SPEC)
    doc, _ = iso8583.decode(bytes(raw), POS_SPEC)  # the codec lets hex nibbles through ...
    with pytest.raises(F.FieldFormatError, match="field 4: non-digit 'A' at offset 10"):
        F.check_numeric_fields(doc)  # ... this check does not
    F.check_numeric_fields({"t": "0200", "4": "000000001234", "35": "6222D2512", "41": "ABCDEFGH", "55": "9F"})
    with pytest.raises(F.FieldFormatError, match="field 35"):
        F.check_numeric_fields({"t": "0200", "35": "6222D25A2"})
    F.check_numeric_fields({"t": "0200", "35": "6222AB3F"}, encrypted_tracks=True)
    with pytest.raises(F.FieldFormatError, match="field t"):
        F.check_numeric_fields({"t": "02A0"})
    with pytest.raises(F.FieldFormatError, match="field 22"):
        F.check_numeric_fields({"t": "0200", "22": "0B1"})


@given(st.sampled_from(["001", "003", "004"]), st.binary(min_size=60, max_size=60))
def test_working_keys_round_trip(mode: str, blob: bytes) -> None:
    pik_len = 8 if mode == "001" else 16
    keys = F.WorkingKeys(blob[:pik_len], blob[16:20], blob[20:28], blob[28:32],
                         blob[32:48] if mode == "004" else None, blob[48:52] if mode == "004" else None)
    raw = F.build_working_keys(keys)
    assert len(raw) == F.KEY_LAYOUT_LENGTHS[mode]
    assert F.parse_working_keys(raw) == keys and F.parse_working_keys(raw.hex(), mode).mode == mode


@given(st.integers(-(10**12) + 1, 10**12 - 1), st.sampled_from(["156", "840"]))
def test_balance_round_trip(amount: int, currency: str) -> None:
    value = F.build_balance(amount, currency)
    assert len(value) == 20 and F.parse_balance(value) == F.Balance(amount, currency)


gbk_text = st.text(alphabet=st.sampled_from("ABC xyz0129中国银联工商农业建设"), max_size=14)


@given(st.sampled_from(["CUP", "VIS", "MCC", "JCB"]), gbk_text, gbk_text, gbk_text)
def test_field63_round_trip(org: str, a: str, b: str, c: str) -> None:
    value = F.build_field63(org, a, b, c)
    f = F.parse_field63(value)
    raw = value.encode("gbk")
    assert len(raw) in (3, 23, 43, 63)
    assert f.card_org == org
    for got, want in zip((f.issuer_text, f.cups_text, f.acquirer_text), (a, b, c), strict=True):
        assert want.rstrip(" ").startswith(got)  # cut at a character boundary at most
        assert len(want.encode("gbk")) > 20 or got == want.rstrip(" ")
