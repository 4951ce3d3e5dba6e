"""Payment-crypto hot paths: X9.19 MAC and UnionPay POS ECB MAC over 300 bytes, PIN block translate.

Each operation runs on the compiled twin (``c``), the pure twin (``py``) and a straightforward
pycryptodome implementation with cached cipher objects (``base``: the baseline, same run).  The X9.19
MAC also runs on ``base-cbc``: pycryptodome's own CBC mode over the whole message in one call (a new
CBC object per MAC, since CBC objects carry their IV).  Prints the ratios; no threshold.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from Crypto.Cipher import DES, DES3

H = bytes.fromhex
MAC_KEY = H("0123456789ABCDEFFEDCBA9876543210")
MAK = H("0723C80DB5F4CD3D")
MSG = bytes(range(256)) + bytes(range(44))  # 300 bytes
TPK = H("0123456789ABCDEFFEDCBA9876543210")
ZPK = H("89ABCDEF01234567FEDCBA9876543210")
PAN = "6212142000000000012"
RESULTS: dict[tuple[str, str], float] = {}


# --------------------------------------------------------------------------- the baseline


class Straightforward:
    """What one writes with pycryptodome and cached ECB objects, without our core."""

    def __init__(self) -> None:
        self.kl = DES.new(MAC_KEY[:8], DES.MODE_ECB)
        self.kr = DES.new(MAC_KEY[8:], DES.MODE_ECB)
        self.mak = DES.new(MAK, DES.MODE_ECB)
        self.tpk = DES3.new(TPK, DES3.MODE_ECB)
        self.zpk = DES3.new(ZPK, DES3.MODE_ECB)

    @staticmethod
    def xor(a: bytes, b: bytes) -> bytes:
        return (int.from_bytes(a, "big") ^ int.from_bytes(b, "big")).to_bytes(8, "big")

    def x919(self, data: bytes) -> bytes:
        data += bytes(-len(data) % 8)
        h = bytes(8)
        for i in range(0, len(data), 8):
            h = self.kl.encrypt(self.xor(h, data[i : i + 8]))
        return self.kl.encrypt(self.kr.decrypt(h))

    def x919_cbc(self, data: bytes) -> bytes:
        data += bytes(-len(data) % 8)
        h = DES.new(MAC_KEY[:8], DES.MODE_CBC, iv=bytes(8)).encrypt(data)[-8:]
        return self.kl.encrypt(self.kr.decrypt(h))

    def pos_ecb(self, data: bytes) -> bytes:
        data += bytes(-len(data) % 8)
        acc = 0
        for i in range(0, len(data), 8):
            acc ^= int.from_bytes(data[i : i + 8], "big")
        r = f"{acc:016X}".encode()
        e1 = self.mak.encrypt(r[:8])
        return self.mak.encrypt(self.xor(e1, r[8:])).hex().upper()[:8].encode()

    @staticmethod
    def pan_field(pan: str) -> bytes:
        return bytes.fromhex(pan[-13:-1].rjust(16, "0"))

    def translate(self, block: bytes, pan: str) -> bytes:
        pan_field = self.pan_field(pan)
        clear = self.xor(self.tpk.decrypt(block), pan_field).hex().upper()
        n = int(clear[1], 16)
        if clear[0] != "0" or not 4 <= n <= 12 or clear[2 + n :].strip("F"):
            raise ValueError("bad PIN block")
        pin = clear[2 : 2 + n]
        field = bytes.fromhex(f"0{n:X}{pin}".ljust(16, "F"))
        return self.zpk.encrypt(self.xor(field, pan_field))


BASE = Straightforward()


def twin(which: str) -> Any:
    return importlib.import_module("_fastcore._crypto" + ("_py" if which == "py" else ""))


def report(op: str, benchmark: Any, which: str) -> None:
    if benchmark.stats is None:  # --benchmark-disable: the functions ran once as plain tests
        return
    RESULTS[(op, which)] = benchmark.stats.stats.median
    base = RESULTS.get((op, "base"))
    mine = RESULTS.get((op, which))
    if base and mine and which != "base":
        print(
            f"\ncrypto {op}: {which} {base / mine:.1f}x faster than the straightforward pycryptodome baseline"
        )


@pytest.fixture(scope="module", autouse=True)
def ratio_table() -> Iterator[None]:
    yield
    if not RESULTS:
        return
    print("\n\nPayment crypto (median, us; ratio = baseline / this):")
    for op in sorted({op for op, _ in RESULTS}):
        base = RESULTS.get((op, "base"))
        for which in ("base", "base-cbc", "py", "c"):
            t = RESULTS.get((op, which))
            if t is not None:
                ratio = f"{base / t:6.1f}x" if base else "   n/a"
                print(f"  {op:28s} {which:9s} {t * 1e6:9.2f} us  {ratio}")


def _run(benchmark: Any, fn: Callable[[], bytes], expected: bytes) -> None:
    assert benchmark(fn) == expected


X919_EXPECTED = BASE.x919(MSG)
POS_EXPECTED = BASE.pos_ecb(MSG)
SRC_BLOCK = BASE.tpk.encrypt(BASE.xor(H("06123456FFFFFFFF"), BASE.pan_field(PAN)))
TRANSLATED = BASE.translate(SRC_BLOCK, PAN)


@pytest.mark.parametrize("which", ["base", "base-cbc", "py", "c"])
def test_x919_mac_300_bytes(benchmark: Any, which: str) -> None:
    if which == "base":
        fn = lambda: BASE.x919(MSG)  # noqa: E731
    elif which == "base-cbc":
        fn = lambda: BASE.x919_cbc(MSG)  # noqa: E731
    else:
        mod = twin(which)
        fn = lambda: mod.mac_x919(MAC_KEY, MSG)  # noqa: E731
    _run(benchmark, fn, X919_EXPECTED)
    report("X9.19 MAC, 300 B", benchmark, which)


@pytest.mark.parametrize("which", ["base", "py", "c"])
def test_pos_ecb_mac_300_bytes(benchmark: Any, which: str) -> None:
    if which == "base":
        fn = lambda: BASE.pos_ecb(MSG)  # noqa: E731
    else:
        mod = twin(which)
        fn = lambda: mod.mac_pos_ecb(MAK, MSG)  # noqa: E731
    _run(benchmark, fn, POS_EXPECTED)
    report("POS ECB MAC, 300 B", benchmark, which)


@pytest.mark.parametrize("which", ["base", "py", "c"])
def test_pin_translate_iso0(benchmark: Any, which: str) -> None:
    if which == "base":
        fn = lambda: BASE.translate(SRC_BLOCK, PAN)  # noqa: E731
    else:
        mod = twin(which)
        fn = lambda: mod.translate_pin_block(TPK, ZPK, SRC_BLOCK, PAN, 0, 0)  # noqa: E731
    _run(benchmark, fn, TRANSLATED)
    report("PIN translate ISO0->ISO0", benchmark, which)
