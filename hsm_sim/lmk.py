"""Local master keys (LMKs): the variant LMK model of payShield, as ThalesSim implements it.

Keys never leave the simulator in clear; outside it they travel as "key fields" encrypted
under the LMK pair that their key type selects (``payment-crypto.md`` §5):

* the key type code (3 hex: variant digit + LMK-pair code, e.g. ``001`` ZPK, ``402`` CVK)
  picks the pair and XORs variant byte *v* into byte 0 of the pair;
* the key scheme (``Z``/none single, ``U`` double, ``T`` triple) XORs a scheme variant into
  byte 8 of the pair for each part of the key (``A6 5A`` resp. ``6A DE 2B``);
* ``X``/``Y`` encrypt each part under the (type-variant) pair with no scheme variant.

Cipher objects (key schedules) are cached per adjusted pair, so the hot path of a PIN
translation does no key setup.  Pairs whose halves are equal (18-19, 38-39 of the test set)
degenerate to single DES, which pycryptodome's ``DES3`` refuses: :func:`ecb_cipher` then
uses single DES explicitly (mathematically the same result as EDE with K1 = K2).

This module is also the provisioning entry point (payShield's console "form key"):
:func:`encrypt_under_lmk`.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from Crypto.Cipher import DES, DES3

try:
    from cryptography.hazmat.decrepit.ciphers.algorithms import TripleDES as _TripleDES
    from cryptography.hazmat.primitives.ciphers import Cipher as _Cipher
    from cryptography.hazmat.primitives.ciphers.modes import ECB as _ECB

    _HAVE_OPENSSL = True
except ImportError:  # pragma: no cover - cryptography is a dependency
    _HAVE_OPENSSL = False

#: ThalesSim's well-known *test* LMK set (pairs 00-01 ... 38-39). Never a real key.
TEST_LMK_PAIRS: tuple[str, ...] = (
    "01010101010101017902CD1FD36EF8BA",  # 00-01
    "20202020202020203131313131313131",  # 02-03
    "40404040404040405151515151515151",  # 04-05
    "61616161616161617070707070707070",  # 06-07
    "80808080808080809191919191919191",  # 08-09
    "A1A1A1A1A1A1A1A1B0B0B0B0B0B0B0B0",  # 10-11
    "C1C1010101010101D0D0010101010101",  # 12-13
    "E0E0010101010101F1F1010101010101",  # 14-15
    "1C587F1C13924FEF0101010101010101",  # 16-17
    "01010101010101010101010101010101",  # 18-19
    "02020202020202020404040404040404",  # 20-21
    "07070707070707071010101010101010",  # 22-23
    "13131313131313131515151515151515",  # 24-25
    "16161616161616161919191919191919",  # 26-27
    "1A1A1A1A1A1A1A1A1C1C1C1C1C1C1C1C",  # 28-29
    "23232323232323232525252525252525",  # 30-31
    "26262626262626262929292929292929",  # 32-33
    "2A2A2A2A2A2A2A2A2C2C2C2C2C2C2C2C",  # 34-35
    "2F2F2F2F2F2F2F2F3131313131313131",  # 36-37
    "01010101010101010101010101010101",  # 38-39
)

#: key-type variant bytes, index 1..9 (index 0 = no variant)
TYPE_VARIANTS: tuple[int, ...] = (0x00, 0xA6, 0x5A, 0x6A, 0xDE, 0x2B, 0x50, 0x74, 0x9C, 0xFA)
#: scheme variants XORed into byte 8 of the pair, one per key part
SCHEME_VARIANTS: dict[str, tuple[int, ...]] = {"U": (0xA6, 0x5A), "T": (0x6A, 0xDE, 0x2B)}
#: LMK-pair code (2nd and 3rd hex digit of a key type) -> index into the pair list
PAIR_CODE_TO_INDEX: dict[str, int] = {
    "00": 2, "01": 3, "02": 7, "03": 8, "04": 9, "05": 10, "06": 11, "07": 12,
    "08": 13, "09": 14, "0A": 15, "0B": 16, "0C": 17, "0D": 18, "0E": 19,
}  # fmt: skip

#: key-type names accepted by provisioning and the client -> 3-hex key type code
KEY_TYPES: dict[str, str] = {
    "ZMK": "000",
    "ZPK": "001",
    "TMK": "002",
    "TPK": "002",
    "PIK": "002",  # UnionPay name of the terminal PIN key
    "PVK": "002",
    "CVK": "402",
    "TAK": "003",
    "MAK": "003",  # UnionPay name of the terminal MAC key
    "ZAK": "008",
    "BDK": "009",
    "MK-AC": "109",
    "IMK-AC": "109",
    "ZEK": "00A",
    "TDK": "00B",  # terminal data (track) key; payShield's DEK/TEK pair
    "DEK": "00B",
}

#: scheme letter -> number of 8-byte parts
SCHEME_PARTS: dict[str, int] = {"Z": 1, "U": 2, "T": 3, "X": 2, "Y": 3}
#: number of parts -> default (variant) scheme
DEFAULT_SCHEME: dict[int, str] = {1: "Z", 2: "U", 3: "T"}


class LmkError(ValueError):
    """A key field or key type is malformed; ``code`` is the payShield error code."""

    def __init__(self, code: str, msg: str) -> None:
        super().__init__(msg)
        self.code = code


def _is_degenerate(k1: bytes, k2: bytes) -> bool:
    return bytes(b & 0xFE for b in k1) == bytes(b & 0xFE for b in k2)


class _EcbCipher:
    """ECB encrypt/decrypt bound to OpenSSL contexts that are created once and reused.

    ECB keeps no state between blocks, so one encryptor/decryptor serves every call; this
    costs ~1 us per block against ~10 us for a pycryptodome call, which is what makes the
    per-command budget of the simulator (see ``bench/bench_hsm.py``).  The key is always
    expanded to 24 bytes (K1K2K1, or K K K for single DES), so EDE with equal parts is plain
    single DES, exactly as an HSM treats degenerate keys.
    """

    __slots__ = ("encrypt", "decrypt")

    def __init__(self, key24: bytes) -> None:
        cipher = _Cipher(_TripleDES(key24), _ECB())
        self.encrypt = cipher.encryptor().update
        self.decrypt = cipher.decryptor().update


def _pycryptodome_cipher(key: bytes) -> Any:
    if len(key) == 8:
        return DES.new(key, DES.MODE_ECB)
    if len(key) == 16:
        if _is_degenerate(key[:8], key[8:]):
            return DES.new(key[:8], DES.MODE_ECB)
        return DES3.new(key, DES3.MODE_ECB)
    k1, k2, k3 = key[:8], key[8:16], key[16:]
    if _is_degenerate(k1, k2):  # EDE with K1 = K2 collapses to DES(K3)
        return DES.new(k3, DES.MODE_ECB)
    if _is_degenerate(k2, k3):  # ... and with K2 = K3 to DES(K1)
        return DES.new(k1, DES.MODE_ECB)
    if _is_degenerate(k1, k3):
        return DES3.new(key[:16], DES3.MODE_ECB)
    return DES3.new(key, DES3.MODE_ECB)


@lru_cache(maxsize=4096)
def ecb_cipher(key: bytes) -> Any:
    """A reusable ECB cipher object (``.encrypt``/``.decrypt``) for an 8/16/24-byte DES key.

    Cached per key.  Degenerate double/triple keys (K1 = K2 ...) act as single DES, like
    EDE does mathematically (pycryptodome refuses them; the fallback path handles that).
    """
    if len(key) not in (8, 16, 24):
        raise LmkError("27", f"key length {len(key)} is not 8, 16 or 24 bytes")
    if _HAVE_OPENSSL:
        return _EcbCipher(key * 3 if len(key) == 8 else key + key[:8] if len(key) == 16 else key)
    return _pycryptodome_cipher(key)


def has_odd_parity(key: bytes | bytearray) -> bool:
    return all(bin(b).count("1") & 1 for b in key)


def set_odd_parity(key: bytes | bytearray) -> bytes:
    return bytes(b & 0xFE | (bin(b & 0xFE).count("1") + 1) & 1 for b in key)


def random_key(length: int) -> bytes:
    """A fresh random DES key of 8/16/24 bytes with odd parity and distinct halves."""
    while True:
        key = set_odd_parity(secrets.token_bytes(length))
        parts = [key[i : i + 8] for i in range(0, length, 8)]
        if len({bytes(p) for p in parts}) == len(parts):
            return key


def normalise_key_type(key_type: str) -> str:
    """``"ZPK"`` or ``"001"`` -> ``"001"``; raises :class:`LmkError` (``15``) if unknown."""
    kt = key_type.strip().upper()
    if kt in KEY_TYPES:
        return KEY_TYPES[kt]
    if len(kt) == 3 and kt[0] in "0123456789" and kt[1:] in PAIR_CODE_TO_INDEX:
        return kt
    raise LmkError("15", f"unknown key type {key_type!r}")


@dataclass(frozen=True)
class ParsedKey:
    """A key field split into scheme and ciphertext parts (no clear material)."""

    scheme: str
    parts: tuple[bytes, ...]
    text: str  # the field as it was on the wire

    @property
    def length(self) -> int:
        return 8 * len(self.parts)


def parse_key_field(data: str | bytes, offset: int = 0) -> tuple[ParsedKey, int]:
    """Parse a key field (``16H``, ``Z``+16H, ``U``/``X``+32H, ``T``/``Y``+48H) at ``offset``.

    Returns the parsed key and the offset after it.  Errors: ``26`` unknown scheme,
    ``15`` short or non-hex key (the message names the offset).
    """
    if isinstance(data, bytes | bytearray):
        data = bytes(data).decode("latin-1")
    if offset >= len(data):
        raise LmkError("15", f"key field missing at offset {offset}")
    first = data[offset]
    if first in SCHEME_PARTS:
        scheme, start = first, offset + 1
    elif first in "0123456789ABCDEFabcdef":
        scheme, start = "Z", offset
    else:
        raise LmkError("26", f"invalid key scheme {first!r} at offset {offset}")
    n = SCHEME_PARTS[scheme] * 16
    text = data[start : start + n]
    if len(text) != n:
        raise LmkError("15", f"key field too short at offset {offset}: need {n} hex, got {len(text)}")
    try:
        raw = bytes.fromhex(text)
    except ValueError:
        raw = b""
    if len(raw) * 2 != n:  # fromhex would also skip whitespace
        raise LmkError("15", f"key field is not hex at offset {offset}")
    parts = tuple(raw[i : i + 8] for i in range(0, len(raw), 8))
    return ParsedKey(scheme, parts, data[offset : start + n]), start + n


def format_key_field(scheme: str, ciphertext: bytes) -> str:
    """``("U", 16 bytes)`` -> ``"U" + 32 hex``; single keys keep the ``Z``-less 16-hex form."""
    text = ciphertext.hex().upper()
    return text if scheme == "Z" else scheme + text


class Lmk:
    """One LMK set: encrypt/decrypt key fields under the pair their key type selects."""

    def __init__(self, pairs: tuple[str, ...] | list[str] = TEST_LMK_PAIRS) -> None:
        if len(pairs) != 20:
            raise ValueError("an LMK set has 20 pairs")
        self._pairs = tuple(bytes.fromhex(p) for p in pairs)
        # (key type, scheme, part) -> cipher; decryption of a stored key field -> clear key
        self._pair_cipher: dict[tuple[str, str, int], Any] = {}
        self._clear_cache: dict[tuple[str, str], bytes] = {}
        self._check_value = ecb_cipher(self._pairs[0]).encrypt(bytes(8)).hex().upper()

    # -- pairs and their ciphers --------------------------------------------------------------
    def pair(self, first: str) -> bytes:
        """The clear LMK pair named by its first number (``"02"`` -> pair 02-03); HSM-internal use."""
        index, rem = divmod(int(first), 2)
        if rem or not 0 <= index < 20:
            raise LmkError("13", f"no LMK pair {first!r}")
        return self._pairs[index]

    def pair_index(self, key_type: str) -> int:
        return PAIR_CODE_TO_INDEX[key_type[1:]]

    def _cipher(self, key_type: str, scheme: str, part: int) -> Any:
        ck = (key_type, scheme, part)
        c = self._pair_cipher.get(ck)
        if c is None:
            pair = bytearray(self._pairs[self.pair_index(key_type)])
            pair[0] ^= TYPE_VARIANTS[int(key_type[0])]
            if scheme in SCHEME_VARIANTS:
                pair[8] ^= SCHEME_VARIANTS[scheme][part]
            c = ecb_cipher(bytes(pair))
            self._pair_cipher[ck] = c
        return c

    def check_value(self) -> str:
        """The LMK check value reported by ``NC``: 16-hex KCV of pair 00-01 (see docs/hsm.md)."""
        return self._check_value

    # -- key fields ------------------------------------------------------------------------------
    def encrypt_key(self, clear: bytes | bytearray, key_type: str, scheme: str | None = None) -> str:
        """Clear key -> key field under the LMK (scheme chosen from the length when None)."""
        key_type = normalise_key_type(key_type)
        nparts, rem = divmod(len(clear), 8)
        if rem or nparts not in (1, 2, 3):
            raise LmkError("27", f"key length {len(clear)} is not 8, 16 or 24 bytes")
        scheme = (scheme or DEFAULT_SCHEME[nparts]).upper()
        if scheme not in SCHEME_PARTS:
            raise LmkError("26", f"invalid key scheme {scheme!r}")
        if SCHEME_PARTS[scheme] != nparts:
            raise LmkError("27", f"scheme {scheme} needs a {8 * SCHEME_PARTS[scheme]}-byte key")
        ct = b"".join(
            self._cipher(key_type, scheme, i).encrypt(bytes(clear[8 * i : 8 * i + 8])) for i in range(nparts)
        )
        return format_key_field(scheme, ct)

    def decrypt_key(self, field: str | ParsedKey, key_type: str, *, parity_code: str = "10") -> bytes:
        """Key field -> clear key (cached).  Raises ``LmkError(parity_code)`` on bad parity.

        ``parity_code`` is ``10`` for a source key and ``11`` for a destination key.
        """
        pk = field if isinstance(field, ParsedKey) else parse_key_field(field)[0]
        key_type = normalise_key_type(key_type)
        ck = (key_type, pk.text)
        clear = self._clear_cache.get(ck)
        if clear is None:
            clear = b"".join(self._cipher(key_type, pk.scheme, i).decrypt(p) for i, p in enumerate(pk.parts))
            if not has_odd_parity(clear):
                raise LmkError(parity_code, f"{'source' if parity_code == '10' else 'destination'} key parity error")
            if len(self._clear_cache) > 65536:
                self._clear_cache.clear()
            self._clear_cache[ck] = clear
        return clear

    def key_cipher(self, field: str | ParsedKey, key_type: str, *, parity_code: str = "10") -> Any:
        """Key field -> ECB cipher object of the clear key (cached key schedule)."""
        return ecb_cipher(self.decrypt_key(field, key_type, parity_code=parity_code))


#: the process-wide default LMK (the test set)
DEFAULT_LMK = Lmk()


def load_lmk(path: str) -> Lmk:
    """An LMK set from a text file: 20 lines of 32 hex (pairs 00-01 ... 38-39); ``#`` comments.

    For tests with a non-default LMK; a simulator never holds a real LMK.
    """
    with open(path, encoding="ascii") as f:
        lines = [ln.split("#", 1)[0].strip() for ln in f]
    pairs = [ln for ln in lines if ln]
    if len(pairs) != 20 or any(len(p) != 32 for p in pairs):
        raise LmkError("13", f"{path}: need 20 pairs of 32 hex characters, got {len(pairs)} lines")
    try:
        return Lmk([p.upper() for p in pairs if bytes.fromhex(p)])
    except ValueError:
        raise LmkError("13", f"{path}: LMK pairs must be hex") from None


def encrypt_under_lmk(clear_key: bytes, key_type: str, scheme: str = "U", lmk: Lmk | None = None) -> str:
    """Provisioning ("form key"): clear key -> key field under the (default test) LMK.

    ``scheme`` is ``U``/``T`` (variant) or ``X``/``Y`` for double/triple keys (``U``/``X`` given
    with a triple-length key mean ``T``/``Y``); single-length keys always use the 16-hex form.
    """
    if len(clear_key) == 8:
        scheme = "Z"
    elif len(clear_key) == 24:
        scheme = {"U": "T", "X": "Y"}.get(scheme.upper(), scheme)
    return (lmk or DEFAULT_LMK).encrypt_key(set_odd_parity(clear_key), key_type, scheme)


def kcv(clear_key: bytes, length: int = 6) -> str:
    """Key check value: DES/TDES of 8 zero bytes, first ``length`` hex characters."""
    return ecb_cipher(bytes(clear_key)).encrypt(bytes(8)).hex().upper()[:length]
