"""Test EMV PKI for the software card: a test CA, one issuer, one ICC key, and the
certificate builders a personalisation bureau would run (EMV Book 2 §5-6, SHA-1, RSA e = 3).

These keys are public test material (like the IMK-AC test key): never load
:data:`TEST_CAPK` into a production terminal.  The terminal side of the same
formats is :mod:`terminal_bridge.oda`.
"""

from __future__ import annotations

import hashlib

from ..oda import Capk

TEST_RID = bytes.fromhex("A000000333")
TEST_CAPK_INDEX = 0xF1

_CA_N = int(
    "B03E4096620838261158C4D8164002EC4F60CC53AF0CD751FAFF8FFA8FA7C8BAE097072E594A7B06C2FD09754872CAF4"
    "D647B7D89E657486D22DE99B00BAD12664276821E363226C61059C6E32F6399C7E7F80F3CD23E645C759F7804C6069F6"
    "5FA16C9CB38F4E76AA0DD338491AD2035F2410BC5ADA4D3556BD3FA15ADF5F6F", 16)
_CA_D = int(
    "1D5FB56E65AC095BAD8ECB79590AAB276290220DF28223E2FF2A97FF17F14C1F256E813264371481207F81938C1321D3"
    "790BF3F96FBB936BCDB25199D5747830C980B216A826C6A8C61C62902B85D65B4B1DC28ED15C5BF0482252340C179E49"
    "A17BF590AACF7B41C00233D3F27F48106FC92EF8FCB04D819EE5B86BCFF8AECF", 16)
_ISS_N = int(
    "E9BED4EE2129A7C89FA0B2649B20411F926E64AC4F3C1906445F6C6C99A92686ADE1B8A8F16B36990B44CA4C3D5CEE9F"
    "BE64B78548678441EAE5F47656C2EFB85FD28E3E16748C949A3EC30F8179ECBCDF6E0DF4E0B6D3F2CB7DB323A959651B"
    "6584AFA418F0A1E42429076CB6D35093F9B46675AC4E3E485D7A70271E4D237D", 16)
_ISS_D = int(
    "26F5237D0586F14C1A9AC86619DAB5854312661CB7DF59810B653CBCC446DBC11CFAF41C283C891981E0CC620A3A27C5"
    "4A661E9636BBEB6051D0FE13B9207D4913BE5A1614551302E85DD77D9FC4239A4E4FC67857D0C5D5C4F3C28D0ECC4906"
    "F3CF5AAC0CA0DEC6B3409196D8DE4D0D413FC793948DD40DAAE9235AE40B977B", 16)
_ICC_N = int(
    "E3379BAED107BBA30DCB1FAE00B012DD15DA0C4F90634037CD8F07130DD182C3FA8348043F1B5E7F2408CDFDCB41CED0"
    "5D3D1D150CDAC4CBC5DCFB97505C66C211EF038727988300A8256F582E3BD90FD22C23E1FB1CFC7CD0EA03E6531E6A9F"
    "9D590B1F107ED92E3A5D30D98F42E019128A5694AD5FB7CA0B8E477D6A57BADF", 16)
_ICC_D = int(
    "25DE99F2782BF49B2CF72FF25572ADCF83A4576298108AB3F797D6832CF84075FF15E1560A848FBFDB56CCFFA1E04D22"
    "BA34DA2E2CCF20CCA0FA29EE8D64BBCAB27D06A58E7334FF54FA986DE70011FABF557595BB9A374B474FB1CD85A9D479"
    "8B40C5DA2B0B651D23370EB20A97C1F57C227DF46E27159D31E911B99329C297", 16)
E3 = b"\x03"

TEST_CAPK = Capk(TEST_RID, TEST_CAPK_INDEX, _CA_N.to_bytes(128, "big"), E3)


def _sign(n: int, d: int, block: bytes) -> bytes:
    """EMV signature with message recovery: the raw RSA private operation."""
    size = (n.bit_length() + 7) // 8
    if len(block) != size:
        raise ValueError(f"block of {len(block)} bytes for a {size}-byte key")
    return pow(int.from_bytes(block, "big"), d, n).to_bytes(size, "big")


def _bcd_f(digits: str, size: int) -> bytes:
    return bytes.fromhex(digits.ljust(size * 2, "F")[: size * 2])


def issuer_certificate(pan: str, expiry_mmyy: str = "1230", serial: bytes = b"\x00\x00\x01") -> tuple[bytes, bytes]:
    """Tag 90 (issuer PK certificate, signed by the test CA) and tag 92 (remainder)."""
    nca = 128
    key = _ISS_N.to_bytes(128, "big")
    left, remainder = key[: nca - 36], key[nca - 36 :]
    body = (b"\x02" + _bcd_f(pan[:8], 4) + bytes.fromhex(expiry_mmyy) + serial + b"\x01\x01"
            + bytes([len(key), len(E3)]) + left.ljust(nca - 36, b"\xbb"))
    digest = hashlib.sha1(body + remainder + E3).digest()
    return _sign(_CA_N, _CA_D, b"\x6a" + body + digest + b"\xbc"), remainder


def signed_static_data(static_data: bytes, dac: bytes = b"\xda\xc1") -> bytes:
    """Tag 93 (SDA): signed by the issuer over the static data to be authenticated."""
    ni = 128
    body = b"\x03\x01" + dac + b"\xbb" * (ni - 26)
    return _sign(_ISS_N, _ISS_D, b"\x6a" + body + hashlib.sha1(body + static_data).digest() + b"\xbc")


def icc_certificate(pan: str, static_data: bytes, expiry_mmyy: str = "1230",
                    serial: bytes = b"\x00\x00\x01") -> tuple[bytes, bytes]:
    """Tag 9F46 (ICC PK certificate, signed by the issuer) and tag 9F48 (remainder)."""
    ni = 128
    key = _ICC_N.to_bytes(128, "big")
    left, remainder = key[: ni - 42], key[ni - 42 :]
    body = (b"\x04" + _bcd_f(pan, 10) + bytes.fromhex(expiry_mmyy) + serial + b"\x01\x01"
            + bytes([len(key), len(E3)]) + left.ljust(ni - 42, b"\xbb"))
    digest = hashlib.sha1(body + remainder + E3 + static_data).digest()
    return _sign(_ISS_N, _ISS_D, b"\x6a" + body + digest + b"\xbc"), remainder


def signed_dynamic_data(icc_dynamic_number: bytes, ddol_data: bytes, extra: bytes = b"") -> bytes:
    """SDAD signed by the ICC key: INTERNAL AUTHENTICATE (DDA) or, with ``extra`` = CID || AC ||
    transaction data hash code, the CDA signature of a GENERATE AC (``ddol_data`` = the UN)."""
    nic = 128
    dyn = bytes([len(icc_dynamic_number)]) + icc_dynamic_number + extra
    body = b"\x05\x01" + bytes([len(dyn)]) + dyn + b"\xbb" * (nic - len(dyn) - 25)
    return _sign(_ICC_N, _ICC_D, b"\x6a" + body + hashlib.sha1(body + ddol_data).digest() + b"\xbc")


ISSUER_EXPONENT = E3
ICC_EXPONENT = E3
