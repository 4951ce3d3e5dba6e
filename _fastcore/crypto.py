"""Payment cryptography for posswitch: PIN blocks, MACs, KCVs, key variants, DUKPT, EMV.

Selector over the compiled twin ``_fastcore._crypto`` (Cython) and the pure twin
``_fastcore._crypto_py`` (``POSSWITCH_NO_EXTENSIONS=1``, or the compiled one not built).
Both have the same API and pass the same tests; the block ciphers always come from
pycryptodome.  ``IMPLEMENTATION`` says which twin was loaded (``"c"`` or ``"py"``).
API and algorithms: ``_crypto_py`` docstrings and ``docs/crypto.md``.
"""

from __future__ import annotations

from ._compat import implementation_of, load

_impl = load("crypto")

IMPLEMENTATION: str = implementation_of(_impl)

PIN_ISO0: int = _impl.PIN_ISO0
PIN_ISO1: int = _impl.PIN_ISO1
PIN_ISO3: int = _impl.PIN_ISO3
PIN_ISO4: int = _impl.PIN_ISO4
PIN_IBM3624: int = _impl.PIN_IBM3624
PAYSHIELD_PIN_FORMATS: dict[str, int] = _impl.PAYSHIELD_PIN_FORMATS
LMK_VARIANTS: tuple[int, ...] = _impl.LMK_VARIANTS
KEY_SCHEME_VARIANTS: dict[str, tuple[int, ...]] = _impl.KEY_SCHEME_VARIANTS
DUKPT_AES_USAGES: dict[str, int] = _impl.DUKPT_AES_USAGES
KEY_CACHE_SIZE: int = _impl.KEY_CACHE_SIZE

tdes_ecb_encrypt = _impl.tdes_ecb_encrypt
tdes_ecb_decrypt = _impl.tdes_ecb_decrypt
tdes_cbc_encrypt = _impl.tdes_cbc_encrypt
tdes_cbc_decrypt = _impl.tdes_cbc_decrypt
aes_ecb_encrypt = _impl.aes_ecb_encrypt
aes_ecb_decrypt = _impl.aes_ecb_decrypt
sm4_ecb_encrypt = _impl.sm4_ecb_encrypt
sm4_ecb_decrypt = _impl.sm4_ecb_decrypt
pin_block_encode = _impl.pin_block_encode
pin_block_decode = _impl.pin_block_decode
iso4_pan_field = _impl.iso4_pan_field
encrypt_pin_block = _impl.encrypt_pin_block
decrypt_pin_block = _impl.decrypt_pin_block
translate_pin_block = _impl.translate_pin_block
pad_iso9797 = _impl.pad_iso9797
mac_iso9797_1 = _impl.mac_iso9797_1
mac_x99 = _impl.mac_x99
mac_x919 = _impl.mac_x919
mac_pos_ecb = _impl.mac_pos_ecb
aes_cmac = _impl.aes_cmac
mac_equal = _impl.mac_equal
kcv = _impl.kcv
has_odd_parity = _impl.has_odd_parity
set_odd_parity = _impl.set_odd_parity
key_variant = _impl.key_variant
encrypt_under_variant_lmk = _impl.encrypt_under_variant_lmk
decrypt_under_variant_lmk = _impl.decrypt_under_variant_lmk
ibm3624_offset = _impl.ibm3624_offset
ibm3624_verify = _impl.ibm3624_verify
visa_pvv = _impl.visa_pvv
cvv = _impl.cvv
dukpt_tdes_ipek = _impl.dukpt_tdes_ipek
dukpt_tdes_transaction_key = _impl.dukpt_tdes_transaction_key
dukpt_tdes_pin_key = _impl.dukpt_tdes_pin_key
dukpt_tdes_mac_key = _impl.dukpt_tdes_mac_key
dukpt_tdes_data_key = _impl.dukpt_tdes_data_key
dukpt_aes_initial_key = _impl.dukpt_aes_initial_key
dukpt_aes_derivation_key = _impl.dukpt_aes_derivation_key
dukpt_aes_working_key = _impl.dukpt_aes_working_key
emv_icc_master_key = _impl.emv_icc_master_key
emv_session_key = _impl.emv_session_key
emv_arqc = _impl.emv_arqc
emv_arpc_method1 = _impl.emv_arpc_method1
emv_arpc_method2 = _impl.emv_arpc_method2
clear_key_cache = _impl.clear_key_cache
cached_key_count = _impl.cached_key_count

__all__ = [
    "IMPLEMENTATION",
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
