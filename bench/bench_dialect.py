"""Dialect hot paths: FrameSplitter.feed (every data_received) and field 55 BER-TLV decode/encode.

Each operation is measured on the compiled twin and on the pure twin (the baseline, same run);
TLV decode also against ``pyemv.tlv``.  Prints the ratios; no threshold.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

MAC1 = bytes.fromhex((Path(__file__).parent.parent / "tests" / "vectors" / "mac1_frame.hex").read_text())
STREAM = MAC1 * 10
F55 = bytes.fromhex(
    "9F2608A1B2C3D4E5F607189F2701809F100807010A03A00000019F3704DEADBEEF9F3602001295050000008000"
    "9A032511229C01009F02060000000012345F2A02015682027C009F1A0201569F03060000000000009F3303E0F9C8"
)
RESULTS: dict[tuple[str, str], float] = {}


def twin(name: str, which: str) -> ModuleType:
    if which == "pyemv":
        return importlib.import_module("pyemv.tlv")
    return importlib.import_module(f"_fastcore._{name}" + ("_py" if which == "py" else ""))


def report(op: str, benchmark: Any, which: str) -> None:
    if benchmark.stats is None:  # --benchmark-disable: the functions ran once as plain tests
        return
    RESULTS[(op, which)] = benchmark.stats.stats.median
    base = RESULTS.get((op, "py"))
    fast = RESULTS.get((op, "c"))
    if base and fast and which != "pyemv":
        print(f"\ndialect {op}: compiled twin {base / fast:.1f}x faster than the pure twin")
    if which == "pyemv" and fast:
        print(f"\ndialect {op}: compiled twin {RESULTS[(op, 'pyemv')] / fast:.1f}x faster than pyemv.tlv")


@pytest.mark.parametrize("which", ["py", "c"])
def test_splitter_many_frames_per_chunk(benchmark: Any, which: str) -> None:
    mod = twin("framing", which)

    def run() -> int:
        return len(mod.FrameSplitter().feed(STREAM))

    assert benchmark(run) == 10
    report("feed 10 frames/chunk", benchmark, which)


@pytest.mark.parametrize("which", ["py", "c"])
def test_splitter_partial_chunks(benchmark: Any, which: str) -> None:
    mod = twin("framing", which)
    chunks = [MAC1[i : i + 40] for i in range(0, len(MAC1), 40)]

    def run() -> int:
        sp = mod.FrameSplitter()
        n = 0
        for c in chunks:
            n += len(sp.feed(c))
        return n

    assert benchmark(run) == 1
    report("feed 1 frame in 40 B chunks", benchmark, which)


@pytest.mark.parametrize("which", ["py", "c", "pyemv"])
def test_tlv_decode_field55(benchmark: Any, which: str) -> None:
    mod = twin("tlv", which)
    out = benchmark(mod.decode, F55)
    assert len(out) == 14
    report("tlv decode field 55", benchmark, which)


@pytest.mark.parametrize("which", ["py", "c"])
def test_tlv_encode_field55(benchmark: Any, which: str) -> None:
    mod = twin("tlv", which)
    items = mod.decode(F55)
    assert benchmark(mod.encode, items) == F55
    report("tlv encode field 55", benchmark, which)
