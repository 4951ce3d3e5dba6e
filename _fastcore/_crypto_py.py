"""Pure-Python twin of ``_fastcore.crypto`` (payment cryptography).

PIN blocks (ISO 9564-1 formats 0, 1, 3, 4 and IBM 3624), MACs (ISO 9797-1
algorithms 1 and 3, X9.9, X9.19, the UnionPay POS "ECB" MAC, AES-CMAC), key
check values, DES parity, Thales variant-LMK key storage, TDES and AES DUKPT,
IBM 3624 / Visa PVV / CVV and EMV ARQC/ARPC.  Keys and blocks are ``bytes``;
PINs, PANs and decimal values are ``str``.  Every error is a
:class:`_fastcore.errors.CryptoError` naming the offending input.

The block ciphers are pycryptodome's.  Key schedules are built once per key and
kept in a bounded LRU cache (:func:`clear_key_cache` empties it).  TDES keys whose
halves are equal, which pycryptodome refuses, are run as single DES, as HSMs do.
The compiled twin ``_fastcore._crypto`` has the same API; this module is the
reference it is tested against.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Callable
from typing import Any

from Crypto.Cipher import AES, DES, DES3

from .errors import CryptoError

__all__ = [
    "PIN_ISO0",
    "PIN_ISO1",
    "PIN_ISO3",
    "PIN_ISO4",
    "PIN_IBM3624",
    "PAYSHIELD_PIN_FORMATS",
    "LMK_VARIANTS",
    "KEY_SCHEME_VARIANTS",
    "DUKPT_AES_USAGES",
    "tdes_ecb_encrypt",
    "tdes_ecb_decrypt",
    "tdes_cbc_encrypt",
    "tdes_cbc_decrypt",
    "aes_ecb_encrypt",
    "aes_ecb_decrypt",
    "sm4_ecb_encrypt",
    "sm4_ecb_decrypt",
    "pin_block_encode",
    "pin_block_decode",
    "iso4_pan_field",
    "encrypt_pin_block",
    "decrypt_pin_block",
    "translate_pin_block",
    "pad_iso9797",
    "mac_iso9797_1",
    "mac_x99",
    "mac_x919",
    "mac_pos_ecb",
    "aes_cmac",
    "mac_equal",
    "kcv",
    "has_odd_parity",
    "set_odd_parity",
    "key_variant",
    "encrypt_under_variant_lmk",
    "decrypt_under_variant_lmk",
    "ibm3624_offset",
    "ibm3624_verify",
    "visa_pvv",
    "cvv",
    "dukpt_tdes_ipek",
    "dukpt_tdes_transaction_key",
    "dukpt_tdes_pin_key",
    "dukpt_tdes_mac_key",
    "dukpt_tdes_data_key",
    "dukpt_aes_initial_key",
    "dukpt_aes_derivation_key",
    "dukpt_aes_working_key",
    "emv_icc_master_key",
    "emv_session_key",
    "emv_arqc",
    "emv_arpc_method1",
    "emv_arpc_method2",
    "clear_key_cache",
    "cached_key_count",
    "KEY_CACHE_SIZE",
]

# --------------------------------------------------------------------------- constants

PIN_ISO0 = 0
PIN_ISO1 = 1
PIN_ISO3 = 3
PIN_ISO4 = 4
PIN_IBM3624 = 3624

#: payShield PIN block format code -> our format identifier
PAYSHIELD_PIN_FORMATS: dict[str, int] = {
    "01": PIN_ISO0,
    "03": PIN_IBM3624,
    "05": PIN_ISO1,
    "47": PIN_ISO3,
    "48": PIN_ISO4,
}

#: Thales key-type variant bytes, index 1..9 (index 0: no variant)
LMK_VARIANTS: tuple[int, ...] = (0x00, 0xA6, 0x5A, 0x6A, 0xDE, 0x2B, 0x50, 0x74, 0x9C, 0xFA)

#: Thales key-scheme variants XORed into byte 8 of the LMK pair, per key part
KEY_SCHEME_VARIANTS: dict[str, tuple[int, ...]] = {
    "Z": (0x00,),
    "U": (0xA6, 0x5A),
    "T": (0x6A, 0xDE, 0x2B),
    "X": (0x00, 0x00),
    "Y": (0x00, 0x00, 0x00),
}

#: AES DUKPT working-key usages (ANSI X9.24-3 key usage indicators)
DUKPT_AES_USAGES: dict[str, int] = {
    "kek": 0x0002,
    "pin": 0x1000,
    "mac-gen": 0x2000,
    "mac-verify": 0x2001,
    "mac-both": 0x2002,
    "data-enc": 0x3000,
    "data-dec": 0x3001,
    "data-both": 0x3002,
}
_DUKPT_AES_KEY_TYPES: dict[str, tuple[int, int]] = {  # name -> (algorithm code, length in bits)
    "2TDEA": (0x0000, 128),
    "3TDEA": (0x0001, 192),
    "AES128": (0x0002, 128),
    "AES192": (0x0003, 192),
    "AES256": (0x0004, 256),
}

KEY_CACHE_SIZE = 1024
_HEX_UPPER = "0123456789ABCDEF"

# --------------------------------------------------------------------------- key schedule cache

_cache: dict[tuple[str, bytes], Any] = {}


def cached_key_count() -> int:
    """Number of key schedules currently cached (at most ``KEY_CACHE_SIZE``)."""
    return len(_cache)


def clear_key_cache() -> None:
    """Forget every cached key schedule (e.g. after a key change or in tests)."""
    _cache.clear()


def _cached(kind: str, key: bytes, factory: Callable[[bytes], Any]) -> Any:
    """Return the cipher object for ``(kind, key)``, building it at most once (bounded LRU)."""
    ck = (kind, key)
    obj = _cache.pop(ck, None)  # pop + re-insert keeps recency order (dicts are ordered)
    if obj is None:
        obj = factory(key)
        while len(_cache) >= KEY_CACHE_SIZE:
            try:
                del _cache[next(iter(_cache))]
            except (KeyError, RuntimeError, StopIteration):  # raced with another thread
                break
    _cache[ck] = obj
    return obj


def _bytes(value: Any, name: str) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, bytearray | memoryview):
        return bytes(value)
    raise CryptoError(f"{name} must be bytes, not {type(value).__name__}")


def _parity_adjusted(part: bytes) -> bytes:
    return bytes(b & 0xFE | (bin(b >> 1).count("1") & 1 ^ 1) for b in part)


def _single_des_part(key: bytes) -> bytes | None:
    """The effective single-DES key of a degenerate TDES key, else ``None``."""
    if len(key) == 8:
        return key
    k1, k2 = _parity_adjusted(key[:8]), _parity_adjusted(key[8:16])
    if len(key) == 16:
        return key[:8] if k1 == k2 else None
    k3 = _parity_adjusted(key[16:24])
    if k1 == k2:  # E_K3(D_K1(E_K1(x))) = E_K3(x)
        return key[16:24]
    if k2 == k3:  # E_K3(D_K3(E_K1(x))) = E_K1(x)
        return key[:8]
    return None


def _new_tdes(key: bytes) -> Any:
    single = _single_des_part(key)
    if single is not None:
        return DES.new(single, DES.MODE_ECB)
    return DES3.new(key, DES3.MODE_ECB)


def _tdes(key: Any, name: str = "key") -> Any:
    """Cached ECB cipher for a DES (8) or TDES (16/24 byte) key; degenerate keys run as single DES."""
    key = _bytes(key, name)
    if len(key) not in (8, 16, 24):
        raise CryptoError(f"{name}: DES/TDES key must be 8, 16 or 24 bytes, got {len(key)}")
    return _cached("des", key, _new_tdes)


def _des(key: Any, name: str = "key") -> Any:
    key = _bytes(key, name)
    if len(key) != 8:
        raise CryptoError(f"{name}: single-DES key must be 8 bytes, got {len(key)}")
    return _cached("des", key, _new_tdes)


def _new_aes(key: bytes) -> Any:
    return AES.new(key, AES.MODE_ECB)


def _aes(key: Any, name: str = "key") -> Any:
    key = _bytes(key, name)
    if len(key) not in (16, 24, 32):
        raise CryptoError(f"{name}: AES key must be 16, 24 or 32 bytes, got {len(key)}")
    return _cached("aes", key, _new_aes)


def _xor(a: bytes, b: bytes) -> bytes:
    return (int.from_bytes(a, "big") ^ int.from_bytes(b, "big")).to_bytes(len(a), "big")


def _blocks(data: Any, size: int, name: str = "data") -> bytes:
    data = _bytes(data, name)
    if len(data) % size:
        raise CryptoError(f"{name}: length {len(data)} is not a multiple of the {size}-byte block")
    return data


# --------------------------------------------------------------------------- block ciphers


def tdes_ecb_encrypt(key: bytes, data: bytes) -> bytes:
    """TDES-ECB encrypt (key 8/16/24 bytes; equal halves run as single DES)."""
    return _tdes(key).encrypt(_blocks(data, 8))


def tdes_ecb_decrypt(key: bytes, data: bytes) -> bytes:
    """TDES-ECB decrypt (key 8/16/24 bytes; equal halves run as single DES)."""
    return _tdes(key).decrypt(_blocks(data, 8))


def _check_iv(iv: Any, size: int) -> bytes:
    iv = _bytes(iv, "iv")
    if len(iv) != size:
        raise CryptoError(f"iv must be {size} bytes, got {len(iv)}")
    return iv


def tdes_cbc_encrypt(key: bytes, data: bytes, iv: bytes = bytes(8)) -> bytes:
    """TDES-CBC encrypt, no padding (data must be a multiple of 8 bytes)."""
    cipher = _tdes(key)
    data = _blocks(data, 8)
    prev = _check_iv(iv, 8)
    out = []
    for i in range(0, len(data), 8):
        prev = cipher.encrypt(_xor(data[i : i + 8], prev))
        out.append(prev)
    return b"".join(out)


def tdes_cbc_decrypt(key: bytes, data: bytes, iv: bytes = bytes(8)) -> bytes:
    """TDES-CBC decrypt, no padding removal."""
    cipher = _tdes(key)
    data = _blocks(data, 8)
    prev = _check_iv(iv, 8)
    plain = cipher.decrypt(data)
    chain = prev + data[:-8]
    return _xor(plain, chain) if data else b""


def aes_ecb_encrypt(key: bytes, data: bytes) -> bytes:
    """AES-ECB encrypt (key 16/24/32 bytes, data a multiple of 16 bytes)."""
    return _aes(key).encrypt(_blocks(data, 16))


def aes_ecb_decrypt(key: bytes, data: bytes) -> bytes:
    """AES-ECB decrypt (key 16/24/32 bytes, data a multiple of 16 bytes)."""
    return _aes(key).decrypt(_blocks(data, 16))


def _sm4_cipher(key: Any) -> Any:
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

    key = _bytes(key, "key")
    if len(key) != 16:
        raise CryptoError(f"key: SM4 key must be 16 bytes, got {len(key)}")
    return Cipher(algorithms.SM4(key), modes.ECB())


def _sm4_data(data: Any) -> bytes:
    data = _bytes(data, "data")
    if len(data) % 16:
        raise CryptoError(f"data: length {len(data)} is not a multiple of the 16-byte block")
    return data


def sm4_ecb_encrypt(key: bytes, data: bytes) -> bytes:
    """SM4-ECB encrypt (GB/T 32907-2016; 16-byte key, data a multiple of 16 bytes).

    SM4 comes from ``cryptography`` (pycryptodome has none); its contexts are not
    cached (SM4 serves key exchange and check values, not per-message work).
    """
    data = _sm4_data(data)
    ctx = _sm4_cipher(key).encryptor()
    return ctx.update(data) + ctx.finalize()


def sm4_ecb_decrypt(key: bytes, data: bytes) -> bytes:
    """SM4-ECB decrypt (16-byte key, data a multiple of 16 bytes)."""
    data = _sm4_data(data)
    ctx = _sm4_cipher(key).decryptor()
    return ctx.update(data) + ctx.finalize()


# --------------------------------------------------------------------------- PIN blocks


def _check_pin(pin: Any) -> str:
    if not isinstance(pin, str):
        raise CryptoError(f"PIN must be str, not {type(pin).__name__}")
    if not 4 <= len(pin) <= 12:
        raise CryptoError(f"PIN length {len(pin)} outside 4-12")
    if not (pin.isascii() and pin.isdigit()):
        raise CryptoError("PIN must contain only digits 0-9")
    return pin


def _check_pan(pan: Any, *, min_len: int = 8) -> str:
    if not isinstance(pan, str):
        raise CryptoError(f"PAN must be str, not {type(pan).__name__}")
    if not (pan.isascii() and pan.isdigit()):
        raise CryptoError("PAN must contain only digits 0-9")
    if len(pan) < min_len:
        raise CryptoError(f"PAN too short: {len(pan)} digits, need at least {min_len}")
    if len(pan) > 19:
        raise CryptoError(f"PAN too long: {len(pan)} digits, at most 19")
    return pan


def _pan_field(pan: str | None) -> bytes:
    """ISO 0/3 PAN field: 0000 + 12 rightmost digits excluding the check digit (zeros when no PAN)."""
    if pan is None:
        return bytes(8)
    pan = _check_pan(pan)
    return bytes.fromhex(pan[-13:-1].rjust(16, "0"))


def iso4_pan_field(pan: str) -> bytes:
    """ISO 9564 format 4 PAN field (16 bytes): M = len(PAN) - 12, the PAN, zero fill."""
    pan = _check_pan(pan, min_len=1)
    m = max(len(pan) - 12, 0)
    return bytes.fromhex((str(m) + pan.rjust(12, "0")).ljust(32, "0"))


def _fill_nibbles(fill: Any, count: int, fmt: int) -> str:
    if count == 0:
        return ""
    if fill is None:
        if fmt == PIN_ISO3:
            return "".join(_HEX_UPPER[10 + secrets.randbelow(6)] for _ in range(count))
        return secrets.token_hex(8).upper()[:count]
    text = _bytes(fill, "fill").hex().upper()
    if len(text) < count:
        raise CryptoError(f"fill: {len(text)} nibbles given, format {fmt} needs {count}")
    text = text[:count]
    if fmt == PIN_ISO3 and any(c not in "ABCDEF" for c in text):
        raise CryptoError("fill: format 3 fill nibbles must be A-F")
    return text


def pin_block_encode(pin: str, pan: str | None, fmt: int, *, fill: bytes | None = None) -> bytes:
    """Build a clear PIN block.

    Formats 0 and 3 return the 8-byte block already XORed with the PAN field
    (``pan=None`` for format 0 gives the UnionPay "PIN without PAN" block: an all
    zero PAN field).  Format 1 ignores ``pan``.  IBM 3624 is the PIN left-justified
    and padded with ``F``.  Format 4 returns the 16-byte plain PIN field (the PAN
    enters at encipherment).  ``fill`` supplies the random fill for formats 1, 3
    (its hex nibbles, in order; format 3 requires A-F) and 4 (8 bytes); by default
    it comes from :mod:`secrets`.
    """
    pin = _check_pin(pin)
    n = len(pin)
    if fmt == PIN_ISO0:
        field = bytes.fromhex(f"0{n:X}{pin}".ljust(16, "F"))
        return _xor(field, _pan_field(pan))
    if fmt == PIN_ISO3:
        if pan is None:
            raise CryptoError("format 3 needs a PAN")
        field = bytes.fromhex(f"3{n:X}{pin}" + _fill_nibbles(fill, 14 - n, fmt))
        return _xor(field, _pan_field(pan))
    if fmt == PIN_ISO1:
        return bytes.fromhex(f"1{n:X}{pin}" + _fill_nibbles(fill, 14 - n, fmt))
    if fmt == PIN_IBM3624:
        return bytes.fromhex(pin.ljust(16, "F"))
    if fmt == PIN_ISO4:
        if fill is None:
            rnd = secrets.token_bytes(8)
        else:
            rnd = _bytes(fill, "fill")
            if len(rnd) != 8:
                raise CryptoError(f"fill: format 4 needs 8 random bytes, got {len(rnd)}")
        return bytes.fromhex(f"4{n:X}{pin}".ljust(16, "A")) + rnd
    raise CryptoError(f"unknown PIN block format {fmt!r}")


def _pin_from_field(text: str, fmt: int) -> str:
    """Parse a 16-nibble PIN field (uppercase hex): control, length, PIN, fill."""
    if text[0] != str(fmt):
        raise CryptoError(f"PIN block: control nibble {text[0]} at offset 0, expected {fmt}")
    n = int(text[1], 16)
    if not 4 <= n <= 12:
        raise CryptoError(f"PIN block: PIN length {n} at offset 1 outside 4-12")
    pin = text[2 : 2 + n]
    for i, c in enumerate(pin):
        if c not in "0123456789":
            raise CryptoError(f"PIN block: non-decimal PIN digit {c} at nibble {2 + i}")
    fill = text[2 + n : 16]
    allowed = {PIN_ISO0: "F", PIN_ISO3: "ABCDEF", PIN_ISO4: "A"}.get(fmt)
    if allowed is not None:
        for i, c in enumerate(fill):
            if c not in allowed:
                raise CryptoError(f"PIN block: bad fill nibble {c} at nibble {2 + n + i} for format {fmt}")
    return pin


def pin_block_decode(block: bytes, pan: str | None, fmt: int) -> str:
    """Parse a clear PIN block (inverse of :func:`pin_block_encode`) and return the PIN.

    Checks the control nibble, the PIN length (4-12), the PIN digits and the
    format's fill; errors name the nibble offset.
    """
    block = _bytes(block, "PIN block")
    size = 16 if fmt == PIN_ISO4 else 8
    if len(block) != size:
        raise CryptoError(f"PIN block must be {size} bytes for format {fmt}, got {len(block)}")
    if fmt in (PIN_ISO0, PIN_ISO3):
        if fmt == PIN_ISO3 and pan is None:
            raise CryptoError("format 3 needs a PAN")
        return _pin_from_field(_xor(block, _pan_field(pan)).hex().upper(), fmt)
    if fmt == PIN_ISO1:
        return _pin_from_field(block.hex().upper(), fmt)
    if fmt == PIN_ISO4:
        return _pin_from_field(block[:8].hex().upper(), fmt)
    if fmt == PIN_IBM3624:
        text = block.hex().upper()
        n = text.find("F")
        n = 16 if n == -1 else n
        for i, c in enumerate(text):
            if i < n and c not in "0123456789":
                raise CryptoError(f"PIN block: non-decimal PIN digit {c} at nibble {i}")
            if i >= n and c != "F":
                raise CryptoError(f"PIN block: bad pad nibble {c} at nibble {i} for format {fmt}")
        if not 4 <= n <= 12:
            raise CryptoError(f"PIN block: PIN length {n} outside 4-12")
        return text[:n]
    raise CryptoError(f"unknown PIN block format {fmt!r}")


def encrypt_pin_block(key: bytes, pin: str, pan: str | None, fmt: int, *, fill: bytes | None = None) -> bytes:
    """Build and encrypt a PIN block: TDES-ECB for 0/1/3/3624, ISO 9564 AES encipherment for 4."""
    if fmt == PIN_ISO4:
        if pan is None:
            raise CryptoError("format 4 needs a PAN")
        cipher = _aes(key)
        pan_field = iso4_pan_field(pan)
        field = pin_block_encode(pin, pan, fmt, fill=fill)
        return cipher.encrypt(_xor(cipher.encrypt(field), pan_field))
    cipher = _tdes(key)
    return cipher.encrypt(pin_block_encode(pin, pan, fmt, fill=fill))


def decrypt_pin_block(key: bytes, block: bytes, pan: str | None, fmt: int) -> str:
    """Decrypt a PIN block and return the PIN (checks format, length and fill)."""
    block = _bytes(block, "PIN block")
    if fmt == PIN_ISO4:
        if pan is None:
            raise CryptoError("format 4 needs a PAN")
        if len(block) != 16:
            raise CryptoError(f"PIN block must be 16 bytes for format 4, got {len(block)}")
        cipher = _aes(key)
        field = cipher.decrypt(_xor(cipher.decrypt(block), iso4_pan_field(pan)))
        return pin_block_decode(field, pan, fmt)
    if len(block) != 8:
        raise CryptoError(f"PIN block must be 8 bytes for format {fmt}, got {len(block)}")
    return pin_block_decode(_tdes(key).decrypt(block), pan, fmt)


def translate_pin_block(
    src_key: bytes,
    dst_key: bytes,
    block: bytes,
    pan: str | None,
    src_fmt: int,
    dst_fmt: int,
    dst_pan: str | None = None,
) -> bytes:
    """Re-encrypt a PIN block from ``src_key``/``src_fmt`` to ``dst_key``/``dst_fmt``.

    The clear PIN never leaves this function.  ``dst_pan`` defaults to ``pan``;
    random fill (formats 1, 3, 4) is fresh.
    """
    pin = decrypt_pin_block(src_key, block, pan, src_fmt)
    return encrypt_pin_block(dst_key, pin, pan if dst_pan is None else dst_pan, dst_fmt)


# --------------------------------------------------------------------------- MACs


def pad_iso9797(data: bytes, method: int, block: int = 8) -> bytes:
    """ISO/IEC 9797-1 padding: 1 zeros (one zero block for empty data), 2 ``80 00..``, 3 length block + 1."""
    data = _bytes(data, "data")
    if method == 1:
        if not data:
            return bytes(block)
        return data + bytes(-len(data) % block)
    if method == 2:
        data += b"\x80"
        return data + bytes(-len(data) % block)
    if method == 3:
        return (len(data) * 8).to_bytes(block, "big") + pad_iso9797(data, 1, block)
    raise CryptoError(f"MAC padding method must be 1, 2 or 3, got {method!r}")


def _check_length(length: int, maximum: int) -> None:
    if not isinstance(length, int) or not 1 <= length <= maximum:
        raise CryptoError(f"MAC length must be 1-{maximum} bytes, got {length!r}")


def _cbc_mac(cipher: Any, data: bytes) -> bytes:
    """Last block of CBC encryption with IV 0 over block-aligned ``data``."""
    size = cipher.block_size
    chain = bytes(size)
    for i in range(0, len(data), size):
        chain = cipher.encrypt(_xor(data[i : i + size], chain))
    return chain


def mac_iso9797_1(key: bytes, data: bytes, *, algorithm: int = 1, padding: int = 1, length: int = 8) -> bytes:
    """ISO/IEC 9797-1 MAC with DES/TDES.

    Algorithm 1: CBC-MAC under the whole key (8 bytes: DES = X9.9; 16/24: TDES).
    Algorithm 3 (retail MAC, X9.19): 16-byte key KL||KR, single-DES CBC under KL,
    output transform DES(KL, DES^-1(KR, last)).  Result truncated to ``length``.
    """
    _check_length(length, 8)
    padded = pad_iso9797(data, padding)
    if algorithm == 1:
        return _cbc_mac(_tdes(key), padded)[:length]
    if algorithm == 3:
        key = _bytes(key, "key")
        if len(key) != 16:
            raise CryptoError(f"key: ISO 9797-1 algorithm 3 needs a 16-byte key, got {len(key)}")
        kl = _des(key[:8])
        h = _cbc_mac(kl, padded)
        return kl.encrypt(_des(key[8:]).decrypt(h))[:length]
    raise CryptoError(f"MAC algorithm must be 1 or 3, got {algorithm!r}")


def mac_x99(key: bytes, data: bytes, *, padding: int = 1, length: int = 8) -> bytes:
    """ANSI X9.9 MAC: single-DES CBC-MAC (8-byte key); Thales ``MA`` uses ``length=4``."""
    key = _bytes(key, "key")
    if len(key) != 8:
        raise CryptoError(f"key: X9.9 needs an 8-byte DES key, got {len(key)}")
    return mac_iso9797_1(key, data, algorithm=1, padding=padding, length=length)


def mac_x919(key: bytes, data: bytes, *, padding: int = 1, length: int = 8) -> bytes:
    """ANSI X9.19 retail MAC = ISO/IEC 9797-1 algorithm 3 with a 16-byte key."""
    return mac_iso9797_1(key, data, algorithm=3, padding=padding, length=length)


def mac_pos_ecb(key: bytes, data: bytes) -> bytes:
    """UnionPay POS "ECB" MAC: returns field 64, 8 ASCII uppercase hex characters.

    XOR-fold the zero-padded data into R; E1 = DES(MAK, hex(R)[:8]);
    E2 = DES(MAK, E1 XOR hex(R)[8:]); MAC = hex(E2)[:8].  An 8-byte MAK runs single
    DES, a 16-byte one TDES (single DES when both halves are equal).
    """
    cipher = _tdes(key)
    data = _bytes(data, "data")
    data += bytes(-len(data) % 8)
    acc = 0
    for i in range(0, len(data), 8):
        acc ^= int.from_bytes(data[i : i + 8], "big")
    r = f"{acc:016X}".encode("ascii")
    e1 = cipher.encrypt(r[:8])
    e2 = cipher.encrypt(_xor(e1, r[8:]))
    return e2.hex().upper()[:8].encode("ascii")


def _cmac_subkeys(cipher: Any) -> tuple[bytes, bytes]:
    def dbl(block: bytes) -> bytes:
        v = int.from_bytes(block, "big") << 1
        if v >> 128:
            v = (v & ((1 << 128) - 1)) ^ 0x87
        return v.to_bytes(16, "big")

    k1 = dbl(cipher.encrypt(bytes(16)))
    return k1, dbl(k1)


def aes_cmac(key: bytes, data: bytes, *, length: int = 16) -> bytes:
    """AES-CMAC (NIST SP 800-38B / RFC 4493), truncated to ``length`` bytes."""
    _check_length(length, 16)
    cipher = _aes(key)
    data = _bytes(data, "data")
    k1, k2 = _cached("cmac", _bytes(key, "key"), lambda _k: _cmac_subkeys(cipher))
    if data and len(data) % 16 == 0:
        body, last = data[:-16], _xor(data[-16:], k1)
    else:
        cut = len(data) - len(data) % 16
        tail = data[cut:] + b"\x80"
        body, last = data[:cut], _xor(tail + bytes(16 - len(tail)), k2)
    chain = _cbc_mac(cipher, body) if body else bytes(16)
    return cipher.encrypt(_xor(last, chain))[:length]


def mac_equal(a: bytes, b: bytes) -> bool:
    """Constant-time comparison of two MACs (or any byte strings)."""
    return hmac.compare_digest(_bytes(a, "a"), _bytes(b, "b"))


# --------------------------------------------------------------------------- KCV, parity, variants


def kcv(key: bytes, *, length: int = 3, method: str = "des") -> bytes:
    """Key check value: ``"des"`` TDES/DES of 8 zero bytes; ``"aes-cmac"`` AES-CMAC of 16 zero
    bytes; ``"aes-ecb"`` AES-ECB of 16 zero bytes (legacy); ``"sm4"`` SM4-ECB of 16 zero bytes
    (UnionPay uses ``length=8``).  Left ``length`` bytes."""
    if method == "des":
        _check_length(length, 8)
        return _tdes(key).encrypt(bytes(8))[:length]
    if method == "aes-cmac":
        _check_length(length, 16)
        return aes_cmac(key, bytes(16))[:length]
    if method == "aes-ecb":
        _check_length(length, 16)
        return _aes(key).encrypt(bytes(16))[:length]
    if method == "sm4":
        _check_length(length, 16)
        return sm4_ecb_encrypt(key, bytes(16))[:length]
    raise CryptoError(f"KCV method must be 'des', 'aes-cmac', 'aes-ecb' or 'sm4', got {method!r}")


def has_odd_parity(key: bytes) -> bool:
    """True when every byte of ``key`` has an odd number of set bits (DES parity)."""
    return all(bin(b).count("1") & 1 for b in _bytes(key, "key"))


def set_odd_parity(key: bytes) -> bytes:
    """Return ``key`` with the low bit of each byte set for odd parity."""
    return _parity_adjusted(_bytes(key, "key"))


def key_variant(key: bytes, variant: int) -> bytes:
    """Thales key-type variant: XOR variant byte ``variant`` (1-9, 0 = none) into byte 0."""
    key = _bytes(key, "key")
    if not isinstance(variant, int) or not 0 <= variant <= 9:
        raise CryptoError(f"variant must be 0-9, got {variant!r}")
    if not key:
        raise CryptoError("key is empty")
    return bytes([key[0] ^ LMK_VARIANTS[variant]]) + key[1:]


def _lmk_parts(lmk_pair_key: bytes, variant: int, scheme: str, key_len: int) -> list[bytes]:
    lmk = _bytes(lmk_pair_key, "LMK pair")
    if len(lmk) != 16:
        raise CryptoError(f"LMK pair must be 16 bytes, got {len(lmk)}")
    if scheme == "":
        scheme = "Z"
    if scheme not in KEY_SCHEME_VARIANTS:
        raise CryptoError(f"unknown key scheme {scheme!r} (Z, U, T, X, Y)")
    scheme_variants = KEY_SCHEME_VARIANTS[scheme]
    if key_len != 8 * len(scheme_variants):
        raise CryptoError(f"key scheme {scheme} needs a {8 * len(scheme_variants)}-byte key, got {key_len}")
    base = key_variant(lmk, variant)
    return [base[:8] + bytes([base[8] ^ sv]) + base[9:] for sv in scheme_variants]


def encrypt_under_variant_lmk(lmk_pair_key: bytes, variant: int, scheme: str, clear_key: bytes) -> bytes:
    """Encrypt a key for storage under a Thales variant LMK pair.

    ``variant`` is the key-type variant digit (0-9, XORed into byte 0 of the pair),
    ``scheme`` the key scheme: ``Z`` (8-byte key), ``U`` (16), ``T`` (24) apply the
    scheme variants A6/5A resp. 6A/DE/2B to byte 8 of the pair, one per 8-byte
    part; ``X``/``Y`` encrypt the parts under the plain pair.
    """
    clear_key = _bytes(clear_key, "clear key")
    parts = _lmk_parts(lmk_pair_key, variant, scheme, len(clear_key))
    return b"".join(tdes_ecb_encrypt(p, clear_key[8 * i : 8 * i + 8]) for i, p in enumerate(parts))


def decrypt_under_variant_lmk(lmk_pair_key: bytes, variant: int, scheme: str, encrypted_key: bytes) -> bytes:
    """Inverse of :func:`encrypt_under_variant_lmk` (no parity check: the caller decides)."""
    encrypted_key = _bytes(encrypted_key, "encrypted key")
    parts = _lmk_parts(lmk_pair_key, variant, scheme, len(encrypted_key))
    return b"".join(tdes_ecb_decrypt(p, encrypted_key[8 * i : 8 * i + 8]) for i, p in enumerate(parts))


# --------------------------------------------------------------------------- PIN verification, CVV


def _check_decimal(value: Any, name: str, lengths: range) -> str:
    if not isinstance(value, str) or not (value.isascii() and value.isdigit()):
        raise CryptoError(f"{name} must be a string of digits")
    if len(value) not in lengths:
        raise CryptoError(f"{name} length {len(value)} outside {lengths.start}-{lengths.stop - 1}")
    return value


def _natural_pin(pvk: bytes, validation_data: str, dec_table: str) -> str:
    if not isinstance(validation_data, str) or len(validation_data) != 16:
        raise CryptoError("validation data must be 16 hex characters")
    try:
        vd = bytes.fromhex(validation_data)
    except ValueError:
        raise CryptoError("validation data must be 16 hex characters") from None
    _check_decimal(dec_table, "decimalisation table", range(16, 17))
    enc = tdes_ecb_encrypt(pvk, vd).hex().upper()
    return "".join(dec_table[int(c, 16)] for c in enc)


def ibm3624_offset(
    pvk: bytes, pin: str, validation_data: str, dec_table: str, *, pin_len: int | None = None
) -> str:
    """IBM 3624 PIN offset: (PIN - natural PIN) mod 10, digit by digit, over ``pin_len`` digits.

    Natural PIN = decimalised TDES(PVK, validation data) (16 hex characters,
    padded by the caller).  ``pin_len`` (check length) defaults to ``len(pin)``.
    """
    pin = _check_pin(pin)
    n = len(pin) if pin_len is None else pin_len
    if not isinstance(n, int) or not 4 <= n <= len(pin):
        raise CryptoError(f"pin_len {n!r} must be 4..{len(pin)}")
    natural = _natural_pin(pvk, validation_data, dec_table)
    return "".join(str((int(p) - int(q)) % 10) for p, q in zip(pin[:n], natural[:n], strict=True))


def ibm3624_verify(pvk: bytes, pin: str, offset: str, validation_data: str, dec_table: str) -> bool:
    """True when ``pin`` matches ``offset`` (check length = ``len(offset)``)."""
    pin = _check_pin(pin)
    offset = _check_decimal(offset, "offset", range(4, 13))
    if len(offset) > len(pin):
        return False
    expected = ibm3624_offset(pvk, pin, validation_data, dec_table, pin_len=len(offset))
    return hmac.compare_digest(expected, offset)


def _decimalise(hex_text: str, count: int) -> str:
    digits = [c for c in hex_text if c.isdigit()]
    if len(digits) < count:
        digits += [str(int(c, 16) - 10) for c in hex_text if not c.isdigit()]
    return "".join(digits[:count])


def visa_pvv(pvk: bytes, pan: str, pvki: str, pin: str) -> str:
    """Visa PIN verification value: TSP = 11 PAN digits (excl. check digit) + PVKI + 4 PIN digits."""
    pan = _check_pan(pan, min_len=12)
    _check_decimal(pvki, "PVKI", range(1, 2))
    pin = _check_pin(pin)
    tsp = bytes.fromhex(pan[-12:-1] + pvki + pin[:4])
    return _decimalise(tdes_ecb_encrypt(pvk, tsp).hex().upper(), 4)


def cvv(cvk: bytes, pan: str, expiry: str, service_code: str, *, length: int = 3) -> str:
    """Visa/Mastercard CVV/CVC (also CVV2 with service code ``000``, iCVV with ``999``)."""
    cvk = _bytes(cvk, "CVK")
    if len(cvk) != 16:
        raise CryptoError(f"CVK must be 16 bytes, got {len(cvk)}")
    pan = _check_pan(pan, min_len=1)
    _check_decimal(expiry, "expiry", range(4, 5))
    _check_decimal(service_code, "service code", range(3, 4))
    if not 1 <= length <= 16:
        raise CryptoError(f"CVV length must be 1-16, got {length}")
    data = bytes.fromhex((pan + expiry + service_code).ljust(32, "0"))
    kl = _des(cvk[:8])
    step = kl.encrypt(data[:8])
    result = tdes_ecb_encrypt(cvk, _xor(step, data[8:]))
    return _decimalise(result.hex().upper(), length)


# --------------------------------------------------------------------------- DUKPT (TDES, X9.24-1)

_C0_MASK = bytes.fromhex("C0C0C0C000000000C0C0C0C000000000")
_PIN_VARIANT = bytes.fromhex("00000000000000FF00000000000000FF")
_MAC_REQ_VARIANT = bytes.fromhex("000000000000FF00000000000000FF00")
_MAC_RESP_VARIANT = bytes.fromhex("00000000FF00000000000000FF000000")
_DATA_REQ_VARIANT = bytes.fromhex("0000000000FF00000000000000FF0000")
_DATA_RESP_VARIANT = bytes.fromhex("000000FF00000000000000FF00000000")


def _check_bdk(bdk: Any) -> bytes:
    bdk = _bytes(bdk, "BDK")
    if len(bdk) != 16:
        raise CryptoError(f"BDK must be 16 bytes, got {len(bdk)}")
    return bdk


def _check_ksn(ksn: Any, size: int) -> bytes:
    ksn = _bytes(ksn, "KSN")
    if len(ksn) != size:
        raise CryptoError(f"KSN must be {size} bytes, got {len(ksn)}")
    return ksn


def dukpt_tdes_ipek(bdk: bytes, ksn: bytes) -> bytes:
    """TDES DUKPT initial PIN encryption key from the BDK and a 10-byte KSN."""
    bdk = _check_bdk(bdk)
    ksn = _check_ksn(ksn, 10)
    base = ksn[:7] + bytes([ksn[7] & 0xE0])
    return tdes_ecb_encrypt(bdk, base) + tdes_ecb_encrypt(_xor(bdk, _C0_MASK), base)


def _nrkgp(key: bytes, reg: bytes) -> bytes:
    def half(k: bytes) -> bytes:
        kl, kr = k[:8], k[8:]
        return _xor(DES.new(kl, DES.MODE_ECB).encrypt(_xor(reg, kr)), kr)

    return half(_xor(key, _C0_MASK)) + half(key)


def dukpt_tdes_transaction_key(bdk: bytes, ksn: bytes) -> bytes:
    """TDES DUKPT current transaction key (no usage variant) for ``ksn``."""
    key = dukpt_tdes_ipek(bdk, ksn)
    counter = int.from_bytes(ksn[7:], "big") & 0x1FFFFF
    reg = int.from_bytes(ksn[2:], "big") & ~0x1FFFFF
    bit = 0x100000
    while bit:
        if counter & bit:
            reg |= bit
            key = _nrkgp(key, reg.to_bytes(8, "big"))
        bit >>= 1
    return key


def dukpt_tdes_pin_key(bdk: bytes, ksn: bytes) -> bytes:
    """TDES DUKPT PIN encryption key (transaction key XOR the PIN variant)."""
    return _xor(dukpt_tdes_transaction_key(bdk, ksn), _PIN_VARIANT)


def dukpt_tdes_mac_key(bdk: bytes, ksn: bytes, *, response: bool = False) -> bytes:
    """TDES DUKPT MAC key for the request (default) or the response."""
    variant = _MAC_RESP_VARIANT if response else _MAC_REQ_VARIANT
    return _xor(dukpt_tdes_transaction_key(bdk, ksn), variant)


def dukpt_tdes_data_key(bdk: bytes, ksn: bytes, *, response: bool = False) -> bytes:
    """TDES DUKPT data encryption key: variant key, then each half TDES-encrypted under it."""
    variant = _DATA_RESP_VARIANT if response else _DATA_REQ_VARIANT
    key = _xor(dukpt_tdes_transaction_key(bdk, ksn), variant)
    return tdes_ecb_encrypt(key, key)


# --------------------------------------------------------------------------- DUKPT (AES, X9.24-3)


def _aes_key_type(key_type: str) -> tuple[int, int]:
    try:
        return _DUKPT_AES_KEY_TYPES[key_type]
    except KeyError:
        raise CryptoError(
            f"unknown DUKPT key type {key_type!r} ({', '.join(_DUKPT_AES_KEY_TYPES)})"
        ) from None


def _aes_derive(key: bytes, usage: int, key_type: str, context: bytes) -> bytes:
    algorithm, bits = _aes_key_type(key_type)
    cipher = _aes(key)
    out = b""
    for i in range((bits + 127) // 128):
        data = bytes([1, i + 1]) + usage.to_bytes(2, "big") + algorithm.to_bytes(2, "big")
        out += cipher.encrypt(data + bits.to_bytes(2, "big") + context)
    return out[: bits // 8]


def _check_aes_bdk(bdk: Any, key_type: str) -> bytes:
    bdk = _bytes(bdk, "BDK")
    _algorithm, bits = _aes_key_type(key_type)
    if key_type.endswith("TDEA"):
        raise CryptoError(f"BDK key type must be AES128/192/256, got {key_type}")
    if len(bdk) * 8 != bits:
        raise CryptoError(f"BDK must be {bits // 8} bytes for {key_type}, got {len(bdk)}")
    return bdk


def dukpt_aes_initial_key(bdk: bytes, initial_key_id: bytes, key_type: str = "AES128") -> bytes:
    """AES DUKPT initial key from the BDK and the 8-byte initial key ID (BDK ID + derivation ID)."""
    bdk = _check_aes_bdk(bdk, key_type)
    ikid = _bytes(initial_key_id, "initial key ID")
    if len(ikid) != 8:
        raise CryptoError(f"initial key ID must be 8 bytes, got {len(ikid)}")
    return _aes_derive(bdk, 0x8001, key_type, ikid)


def dukpt_aes_derivation_key(bdk: bytes, ksn: bytes, key_type: str = "AES128") -> bytes:
    """AES DUKPT transaction (intermediate derivation) key for a 12-byte KSN."""
    ksn = _check_ksn(ksn, 12)
    key = dukpt_aes_initial_key(bdk, ksn[:8], key_type)
    counter = int.from_bytes(ksn[8:], "big")
    running = 0
    bit = 0x80000000
    while bit:
        if counter & bit:
            running |= bit
            key = _aes_derive(key, 0x8000, key_type, ksn[4:8] + running.to_bytes(4, "big"))
        bit >>= 1
    return key


def dukpt_aes_working_key(
    bdk: bytes, ksn: bytes, usage: str, key_type: str = "AES128", *, working_key_type: str | None = None
) -> bytes:
    """AES DUKPT working key for ``usage`` (a key of :data:`DUKPT_AES_USAGES`, e.g. ``"pin"``).

    ``key_type`` is the BDK's type; ``working_key_type`` (default: the same) the
    derived key's type, e.g. ``"2TDEA"`` for a TDES working key.
    """
    if usage not in DUKPT_AES_USAGES:
        raise CryptoError(f"unknown DUKPT usage {usage!r} ({', '.join(DUKPT_AES_USAGES)})")
    key = dukpt_aes_derivation_key(bdk, ksn, key_type)
    context = ksn[4:8] + ksn[8:12]
    return _aes_derive(key, DUKPT_AES_USAGES[usage], working_key_type or key_type, context)


# --------------------------------------------------------------------------- EMV


def _check_mk(key: Any, name: str) -> bytes:
    key = _bytes(key, name)
    if len(key) != 16:
        raise CryptoError(f"{name} must be a 16-byte TDES key, got {len(key)}")
    return key


def emv_icc_master_key(imk: bytes, pan: str, psn: str | None = "00", *, option: str = "A") -> bytes:
    """EMV ICC master key (EMV 4.x Book 2 A1.4): MK = TDES(IMK, Y) || TDES(IMK, Y XOR FF..), odd parity.

    Option A: Y = rightmost 16 digits of PAN||PSN (left zero-padded).  Option B
    (``option="B"``, for PANs over 16 digits; shorter PANs use A): Y = the first 16
    decimal digits of SHA-1(PAN||PSN as BCD), hex letters A-F decimalised as 0-5
    when there are too few digits.
    """
    imk = _check_mk(imk, "IMK")
    pan = _check_pan(pan, min_len=1)
    psn = "00" if psn is None else _check_decimal(psn, "PSN", range(1, 3)).rjust(2, "0")
    if option not in ("A", "B"):
        raise CryptoError(f"ICC MK derivation option must be 'A' or 'B', got {option!r}")
    if option == "B" and len(pan) > 16:
        digest = hashlib.sha1(
            bytes.fromhex((pan + psn).rjust(len(pan + psn) + len(pan + psn) % 2, "0"))
        ).hexdigest()
        y = bytes.fromhex(_decimalise(digest.upper(), 16))
    else:
        y = bytes.fromhex((pan + psn)[-16:].rjust(16, "0"))
    mk = tdes_ecb_encrypt(imk, y + _xor(y, b"\xff" * 8))
    return set_odd_parity(mk)


def emv_session_key(icc_mk: bytes, atc: bytes, un: bytes | None = None) -> bytes:
    """EMV common session key (EMV 4.x Book 2 A1.3.1).

    R = ATC||00 00||UN when ``un`` (4 bytes) is given, else ATC||00*6; an 8-byte
    ``atc`` is taken as R itself.  SK = TDES(MK, R with byte 2 = F0) || TDES(MK, R
    with byte 2 = 0F), odd parity.
    """
    icc_mk = _check_mk(icc_mk, "ICC MK")
    r = _bytes(atc, "ATC")
    if len(r) == 2:
        if un is None:
            r += bytes(6)
        else:
            un = _bytes(un, "UN")
            if len(un) != 4:
                raise CryptoError(f"UN must be 4 bytes, got {len(un)}")
            r += bytes(2) + un
    elif len(r) != 8 or un is not None:
        raise CryptoError(f"ATC must be 2 bytes (or an 8-byte diversifier without UN), got {len(r)}")
    return set_odd_parity(tdes_ecb_encrypt(icc_mk, r[:2] + b"\xf0" + r[3:] + r[:2] + b"\x0f" + r[3:]))


def emv_arqc(session_key: bytes, data: bytes) -> bytes:
    """ARQC/TC/AAC: ISO 9797-1 algorithm 3 MAC, EMV padding (method 2), 8 bytes."""
    return mac_iso9797_1(_check_mk(session_key, "session key"), data, algorithm=3, padding=2, length=8)


def emv_arpc_method1(key: bytes, arqc: bytes, arc: bytes) -> bytes:
    """ARPC method 1: TDES(key, ARQC XOR (ARC||00*6)); 8 bytes."""
    key = _check_mk(key, "key")
    arqc, arc = _bytes(arqc, "ARQC"), _bytes(arc, "ARC")
    if len(arqc) != 8 or len(arc) != 2:
        raise CryptoError("ARQC must be 8 bytes and ARC 2 bytes")
    return tdes_ecb_encrypt(key, _xor(arqc, arc + bytes(6)))


def emv_arpc_method2(session_key: bytes, arqc: bytes, csu: bytes, prop_data: bytes = b"") -> bytes:
    """ARPC method 2: 4-byte algorithm-3 MAC over ARQC||CSU||proprietary data, EMV padding."""
    arqc, csu, prop = _bytes(arqc, "ARQC"), _bytes(csu, "CSU"), _bytes(prop_data, "proprietary data")
    if len(arqc) != 8 or len(csu) != 4 or len(prop) > 8:
        raise CryptoError("ARQC must be 8 bytes, CSU 4 bytes, proprietary data at most 8 bytes")
    key = _check_mk(session_key, "session key")
    return mac_iso9797_1(key, arqc + csu + prop, algorithm=3, padding=2, length=4)
