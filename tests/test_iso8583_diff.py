"""Differential properties: ``_fastcore.iso8583`` (both twins) against pyiso8583 4.0.1.

Random documents, random specs (every encoding family pyiso8583 accepts, odd
nibble lengths, pads, bogus codecs) and mutated frames go through both codecs;
results, ``doc_dec`` mutations, ``doc_enc`` and exceptions (type, message,
field, position, partial docs) must be identical.
"""

from __future__ import annotations

import copy
from typing import Any

import iso8583
import iso8583.specs
import pytest
from hypothesis import given
from hypothesis import strategies as st

from _fastcore.spec import POS_SPEC

SHIPPED = {
    "default": iso8583.specs.default,
    "default_ascii": iso8583.specs.default_ascii,
    "pos": POS_SPEC,
}


def outcome(fn: Any, *args: Any) -> tuple[Any, ...]:
    """Everything observable about one call, comparable with ``==``."""
    try:
        result = fn(*args)
    except (iso8583.EncodeError, iso8583.DecodeError) as exc:
        return ("err", type(exc), str(exc), exc.field, getattr(exc, "pos", None), exc.doc_dec, exc.doc_enc)
    except Exception as exc:  # KeyError/TypeError/...: pyiso8583 lets these escape too
        return ("exc", type(exc), str(exc))
    if isinstance(result, tuple):
        return ("ok", type(result[0]), *result)
    return ("ok", type(result), result)


def check_encode(impl: Any, doc: dict[str, Any], spec: dict[str, Any]) -> tuple[Any, ...]:
    mine_doc, ref_doc = copy.deepcopy(doc), copy.deepcopy(doc)
    mine = outcome(impl.encode, mine_doc, spec)
    ref = outcome(iso8583.encode, ref_doc, spec)
    assert mine == ref
    assert mine_doc == ref_doc and list(mine_doc) == list(ref_doc)
    if ref[0] == "ok":
        assert list(mine[3]) == list(ref[3])  # doc_enc key order too
        # the hot-loop API: same bytes, input untouched
        before = copy.deepcopy(doc)
        assert impl.Codec(spec).encode(doc) == bytes(ref[2])
        assert doc == before
    return ref


def check_decode(impl: Any, data: bytes, spec: dict[str, Any]) -> tuple[Any, ...]:
    mine = outcome(impl.decode, data, spec)
    ref = outcome(iso8583.decode, data, spec)
    assert mine == ref
    if ref[0] == "ok":
        assert list(mine[2]) == list(ref[2]) and list(mine[3]) == list(ref[3])
        assert impl.Codec(spec).decode(data) == ref[2]
    elif ref[1] is KeyError and ref[2].strip("'").isdigit():  # a field the spec lacks: a DecodeError
        with pytest.raises(impl.FieldNotInSpecDecodeError) as exc:
            impl.Codec(spec).decode(data)
        assert repr(exc.value.field) == ref[2] and isinstance(exc.value, KeyError)
    else:
        assert outcome(impl.Codec(spec).decode, data)[:3] == ref[:3]
    return ref


# --------------------------------------------------------------------------- strategies

HEX = "0123456789ABCDEFabcdef"
TEXT_ENCODINGS = ["ascii", "latin-1", "cp500", "cp037", "utf-8", "gbk", "ASCII", "utf-16", "rot13", "hex", "no-such-codec"]
LEN_ENCODINGS = ["b", "bcd", "ascii", "cp500", "latin-1", "utf-16", "gbk", "hex", "no-such-codec"]


@st.composite
def field_specs(draw: st.DrawFn) -> dict[str, Any]:
    fs: dict[str, Any] = {
        "data_enc": draw(st.sampled_from(["b", "b", "ascii", *TEXT_ENCODINGS])),
        "len_enc": draw(st.sampled_from(LEN_ENCODINGS)),
        "len_type": draw(st.sampled_from([0, 0, 1, 2, 3])),
        "max_len": draw(st.integers(0, 24)),
        "desc": "random",
    }
    if draw(st.booleans()):
        fs["len_count"] = draw(st.sampled_from(["bytes", "nibbles", "nibbles"]))
    if draw(st.booleans()):
        fs["left_pad"] = draw(st.sampled_from(["0", "F", "f", "", "X", "00"]))
    if draw(st.booleans()):
        fs["right_pad"] = draw(st.sampled_from(["0", "F", "", "d"]))
    return fs


@st.composite
def random_specs(draw: st.DrawFn) -> dict[str, Any]:
    spec = copy.deepcopy(iso8583.specs.default)
    spec["h"] = draw(st.one_of(st.just(spec["h"]), field_specs()))
    spec["t"]["data_enc"] = draw(st.sampled_from(["b", "ascii", "cp500"]))
    enc = draw(st.sampled_from(["b", "ascii", "cp500", "latin-1"]))
    spec["p"]["data_enc"] = enc
    spec["1"]["data_enc"] = draw(st.sampled_from([enc, "b", "ascii"]))
    for key in draw(st.lists(st.sampled_from(["2", "3", "4", "35", "55", "64", "70", "128"]), max_size=6)):
        spec[key] = draw(field_specs())
    if draw(st.integers(0, 9)) == 0:
        for i in range(129, 193):
            spec[str(i)] = draw(field_specs())
    return spec


def plausible_value(draw: st.DrawFn, fs: dict[str, Any], exact: bool = False) -> Any:
    """A value shaped for the field (``exact``: the right length and alphabet, mostly)."""
    max_len = fs["max_len"]
    nibbles = fs.get("len_count") == "nibbles"
    if fs["len_type"] == 0:
        choices = [max_len] if exact else [max_len, max_len, max_len, max(0, max_len - 1), max_len + 1]
        size = draw(st.sampled_from(choices))
    else:
        size = draw(st.integers(0, min(max_len, 40) if exact else max_len + 1))
    if fs["data_enc"] == "b":
        count = size if nibbles else size * 2
        if not exact and draw(st.integers(0, 5)) == 0:
            count += 1
        return draw(st.text(st.sampled_from(HEX), min_size=count, max_size=count))
    count = size // 2 if nibbles else size
    if exact:
        return draw(st.text(st.sampled_from("0123456789 ABCxyz="), min_size=count, max_size=count))
    alphabet = st.sampled_from("0123456789 ABCxyz=中文") if draw(st.integers(0, 5)) else st.characters()
    return draw(st.text(alphabet, min_size=count, max_size=count))


@st.composite
def documents(draw: st.DrawFn, spec: dict[str, Any], valid_bias: int = 6) -> dict[str, Any]:
    doc: dict[str, Any] = {}
    if spec["h"]["max_len"] > 0 and draw(st.integers(0, 20)):
        doc["h"] = plausible_value(draw, spec["h"])
    if draw(st.integers(0, 30)):
        tb = spec["t"]["data_enc"] == "b"
        doc["t"] = draw(st.sampled_from(["0200", "0800", "0210", "02000", "020", "ZZZZ", "0a00"]))
        if tb and draw(st.booleans()):
            doc["t"] = doc["t"][:4]
    numbered = [k for k in spec if k.isdigit() and k not in ("1",)]
    for key in draw(st.lists(st.sampled_from(numbered), max_size=12, unique=True)):
        if draw(st.integers(0, valid_bias)):
            doc[key] = plausible_value(draw, spec[key], exact=valid_bias > 100)
        else:
            doc[key] = draw(
                st.one_of(st.text(max_size=6), st.integers(0, 99), st.binary(max_size=4), st.none())
            )
    extra = draw(st.integers(0, 12))
    if extra == 0:
        doc["1"] = "0000000000000000"
    elif extra == 1:
        doc["65"] = "garbage"
    elif extra == 2:
        doc[draw(st.sampled_from(["193", "0", "03", "x", "", "p"]))] = "12"
    elif extra == 3:
        doc[draw(st.sampled_from([5, b"5", 5.0]))] = "1"  # type: ignore[index]
    return doc


def mutate(draw: st.DrawFn, data: bytes) -> bytes:
    buf = bytearray(data)
    for _ in range(draw(st.integers(0, 3))):
        op = draw(st.integers(0, 3))
        if op == 0 and buf:
            i = draw(st.integers(0, len(buf) - 1))
            buf[i] = draw(st.integers(0, 255))
        elif op == 1:
            del buf[draw(st.integers(0, len(buf))) :]
        elif op == 2:
            buf += draw(st.binary(max_size=3))
        elif buf:
            i = draw(st.integers(0, len(buf) - 1))
            buf[i] ^= 1 << draw(st.integers(0, 7))
    return bytes(buf)


# --------------------------------------------------------------------------- properties


@pytest.mark.parametrize("spec_name", sorted(SHIPPED))
@given(data=st.data())
def test_encode_matches_pyiso8583_on_shipped_specs(iso8583_impl: Any, spec_name: str, data: st.DataObject) -> None:
    spec = SHIPPED[spec_name]
    check_encode(iso8583_impl, data.draw(documents(spec)), spec)


@given(data=st.data())
def test_encode_matches_pyiso8583_on_random_specs(iso8583_impl: Any, data: st.DataObject) -> None:
    spec = data.draw(random_specs())
    check_encode(iso8583_impl, data.draw(documents(spec)), spec)


@pytest.mark.parametrize("spec_name", sorted(SHIPPED))
@given(data=st.data())
def test_decode_matches_pyiso8583_on_shipped_specs(iso8583_impl: Any, spec_name: str, data: st.DataObject) -> None:
    spec = SHIPPED[spec_name]
    doc = data.draw(documents(spec, valid_bias=1000))
    try:
        frame = bytes(iso8583.encode(doc, spec)[0])
    except Exception:  # an invalid document: decode a frame of the MTI and bitmap alone instead
        frame = bytes(iso8583.encode({"t": "0200"}, spec)[0])
    check_decode(iso8583_impl, frame, spec)
    check_decode(iso8583_impl, mutate(data.draw, frame), spec)


@given(data=st.data())
def test_decode_matches_pyiso8583_on_random_specs(iso8583_impl: Any, data: st.DataObject) -> None:
    spec = data.draw(random_specs())
    doc = data.draw(documents(spec, valid_bias=1000))
    try:
        frame = bytes(iso8583.encode(doc, spec)[0])
    except Exception:
        frame = data.draw(st.binary(max_size=40))
    check_decode(iso8583_impl, frame, spec)
    check_decode(iso8583_impl, mutate(data.draw, frame), spec)
    check_decode(iso8583_impl, bytearray(frame), spec)


@pytest.mark.parametrize("spec_name", sorted(SHIPPED))
@given(raw=st.binary(max_size=64))
def test_decode_of_random_bytes_matches(iso8583_impl: Any, spec_name: str, raw: bytes) -> None:
    check_decode(iso8583_impl, raw, SHIPPED[spec_name])


@given(data=st.data())
def test_cached_tables_follow_spec_edits(iso8583_impl: Any, data: st.DataObject) -> None:
    """Compile (cache) a spec, edit it in place at random, and compare again: no stale table."""
    spec = copy.deepcopy(data.draw(st.sampled_from([iso8583.specs.default, iso8583.specs.default_ascii, POS_SPEC])))
    doc = data.draw(documents(spec, valid_bias=1000))
    codec = iso8583_impl.Codec(spec)
    check_encode(iso8583_impl, doc, spec)  # warms the module-level cache
    codec.encode(dict(doc)) if outcome(iso8583.encode, dict(doc), spec)[0] == "ok" else None
    for _ in range(data.draw(st.integers(1, 3))):
        key = data.draw(st.sampled_from(sorted(doc.keys() & spec.keys() - {"t"}) or ["2"]))
        edit = data.draw(st.integers(0, 4)) if key in spec else 2
        if edit == 0:
            spec[key]["max_len"] = data.draw(st.integers(0, 30))
        elif edit == 1:
            spec[key]["data_enc"] = data.draw(st.sampled_from(["b", "ascii", "cp500", "gbk"]))
        elif edit == 2:
            spec[key] = data.draw(field_specs())
        elif edit == 3:
            spec[key]["len_type"] = data.draw(st.integers(0, 3))
            spec[key]["len_enc"] = data.draw(st.sampled_from(LEN_ENCODINGS))
        else:
            spec.pop(key, None)
        ref = check_encode(iso8583_impl, doc, spec)
        mine = outcome(codec.encode, dict(doc))
        if ref[0] == "ok":
            assert mine == ("ok", bytes, bytes(ref[2]))
            check_decode(iso8583_impl, bytes(ref[2]), spec)
        elif ref[1] is not KeyError:
            assert mine[:3] == ref[:3]


ODD_SPEC_VALUES = [
    ("max_len", 5.0), ("max_len", -3), ("max_len", 2**40), ("len_type", True), ("len_type", 9),
    ("len_type", -1), ("left_pad", None), ("left_pad", 5), ("len_count", None), ("len_count", "NIBBLES"),
    ("data_enc", None), ("data_enc", "rot13"), ("data_enc", "utf_16"), ("len_enc", None), ("len_enc", "B"),
]


@pytest.mark.parametrize(("prop", "value"), ODD_SPEC_VALUES, ids=[f"{k}={v!r}" for k, v in ODD_SPEC_VALUES])
def test_odd_spec_values_match(iso8583_impl: Any, prop: str, value: Any) -> None:
    """Spec values the compiled tables do not model take the exact path, for every field kind."""
    for key in ("2", "39", "55", "h"):
        spec = copy.deepcopy(iso8583.specs.default)
        spec[key][prop] = value
        if key == "h" and prop != "max_len":
            spec["h"]["max_len"] = 3
        for doc in (
            {"t": "0200", "2": "12345", "39": "00", "55": "ABCD", "h": "abc"},
            {"t": "0200", "2": "1234567890123", "39": "00"},
        ):
            ref = check_encode(iso8583_impl, doc, spec)
            if ref[0] == "ok":
                check_decode(iso8583_impl, bytes(ref[2]), spec)
                check_decode(iso8583_impl, bytes(ref[2])[:-1], spec)


@pytest.mark.parametrize("key", ["h", "t", "p", "1", "3", "70"])
def test_missing_or_null_spec_entries_match(iso8583_impl: Any, key: str) -> None:
    for base in SHIPPED.values():
        raw = bytes(iso8583.encode({"t": "0200", "3": "000000", "70": "301"}, base)[0])
        for replacement in ("delete", None):
            spec = copy.deepcopy(base)
            if replacement == "delete":
                del spec[key]
            else:
                spec[key] = None
            check_encode(iso8583_impl, {"t": "0200", "3": "000000", "70": "301"}, spec)
            check_decode(iso8583_impl, raw, spec)
