"""check_numeric_fields: the fast scan (both twins of ``_fastcore._fields``) never changes an outcome.

The reference below is the plain per-character walk the check always did; for any document the
check must raise the same error (field, message, offset) or accept it, and the twins must agree.
"""

from __future__ import annotations

import importlib
from types import MappingProxyType
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from _fastcore import _fields_py
from _fastcore import fields as F
from _fastcore.spec import POS_SPEC

TWINS = [_fields_py]
try:
    TWINS.append(importlib.import_module("_fastcore._fields"))
except ImportError:  # not built: the pure twin alone
    pass


def reference(doc: Any, encrypted_tracks: bool = False) -> None:
    mti = doc.get("t")
    if mti is not None:
        if len(mti) != 4:
            raise F.FieldFormatError("t", f"MTI must be 4 digits, got {mti!r}")
        for i, ch in enumerate(mti):
            if not "0" <= ch <= "9":
                raise F.FieldFormatError("t", f"non-digit {ch!r}", i)
    for field, value in doc.items():
        fspec = POS_SPEC.get(field)
        if fspec is None or field in ("t", "p", "1", "h") or fspec.get("len_count") != "nibbles":
            continue
        if field in ("35", "36"):
            allowed = "0123456789ABCDEFabcdef" if encrypted_tracks else "0123456789Dd"
            for i, ch in enumerate(value):
                if ch not in allowed:
                    raise F.FieldFormatError(field, f"invalid track character {ch!r}", i)
        else:
            for i, ch in enumerate(value):
                if not "0" <= ch <= "9":
                    raise F.FieldFormatError(field, f"non-digit {ch!r}", i)


def outcome(fn: Any, doc: Any, enc: bool) -> Any:
    try:
        fn(doc, encrypted_tracks=enc)
    except F.FieldFormatError as exc:
        return (str(exc), exc.field, exc.offset)
    return "ok"


class Sub(str):
    pass


CHARS = st.sampled_from(list("0123456789" * 4 + "ABCDEFabcdefDd =Z\x00é²٣"))
VALUES = st.text(CHARS, max_size=24)
KEYS = st.sampled_from(["t", "p", "1", "h", "2", "3", "4", "11", "14", "22", "35", "36", "41", "48", "52",
                        "55", "60", "61", "64", "90", "129", "x"])


@settings(max_examples=600, deadline=None)
@given(st.dictionaries(KEYS, VALUES, max_size=10), st.booleans(), st.sampled_from(["dict", "proxy", "sub"]))
def test_same_outcome_as_the_character_walk(doc: dict[str, str], enc: bool, shape: str) -> None:
    if shape == "sub":
        doc = {k: Sub(v) for k, v in doc.items()}
    arg: Any = MappingProxyType(doc) if shape == "proxy" else doc
    assert outcome(F.check_numeric_fields, arg, enc) == outcome(reference, doc, enc)
    nibbles = frozenset(k for k, f in POS_SPEC.items() if k not in "tp1h" and f.get("len_count") == "nibbles")
    results = {twin.numeric_ok(arg, nibbles, frozenset({"35", "36"}), enc) for twin in TWINS}
    if shape != "sub":  # the compiled scan leaves str subclasses to the walk
        assert len(results) == 1
    if outcome(reference, doc, enc) != "ok":
        assert results == {False}


def kind_of_outcome(fn: Any, doc: Any) -> Any:
    try:
        fn(doc)
    except Exception as exc:  # noqa: BLE001 - the type and text are the point
        return type(exc).__name__, str(exc)
    return "ok"


@pytest.mark.parametrize("value", [None, 5, b"12", b"0200", ["0", "2"]])
@pytest.mark.parametrize("field", ["t", "4", "35"])
def test_odd_values_fail_as_the_walk_fails(field: str, value: Any) -> None:
    doc = {"t": "0200", field: value}
    assert kind_of_outcome(F.check_numeric_fields, doc) == kind_of_outcome(reference, doc)


def test_valid_sale_passes_and_each_bad_character_is_named() -> None:
    doc = {"t": "0200", "2": "6212345678901234", "3": "000000", "4": "000000012345", "11": "000123",
           "22": "051", "35": "6212345678901234D28122011234567890", "41": "T0000001", "52": "0123456789ABCDEF",
           "53": "2600000000000000", "55": "9F2608A1", "60": "22000001000500"}
    F.check_numeric_fields(doc)
    for field in ("2", "3", "4", "11", "22", "53", "60"):
        bad = dict(doc)
        bad[field] = doc[field][:2] + "B" + doc[field][3:]
        with pytest.raises(F.FieldFormatError, match=f"field {field}: non-digit 'B' at offset 2"):
            F.check_numeric_fields(bad)
    with pytest.raises(F.FieldFormatError, match="field 35: invalid track character 'A' at offset 3"):
        F.check_numeric_fields(dict(doc, **{"35": "621A"}))
    F.check_numeric_fields(dict(doc, **{"35": "621A"}), encrypted_tracks=True)
