"""ISO 8583 codec: pyiso8583 4.0.1 against ``_fastcore.iso8583`` (compatible API and ``Codec``).

Messages: a 0200 sale with a ~200-byte field 55 on pyiso8583's ``default`` spec and on the POS
dialect, and an 0800 sign-on (POS dialect).  Each is encoded and decoded by pyiso8583 (the
baseline), by the selected twin's ``encode``/``decode`` (``compat``, same results as pyiso8583)
and by ``Codec(spec)`` (``native``: values only); the pure twin is measured too.  Ratios go to
the table printed at the end of the run (``bench/conftest.py``); nothing is asserted about speed.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

import iso8583
import iso8583.specs
import pytest

from _fastcore import iso8583 as selected
from _fastcore.spec import POS_SPEC

F55 = (
    "9F2608A1B2C3D4E5F607189F2701809F101307010103A00000010A010000000000C0A1B2C39F3704"
    "1A2B3C4D9F36020123950500000000009A032611229C01009F02060000000123455F2A0201569F1A"
    "0201568201007C009F03060000000000009F330360F8C89F34030203009F3501229F1E0831323334"
    "35363738840AA0000003330101019F0902008C9F410400000123"
) + "DF" * 40
SALE = {
    "t": "0200",
    "2": "6225880123456789012",
    "3": "000000",
    "4": "000000012345",
    "11": "000123",
    "14": "2812",
    "22": "051",
    "23": "001",
    "25": "00",
    "26": "12",
    "35": "6225880123456789012D28122011234567890",
    "41": "12345678",
    "42": "123456789012345",
    "49": "156",
    "52": "0123456789ABCDEF",
    "53": "2600000000000000",
    "55": F55,
    "60": "22000123000500",
    "64": "0000000000000000",
}
SIGNON = {"t": "0800", "11": "000001", "41": "12345678", "42": "123456789012345",
          "60": "00000001003", "63": "01 "}
MESSAGES: dict[str, tuple[dict[str, str], Any]] = {
    "0200 default": ({k: v for k, v in SALE.items() if k not in ("26", "53")}, iso8583.specs.default),
    "0200 pos": (SALE, POS_SPEC),
    "0800 pos": (SIGNON, POS_SPEC),
}
PURE = importlib.import_module("_fastcore._iso8583_py")
IMPLS = ["pyiso8583", "compat", "native", "pure-compat"]


def _callable(impl: str, op: str, doc: dict[str, str], spec: Any, raw: bytes) -> Callable[[], Any]:
    if impl == "native":
        codec = selected.Codec(spec)
        return (lambda: codec.encode(doc)) if op == "encode" else (lambda: codec.decode(raw))
    mod = {"pyiso8583": iso8583, "compat": selected, "pure-compat": PURE}[impl]
    if op == "encode":
        enc = mod.encode
        return lambda: enc(dict(doc), spec)  # encode mutates its input: a fresh copy each call
    dec = mod.decode
    return lambda: dec(raw, spec)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("op", ["decode", "encode"])
@pytest.mark.parametrize("msg", list(MESSAGES))
def test_codec(benchmark: Any, ratio_table: Any, msg: str, op: str, impl: str) -> None:
    doc, spec = MESSAGES[msg]
    raw = bytes(iso8583.encode(dict(doc), spec)[0])
    fn = _callable(impl, op, doc, spec, raw)
    expected = fn()  # same answer as pyiso8583 before timing anything
    if impl == "native":
        assert expected == (bytes(raw) if op == "encode" else iso8583.decode(raw, spec)[0])
    else:
        assert expected == (iso8583.encode(dict(doc), spec) if op == "encode" else iso8583.decode(raw, spec))
    benchmark.group = f"codec {msg} {op}"
    benchmark(fn)
    name = f"{impl} ({selected.IMPLEMENTATION})" if impl in ("compat", "native") else impl
    ratio_table.record_benchmark(f"ISO 8583 {msg} {op} ({len(raw)} B)", name, benchmark,
                                 "pyiso8583")


def main(argv: list[str]) -> int:
    """``python bench/bench_codec.py IMPL OP MSG N``: run one benchmark callable N times (after one
    warm-up call), for counting instructions with ``valgrind --tool=callgrind`` (run it with N and
    with 0, subtract, divide by N; see docs/benchmarks.md)."""
    impl, op, msg, n = argv[0], argv[1], argv[2], int(argv[3])
    doc, spec = MESSAGES[msg]
    raw = bytes(iso8583.encode(dict(doc), spec)[0])
    fn = _callable(impl, op, doc, spec, raw)
    fn()
    for _ in range(n):
        fn()
    return 0


if __name__ == "__main__":
    import sys

    raise SystemExit(main(sys.argv[1:]))
