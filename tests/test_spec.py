"""POS_SPEC against real captured frames (pyiso8583 4.0.1 as the reference codec) and the §2 wire rules."""

from __future__ import annotations

from pathlib import Path
from types import ModuleType

import iso8583
import pytest
from hypothesis import given
from hypothesis import strategies as st

from _fastcore.spec import (
    H2H_SPEC,
    MAC_TYPES,
    POS_SPEC,
    TRANSACTION_TYPES,
    TRANSACTIONS_BY_NAME,
    lookup_transaction,
    response_mti,
)

VECTORS = Path(__file__).parent / "vectors"


def frame(name: str) -> bytes:
    return bytes.fromhex((VECTORS / name).read_text().strip())


def body(raw: bytes) -> bytes:
    """Strip LEN (2) + TPDU (5) + header (6) by hand, independent of _fastcore.framing."""
    assert int.from_bytes(raw[:2], "big") == len(raw) - 2
    return raw[13:]


MAC1_FIELDS = {
    "t": "0200",
    "p": "3020048000C08015",
    "3": "000000",
    "4": "000000001234",
    "11": "000002",
    "22": "030",
    "25": "99",
    "41": "00000001",
    "42": "952718182217875",
    "49": "156",
    "60": "2600000100060000000",
    "62": "5F0112323834343132333435363738393031323334"
    "5F0306313630303336" "5F0406323030383236" "5C023031",
    "64": "4233413039324145",
}


def test_mac1_frame_envelope() -> None:
    raw = frame("mac1_frame.hex")
    assert len(raw) == 129
    assert raw[2:7].hex() == "6000030000"
    assert raw[7:13].hex() == "603210320072"


def test_mac1_decodes_to_documented_values() -> None:
    doc, enc = iso8583.decode(body(frame("mac1_frame.hex")), POS_SPEC)
    assert doc == MAC1_FIELDS
    # length prefixes as on the wire: F60 counts 19 digits, F62 counts 43 bytes
    assert enc["60"]["len"] == b"\x00\x19"
    assert enc["62"]["len"] == b"\x00\x43"
    assert enc["22"]["data"] == b"\x03\x00"
    assert bytes.fromhex(doc["64"]) == b"B3A092AE"
    # the MAC input of §12 is MTI .. end of field 62: 108 bytes
    b = body(frame("mac1_frame.hex"))
    assert len(b) - 8 == 108


def test_mac1_reencodes_byte_for_byte() -> None:
    raw = body(frame("mac1_frame.hex"))
    doc, _ = iso8583.decode(raw, POS_SPEC)
    out, _ = iso8583.encode(doc, POS_SPEC)
    assert bytes(out) == raw
    # and from a document without the bitmap (the encoder computes it)
    doc2 = {k: v for k, v in MAC1_FIELDS.items() if k != "p"}
    out2, _ = iso8583.encode(doc2, POS_SPEC)
    assert bytes(out2) == raw


def enc_field(field: str, value: str, mti: str = "0200") -> tuple[bytes, bytes]:
    _, enc = iso8583.encode({"t": mti, field: value}, POS_SPEC)
    return enc[field]["len"], enc[field]["data"]


def test_f22_is_left_aligned_and_f23_right_aligned() -> None:
    assert enc_field("22", "051") == (b"", b"\x05\x10")
    assert enc_field("23", "001") == (b"", b"\x00\x01")
    assert enc_field("3", "000000") == (b"", b"\x00\x00\x00")


def test_variable_numerics_are_left_aligned_with_digit_count() -> None:
    assert enc_field("2", "6225880123456789012") == (b"\x19", bytes.fromhex("6225880123456789012" + "0"))
    assert enc_field("32", "12345678") == (b"\x08", bytes.fromhex("12345678"))
    # sign-on 60 example of §5: 00 + 000001 + 003 -> LLL 0011, data 00 00 00 01 00 30
    assert enc_field("60", "00000001003", "0800") == (b"\x00\x11", bytes.fromhex("000000010030"))
    assert enc_field("61", "000001000002", "0200") == (b"\x00\x12", bytes.fromhex("000001000002"))


def test_track2_separator_travels_as_nibble_d() -> None:
    track = "6225880123456789D25121010000"  # 28 digits
    length, data = enc_field("35", track)
    assert length == b"\x28"
    assert data == bytes.fromhex(track)
    odd = track + "1"
    length, data = enc_field("35", odd)
    assert length == b"\x29" and data == bytes.fromhex(odd + "0")
    doc, _ = iso8583.decode(iso8583.encode({"t": "0200", "35": odd.lower()}, POS_SPEC)[0], POS_SPEC)
    assert doc["35"] == odd


def test_text_and_binary_prefixes_count_bytes() -> None:
    assert enc_field("63", "01 ") == (b"\x00\x03", b"01 ")
    assert enc_field("44", "A" * 22) == (b"\x22", b"A" * 22)
    assert enc_field("55", "9F2608" + "11" * 8) == (b"\x00\x11", bytes.fromhex("9F2608" + "11" * 8))
    assert enc_field("54", "1002156C000000001000") == (b"\x00\x20", b"1002156C000000001000")


def test_f63_carries_gbk_text() -> None:
    text = "CUP" + "中国银联".ljust(16)
    length, data = enc_field("63", text, "0210")
    assert data == text.encode("gbk") and length == b"\x00\x23"


def test_wrong_length_is_an_encode_error_naming_the_field() -> None:
    with pytest.raises(iso8583.EncodeError, match="field 41"):
        iso8583.encode({"t": "0200", "41": "1234567"}, POS_SPEC)
    with pytest.raises(iso8583.EncodeError, match="field 2"):
        iso8583.encode({"t": "0200", "2": "1" * 20}, POS_SPEC)


def test_truncated_frame_is_a_decode_error() -> None:
    raw = body(frame("mac1_frame.hex"))
    for cut in (1, 5, 40, len(raw) - 1):
        with pytest.raises(iso8583.DecodeError):
            iso8583.decode(raw[:cut], POS_SPEC)


def test_every_field_is_specified_with_desc() -> None:
    keys = {"h", "t", "p"} | {str(i) for i in range(1, 129)}
    assert set(POS_SPEC) == keys
    for key, spec in POS_SPEC.items():
        assert spec["desc"], key
        if spec.get("len_count") == "nibbles":
            assert ("left_pad" in spec) != ("right_pad" in spec), key


def test_field_outside_the_dialect_round_trips() -> None:
    doc = {"t": "0200", "7": "1122334455", "43": "X" * 40, "70": "301", "128": "00" * 8}
    out, _ = iso8583.encode(dict(doc), POS_SPEC)
    back, _ = iso8583.decode(out, POS_SPEC)
    assert {k: back[k] for k in doc} == doc


def test_h2h_spec_is_ascii_and_private_copy() -> None:
    assert H2H_SPEC is not iso8583.specs.default_ascii
    assert H2H_SPEC == iso8583.specs.default_ascii
    out, _ = iso8583.encode({"t": "0200", "3": "000000", "11": "000001"}, H2H_SPEC)
    assert bytes(out).startswith(b"0200")


def test_transaction_table() -> None:
    assert lookup_transaction("0200", "000000", "22", "000") is TRANSACTIONS_BY_NAME["sale"]
    assert lookup_transaction("0200", "200000", "23", "000").name == "void"
    assert lookup_transaction("0220", "200000", "25", "000").name == "refund"
    assert lookup_transaction("0800", None, "00", "003").name == "sign_on_double"
    assert lookup_transaction("0320", "200000", "00", "201").name == "batch_upload_magstripe"
    assert lookup_transaction("0200", "000000", "99", "000") is None
    assert response_mti("0200") == "0210" and response_mti("0820") == "0830"
    assert TRANSACTIONS_BY_NAME["sale"].response_mti == "0210"
    with pytest.raises(ValueError):
        response_mti("0210")
    assert "sale" in MAC_TYPES and "sign_on_double" not in MAC_TYPES and "settlement" not in MAC_TYPES
    keys = [(t.mti, t.processing_code, t.type_code, t.network_code) for t in TRANSACTION_TYPES]
    assert len(keys) == len(set(keys))


SIGNON_0800 = {
    "t": "0800", "p": "0020000000C00012", "11": "000123", "41": "10000001", "42": "898310048120001",
    "60": "00000001003", "63": "01 ",
}
SIGNON_0810 = {
    "t": "0810", "p": "003800010AC00016", "11": "000123", "12": "143015", "13": "1122", "32": "00010000",
    "37": "112214301501", "39": "00", "41": "10000001", "42": "898310048120001", "60": "00000002003",
    "62": "6701EAD6A9AD51E51AA406E2C27FCFA98D0A74B8B651F9E9BACE9AE10000000000000000AB7153CA", "63": "01 ",
}
SALE_0200 = {
    "t": "0200", "p": "702406C020C09A11", "2": "6212345678901234567", "3": "000000", "4": "000000001234",
    "11": "000124", "14": "3012", "22": "051", "23": "001", "25": "00", "26": "12",
    "35": "6212345678901234567D30122011234567890", "41": "10000001", "42": "898310048120001", "49": "156",
    "52": "0123456789ABCDEF", "53": "2600000000000000",
    "55": "9F2608A1B2C3D4E5F607189F2701809F100807010A03A00000019F3704DEADBEEF9F3602001295050000008000"
          "9A032511229C01009F02060000000012345F2A02015682027C009F1A0201569F03060000000000009F3303E0F9C8",
    "60": "2200000100050", "64": "3333334645424239",
}
GOLDEN = [("mac1_frame.hex", MAC1_FIELDS), ("signon_0800_frame.hex", SIGNON_0800),
          ("signon_0810_frame.hex", SIGNON_0810), ("sale_0200_chip_frame.hex", SALE_0200)]


def unionpay_ecb_mac(key: bytes, data: bytes) -> bytes:
    """Independent UnionPay ECB MAC (payment-crypto §3.3) with pycryptodome, for the golden frames."""
    from Crypto.Cipher import DES

    data += bytes(-len(data) % 8)
    acc = bytes(8)
    for i in range(0, len(data), 8):
        acc = bytes(a ^ b for a, b in zip(acc, data[i : i + 8], strict=True))
    r = acc.hex().upper().encode()
    des = DES.new(key, DES.MODE_ECB)
    e1 = des.encrypt(r[:8])
    e2 = des.encrypt(bytes(a ^ b for a, b in zip(e1, r[8:], strict=True)))
    return e2.hex().upper()[:8].encode()


@pytest.mark.parametrize("name", ["mac1_frame.hex", "sale_0200_chip_frame.hex"])
def test_golden_frame_macs(name: str) -> None:
    raw = body(frame(name))
    assert unionpay_ecb_mac(bytes.fromhex("0723C80DB5F4CD3D"), raw[:-8]) == raw[-8:]


@pytest.mark.parametrize("name, expected", GOLDEN)
def test_golden_frames_with_pyiso8583(name: str, expected: dict[str, str]) -> None:
    raw = body(frame(name))
    doc, _ = iso8583.decode(raw, POS_SPEC)
    assert doc == expected
    assert bytes(iso8583.encode(dict(expected), POS_SPEC)[0]) == raw


@pytest.mark.parametrize("name, expected", GOLDEN)
def test_golden_frames_with_our_codec(iso8583_impl: ModuleType, name: str, expected: dict[str, str]) -> None:
    raw = body(frame(name))
    doc, _ = iso8583_impl.decode(raw, POS_SPEC)
    assert doc == expected
    assert bytes(iso8583_impl.encode(dict(expected), POS_SPEC)[0]) == raw


def test_signon_pair_is_consistent() -> None:
    from _fastcore import fields
    from _fastcore.framing import parse_frame, swap_tpdu

    req_tpdu, req_header, _ = parse_frame(frame("signon_0800_frame.hex"))
    rsp_tpdu, rsp_header, _ = parse_frame(frame("signon_0810_frame.hex"))
    assert rsp_tpdu == swap_tpdu(req_tpdu) and rsp_header == req_header
    assert response_mti(SIGNON_0800["t"]) == SIGNON_0810["t"]
    req60, rsp60 = fields.parse_field60(SIGNON_0800["60"]), fields.parse_field60(SIGNON_0810["60"])
    t = lookup_transaction("0800", None, req60.type_code, req60.network_code)
    assert t is not None and t.name == "sign_on_double"
    assert rsp60.batch_number == req60.batch_number + 1
    keys = fields.parse_working_keys(SIGNON_0810["62"], rsp60.network_code)
    assert keys.pik_cv.hex().upper() == "8D0A74B8"


def test_reference_tables() -> None:
    from _fastcore.spec import APPROVED_CODES, FIELD55_REVERSAL_TAGS, RESPONSE_CODES

    assert RESPONSE_CODES["25"] == "original not found" and "A0" in RESPONSE_CODES
    assert APPROVED_CODES <= set(RESPONSE_CODES)
    assert "9F36" in FIELD55_REVERSAL_TAGS and "9F26" not in FIELD55_REVERSAL_TAGS


def test_derive_spec_makes_a_private_profile() -> None:
    from _fastcore.spec import derive_spec

    profile = derive_spec({"60": {"max_len": 40}, "59": {"data_enc": "gbk"}})
    assert profile["60"]["max_len"] == 40 and POS_SPEC["60"]["max_len"] == 32
    assert profile["60"]["right_pad"] == "0" and profile["59"]["data_enc"] == "gbk"
    profile["3"]["max_len"] = 99
    assert POS_SPEC["3"]["max_len"] == 6
    out, _ = iso8583.encode({"t": "0200", "60": "2" * 39}, profile)
    with pytest.raises(iso8583.DecodeError, match="field 60"):
        iso8583.decode(out, POS_SPEC)
    with pytest.raises(ValueError, match="field 200"):
        derive_spec({"200": {"max_len": 3}})


# ------------------------------------------------------------------ round-trip properties of the table

def _value_for(field: str, draw: st.DrawFn) -> str:
    spec = POS_SPEC[field]
    fixed = spec["len_type"] == 0
    n = spec["max_len"] if fixed else draw(st.integers(0 if spec["data_enc"] != "b" else 1, min(spec["max_len"], 60)))
    if spec["data_enc"] == "b" and spec.get("len_count") == "nibbles":
        alphabet = "0123456789D" if field in ("35", "36") else "0123456789"
        return draw(st.text(alphabet=alphabet, min_size=n, max_size=n))
    if spec["data_enc"] == "b":
        return draw(st.binary(min_size=n, max_size=n)).hex().upper()
    return draw(st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), min_size=n, max_size=n))


DIALECT_FIELDS = ["2", "3", "4", "11", "12", "13", "14", "15", "22", "23", "25", "26", "32", "35", "36", "37",
                  "38", "39", "41", "42", "44", "48", "49", "52", "53", "54", "55", "58", "59", "60", "61", "62",
                  "63", "64"]


@st.composite
def documents(draw: st.DrawFn) -> dict[str, str]:
    chosen = draw(st.sets(st.sampled_from(DIALECT_FIELDS), min_size=1))
    doc = {"t": draw(st.sampled_from(["0100", "0200", "0220", "0400", "0500", "0800", "0820"]))}
    for f in chosen:
        doc[f] = _value_for(f, draw)
    return doc


@given(doc=documents())
def test_any_dialect_document_round_trips(doc: dict[str, str]) -> None:
    raw, _ = iso8583.encode(dict(doc), POS_SPEC)
    back, _ = iso8583.decode(bytes(raw), POS_SPEC)
    back.pop("p")
    assert back == doc


@given(pos=st.integers(0, 115), byte=st.integers(0, 255), cut=st.integers(0, 116))
def test_mutated_mac1_only_raises_decode_error(pos: int, byte: int, cut: int) -> None:
    raw = body(frame("mac1_frame.hex"))
    mutated = raw[:pos] + bytes([byte]) + raw[pos + 1 :]
    for data in (mutated, mutated[:cut]):
        try:
            doc, _ = iso8583.decode(data, POS_SPEC)
        except iso8583.DecodeError as exc:
            assert exc.field and isinstance(exc.pos, int)
        else:
            # whatever decodes re-encodes to the same bytes (no silent normalisation)
            assert bytes(iso8583.encode(doc, POS_SPEC)[0]) == data


def test_request_field_presence() -> None:
    from _fastcore.spec import REQUEST_FIELDS, missing_request_fields

    assert missing_request_fields("sale", MAC1_FIELDS) == []  # the real capture has every mandatory field
    assert missing_request_fields("sale", SALE_0200) == []
    assert missing_request_fields("sign_on_double", SIGNON_0800) == []
    assert missing_request_fields("void", SALE_0200) == ["37", "61"]
    no_amount = {k: v for k, v in SALE_0200.items() if k not in ("4", "64")}
    assert missing_request_fields("sale", no_amount) == ["4", "64"]
    assert missing_request_fields("balance", no_amount) == ["64"]
    assert missing_request_fields("unknown", {}) == []
    for name, presence in REQUEST_FIELDS.items():
        assert name == "reversal" or name in TRANSACTIONS_BY_NAME
        assert not presence.mandatory & presence.conditional, name
        assert all(f in POS_SPEC for f in presence.mandatory | presence.conditional)
        t = TRANSACTIONS_BY_NAME.get(name)
        if t is not None:
            assert ("64" in presence.mandatory) == t.mac, name
