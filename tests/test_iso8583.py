"""Known answers, edge cases, the spec cache and the fuzz test of ``_fastcore.iso8583`` (both twins)."""

from __future__ import annotations

import copy
import gc
import random
import tracemalloc
from pathlib import Path
from typing import Any

import iso8583
import iso8583.specs
import pytest

from _fastcore import iso8583 as selected
from _fastcore.spec import POS_SPEC

VECTORS = Path(__file__).parent / "vectors"
MAC1_BODY = bytes.fromhex((VECTORS / "mac1_frame.hex").read_text().strip())[13:]

ASCII = iso8583.specs.default_ascii
DEFAULT = iso8583.specs.default

SALE_0200 = {
    "t": "0200",
    "2": "6225880123456789",
    "3": "000000",
    "4": "000000012345",
    "11": "000123",
    "22": "051",
    "23": "001",
    "25": "00",
    "41": "12345678",
    "42": "123456789012345",
    "49": "156",
    "55": "9F2608" + "11" * 8 + "9F2701809F100706010A03A0A000" + "AB" * 170,
    "60": "22000001000500",
}


def test_selector_reexports_pyiso8583_exceptions() -> None:
    assert selected.EncodeError is iso8583.EncodeError
    assert selected.DecodeError is iso8583.DecodeError
    assert selected.IMPLEMENTATION in ("c", "py")
    for name in ("encode", "decode", "Codec", "invalidate"):
        assert callable(getattr(selected, name))


def test_pyiso8583_docstring_examples(iso8583_impl: Any) -> None:
    doc, enc = iso8583_impl.decode(b"02004010100000000000161234567890123456123456111", ASCII)
    assert doc == {"t": "0200", "p": "4010100000000000", "2": "1234567890123456", "12": "123456", "20": "111"}
    assert enc["2"] == {"len": b"16", "data": b"1234567890123456"}
    doc = {"t": "0200", "2": "1234567890", "39": "00"}
    raw, enc = iso8583_impl.encode(doc, ASCII)
    assert raw == bytearray(b"0200400000000200000010123456789000") and type(raw) is bytearray
    assert doc == {"t": "0200", "2": "1234567890", "39": "00", "p": "4000000002000000"}
    assert enc["p"] == {"len": b"", "data": b"4000000002000000"}


def test_mac1_frame_decodes_and_reencodes_byte_for_byte(iso8583_impl: Any) -> None:
    doc, enc = iso8583_impl.decode(MAC1_BODY, POS_SPEC)
    assert doc["t"] == "0200" and doc["p"] == "3020048000C08015"
    assert doc["22"] == "030" and doc["41"] == "00000001" and doc["64"] == "4233413039324145"
    assert enc["60"]["len"] == b"\x00\x19"
    assert (doc, enc) == iso8583.decode(MAC1_BODY, POS_SPEC)
    assert bytes(iso8583_impl.encode(doc, POS_SPEC)[0]) == MAC1_BODY
    codec = iso8583_impl.Codec(POS_SPEC)
    assert codec.decode(MAC1_BODY) == doc
    assert codec.encode(doc) == MAC1_BODY


@pytest.mark.parametrize(
    "name", ["mac1_frame", "signon_0800_frame", "signon_0810_frame", "sale_0200_chip_frame"]
)
def test_golden_pos_frames(iso8583_impl: Any, name: str) -> None:
    """The dialect's golden frames: same dicts as pyiso8583, re-encoded byte for byte, both APIs."""
    body = bytes.fromhex((VECTORS / f"{name}.hex").read_text())[13:]
    doc, enc = iso8583_impl.decode(body, POS_SPEC)
    ref_doc, ref_enc = iso8583.decode(body, POS_SPEC)
    assert (doc, enc) == (ref_doc, ref_enc) and list(doc) == list(ref_doc)
    raw, enc2 = iso8583_impl.encode(dict(doc), POS_SPEC)
    assert bytes(raw) == body and enc2 == iso8583.encode(dict(doc), POS_SPEC)[1]
    codec = iso8583_impl.Codec(POS_SPEC)
    assert codec.decode(body) == ref_doc
    assert codec.encode(ref_doc) == body


def test_gbk_field_63(iso8583_impl: Any) -> None:
    doc = {"t": "0810", "39": "00", "63": "CUP银联卡        "}
    raw, _ = iso8583_impl.encode(dict(doc), POS_SPEC)
    assert raw == iso8583.encode(dict(doc), POS_SPEC)[0]
    assert "银联".encode("gbk") in raw
    assert iso8583_impl.Codec(POS_SPEC).decode(bytes(raw))["63"] == doc["63"]
    with pytest.raises(iso8583.EncodeError, match="invalid data: field 63"):
        iso8583_impl.Codec(POS_SPEC).encode({"t": "0810", "63": "\u20ac\ud800"})


def test_secondary_and_tertiary_bitmaps(iso8583_impl: Any) -> None:
    spec = copy.deepcopy(ASCII)
    for i in range(129, 193):
        spec[str(i)] = {"data_enc": "ascii", "len_enc": "ascii", "len_type": 2, "max_len": 9, "desc": ""}
    doc = {"t": "0800", "70": "301", "150": "abc", "1": "FFFFFFFFFFFFFFFF", "65": "x"}
    raw, enc = iso8583_impl.encode(copy.deepcopy(doc), spec)
    assert raw == iso8583.encode(copy.deepcopy(doc), spec)[0]
    dec, _ = iso8583_impl.decode(bytes(raw), spec)
    assert dec["1"] == "8400000000000000" + "0000040000000000"
    assert dec["150"] == "abc" and dec["70"] == "301"


@pytest.mark.parametrize(
    ("doc", "spec", "message"),
    [
        ({"t": "0200", "2": "1" * 20}, ASCII, "Field data is 20 bytes, larger than maximum 19: field 2"),
        ({"t": "02000"}, ASCII, "Field data is 5 bytes, expecting 4: field t"),
        ({"t": "0200", "22": "05"}, POS_SPEC, "Field data is 2 nibbles, expecting 3: field 22"),
        ({"t": "0200", "2": "62258801234567X"}, POS_SPEC, "Failed to encode field, non-hex data: field 2"),
        ({"t": "0200", "41": "终端0001"}, POS_SPEC, "Failed to encode field, invalid data: field 41"),
        ({"t": "0200", "200": "1"}, ASCII, "Dictionary contains fields outside of 1-192 range [200]: field p"),
        ({"2": "1"}, ASCII, "Field data is required: field t"),
    ],
)
def test_encode_errors_match(iso8583_impl: Any, doc: dict[str, str], spec: Any, message: str) -> None:
    with pytest.raises(iso8583.EncodeError) as mine:
        iso8583_impl.encode(copy.deepcopy(doc), spec)
    with pytest.raises(iso8583.EncodeError) as ref:
        iso8583.encode(copy.deepcopy(doc), spec)
    assert str(mine.value) == str(ref.value) == message
    assert mine.value.doc_enc == ref.value.doc_enc
    with pytest.raises(iso8583.EncodeError, match=message.replace("[", r"\[").replace("]", r"\]")):
        iso8583_impl.Codec(spec).encode(doc)


def test_decode_error_names_field_and_position(iso8583_impl: Any) -> None:
    bad = MAC1_BODY[:40]
    with pytest.raises(iso8583.DecodeError) as exc:
        iso8583_impl.decode(bad, POS_SPEC)
    ref = pytest.raises(iso8583.DecodeError, iso8583.decode, bad, POS_SPEC).value
    assert (str(exc.value), exc.value.field, exc.value.pos) == (str(ref), ref.field, ref.pos)
    assert exc.value.field == "42"


def test_type_errors_match(iso8583_impl: Any) -> None:
    with pytest.raises(TypeError, match="must be dict, not list"):
        iso8583_impl.encode([], ASCII)
    with pytest.raises(TypeError, match="must be bytes or bytearray, not str"):
        iso8583_impl.decode("0200", ASCII)
    with pytest.raises(TypeError, match="must be bytes or bytearray, not memoryview"):
        iso8583_impl.Codec(ASCII).decode(memoryview(b"0200"))


def test_spec_changes_are_seen(iso8583_impl: Any) -> None:
    """The compiled table cache must notice in-place edits of the spec and of a field's dict."""
    spec = copy.deepcopy(ASCII)
    codec = iso8583_impl.Codec(spec)
    doc = {"t": "0200", "39": "00"}
    assert iso8583_impl.encode(dict(doc), spec)[0] == b"0200000000000200000000"
    spec["39"]["max_len"] = 3  # edit of a field dict
    with pytest.raises(iso8583.EncodeError, match="expecting 3: field 39"):
        iso8583_impl.encode(dict(doc), spec)
    with pytest.raises(iso8583.EncodeError, match="expecting 3: field 39"):
        codec.encode(doc)
    spec["39"] = {"data_enc": "cp500", "len_enc": "cp500", "len_type": 1, "max_len": 5}  # replaced
    raw = iso8583_impl.encode(dict(doc), spec)[0]
    assert raw == iso8583.encode(dict(doc), spec)[0]
    assert codec.encode(doc) == raw
    assert iso8583_impl.decode(bytes(raw), spec)[0]["39"] == "00"
    del spec["39"]  # removed
    with pytest.raises(KeyError):
        iso8583_impl.encode(dict(doc), spec)
    iso8583_impl.invalidate(spec)
    iso8583_impl.invalidate()


def test_non_dict_specs_work(iso8583_impl: Any) -> None:
    from types import MappingProxyType

    spec = MappingProxyType({k: MappingProxyType(v) for k, v in ASCII.items()})
    doc = {"t": "0200", "39": "00"}
    assert iso8583_impl.encode(dict(doc), spec) == iso8583.encode(dict(doc), spec)
    assert iso8583_impl.Codec(spec).decode(b"0200000000000200000000") == {
        "t": "0200",
        "p": "0000000002000000",
        "39": "00",
    }


def test_fields_missing_from_the_spec(iso8583_impl: Any) -> None:
    """Compatible API: pyiso8583's bare KeyError; Codec: a DecodeError/EncodeError that is a KeyError."""
    doc = {"t": "0800", "70": "301", "130": "1"}
    with pytest.raises(KeyError) as ref:
        iso8583.encode(dict(doc), DEFAULT)
    with pytest.raises(KeyError) as mine:
        iso8583_impl.encode(dict(doc), DEFAULT)
    assert type(mine.value) is KeyError and str(mine.value) == str(ref.value) == "'130'"
    with pytest.raises(iso8583_impl.FieldNotInSpecEncodeError) as exc:
        iso8583_impl.Codec(DEFAULT).encode(doc)
    assert isinstance(exc.value, iso8583.EncodeError) and isinstance(exc.value, KeyError)
    assert str(exc.value) == "Field is not defined in the specification: field 130"

    spec = copy.deepcopy(DEFAULT)
    spec["130"] = {"data_enc": "ascii", "len_enc": "ascii", "len_type": 0, "max_len": 1, "desc": ""}
    raw = bytes(iso8583.encode(dict(doc), spec)[0])
    with pytest.raises(KeyError):
        iso8583_impl.decode(raw, DEFAULT)
    with pytest.raises(iso8583.DecodeError) as dexc:
        iso8583_impl.Codec(DEFAULT).decode(raw)
    assert dexc.value.field == "130" and dexc.value.pos == len(raw) - 1
    assert str(dexc.value) == f"Field is not defined in the specification: field 130 pos {len(raw) - 1}"
    assert isinstance(dexc.value, KeyError)


def test_codec_encode_leaves_fields_alone(iso8583_impl: Any) -> None:
    doc = dict(SALE_0200, p="junk", **{"1": "junk"})
    before = dict(doc)
    raw = iso8583_impl.Codec(DEFAULT).encode(doc)
    assert doc == before
    assert type(raw) is bytes
    assert raw == bytes(iso8583.encode(dict(doc), DEFAULT)[0])


@pytest.mark.parametrize("spec", [DEFAULT, POS_SPEC], ids=["default", "pos"])
def test_fuzz_mutated_frames_only_raise_decode_errors(iso8583_impl: Any, spec: Any) -> None:
    """Mutated/truncated frames: a DecodeError naming the field, or exactly pyiso8583's outcome."""
    rng = random.Random(8583)
    doc = dict(SALE_0200) if spec is DEFAULT else {k: v for k, v in SALE_0200.items() if k != "23"}
    if spec is POS_SPEC:
        doc["22"] = "051"
    frame = bytes(iso8583.encode(dict(doc), spec)[0])
    codec = iso8583_impl.Codec(spec)
    gc.collect()
    tracemalloc.start()
    try:
        for n in range(3000):
            buf = bytearray(frame)
            for _ in range(rng.randint(1, 4)):
                r = rng.random()
                if not buf:
                    buf.append(rng.randrange(256))
                elif r < 0.5:
                    buf[rng.randrange(len(buf))] = rng.randrange(256)
                elif r < 0.8:
                    del buf[rng.randrange(len(buf)) :]
                else:
                    buf.insert(rng.randrange(len(buf) + 1), rng.randrange(256))
            data = bytes(buf)
            try:
                iso8583_impl.decode(data, spec)
            except iso8583.DecodeError as exc:
                assert f"field {exc.field} pos {exc.pos}" in str(exc)
            except KeyError as exc:  # a bit for a field the spec lacks: pyiso8583 does the same
                assert int(exc.args[0]) > 128
            try:
                codec.decode(data)
            except iso8583.DecodeError as exc:  # the hot path: nothing but DecodeErrors
                assert str(exc) == f"{exc.msg}: field {exc.field} pos {exc.pos}"
            if n == 500:
                gc.collect()
                baseline = tracemalloc.get_traced_memory()[0]
        gc.collect()
        grown = tracemalloc.get_traced_memory()[0] - baseline
    finally:
        tracemalloc.stop()
    assert grown < 200_000, f"decode of bad frames leaks: {grown} bytes"


@pytest.mark.c_extension
def test_compiled_fast_path_covers_ordinary_messages(monkeypatch: pytest.MonkeyPatch) -> None:
    """Valid messages never reach the pure-Python fallback (a slow path would hide behind parity)."""
    compiled = pytest.importorskip("_fastcore._iso8583")

    class NoFallback:
        def __getattr__(self, name: str) -> Any:
            raise AssertionError(f"fell back to the reference for {name}")

    frames = [bytes.fromhex((VECTORS / f"{n}.hex").read_text())[13:] for n in
              ("mac1_frame", "signon_0800_frame", "signon_0810_frame", "sale_0200_chip_frame")]
    ref_docs = [iso8583.decode(f, POS_SPEC)[0] for f in frames]
    sale = {k: v for k, v in SALE_0200.items() if k != "23"}
    cases = [(DEFAULT, SALE_0200), (ASCII, SALE_0200), (POS_SPEC, sale), *((POS_SPEC, d) for d in ref_docs)]
    expected = [(iso8583.encode(dict(d), s), s, d) for s, d in cases]
    monkeypatch.setattr(compiled, "_ref", NoFallback())
    for (raw, enc), spec, doc in expected:
        assert compiled.encode(dict(doc), spec) == (raw, enc)
        assert compiled.decode(bytes(raw), spec) == iso8583.decode(bytes(raw), spec)
        codec = compiled.Codec(spec)
        assert codec.encode(doc) == bytes(raw)
        assert codec.decode(raw) == iso8583.decode(bytes(raw), spec)[0]



@pytest.mark.c_extension
def test_directly_built_dicts_are_ordinary_dicts() -> None:
    """The compiled decode fills its result dicts without PyDict_SetItem (CPython 3.11): they must
    compare, look up, grow, shrink, copy, be GC-tracked and drop their references like any dict."""
    import sys

    compiled = pytest.importorskip("_fastcore._iso8583")
    if sys.version_info[:2] == (3, 11):
        assert compiled.DIRECT_DICTS
    raw = bytes(iso8583.encode(dict(SALE_0200), DEFAULT)[0])
    ref_doc, ref_enc = iso8583.decode(raw, DEFAULT)
    for _ in range(3):
        doc, enc = compiled.decode(raw, DEFAULT)
        fields = compiled.Codec(DEFAULT).decode(raw)
        for got, ref in ((doc, ref_doc), (fields, ref_doc), (enc, ref_enc)):
            assert got == ref and list(got.items()) == list(ref.items()) and len(got) == len(ref)
            assert all(got[k] == ref[k] and k in got for k in ref)
            assert got.copy() == ref and dict(got) == ref and copy.deepcopy(got) == ref
            assert gc.is_tracked(got) == gc.is_tracked(ref)
        assert all(e == ref_enc[k] and list(e) == ["len", "data"] for k, e in enc.items())
        for d in (doc, enc, fields):
            del d["2"]
            d.update({f"x{i}": i for i in range(100)})  # resized from the direct table
            d["t"] = "0210"
            assert d["x99"] == 99 and "2" not in d and d["t"] == "0210" and len(d) == len(ref_doc) + 99
    codec = compiled.Codec(DEFAULT)

    def counts() -> list[int]:
        return [sys.getrefcount(k) for k in ("t", "2", "len", "data")]

    def run() -> None:
        for _ in range(1000):
            compiled.decode(raw, DEFAULT)
            codec.decode(raw)

    run()
    before = counts()
    run()
    assert counts() == before  # keys are not leaked (nor kept: 2000 results were dropped)
