# cython: language_level=3, annotation_typing=False, wraparound=True, boundscheck=True
"""Compiled twin of ``_fastcore.crypto`` (payment cryptography), same API as ``_crypto_py``.

The block ciphers are pycryptodome's: for each key we ask pycryptodome for its
low-level cipher state (``_create_base_cipher``) once, keep it in a bounded LRU
cache, and call the state's C ``encrypt``/``decrypt`` entries directly.  All
per-message work (CBC chaining, XOR folding, padding, hex expansion, PIN block
assembly and parsing) runs in C with no Python call per block; a 300-byte MAC
costs a cache lookup plus the DES rounds.  At import a known-answer self-test
compares this path with pycryptodome's own ECB objects and raises ImportError
on any mismatch, so the selector falls back to the pure twin rather than
computing wrong MACs.  In ``translate_pin_block`` the clear PIN only ever sits in
a C buffer that is wiped before returning.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from typing import Any

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.unicode cimport PyUnicode_DecodeASCII
from libc.stdint cimport uint8_t, uint64_t
from libc.string cimport memcpy, memset

from Crypto.Cipher import AES as _AES
from Crypto.Cipher import DES as _DES
from Crypto.Cipher import DES3 as _DES3
from Crypto.Util import _raw_api

from .errors import CryptoError

cdef extern from *:
    """
    #include <stdint.h>
    #include <stddef.h>
    /* pycryptodome's src/block_base.h: every raw block cipher state starts with this. */
    typedef struct PcdBlockBase PcdBlockBase;
    typedef int (*pcd_op)(const PcdBlockBase *, const uint8_t *, uint8_t *, size_t);
    struct PcdBlockBase { pcd_op encrypt; pcd_op decrypt; void *destructor; size_t block_len; };
    static inline int pcd_encrypt(const void *st, const uint8_t *in, uint8_t *out, size_t n)
    { return ((const PcdBlockBase *)st)->encrypt((const PcdBlockBase *)st, in, out, n); }
    static inline int pcd_decrypt(const void *st, const uint8_t *in, uint8_t *out, size_t n)
    { return ((const PcdBlockBase *)st)->decrypt((const PcdBlockBase *)st, in, out, n); }
    static inline size_t pcd_block_len(const void *st) { return ((const PcdBlockBase *)st)->block_len; }
    static inline void pcd_xor(uint8_t *dst, const uint8_t *src, size_t n)
    { for (size_t i = 0; i < n; i++) dst[i] ^= src[i]; }
    """
    int pcd_encrypt(const void* st, const uint8_t* inp, uint8_t* out, size_t n) nogil
    int pcd_decrypt(const void* st, const uint8_t* inp, uint8_t* out, size_t n) nogil
    size_t pcd_block_len(const void* st) nogil
    void pcd_xor(uint8_t* dst, const uint8_t* src, size_t n) nogil

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
PAYSHIELD_PIN_FORMATS = {
    "01": PIN_ISO0,
    "03": PIN_IBM3624,
    "05": PIN_ISO1,
    "47": PIN_ISO3,
    "48": PIN_ISO4,
}

#: Thales key-type variant bytes, index 1..9 (index 0: no variant)
LMK_VARIANTS = (0x00, 0xA6, 0x5A, 0x6A, 0xDE, 0x2B, 0x50, 0x74, 0x9C, 0xFA)

#: Thales key-scheme variants XORed into byte 8 of the LMK pair, per key part
KEY_SCHEME_VARIANTS = {
    "Z": (0x00,),
    "U": (0xA6, 0x5A),
    "T": (0x6A, 0xDE, 0x2B),
    "X": (0x00, 0x00),
    "Y": (0x00, 0x00, 0x00),
}

#: AES DUKPT working-key usages (ANSI X9.24-3 key usage indicators)
DUKPT_AES_USAGES = {
    "kek": 0x0002,
    "pin": 0x1000,
    "mac-gen": 0x2000,
    "mac-verify": 0x2001,
    "mac-both": 0x2002,
    "data-enc": 0x3000,
    "data-dec": 0x3001,
    "data-both": 0x3002,
}
_DUKPT_AES_KEY_TYPES = {  # name -> (algorithm code, length in bits)
    "2TDEA": (0x0000, 128),
    "3TDEA": (0x0001, 192),
    "AES128": (0x0002, 128),
    "AES192": (0x0003, 192),
    "AES256": (0x0004, 256),
}

KEY_CACHE_SIZE = 1024
_HEX_UPPER = "0123456789ABCDEF"
cdef const char* _HEXC = b"0123456789ABCDEF"

# --------------------------------------------------------------------------- raw pycryptodome ciphers

cdef object _ffi = getattr(_raw_api, "ffi", None)


cdef size_t _address(object ptr) except 0:
    """Numeric address of a pycryptodome VoidPointer value (cffi cdata or ctypes c_void_p)."""
    cdef object value
    if hasattr(ptr, "value"):
        value = ptr.value
    else:
        value = int(_ffi.cast("uintptr_t", ptr))
    if not value:
        raise ImportError("pycryptodome returned a null cipher state")
    return <size_t>value


cdef class _Cipher:
    """One pycryptodome raw block-cipher state (ECB use only; stateless, thread-safe)."""

    cdef const void* st
    cdef object _owner  # the SmartPointer that frees the state
    cdef readonly Py_ssize_t block_size
    cdef object cmac_subkeys  # (K1, K2) for AES-CMAC, built on first use

    cdef int enc(self, const uint8_t* inp, uint8_t* out, size_t n) except -1:
        if pcd_encrypt(self.st, inp, out, n) != 0:
            raise CryptoError("block cipher failed")
        return 0

    cdef int dec(self, const uint8_t* inp, uint8_t* out, size_t n) except -1:
        if pcd_decrypt(self.st, inp, out, n) != 0:
            raise CryptoError("block cipher failed")
        return 0

    def encrypt(self, data) -> bytes:
        """ECB-encrypt ``data`` (a multiple of the block size)."""
        return self._run(data, True)

    def decrypt(self, data) -> bytes:
        """ECB-decrypt ``data`` (a multiple of the block size)."""
        return self._run(data, False)

    cdef bytes _run(self, object data, bint encrypt):
        cdef bytes d = _bytes(data, "data")
        cdef Py_ssize_t n = PyBytes_GET_SIZE(d)
        if n % self.block_size:
            raise CryptoError(f"data: length {n} is not a multiple of the {self.block_size}-byte block")
        cdef bytes out = PyBytes_FromStringAndSize(NULL, n)
        if n:
            if encrypt:
                self.enc(<const uint8_t*>PyBytes_AS_STRING(d), <uint8_t*>PyBytes_AS_STRING(out), n)
            else:
                self.dec(<const uint8_t*>PyBytes_AS_STRING(d), <uint8_t*>PyBytes_AS_STRING(out), n)
        return out


cdef _Cipher _wrap(object smart_pointer, Py_ssize_t block_size):
    cdef _Cipher c = _Cipher.__new__(_Cipher)
    c._owner = smart_pointer
    c.st = <const void*>_address(smart_pointer.get())
    c.block_size = block_size
    if <Py_ssize_t>pcd_block_len(c.st) != block_size:
        raise ImportError("pycryptodome block cipher state layout is not the expected one")
    return c


def _parity_adjusted(part: bytes) -> bytes:
    return bytes(b & 0xFE | (bin(b >> 1).count("1") & 1 ^ 1) for b in part)


def _single_des_part(key: bytes):
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


def _new_tdes(key: bytes) -> _Cipher:
    single = _single_des_part(key)
    if single is not None:
        return _wrap(_DES._create_base_cipher({"key": single}), 8)
    return _wrap(_DES3._create_base_cipher({"key": key}), 8)


def _new_aes(key: bytes) -> _Cipher:
    return _wrap(_AES._create_base_cipher({"key": key}), 16)


# --------------------------------------------------------------------------- key schedule cache

cdef dict _cache = {}


def cached_key_count() -> int:
    """Number of key schedules currently cached (at most ``KEY_CACHE_SIZE``)."""
    return len(_cache)


def clear_key_cache() -> None:
    """Forget every cached key schedule (e.g. after a key change or in tests)."""
    _cache.clear()


cdef object _cached(str kind, bytes key, object factory):
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


cdef bytes _bytes(object value, str name):
    if type(value) is bytes:
        return <bytes>value
    if isinstance(value, (bytearray, memoryview)):
        return bytes(value)
    if isinstance(value, bytes):
        return bytes(value)
    raise CryptoError(f"{name} must be bytes, not {type(value).__name__}")


cdef _Cipher _tdes(object key, str name="key"):
    """Cached cipher for a DES (8) or TDES (16/24 byte) key; degenerate keys run as single DES."""
    cdef bytes k = _bytes(key, name)
    if len(k) not in (8, 16, 24):
        raise CryptoError(f"{name}: DES/TDES key must be 8, 16 or 24 bytes, got {len(k)}")
    return <_Cipher>_cached("des", k, _new_tdes)


cdef _Cipher _des(object key, str name="key"):
    cdef bytes k = _bytes(key, name)
    if len(k) != 8:
        raise CryptoError(f"{name}: single-DES key must be 8 bytes, got {len(k)}")
    return <_Cipher>_cached("des", k, _new_tdes)


cdef _Cipher _aes(object key, str name="key"):
    cdef bytes k = _bytes(key, name)
    if len(k) not in (16, 24, 32):
        raise CryptoError(f"{name}: AES key must be 16, 24 or 32 bytes, got {len(k)}")
    return <_Cipher>_cached("aes", k, _new_aes)


def _xor(a: bytes, b: bytes) -> bytes:
    cdef bytes out = PyBytes_FromStringAndSize(PyBytes_AS_STRING(a), PyBytes_GET_SIZE(a))
    if PyBytes_GET_SIZE(b) != PyBytes_GET_SIZE(a):
        raise CryptoError("internal: XOR of unequal lengths")
    pcd_xor(<uint8_t*>PyBytes_AS_STRING(out), <const uint8_t*>PyBytes_AS_STRING(b), PyBytes_GET_SIZE(a))
    return out


# --------------------------------------------------------------------------- block ciphers


def tdes_ecb_encrypt(key: bytes, data: bytes) -> bytes:
    """TDES-ECB encrypt (key 8/16/24 bytes; equal halves run as single DES)."""
    return _tdes(key)._run(data, True)


def tdes_ecb_decrypt(key: bytes, data: bytes) -> bytes:
    """TDES-ECB decrypt (key 8/16/24 bytes; equal halves run as single DES)."""
    return _tdes(key)._run(data, False)


cdef bytes _check_iv(object iv, Py_ssize_t size):
    cdef bytes v = _bytes(iv, "iv")
    if len(v) != size:
        raise CryptoError(f"iv must be {size} bytes, got {len(v)}")
    return v


cdef bytes _aligned(object data, Py_ssize_t size):
    cdef bytes d = _bytes(data, "data")
    if PyBytes_GET_SIZE(d) % size:
        raise CryptoError(f"data: length {PyBytes_GET_SIZE(d)} is not a multiple of the {size}-byte block")
    return d


def tdes_cbc_encrypt(key: bytes, data: bytes, iv: bytes = bytes(8)) -> bytes:
    """TDES-CBC encrypt, no padding (data must be a multiple of 8 bytes)."""
    cdef _Cipher c = _tdes(key)
    cdef bytes d = _aligned(data, 8)
    cdef bytes v = _check_iv(iv, 8)
    cdef Py_ssize_t n = PyBytes_GET_SIZE(d), i
    cdef bytes out = PyBytes_FromStringAndSize(NULL, n)
    cdef uint8_t chain[8]
    cdef const uint8_t* src = <const uint8_t*>PyBytes_AS_STRING(d)
    cdef uint8_t* dst = <uint8_t*>PyBytes_AS_STRING(out)
    memcpy(chain, PyBytes_AS_STRING(v), 8)
    for i in range(0, n, 8):
        pcd_xor(chain, src + i, 8)
        c.enc(chain, chain, 8)
        memcpy(dst + i, chain, 8)
    return out


def tdes_cbc_decrypt(key: bytes, data: bytes, iv: bytes = bytes(8)) -> bytes:
    """TDES-CBC decrypt, no padding removal."""
    cdef _Cipher c = _tdes(key)
    cdef bytes d = _aligned(data, 8)
    cdef bytes v = _check_iv(iv, 8)
    cdef Py_ssize_t n = PyBytes_GET_SIZE(d)
    cdef bytes out = PyBytes_FromStringAndSize(NULL, n)
    cdef const uint8_t* src = <const uint8_t*>PyBytes_AS_STRING(d)
    cdef uint8_t* dst = <uint8_t*>PyBytes_AS_STRING(out)
    if n:
        c.dec(src, dst, n)
        pcd_xor(dst, <const uint8_t*>PyBytes_AS_STRING(v), 8)
        pcd_xor(dst + 8, src, n - 8)
    return out


def aes_ecb_encrypt(key: bytes, data: bytes) -> bytes:
    """AES-ECB encrypt (key 16/24/32 bytes, data a multiple of 16 bytes)."""
    return _aes(key)._run(data, True)


def aes_ecb_decrypt(key: bytes, data: bytes) -> bytes:
    """AES-ECB decrypt (key 16/24/32 bytes, data a multiple of 16 bytes)."""
    return _aes(key)._run(data, False)


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


# --------------------------------------------------------------------------- PIN blocks (C)


cdef int _pin_digits(object pin, uint8_t* out) except -1:
    """Validate a PIN string and store its digit values in ``out``; returns the length."""
    cdef Py_UCS4 ch
    cdef int n = 0
    if not isinstance(pin, str):
        raise CryptoError(f"PIN must be str, not {type(pin).__name__}")
    if not 4 <= len(<str>pin) <= 12:
        raise CryptoError(f"PIN length {len(<str>pin)} outside 4-12")
    for ch in <str>pin:
        if <long>ch < 48 or <long>ch > 57:
            raise CryptoError("PIN must contain only digits 0-9")
        out[n] = <uint8_t>(<long>ch - 48)
        n += 1
    return n


cdef int _pan_digits(object pan, uint8_t* out, int min_len) except -1:
    """Validate a PAN string and store its digit values; returns the length."""
    cdef Py_UCS4 ch
    cdef int n = 0
    if not isinstance(pan, str):
        raise CryptoError(f"PAN must be str, not {type(pan).__name__}")
    for ch in <str>pan:
        if <long>ch < 48 or <long>ch > 57:
            raise CryptoError("PAN must contain only digits 0-9")
        if n < 19:
            out[n] = <uint8_t>(<long>ch - 48)
        n += 1
    if n < min_len:
        raise CryptoError(f"PAN too short: {n} digits, need at least {min_len}")
    if n > 19:
        raise CryptoError(f"PAN too long: {n} digits, at most 19")
    return n


cdef int _pan_field_c(object pan, uint8_t* out) except -1:
    """ISO 0/3 PAN field (8 bytes): 0000 + 12 rightmost digits excluding the check digit."""
    cdef uint8_t digits[19]
    cdef uint8_t nib[16]
    cdef int n, i, j
    memset(out, 0, 8)
    if pan is None:
        return 0
    n = _pan_digits(pan, digits, 8)
    memset(nib, 0, 16)
    j = 15
    i = n - 2
    while i >= 0 and j >= 4:
        nib[j] = digits[i]
        i -= 1
        j -= 1
    for i in range(8):
        out[i] = <uint8_t>((nib[2 * i] << 4) | nib[2 * i + 1])
    return 0


cdef int _iso4_pan_field_c(object pan, uint8_t* out) except -1:
    """ISO 9564 format 4 PAN field (16 bytes): M = len(PAN) - 12, the PAN (left-padded to 12), zeros."""
    cdef uint8_t digits[19]
    cdef uint8_t nib[32]
    cdef int n, i, pad
    n = _pan_digits(pan, digits, 1)
    memset(nib, 0, 32)
    nib[0] = <uint8_t>(n - 12 if n > 12 else 0)
    pad = 12 - n if n < 12 else 0
    for i in range(n):
        nib[1 + pad + i] = digits[i]
    for i in range(16):
        out[i] = <uint8_t>((nib[2 * i] << 4) | nib[2 * i + 1])
    return 0


def iso4_pan_field(pan: str) -> bytes:
    """ISO 9564 format 4 PAN field (16 bytes): M = len(PAN) - 12, the PAN, zero fill."""
    cdef bytes out = PyBytes_FromStringAndSize(NULL, 16)
    _iso4_pan_field_c(pan, <uint8_t*>PyBytes_AS_STRING(out))
    return out


cdef int _fill_nibbles_c(object fill, int count, int fmt, uint8_t* out) except -1:
    """Random fill nibbles for formats 1 (0-F) and 3 (A-F), from ``fill`` or :mod:`secrets`."""
    cdef bytes src
    cdef const uint8_t* p
    cdef Py_ssize_t n, i
    cdef int got = 0
    cdef uint8_t v
    if count <= 0:
        return 0
    if fill is None:
        while got < count:
            src = secrets.token_bytes(16)
            p = <const uint8_t*>PyBytes_AS_STRING(src)
            for i in range(16):
                if got == count:
                    break
                if fmt == 3:
                    if p[i] < 252:  # rejection sampling: no modulo bias
                        out[got] = <uint8_t>(10 + p[i] % 6)
                        got += 1
                else:
                    out[got] = p[i] & 0x0F
                    got += 1
        return 0
    src = _bytes(fill, "fill")
    n = PyBytes_GET_SIZE(src)
    if 2 * n < count:
        raise CryptoError(f"fill: {2 * n} nibbles given, format {fmt} needs {count}")
    p = <const uint8_t*>PyBytes_AS_STRING(src)
    for i in range(count):
        v = (p[i // 2] >> 4) if i % 2 == 0 else (p[i // 2] & 0x0F)
        if fmt == 3 and v < 10:
            raise CryptoError("fill: format 3 fill nibbles must be A-F")
        out[i] = v
    return 0


cdef int _encode_c(const uint8_t* pin, int n, int fmt, object pan, object fill, uint8_t* out) except -1:
    """Assemble a clear PIN block into ``out`` (8 bytes; 16 for format 4)."""
    cdef uint8_t nib[16]
    cdef uint8_t pan_field[8]
    cdef int i
    cdef bytes rnd
    if fmt == 3624:
        for i in range(16):
            nib[i] = pin[i] if i < n else 0x0F
    elif fmt == 0 or fmt == 1 or fmt == 3 or fmt == 4:
        if fmt == 3 and pan is None:
            raise CryptoError("format 3 needs a PAN")
        nib[0] = <uint8_t>fmt
        nib[1] = <uint8_t>n
        for i in range(n):
            nib[2 + i] = pin[i]
        if fmt == 0:
            memset(nib + 2 + n, 0x0F, 14 - n)
        elif fmt == 4:
            memset(nib + 2 + n, 0x0A, 14 - n)
        else:
            _fill_nibbles_c(fill, 14 - n, fmt, nib + 2 + n)
    else:
        raise CryptoError(f"unknown PIN block format {fmt!r}")
    for i in range(8):
        out[i] = <uint8_t>((nib[2 * i] << 4) | nib[2 * i + 1])
    memset(nib, 0, 16)
    if fmt == 0 or fmt == 3:
        _pan_field_c(pan, pan_field)
        pcd_xor(out, pan_field, 8)
    elif fmt == 4:
        if fill is None:
            rnd = secrets.token_bytes(8)
        else:
            rnd = _bytes(fill, "fill")
            if PyBytes_GET_SIZE(rnd) != 8:
                raise CryptoError(f"fill: format 4 needs 8 random bytes, got {PyBytes_GET_SIZE(rnd)}")
        memcpy(out + 8, PyBytes_AS_STRING(rnd), 8)
    return 0


cdef int _decode_c(const uint8_t* block, int fmt, object pan, uint8_t* pin) except -1:
    """Parse a clear PIN block (8 bytes; for format 4 the first 8 bytes of the PIN field).

    Stores the PIN digit values in ``pin`` and returns the PIN length.
    """
    cdef uint8_t nib[16]
    cdef uint8_t buf[8]
    cdef int i, n
    memcpy(buf, block, 8)
    if fmt == 0 or fmt == 3:
        if fmt == 3 and pan is None:
            raise CryptoError("format 3 needs a PAN")
        _pan_field_c(pan, nib)  # nib used as scratch for the PAN field
        pcd_xor(buf, nib, 8)
    elif fmt != 1 and fmt != 4 and fmt != 3624:
        raise CryptoError(f"unknown PIN block format {fmt!r}")
    for i in range(8):
        nib[2 * i] = buf[i] >> 4
        nib[2 * i + 1] = buf[i] & 0x0F
    memset(buf, 0, 8)
    try:
        if fmt == 3624:
            n = 16
            for i in range(16):
                if nib[i] == 0x0F:
                    n = i
                    break
            for i in range(16):
                if i < n and nib[i] > 9:
                    raise CryptoError(f"PIN block: non-decimal PIN digit {_HEX_UPPER[nib[i]]} at nibble {i}")
                if i >= n and nib[i] != 0x0F:
                    raise CryptoError(
                        f"PIN block: bad pad nibble {_HEX_UPPER[nib[i]]} at nibble {i} for format {fmt}"
                    )
            if not 4 <= n <= 12:
                raise CryptoError(f"PIN block: PIN length {n} outside 4-12")
            for i in range(n):
                pin[i] = nib[i]
            return n
        if nib[0] != fmt:
            raise CryptoError(f"PIN block: control nibble {_HEX_UPPER[nib[0]]} at offset 0, expected {fmt}")
        n = nib[1]
        if not 4 <= n <= 12:
            raise CryptoError(f"PIN block: PIN length {n} at offset 1 outside 4-12")
        for i in range(n):
            if nib[2 + i] > 9:
                raise CryptoError(f"PIN block: non-decimal PIN digit {_HEX_UPPER[nib[2 + i]]} at nibble {2 + i}")
            pin[i] = nib[2 + i]
        for i in range(2 + n, 16):
            if (fmt == 0 and nib[i] != 0x0F) or (fmt == 3 and nib[i] < 10) or (fmt == 4 and nib[i] != 0x0A):
                raise CryptoError(
                    f"PIN block: bad fill nibble {_HEX_UPPER[nib[i]]} at nibble {i} for format {fmt}"
                )
        return n
    finally:
        memset(nib, 0, 16)


cdef str _pin_str(const uint8_t* pin, int n):
    cdef char text[12]
    cdef int i
    for i in range(n):
        text[i] = <char>(48 + pin[i])
    try:
        return PyUnicode_DecodeASCII(text, n, NULL)
    finally:
        memset(text, 0, 12)


cdef int _fmt(object fmt) except -1:
    if isinstance(fmt, int) and fmt in (0, 1, 3, 4, 3624):
        return <int>fmt
    raise CryptoError(f"unknown PIN block format {fmt!r}")


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
    cdef uint8_t digits[12]
    cdef int n = _pin_digits(pin, digits)
    cdef int f = _fmt(fmt)
    cdef bytes out = PyBytes_FromStringAndSize(NULL, 16 if f == 4 else 8)
    try:
        _encode_c(digits, n, f, pan, fill, <uint8_t*>PyBytes_AS_STRING(out))
    finally:
        memset(digits, 0, 12)
    return out


def pin_block_decode(block: bytes, pan: str | None, fmt: int) -> str:
    """Parse a clear PIN block (inverse of :func:`pin_block_encode`) and return the PIN.

    Checks the control nibble, the PIN length (4-12), the PIN digits and the
    format's fill; errors name the nibble offset.
    """
    cdef bytes b = _bytes(block, "PIN block")
    cdef int f = _fmt(fmt)
    cdef int size = 16 if f == 4 else 8
    cdef uint8_t digits[12]
    cdef int n
    if PyBytes_GET_SIZE(b) != size:
        raise CryptoError(f"PIN block must be {size} bytes for format {fmt}, got {PyBytes_GET_SIZE(b)}")
    try:
        n = _decode_c(<const uint8_t*>PyBytes_AS_STRING(b), f, pan, digits)
        return _pin_str(digits, n)
    finally:
        memset(digits, 0, 12)


cdef int _encrypt_block_c(object key, const uint8_t* pin, int n, object pan, int fmt, object fill, uint8_t* out) except -1:
    cdef _Cipher c
    cdef uint8_t pan_field[16]
    if fmt == 4:
        if pan is None:
            raise CryptoError("format 4 needs a PAN")
        c = _aes(key)
        _iso4_pan_field_c(pan, pan_field)
        _encode_c(pin, n, fmt, pan, fill, out)
        c.enc(out, out, 16)
        pcd_xor(out, pan_field, 16)
        c.enc(out, out, 16)
        return 0
    c = _tdes(key)
    _encode_c(pin, n, fmt, pan, fill, out)
    c.enc(out, out, 8)
    return 0


cdef int _decrypt_block_c(object key, object block, object pan, int fmt, uint8_t* pin) except -1:
    cdef bytes b = _bytes(block, "PIN block")
    cdef _Cipher c
    cdef uint8_t buf[16]
    cdef uint8_t pan_field[16]
    try:
        if fmt == 4:
            if pan is None:
                raise CryptoError("format 4 needs a PAN")
            if PyBytes_GET_SIZE(b) != 16:
                raise CryptoError(f"PIN block must be 16 bytes for format 4, got {PyBytes_GET_SIZE(b)}")
            c = _aes(key)
            _iso4_pan_field_c(pan, pan_field)
            c.dec(<const uint8_t*>PyBytes_AS_STRING(b), buf, 16)
            pcd_xor(buf, pan_field, 16)
            c.dec(buf, buf, 16)
        else:
            if PyBytes_GET_SIZE(b) != 8:
                raise CryptoError(f"PIN block must be 8 bytes for format {fmt}, got {PyBytes_GET_SIZE(b)}")
            c = _tdes(key)
            c.dec(<const uint8_t*>PyBytes_AS_STRING(b), buf, 8)
        return _decode_c(buf, fmt, pan, pin)
    finally:
        memset(buf, 0, 16)


def encrypt_pin_block(key: bytes, pin: str, pan: str | None, fmt: int, *, fill: bytes | None = None) -> bytes:
    """Build and encrypt a PIN block: TDES-ECB for 0/1/3/3624, ISO 9564 AES encipherment for 4."""
    cdef uint8_t digits[12]
    cdef int f = _fmt(fmt)
    cdef int n
    cdef bytes out = PyBytes_FromStringAndSize(NULL, 16 if f == 4 else 8)
    try:
        n = _pin_digits(pin, digits)
        _encrypt_block_c(key, digits, n, pan, f, fill, <uint8_t*>PyBytes_AS_STRING(out))
    finally:
        memset(digits, 0, 12)
    return out


def decrypt_pin_block(key: bytes, block: bytes, pan: str | None, fmt: int) -> str:
    """Decrypt a PIN block and return the PIN (checks format, length and fill)."""
    cdef uint8_t digits[12]
    cdef int n
    cdef int f = _fmt(fmt)
    try:
        n = _decrypt_block_c(key, block, pan, f, digits)
        return _pin_str(digits, n)
    finally:
        memset(digits, 0, 12)


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

    The clear PIN never leaves this function (here it is never a Python object:
    it lives in a C buffer that is wiped).  ``dst_pan`` defaults to ``pan``;
    random fill (formats 1, 3, 4) is fresh.
    """
    cdef uint8_t digits[12]
    cdef int n
    cdef int sf = _fmt(src_fmt)
    cdef int df = _fmt(dst_fmt)
    cdef bytes out = PyBytes_FromStringAndSize(NULL, 16 if df == 4 else 8)
    try:
        n = _decrypt_block_c(src_key, block, pan, sf, digits)
        _encrypt_block_c(dst_key, digits, n, pan if dst_pan is None else dst_pan, df, None,
                         <uint8_t*>PyBytes_AS_STRING(out))
    finally:
        memset(digits, 0, 12)
    return out


# --------------------------------------------------------------------------- MACs (C)


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


cdef int _check_length(object length, int maximum) except -1:
    if not isinstance(length, int) or not 1 <= length <= maximum:
        raise CryptoError(f"MAC length must be 1-{maximum} bytes, got {length!r}")
    return <int>length


cdef int _check_padding(object padding) except -1:
    if not isinstance(padding, int) or padding not in (1, 2, 3):
        raise CryptoError(f"MAC padding method must be 1, 2 or 3, got {padding!r}")
    return <int>padding


cdef int _cbc_mac_c(_Cipher c, const uint8_t* data, Py_ssize_t n, int padding, uint8_t* chain) except -1:
    """CBC-MAC (IV 0) over ``data`` padded by ISO 9797-1 method ``padding``; the last block
    is left in ``chain``, which the caller zeroes beforehand."""
    cdef Py_ssize_t bs = c.block_size
    cdef Py_ssize_t full = n - n % bs
    cdef Py_ssize_t rem = n - full
    cdef Py_ssize_t i
    cdef uint64_t bits
    cdef uint8_t tail[16]
    if padding == 3:
        bits = <uint64_t>n * 8
        for i in range(bs):
            chain[bs - 1 - i] ^= <uint8_t>(bits & 0xFF) if i < 8 else 0
            if i < 8:
                bits >>= 8
        c.enc(chain, chain, bs)
    for i in range(0, full, bs):
        pcd_xor(chain, data + i, bs)
        c.enc(chain, chain, bs)
    if padding == 2 or rem or n == 0:
        memset(tail, 0, 16)
        memcpy(tail, data + full, rem)
        if padding == 2:
            tail[rem] = 0x80
        pcd_xor(chain, tail, bs)
        c.enc(chain, chain, bs)
    return 0


cdef inline const uint8_t* _ptr(bytes b):
    return <const uint8_t*>PyBytes_AS_STRING(b)


cdef tuple _new_x919_pair(bytes key):
    return (_des(key[:8]), _des(key[8:]))


def _x919_pair(key: bytes) -> tuple:
    return _new_x919_pair(key)


def mac_iso9797_1(key: bytes, data: bytes, *, algorithm: int = 1, padding: int = 1, length: int = 8) -> bytes:
    """ISO/IEC 9797-1 MAC with DES/TDES.

    Algorithm 1: CBC-MAC under the whole key (8 bytes: DES = X9.9; 16/24: TDES).
    Algorithm 3 (retail MAC, X9.19): 16-byte key KL||KR, single-DES CBC under KL,
    output transform DES(KL, DES^-1(KR, last)).  Result truncated to ``length``.
    """
    cdef int ln = _check_length(length, 8)
    cdef int pad = _check_padding(padding)
    cdef bytes d = _bytes(data, "data")
    cdef bytes k
    cdef uint8_t chain[8]
    cdef _Cipher c, kl, kr
    cdef tuple pair
    memset(chain, 0, 8)
    if algorithm == 1:
        c = _tdes(key)
        _cbc_mac_c(c, _ptr(d), PyBytes_GET_SIZE(d), pad, chain)
    elif algorithm == 3:
        k = _bytes(key, "key")
        if PyBytes_GET_SIZE(k) != 16:
            raise CryptoError(f"key: ISO 9797-1 algorithm 3 needs a 16-byte key, got {PyBytes_GET_SIZE(k)}")
        pair = <tuple>_cached("x919", k, _x919_pair)
        kl = <_Cipher>pair[0]
        kr = <_Cipher>pair[1]
        _cbc_mac_c(kl, _ptr(d), PyBytes_GET_SIZE(d), pad, chain)
        kr.dec(chain, chain, 8)
        kl.enc(chain, chain, 8)
    else:
        raise CryptoError(f"MAC algorithm must be 1 or 3, got {algorithm!r}")
    return PyBytes_FromStringAndSize(<char*>chain, ln)


def mac_x99(key: bytes, data: bytes, *, padding: int = 1, length: int = 8) -> bytes:
    """ANSI X9.9 MAC: single-DES CBC-MAC (8-byte key); Thales ``MA`` uses ``length=4``."""
    cdef int ln = _check_length(length, 8)
    cdef int pad = _check_padding(padding)
    cdef bytes k = _bytes(key, "key")
    if PyBytes_GET_SIZE(k) != 8:
        raise CryptoError(f"key: X9.9 needs an 8-byte DES key, got {PyBytes_GET_SIZE(k)}")
    cdef _Cipher c = _des(k)
    cdef bytes d = _bytes(data, "data")
    cdef uint8_t chain[8]
    memset(chain, 0, 8)
    _cbc_mac_c(c, _ptr(d), PyBytes_GET_SIZE(d), pad, chain)
    return PyBytes_FromStringAndSize(<char*>chain, ln)


def mac_x919(key: bytes, data: bytes, *, padding: int = 1, length: int = 8) -> bytes:
    """ANSI X9.19 retail MAC = ISO/IEC 9797-1 algorithm 3 with a 16-byte key."""
    return mac_iso9797_1(key, data, algorithm=3, padding=padding, length=length)


def mac_pos_ecb(key: bytes, data: bytes) -> bytes:
    """UnionPay POS "ECB" MAC: returns field 64, 8 ASCII uppercase hex characters.

    XOR-fold the zero-padded data into R; E1 = DES(MAK, hex(R)[:8]);
    E2 = DES(MAK, E1 XOR hex(R)[8:]); MAC = hex(E2)[:8].  An 8-byte MAK runs single
    DES, a 16-byte one TDES (single DES when both halves are equal).
    """
    cdef _Cipher c = _tdes(key)
    cdef bytes d = _bytes(data, "data")
    cdef const uint8_t* p = _ptr(d)
    cdef Py_ssize_t n = PyBytes_GET_SIZE(d)
    cdef Py_ssize_t full = n - n % 8
    cdef Py_ssize_t i
    cdef uint64_t acc = 0, word
    cdef uint8_t r[8]
    cdef uint8_t h[16]
    cdef char out[8]
    for i in range(0, full, 8):
        memcpy(&word, p + i, 8)
        acc ^= word
    memcpy(r, &acc, 8)
    pcd_xor(r, p + full, n - full)
    for i in range(8):
        h[2 * i] = _HEXC[r[i] >> 4]
        h[2 * i + 1] = _HEXC[r[i] & 0x0F]
    c.enc(h, r, 8)
    pcd_xor(r, h + 8, 8)
    c.enc(r, r, 8)
    for i in range(4):
        out[2 * i] = _HEXC[r[i] >> 4]
        out[2 * i + 1] = _HEXC[r[i] & 0x0F]
    return PyBytes_FromStringAndSize(out, 8)


cdef void _dbl(const uint8_t* src, uint8_t* dst) noexcept:
    cdef int i
    cdef uint8_t carry = src[0] >> 7
    for i in range(15):
        dst[i] = <uint8_t>((src[i] << 1) | (src[i + 1] >> 7))
    dst[15] = <uint8_t>(src[15] << 1)
    if carry:
        dst[15] ^= 0x87


cdef tuple _cmac_subkeys(_Cipher c):
    cdef uint8_t l[16]
    cdef uint8_t k1[16]
    cdef uint8_t k2[16]
    if c.cmac_subkeys is None:
        memset(l, 0, 16)
        c.enc(l, l, 16)
        _dbl(l, k1)
        _dbl(k1, k2)
        c.cmac_subkeys = (PyBytes_FromStringAndSize(<char*>k1, 16), PyBytes_FromStringAndSize(<char*>k2, 16))
    return <tuple>c.cmac_subkeys


def aes_cmac(key: bytes, data: bytes, *, length: int = 16) -> bytes:
    """AES-CMAC (NIST SP 800-38B / RFC 4493), truncated to ``length`` bytes."""
    cdef int ln = _check_length(length, 16)
    cdef _Cipher c = _aes(key)
    cdef bytes d = _bytes(data, "data")
    cdef tuple sub = _cmac_subkeys(c)
    cdef const uint8_t* p = _ptr(d)
    cdef Py_ssize_t n = PyBytes_GET_SIZE(d)
    cdef Py_ssize_t body, i
    cdef uint8_t chain[16]
    cdef uint8_t last[16]
    memset(chain, 0, 16)
    memset(last, 0, 16)
    if n and n % 16 == 0:
        body = n - 16
        memcpy(last, p + body, 16)
        pcd_xor(last, _ptr(<bytes>sub[0]), 16)
    else:
        body = n - n % 16
        memcpy(last, p + body, n - body)
        last[n - body] = 0x80
        pcd_xor(last, _ptr(<bytes>sub[1]), 16)
    for i in range(0, body, 16):
        pcd_xor(chain, p + i, 16)
        c.enc(chain, chain, 16)
    pcd_xor(chain, last, 16)
    c.enc(chain, chain, 16)
    return PyBytes_FromStringAndSize(<char*>chain, ln)


def mac_equal(a: bytes, b: bytes) -> bool:
    """Constant-time comparison of two MACs (or any byte strings)."""
    return hmac.compare_digest(_bytes(a, "a"), _bytes(b, "b"))


# --------------------------------------------------------------------------- helpers used below


def _check_pin(pin) -> str:
    cdef uint8_t digits[12]
    _pin_digits(pin, digits)
    memset(digits, 0, 12)
    return pin


def _check_pan(pan, *, min_len: int = 8) -> str:
    cdef uint8_t digits[19]
    _pan_digits(pan, digits, min_len)
    return pan


def _new_single_des(key: bytes) -> _Cipher:
    return _wrap(_DES._create_base_cipher({"key": key}), 8)


def _self_test() -> None:
    """Known answers through the raw path vs pycryptodome's own ECB objects; ImportError if not equal."""
    k8 = bytes.fromhex("0123456789ABCDEF")
    k16 = bytes.fromhex("0123456789ABCDEFFEDCBA9876543210")
    msg = b"Now is the time for all "
    checks = (
        (_new_tdes(k8), _DES.new(k8, _DES.MODE_ECB)),
        (_new_tdes(k16), _DES3.new(k16, _DES3.MODE_ECB)),
        (_new_aes(k16), _AES.new(k16, _AES.MODE_ECB)),
    )
    for raw, ref in checks:
        data = msg[: 16 if raw.block_size == 16 else 24]
        if raw.encrypt(data) != ref.encrypt(data) or raw.decrypt(data) != ref.decrypt(data):
            raise ImportError("pycryptodome raw cipher path disagrees with its ECB mode")



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
        return _xor(_new_single_des(kl).encrypt(_xor(reg, kr)), kr)

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
        digest = hashlib.sha1(bytes.fromhex((pan + psn).rjust(len(pan + psn) + len(pan + psn) % 2, "0"))).hexdigest()
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


_self_test()
