"""EMV application-cryptogram primitives for the software card (and for test oracles).

Key convention shared with ``issuer_sim`` (see ``docs/terminal.md``): ICC master
key by EMV option A from PAN + PSN under IMK-AC, session key by the EMV common
session key derivation with R = ATC || 00 00 || UN, ARQC/TC/AAC = ISO 9797-1
MAC algorithm 3 with padding method 2, ARPC method 1 with the ICC master key (what the HSM's ``KQ`` does).

Backed by ``_fastcore.crypto`` (crypto engineer) once it is present and passes the
known-answer vectors EMV-1/EMV-2 of ``payment-crypto.md``; ``pyemv`` otherwise.
:data:`BACKEND` names the one in use.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

from pyemv import ac as _ac
from pyemv import kd as _kd

# pyemv goes through `cryptography`'s TripleDES, which warns about its own future; the keys are what EMV uses
warnings.filterwarnings("ignore", message=".*TripleDES.*", module=r"pyemv\..*")

_IMK = bytes.fromhex("0123456789ABCDEFFEDCBA9876543210")


def _kcv(key: bytes) -> str:
    from Crypto.Cipher import DES3

    return DES3.new(key, DES3.MODE_ECB).encrypt(bytes(8)).hex().upper()[:4]


def _pyemv_backend() -> tuple[str, Callable, Callable, Callable, Callable]:
    return (
        "pyemv",
        lambda imk, pan, psn: _kd.derive_icc_mk_a(imk, pan, psn),
        lambda mk, r: _kd.derive_common_sk(mk, r),
        lambda sk, data: _ac.generate_ac(sk, data),
        lambda sk, arqc, arc: _ac.generate_arpc_1(sk, arqc, arc),
    )


def _pick() -> tuple[str, Callable, Callable, Callable, Callable]:
    try:
        from _fastcore import crypto as fc  # type: ignore[attr-defined]

        mk = fc.emv_icc_master_key(_IMK, "9901234567890123", "45")
        sk = fc.emv_session_key(mk, bytes.fromhex("1234567890123456"))
        arqc = fc.emv_arqc(sk, bytes.fromhex("0123456789ABCDEF0123456789ABCDEF"))
        if _kcv(mk) == "1DA5" and _kcv(sk) == "0995" and bytes(arqc).hex().upper() == "4B46013359B7A58B":
            return ("_fastcore.crypto", fc.emv_icc_master_key, fc.emv_session_key, fc.emv_arqc,
                    fc.emv_arpc_method1)
    except Exception:  # noqa: BLE001 - absent, different signature or wrong answer: use pyemv
        pass
    return _pyemv_backend()


BACKEND, _icc_mk, _sk, _mac, _arpc1 = _pick()


def icc_master_key(imk_ac: bytes, pan: str, psn: str) -> bytes:
    """EMV option A: 16-byte ICC MK-AC from the issuer's IMK-AC, the PAN and the 2-digit PSN."""
    return bytes(_icc_mk(imk_ac, pan, psn))


def session_r(atc: bytes, un: bytes) -> bytes:
    """Diversifier R = ATC (2) || 00 00 || UN (4)."""
    if len(atc) != 2 or len(un) != 4:
        raise ValueError("ATC must be 2 bytes and UN 4 bytes")
    return atc + b"\x00\x00" + un


def session_key(icc_mk: bytes, atc: bytes, un: bytes) -> bytes:
    """EMV common session key for this transaction."""
    return bytes(_sk(icc_mk, session_r(atc, un)))


def application_cryptogram(sk: bytes, data: bytes) -> bytes:
    """ARQC / TC / AAC: ISO 9797-1 alg 3, padding method 2, 8 bytes."""
    return bytes(_mac(sk, data))


def arpc_method1(key: bytes, arqc: bytes, arc: bytes) -> bytes:
    """ARPC = TDES(key, ARQC XOR (ARC || 00*6)); key = ICC MK-AC; ARC is 2 bytes (ASCII of field 39)."""
    return bytes(_arpc1(key, arqc, arc))


def session_key_r(icc_mk: bytes, r: bytes) -> bytes:
    """EMV common session key for an explicit 8-byte diversifier (secure messaging: R = ARQC)."""
    if len(r) != 8:
        raise ValueError("R must be 8 bytes")
    return bytes(_sk(icc_mk, r))


def script_mac(sk_smi: bytes, data: bytes) -> bytes:
    """Issuer-script command MAC: ISO 9797-1 alg 3, padding method 2, leftmost 4 bytes."""
    return application_cryptogram(sk_smi, data)[:4]
