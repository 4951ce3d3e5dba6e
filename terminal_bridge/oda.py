"""Offline data authentication on the terminal side: SDA and DDA (EMV Book 2 §5-6, SHA-1).

The terminal recovers the issuer public key from tag 90 with the certification
authority public key (CAPK, chosen by RID + tag 8F), then either checks the
signed static application data (tag 93, SDA) or recovers the ICC public key
(tag 9F46) and checks the card's signature over the terminal's unpredictable
number (INTERNAL AUTHENTICATE, DDA).  Every failure is an :class:`OdaError`
naming the check; the kernel turns it into the TVR bit (SDA failed / DDA failed /
ICC data missing) and carries on online.  CAPKs come from the acquirer (CAPK
download, pos-8583-dialect.md §9.4) into ``TerminalParams.capks``.
"""

from __future__ import annotations

import datetime
import hashlib
from dataclasses import dataclass


class OdaError(Exception):
    """Offline data authentication failed (message names the failed check)."""


class OdaDataMissing(OdaError):
    """A data object needed for ODA is absent (TVR: ICC data missing)."""


@dataclass(frozen=True)
class Capk:
    """Certification authority public key: RID (5 bytes), index (tag 8F), modulus, exponent."""

    rid: bytes
    index: int
    modulus: bytes
    exponent: bytes

    def __repr__(self) -> str:
        return f"Capk(rid={self.rid.hex().upper()}, index={self.index:02X}, bits={len(self.modulus) * 8})"


def recover(modulus: bytes, exponent: bytes, data: bytes, what: str) -> bytes:
    """RSA public operation; the result must be framed 6A ... BC."""
    if len(data) != len(modulus):
        raise OdaError(f"{what}: {len(data)} bytes, key is {len(modulus)}")
    n = int.from_bytes(modulus, "big")
    out = pow(int.from_bytes(data, "big"), int.from_bytes(exponent, "big"), n).to_bytes(len(modulus), "big")
    if out[0] != 0x6A or out[-1] != 0xBC:
        raise OdaError(f"{what}: recovered data not framed 6A..BC")
    return out


def _need(tags: dict[str, bytes], *names: str) -> None:
    missing = [t for t in names if not tags.get(t)]
    if missing:
        raise OdaDataMissing(f"missing {' '.join(missing)}")


def _not_expired(mmyy: bytes, today: datetime.date, what: str) -> None:
    mm, yy = int(mmyy[:1].hex()), int(mmyy[1:2].hex())
    if (2000 + yy, mm) < (today.year, today.month):
        raise OdaError(f"{what} expired {mmyy.hex()}")


def issuer_key(capk: Capk, tags: dict[str, bytes], pan: str, today: datetime.date) -> tuple[bytes, bytes]:
    """Recover and check the issuer public key (modulus, exponent) from tags 90, 92, 9F32."""
    _need(tags, "90", "9F32")
    rec = recover(capk.modulus, capk.exponent, tags["90"], "issuer certificate")
    nca = len(capk.modulus)
    if rec[1] != 0x02:
        raise OdaError(f"issuer certificate format {rec[1]:02X}, expected 02")
    issuer_id = rec[2:6].hex().upper().rstrip("F")
    if not pan.startswith(issuer_id) or not 3 <= len(issuer_id) <= 8:
        raise OdaError("issuer identifier does not match the PAN")
    _not_expired(rec[6:8], today, "issuer certificate")
    if rec[11] != 0x01 or rec[12] != 0x01:
        raise OdaError("issuer certificate: unsupported hash or key algorithm")
    ni = rec[13]
    remainder = tags.get("92", b"")
    left = rec[15 : nca - 21]
    digest = hashlib.sha1(rec[1 : nca - 21] + remainder + tags["9F32"]).digest()
    if digest != rec[nca - 21 : nca - 1]:
        raise OdaError("issuer certificate hash mismatch")
    modulus = (left[:ni] if ni <= nca - 36 else left + remainder)[:ni]
    if len(modulus) != ni:
        raise OdaDataMissing("issuer public key remainder (92) missing")
    return modulus, tags["9F32"]


def verify_sda(issuer: tuple[bytes, bytes], tags: dict[str, bytes], static_data: bytes) -> None:
    _need(tags, "93")
    rec = recover(issuer[0], issuer[1], tags["93"], "signed static application data")
    ni = len(issuer[0])
    if rec[1] != 0x03:
        raise OdaError(f"signed static data format {rec[1]:02X}, expected 03")
    if hashlib.sha1(rec[1 : ni - 21] + static_data).digest() != rec[ni - 21 : ni - 1]:
        raise OdaError("signed static application data hash mismatch")


def icc_key(issuer: tuple[bytes, bytes], tags: dict[str, bytes], pan: str, static_data: bytes,
            today: datetime.date) -> tuple[bytes, bytes]:
    _need(tags, "9F46", "9F47")
    rec = recover(issuer[0], issuer[1], tags["9F46"], "ICC certificate")
    ni = len(issuer[0])
    if rec[1] != 0x04:
        raise OdaError(f"ICC certificate format {rec[1]:02X}, expected 04")
    if rec[2:12].hex().upper().rstrip("F") != pan:
        raise OdaError("ICC certificate PAN does not match the card's PAN")
    _not_expired(rec[12:14], today, "ICC certificate")
    nic = rec[19]
    remainder = tags.get("9F48", b"")
    digest = hashlib.sha1(rec[1 : ni - 21] + remainder + tags["9F47"] + static_data).digest()
    if digest != rec[ni - 21 : ni - 1]:
        raise OdaError("ICC certificate hash mismatch")
    left = rec[21 : ni - 21]
    modulus = (left[:nic] if nic <= ni - 42 else left + remainder)[:nic]
    if len(modulus) != nic:
        raise OdaDataMissing("ICC public key remainder (9F48) missing")
    return modulus, tags["9F47"]


def verify_dda(icc: tuple[bytes, bytes], sdad: bytes, ddol_data: bytes) -> bytes:
    """Check the signed dynamic application data; returns the ICC dynamic number."""
    rec = recover(icc[0], icc[1], sdad, "signed dynamic application data")
    nic = len(icc[0])
    if rec[1] != 0x05:
        raise OdaError(f"signed dynamic data format {rec[1]:02X}, expected 05")
    if hashlib.sha1(rec[1 : nic - 21] + ddol_data).digest() != rec[nic - 21 : nic - 1]:
        raise OdaError("signed dynamic application data hash mismatch")
    ldd = rec[3]
    dyn = rec[4 : 4 + ldd]
    return dyn[1 : 1 + dyn[0]] if dyn else b""


def verify_cda(icc: tuple[bytes, bytes], sdad: bytes, un: bytes) -> tuple[int, bytes, bytes]:
    """Check a GENERATE AC signature (CDA); returns ``(CID, AC, transaction data hash code)``."""
    rec = recover(icc[0], icc[1], sdad, "CDA signature")
    nic = len(icc[0])
    if rec[1] != 0x05:
        raise OdaError(f"CDA signature format {rec[1]:02X}, expected 05")
    if hashlib.sha1(rec[1 : nic - 21] + un).digest() != rec[nic - 21 : nic - 1]:
        raise OdaError("CDA signature hash mismatch")
    dyn = rec[4 : 4 + rec[3]]
    n = dyn[0] if dyn else 0
    tail = dyn[1 + n :]
    if len(tail) != 1 + 8 + 20:
        raise OdaError("CDA signature: ICC dynamic data is not IDN + CID + AC + hash")
    return tail[0], tail[1:9], tail[9:29]
