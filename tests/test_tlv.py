"""_fastcore.tlv over both twins: known answers, errors with tag+offset, round trips, pyemv differential, fuzz."""

from __future__ import annotations

from types import ModuleType

import pyemv.tlv
import pytest
from hypothesis import given
from hypothesis import strategies as st

from _fastcore import tlv as selector
from _fastcore.errors import TLVError

# A field 55 as a UnionPay terminal sends it for an online chip sale (tags of reference §11).
F55 = bytes.fromhex(
    "9F2608A1B2C3D4E5F60718"  # ARQC
    "9F270180"  # CID
    "9F100807010A03A0000001"  # IAD
    "9F3704DEADBEEF"  # UN
    "9F36020012"  # ATC
    "95050000008000"  # TVR
    "9A03251122"  # transaction date
    "9C0100"
    "9F0206000000001234"
    "5F2A020156"
    "82027C00"
    "9F1A020156"
    "9F0306000000000000"
    "9F3303E0F9C8"
)


def test_selector(tlv_impl: ModuleType) -> None:
    assert selector.IMPLEMENTATION in ("c", "py")
    assert set(selector.__all__) - {"IMPLEMENTATION"} <= set(dir(tlv_impl))


def test_decode_field55(tlv_impl: ModuleType) -> None:
    items = tlv_impl.decode(F55)
    assert [t for t, _ in items] == ["9F26", "9F27", "9F10", "9F37", "9F36", "95", "9A", "9C", "9F02", "5F2A",
                                     "82", "9F1A", "9F03", "9F33"]
    d = tlv_impl.decode_dict(F55)
    assert d["9F26"] == bytes.fromhex("A1B2C3D4E5F60718")
    assert d["95"] == bytes.fromhex("0000008000") and d["9A"] == bytes.fromhex("251122")
    assert d["9F02"] == bytes.fromhex("000000001234")
    assert tlv_impl.encode(items) == F55
    assert tlv_impl.encode(d) == F55
    assert tlv_impl.decode(bytearray(F55)) == items and tlv_impl.decode(memoryview(F55)) == items


def test_long_form_lengths(tlv_impl: ModuleType) -> None:
    v200 = bytes(range(200))
    v300 = bytes(300)
    enc = tlv_impl.encode([("DF02", v200), ("72", v300), ("5A", b"")])
    assert enc[:5] == bytes.fromhex("DF0281C8" + "00")
    assert enc[2 + 2 + 200 : 2 + 2 + 200 + 4] == bytes.fromhex("7282012C")
    assert tlv_impl.decode(enc) == [("DF02", v200), ("72", v300), ("5A", b"")]
    # non-minimal long forms and 83/84 are read
    assert tlv_impl.decode(bytes.fromhex("5A8102AABB")) == [("5A", b"\xaa\xbb")]
    assert tlv_impl.decode(bytes.fromhex("5A8400000001CC")) == [("5A", b"\xcc")]
    assert tlv_impl.encode([("9F10", "0a0b")]) == bytes.fromhex("9F10020A0B")


def test_constructed_kept_raw_and_nested(tlv_impl: ModuleType) -> None:
    # reply field 55: 91 issuer auth data + two 71 scripts, each with 9F18 id and 86 commands
    script = bytes.fromhex("9F180400000001" "860C842400000800112233445566")
    data = tlv_impl.encode([("91", bytes.fromhex("11223344556677883030")), ("71", script), ("71", script)])
    items = tlv_impl.decode(data)
    assert items == [("91", bytes.fromhex("11223344556677883030")), ("71", script), ("71", script)]
    assert tlv_impl.is_constructed("71") and not tlv_impl.is_constructed("9F26")
    nested = tlv_impl.decode_nested(data)
    assert nested[1] == ("71", [("9F18", bytes.fromhex("00000001")), ("86", bytes.fromhex("842400000800112233445566"))])
    with pytest.raises(TLVError, match="duplicate tag: tag 71") as ei:
        tlv_impl.decode_dict(data)
    assert ei.value.offset == 12 + len(script) + 2


@pytest.mark.parametrize(
    "hexdata, message, tag, offset",
    [
        ("9F", "truncated tag", "9F", 0),
        ("9F2601AA9F", "truncated tag", "9F", 4),
        ("9F26", "missing length", "9F26", 2),
        ("5A81", "truncated length", "5A", 1),
        ("5A8201", "truncated length", "5A", 1),
        ("5A80", "indefinite length", "5A", 1),
        ("5A85000000000001", "length field of 5 bytes", "5A", 1),
        ("5A05AABB", "runs past the data", "5A", 2),
        ("9C01009F0205AA", "runs past the data", "9F02", 6),
        ("9F81818181", "tag longer than 4 bytes", "9F81818181", 0),
        ("9C010000", "invalid tag byte 00", "00", 3),
    ],
)
def test_errors_name_tag_and_offset(tlv_impl: ModuleType, hexdata: str, message: str, tag: str,
                                    offset: int) -> None:
    with pytest.raises(TLVError, match=message) as ei:
        tlv_impl.decode(bytes.fromhex(hexdata))
    assert ei.value.tag == tag and ei.value.offset == offset
    assert f"offset {offset}" in str(ei.value)


def test_nested_errors_point_into_the_template(tlv_impl: ModuleType) -> None:
    with pytest.raises(TLVError) as ei:
        tlv_impl.decode_nested(bytes.fromhex("9101AA" "7104" "9F1805AA"))
    assert ei.value.tag == "9F18" and ei.value.offset == 8


@pytest.mark.parametrize("tag", ["", "XY", "9F", "5A5A", "9F8080", "00", "9F2601", "9F818181818181"])
def test_encode_rejects_bad_tags(tlv_impl: ModuleType, tag: str) -> None:
    with pytest.raises(TLVError):
        tlv_impl.encode([(tag, b"\x01")])


def test_encode_rejects_bad_values(tlv_impl: ModuleType) -> None:
    with pytest.raises(TLVError, match="9F02"):
        tlv_impl.encode([("9F02", "00G0")])
    with pytest.raises(TLVError, match="9F02"):
        tlv_impl.encode([("9F02", 12)])


def test_select_cuts_down_to_the_reversal_set(tlv_impl: ModuleType) -> None:
    cut = tlv_impl.select(F55, ["95", "9F1E", "9f10", "9F36", "DF31"])
    assert [t for t, _ in tlv_impl.decode(cut)] == ["9F10", "9F36", "95"]


# ------------------------------------------------------------------ properties

def _tag_strategy() -> st.SearchStrategy[str]:
    single = st.integers(0x01, 0xFF).filter(lambda b: b & 0x1F != 0x1F)
    first_multi = st.integers(0, 7).map(lambda cls: (cls << 5) | 0x1F)
    multi = st.tuples(first_multi, st.lists(st.integers(0x80, 0xFF), max_size=2), st.integers(0x00, 0x7F)).map(
        lambda t: bytes([t[0], *t[1], t[2]]))
    return st.one_of(single.map(lambda b: bytes([b])), multi).map(lambda b: b.hex().upper())


items_strategy = st.lists(st.tuples(_tag_strategy(), st.binary(max_size=300)), max_size=12)


@given(items=items_strategy)
def test_round_trip(tlv_impl: ModuleType, items: list[tuple[str, bytes]]) -> None:
    data = tlv_impl.encode(items)
    assert tlv_impl.decode(data) == items
    assert tlv_impl.encode(tlv_impl.decode(data)) == data


primitive_tag = _tag_strategy().filter(lambda t: not int(t[:2], 16) & 0x20)


@given(d=st.dictionaries(primitive_tag, st.binary(max_size=300), max_size=12))
def test_differential_against_pyemv(tlv_impl: ModuleType, d: dict[str, bytes]) -> None:
    ours = tlv_impl.encode(d)
    assert ours == pyemv.tlv.encode(d)
    assert tlv_impl.decode_dict(ours) == pyemv.tlv.decode(ours)


@given(d=st.dictionaries(primitive_tag, st.binary(max_size=40), min_size=1, max_size=6),
       wrapper=st.sampled_from(["70", "71", "72", "E0", "BF0C"]))
def test_nested_differential_against_pyemv(tlv_impl: ModuleType, d: dict[str, bytes], wrapper: str) -> None:
    data = tlv_impl.encode([(wrapper, tlv_impl.encode(d))])
    ours = tlv_impl.decode_nested(data)
    assert ours == [(wrapper, list(d.items()))]
    assert pyemv.tlv.decode(data) == {wrapper: d}


@given(data=st.binary(max_size=80))
def test_fuzz_random_bytes_only_raise_tlverror(tlv_impl: ModuleType, data: bytes) -> None:
    for fn in (tlv_impl.decode, tlv_impl.decode_dict, tlv_impl.decode_nested):
        try:
            fn(data)
        except TLVError as exc:
            assert exc.offset is not None and 0 <= exc.offset <= len(data)


@given(cut=st.integers(0, len(F55) - 1), pos=st.integers(0, len(F55) - 1), byte=st.integers(0, 255))
def test_fuzz_truncated_and_mutated_field55(tlv_impl: ModuleType, cut: int, pos: int, byte: int) -> None:
    from _fastcore import _tlv_py as pure

    for data in (F55[:cut], F55[:pos] + bytes([byte]) + F55[pos + 1 :]):
        try:
            got = tlv_impl.decode(data)
        except TLVError as exc:
            with pytest.raises(TLVError) as ei:
                pure.decode(data)
            assert (ei.value.tag, ei.value.offset, str(ei.value)) == (exc.tag, exc.offset, str(exc))
        else:
            assert got == pure.decode(data)
