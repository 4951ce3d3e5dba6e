"""Bad input to ``_fastcore.crypto`` raises CryptoError naming the field (both twins)."""

from __future__ import annotations

from types import ModuleType

import pytest
from hypothesis import given
from hypothesis import strategies as st

from _fastcore.errors import CryptoError

H = bytes.fromhex
K2 = H("0123456789ABCDEFFEDCBA9876543210")
PAN = "4012345678909"


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda m: m.tdes_ecb_encrypt(bytes(7), bytes(8)), "key must be 8, 16 or 24 bytes, got 7"),
        (lambda m: m.tdes_ecb_encrypt(K2, bytes(9)), "not a multiple of the 8-byte block"),
        (lambda m: m.tdes_ecb_encrypt("0123456789ABCDEF", bytes(8)), "key must be bytes, not str"),
        (lambda m: m.aes_ecb_encrypt(bytes(15), bytes(16)), "AES key must be 16, 24 or 32 bytes"),
        (lambda m: m.tdes_cbc_encrypt(K2, bytes(8), bytes(4)), "iv must be 8 bytes"),
        (lambda m: m.pin_block_encode("123", PAN, 0), "PIN length 3 outside 4-12"),
        (lambda m: m.pin_block_encode("1234567890123", PAN, 0), "PIN length 13 outside 4-12"),
        (lambda m: m.pin_block_encode("12a4", PAN, 0), "PIN must contain only digits"),
        (lambda m: m.pin_block_encode(1234, PAN, 0), "PIN must be str"),
        (lambda m: m.pin_block_encode("1234", "1234567", 0), "PAN too short: 7 digits"),
        (lambda m: m.pin_block_encode("1234", "1" * 20, 0), "PAN too long: 20 digits"),
        (lambda m: m.pin_block_encode("1234", "40123456789X9", 0), "PAN must contain only digits"),
        (lambda m: m.pin_block_encode("1234", None, 3), "format 3 needs a PAN"),
        (lambda m: m.pin_block_encode("1234", PAN, 2), "unknown PIN block format 2"),
        (
            lambda m: m.pin_block_encode("1234", PAN, 3, fill=H("0123456789")),
            "format 3 fill nibbles must be A-F",
        ),
        (lambda m: m.pin_block_encode("1234", PAN, 1, fill=H("AB")), "fill: 2 nibbles given"),
        (lambda m: m.pin_block_encode("1234", PAN, 4, fill=bytes(4)), "format 4 needs 8 random bytes"),
        (
            lambda m: m.pin_block_decode(H("141234FFFFFFFFFF"), None, 0),
            "control nibble 1 at offset 0, expected 0",
        ),
        (
            lambda m: m.pin_block_decode(H("031234FFFFFFFFFF"), None, 0),
            "PIN length 3 at offset 1 outside 4-12",
        ),
        (lambda m: m.pin_block_decode(H("0D1234FFFFFFFFFF"), None, 0), "PIN length 13 at offset 1"),
        (lambda m: m.pin_block_decode(H("04123AFFFFFFFFFF"), None, 0), "non-decimal PIN digit A at nibble 5"),
        (lambda m: m.pin_block_decode(H("041234FFFFFFFFFE"), None, 0), "bad fill nibble E at nibble 15"),
        (lambda m: m.pin_block_decode(H("041234FFFFFFFF"), None, 0), "PIN block must be 8 bytes"),
        (lambda m: m.pin_block_decode(H("1234FFFFFFFFFF0F"), None, 3624), "bad pad nibble 0 at nibble 14"),
        (lambda m: m.pin_block_decode(H("123FFFFFFFFFFFFF"), None, 3624), "PIN length 3 outside 4-12"),
        (lambda m: m.decrypt_pin_block(bytes(16), bytes(16), None, 4), "format 4 needs a PAN"),
        (lambda m: m.decrypt_pin_block(K2, bytes(16), PAN, 0), "PIN block must be 8 bytes for format 0"),
        (lambda m: m.mac_x919(K2[:8], b"x"), "algorithm 3 needs a 16-byte key"),
        (lambda m: m.mac_x99(K2, b"x"), "X9.9 needs an 8-byte DES key, got 16"),
        (lambda m: m.mac_iso9797_1(K2, b"x", algorithm=2), "MAC algorithm must be 1 or 3"),
        (lambda m: m.mac_iso9797_1(K2, b"x", padding=4), "padding method must be 1, 2 or 3"),
        (lambda m: m.mac_iso9797_1(K2, b"x", length=9), "MAC length must be 1-8 bytes"),
        (lambda m: m.aes_cmac(bytes(16), b"x", length=17), "MAC length must be 1-16 bytes"),
        (lambda m: m.kcv(K2, method="sm3"), "KCV method must be"),
        (lambda m: m.sm4_ecb_encrypt(bytes(8), bytes(16)), "SM4 key must be 16 bytes, got 8"),
        (lambda m: m.sm4_ecb_encrypt(bytes(16), bytes(8)), "not a multiple of the 16-byte block"),
        (lambda m: m.key_variant(K2, 10), "variant must be 0-9"),
        (lambda m: m.encrypt_under_variant_lmk(K2, 0, "U", bytes(8)), "key scheme U needs a 16-byte key"),
        (lambda m: m.encrypt_under_variant_lmk(K2, 0, "Q", bytes(8)), "unknown key scheme 'Q'"),
        (lambda m: m.encrypt_under_variant_lmk(bytes(8), 0, "Z", bytes(8)), "LMK pair must be 16 bytes"),
        (lambda m: m.dukpt_tdes_ipek(K2, bytes(8)), "KSN must be 10 bytes"),
        (lambda m: m.dukpt_tdes_ipek(bytes(24), bytes(10)), "BDK must be 16 bytes"),
        (lambda m: m.dukpt_aes_working_key(K2, bytes(12), "pinx"), "unknown DUKPT usage 'pinx'"),
        (lambda m: m.dukpt_aes_initial_key(K2, bytes(8), "AES256"), "BDK must be 32 bytes for AES256"),
        (lambda m: m.dukpt_aes_initial_key(K2, bytes(8), "DES"), "unknown DUKPT key type 'DES'"),
        (lambda m: m.emv_session_key(K2, bytes(3)), "ATC must be 2 bytes"),
        (lambda m: m.emv_icc_master_key(K2, PAN, "01", option="C"), "option must be 'A' or 'B'"),
        (lambda m: m.emv_arpc_method1(K2, bytes(8), bytes(3)), "ARC 2 bytes"),
        (
            lambda m: m.ibm3624_offset(K2, "1234", "12345", "0123456789012345"),
            "validation data must be 16 hex",
        ),
        (
            lambda m: m.ibm3624_offset(K2, "1234", "1234567890123456", "01234"),
            "decimalisation table length 5",
        ),
        (lambda m: m.visa_pvv(K2, PAN, "12", "1234"), "PVKI length 2"),
        (lambda m: m.cvv(K2[:8], PAN, "2512", "101"), "CVK must be 16 bytes"),
    ],
)
def test_bad_input_names_the_problem(crypto_impl: ModuleType, call, match: str) -> None:
    with pytest.raises(CryptoError, match=match):
        call(crypto_impl)


def test_crypto_error_is_a_value_error() -> None:
    assert issubclass(CryptoError, ValueError)


def test_wrong_key_gives_pin_block_error_not_garbage(crypto_impl: ModuleType) -> None:
    block = crypto_impl.encrypt_pin_block(K2, "1234", PAN, 0)
    with pytest.raises(CryptoError, match="PIN block"):
        crypto_impl.decrypt_pin_block(K2[::-1], block, PAN, 0)


@given(block=st.binary(min_size=8, max_size=8), fmt=st.sampled_from([0, 1, 3, 3624]))
def test_decode_of_random_blocks_never_crashes(crypto_impl: ModuleType, block: bytes, fmt: int) -> None:
    try:
        pin = crypto_impl.pin_block_decode(block, PAN, fmt)
    except CryptoError:
        return
    assert 4 <= len(pin) <= 12 and pin.isdigit()
    # whatever decodes must re-encode to the same block when the format has no random fill
    if fmt in (0, 3624):
        assert crypto_impl.pin_block_encode(pin, PAN, fmt) == block
