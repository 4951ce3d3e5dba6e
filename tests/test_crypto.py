"""Known-answer vectors for ``_fastcore.crypto`` (both twins via ``crypto_impl``).

Vector IDs are those of ``payment-crypto.md`` §12 and ``pos-8583-dialect.md`` §9.2/§12.
"""

from __future__ import annotations

from types import ModuleType

import pytest

H = bytes.fromhex
K2 = H("0123456789ABCDEFFEDCBA9876543210")  # the X9.24 / ISO 9797 double-length test key


# --------------------------------------------------------------------------- PIN blocks


def test_pb1_pb2_iso0_clear_blocks(crypto_impl: ModuleType) -> None:
    assert crypto_impl.pin_block_encode("1234", "4012345678909", crypto_impl.PIN_ISO0) == H(
        "041274EDCBA9876F"
    )
    assert crypto_impl.pin_block_encode("1234", "5544332211009966", 0) == H("041277CDDEEFF669")
    assert crypto_impl.pin_block_decode(H("041277CDDEEFF669"), "5544332211009966", 0) == "1234"


def test_pb3_iso3_decode(crypto_impl: ModuleType) -> None:
    assert (
        crypto_impl.pin_block_decode(H("341277EEEFCCB43C"), "5544332211009966", crypto_impl.PIN_ISO3)
        == "1234"
    )


def test_pb4_iso4_pan_field(crypto_impl: ModuleType) -> None:
    assert crypto_impl.iso4_pan_field("4111111111111111") == H("44111111111111111000000000000000")
    # PANs under 12 digits are left-padded to 12 with M = 0
    assert crypto_impl.iso4_pan_field("12345678") == H("00000123456780000000000000000000")


def test_pb5_iso4_decipher(crypto_impl: ModuleType) -> None:
    key = H("00112233445566778899AABBCCDDEEFF")
    block = H("E4BE5B623AF7E006AC319E5B93544564")
    assert crypto_impl.decrypt_pin_block(key, block, "1234567890123456", crypto_impl.PIN_ISO4) == "1234"


def test_pb6_unionpay_iso0_under_pik(crypto_impl: ModuleType) -> None:
    pan = "6212142000000000012"
    assert crypto_impl.pin_block_encode("123456", pan, 0) == H("06121456FFFFFFFE")
    pik = crypto_impl.tdes_ecb_decrypt(
        H("159D86C7C1F779EA29F77A6858E0DA2A"), H("75CAD854C2E59A5EEDD7CA7410C2C215")
    )
    assert crypto_impl.encrypt_pin_block(pik, "123456", pan, 0) == H("9CA4E8A0FA2C49B3")
    assert crypto_impl.decrypt_pin_block(pik, H("9CA4E8A0FA2C49B3"), pan, 0) == "123456"


def test_pin_without_pan_is_iso0_with_zero_pan_field(crypto_impl: ModuleType) -> None:
    assert crypto_impl.pin_block_encode("123456", None, 0) == H("06123456FFFFFFFF")
    assert crypto_impl.pin_block_decode(H("06123456FFFFFFFF"), None, 0) == "123456"


def test_short_pan_is_left_padded(crypto_impl: ModuleType) -> None:
    # 8-digit PAN: the 7 digits before the check digit, right-aligned in the 12-digit PAN field
    assert crypto_impl.pin_block_encode("1234", "12345678", 0) == bytes(
        a ^ b for a, b in zip(H("041234FFFFFFFFFF"), H("0000000001234567"), strict=True)
    )
    assert (
        crypto_impl.pin_block_decode(crypto_impl.pin_block_encode("1234", "12345678", 3), "12345678", 3)
        == "1234"
    )


def test_iso1_and_ibm3624_layouts(crypto_impl: ModuleType) -> None:
    m = crypto_impl
    assert m.pin_block_encode("1234", None, m.PIN_ISO1, fill=H("0123456789ABCDEF")) == H("1412340123456789")
    assert m.pin_block_decode(H("1412340123456789"), None, m.PIN_ISO1) == "1234"
    assert m.pin_block_encode("123456", None, m.PIN_IBM3624) == H("123456FFFFFFFFFF")
    assert m.pin_block_decode(H("123456789012FFFF"), None, m.PIN_IBM3624) == "123456789012"
    assert m.pin_block_encode("1234", "5544332211009966", m.PIN_ISO3, fill=H("DCCEDCBDAA")) == H(
        "341277EEEFCCB43C"
    )
    field = m.pin_block_encode("1234", "4111111111111111", m.PIN_ISO4, fill=bytes(range(8)))
    assert field == H("441234AAAAAAAAAA") + bytes(range(8))


def test_iso3_random_fill_is_a_to_f_and_fresh(crypto_impl: ModuleType) -> None:
    pan = "5544332211009966"
    blocks = {crypto_impl.pin_block_encode("1234", pan, 3) for _ in range(20)}
    assert len(blocks) > 1
    for block in blocks:
        clear = bytes(a ^ b for a, b in zip(block, H("0000433221100996"), strict=True)).hex().upper()
        assert clear[:6] == "341234" and set(clear[6:]) <= set("ABCDEF")


def test_payshield_format_codes(crypto_impl: ModuleType) -> None:
    m = crypto_impl
    assert m.PAYSHIELD_PIN_FORMATS == {
        "01": m.PIN_ISO0,
        "03": m.PIN_IBM3624,
        "05": m.PIN_ISO1,
        "47": m.PIN_ISO3,
        "48": m.PIN_ISO4,
    }
    assert (m.PIN_ISO0, m.PIN_ISO1, m.PIN_ISO3, m.PIN_ISO4, m.PIN_IBM3624) == (0, 1, 3, 4, 3624)


def test_translate_tpk_iso0_to_zpk_iso3_and_aes_iso4(crypto_impl: ModuleType) -> None:
    m = crypto_impl
    pan = "6212142000000000012"
    tpk, zpk, aes = (
        H("0123456789ABCDEFFEDCBA9876543210"),
        H("1C1C1C1C1C1C1C1C1C1C1C1C1C1C1C1C"),
        bytes(range(16)),
    )
    src = m.encrypt_pin_block(tpk, "123456", pan, 0)
    out = m.translate_pin_block(tpk, zpk, src, pan, 0, 3)
    assert isinstance(out, bytes) and len(out) == 8
    assert m.decrypt_pin_block(zpk, out, pan, 3) == "123456"
    out4 = m.translate_pin_block(zpk, aes, out, pan, 3, 4, dst_pan="4111111111111111")
    assert len(out4) == 16
    assert m.decrypt_pin_block(aes, out4, "4111111111111111", 4) == "123456"


# --------------------------------------------------------------------------- MACs


@pytest.mark.parametrize(
    ("data", "padding", "expected"),
    [
        (b"Now is the time for all ", 1, "A1C72E74EA3FA9B6"),
        (b"Now is the time for all ", 2, "E9086230CA3BE796"),
        (b"Now is the time for all ", 3, "AB059463D7A7D170"),
        (b"Now is the time for it", 1, "2E2B1428CC78254F"),
    ],
)
def test_mac_a3_x919(crypto_impl: ModuleType, data: bytes, padding: int, expected: str) -> None:
    assert crypto_impl.mac_x919(K2, data, padding=padding) == H(expected)
    assert crypto_impl.mac_iso9797_1(K2, data, algorithm=3, padding=padding) == H(expected)
    assert crypto_impl.mac_x919(K2, data, padding=padding, length=4) == H(expected)[:4]


def test_mac_a1_x99_and_thales_ma(crypto_impl: ModuleType) -> None:
    assert crypto_impl.mac_x99(K2[:8], b"Now is the time for all ") == H("70A30640CC76DD8B")
    data = H("676976656D65534F4D454D4143696E67")
    assert crypto_impl.mac_x99(H("E9CB01B93B20914F"), data) == H("170C2BDB611C591F")
    assert crypto_impl.mac_x99(H("E9CB01B93B20914F"), data, length=4) == H("170C2BDB")


# pos-8583-dialect.md §12 MAC-1 (same bytes as tests/vectors/mac1_frame.hex)
MAC1_FRAME = H(
    "007F6000030000603210320072"
    "02003020048000C08015"
    "000000000000001234000002030099"
    "3030303030303031"
    "393532373138313832323137383735"
    "313536"
    "001926000001000600000000"
    "00435F0112323834343132333435363738393031323334"
    "5F0306313630303336"
    "5F0406323030383236"
    "5C023031"
    "4233413039324145"
)


def _mac1_input() -> bytes:
    return MAC1_FRAME[2 + 5 + 6 : -8]  # MTI .. end of field 62: no length, TPDU, header or field 64


def test_mac1_unionpay_ecb_mac(crypto_impl: ModuleType) -> None:
    data = _mac1_input()
    assert len(data) == 108
    tak = H("0723C80DB5F4CD3D")
    assert crypto_impl.mac_pos_ecb(tak, data) == b"B3A092AE"
    # negative: X9.9 (= X9.19 with K||K) over the same data gives another value
    assert crypto_impl.mac_x99(tak, data, length=4) == H("D3CED761")
    assert crypto_impl.mac_x919(tak + tak, data, length=4) == H("D3CED761")
    # a 16-byte MAK with equal halves runs single DES
    assert crypto_impl.mac_pos_ecb(tak + tak, data) == b"B3A092AE"


def test_mac2_tak_under_tmk_and_ecb_mac(crypto_impl: ModuleType) -> None:
    tak = crypto_impl.tdes_ecb_decrypt(H("70F2A84CCBC2AE8625CBB0F2C22AB923"), H("96D605EA176B7E9E"))
    assert tak == H("C24A8FB57AA20123")
    data = H(
        "0200302004C020C0981100000000000000005100183402100006324392260009942820D131210112008439"
        "3136363838303134303030303030303030303030303031313536ACF46E73838A82F92600000000000000000822000001"
    )
    assert crypto_impl.mac_pos_ecb(tak, data) == b"8A9E91B8"


def test_pos_ecb_mac_aligned_and_empty(crypto_impl: ModuleType) -> None:
    key = H("0723C80DB5F4CD3D")
    # zero padding: appending zero bytes up to the block boundary does not change the MAC
    assert crypto_impl.mac_pos_ecb(key, b"\x01\x02\x03") == crypto_impl.mac_pos_ecb(
        key, b"\x01\x02\x03" + bytes(5)
    )
    assert crypto_impl.mac_pos_ecb(key, b"") == crypto_impl.mac_pos_ecb(key, bytes(8))


def test_mac_equal(crypto_impl: ModuleType) -> None:
    assert crypto_impl.mac_equal(b"B3A092AE", b"B3A092AE")
    assert not crypto_impl.mac_equal(b"B3A092AE", b"B3A092AF")
    assert not crypto_impl.mac_equal(b"B3A092AE", b"B3A092A")


# --------------------------------------------------------------------------- KCV, parity, variants, LMK


def test_k62_1_field62_keys(crypto_impl: ModuleType) -> None:
    tmk = H("CA5D92598DCA48CE8A4C76361A9269E9")
    f62 = H("6701EAD6A9AD51E51AA406E2C27FCFA98D0A74B8B651F9E9BACE9AE10000000000000000AB7153CA")
    pik = crypto_impl.tdes_ecb_decrypt(tmk, f62[:16])
    mak = crypto_impl.tdes_ecb_decrypt(tmk, f62[20:28])
    assert pik == H("807A23AD32B36D457AE91FDF927570EA")
    assert mak == H("5BB5C72CD00B7338")
    assert crypto_impl.kcv(pik, length=4) == f62[16:20] == H("8D0A74B8")
    assert crypto_impl.kcv(mak, length=4) == f62[36:40] == H("AB7153CA")


def test_kcv_1_and_2(crypto_impl: ModuleType) -> None:
    assert crypto_impl.kcv(K2) == H("08D7B4")
    assert crypto_impl.kcv(K2, length=8) == H("08D7B4FB629D0885")
    aes = H("00112233445566778899AABBCCDDEEFF")
    assert crypto_impl.kcv(aes, method="aes-cmac") == H("53E107")
    assert crypto_impl.kcv(aes, method="aes-ecb") == H("FDE4FB")


def test_th_cvk_key_under_variant_lmk(crypto_impl: ModuleType) -> None:
    lmk_14_15 = H("E0E0010101010101F1F1010101010101")
    m = crypto_impl
    assert m.decrypt_under_variant_lmk(lmk_14_15, 4, "Z", H("0A61E674E88C6A7E")) == H("0123456789ABCDEF")
    assert m.decrypt_under_variant_lmk(lmk_14_15, 4, "Z", H("EABC38C2B2BB492F")) == H("FEDCBA9876543210")
    assert m.encrypt_under_variant_lmk(lmk_14_15, 4, "Z", H("0123456789ABCDEF")) == H("0A61E674E88C6A7E")


@pytest.mark.parametrize("scheme", ["U", "T", "X", "Y"])
def test_variant_lmk_schemes_round_trip_and_differ(crypto_impl: ModuleType, scheme: str) -> None:
    lmk = H("1C587F1C13924FEF0101010101010101")
    clear = bytes(range(1, 25))[: 16 if scheme in "UX" else 24]
    enc = crypto_impl.encrypt_under_variant_lmk(lmk, 3, scheme, clear)
    assert crypto_impl.decrypt_under_variant_lmk(lmk, 3, scheme, enc) == clear
    if scheme in "UT":  # the scheme variant makes each part's encryption differ from plain X/Y
        plain = crypto_impl.encrypt_under_variant_lmk(lmk, 3, "X" if scheme == "U" else "Y", clear)
        assert all(enc[i : i + 8] != plain[i : i + 8] for i in range(0, len(clear), 8))
        # and it is exactly: byte 8 of the (variant) pair XOR A6 / 5A (U) resp. 6A / DE / 2B (T)
        base = crypto_impl.key_variant(lmk, 3)
        for i, sv in enumerate({"U": (0xA6, 0x5A), "T": (0x6A, 0xDE, 0x2B)}[scheme]):
            pair = base[:8] + bytes([base[8] ^ sv]) + base[9:]
            assert enc[8 * i : 8 * i + 8] == crypto_impl.tdes_ecb_encrypt(pair, clear[8 * i : 8 * i + 8])


def test_key_variant_and_parity(crypto_impl: ModuleType) -> None:
    m = crypto_impl
    assert m.key_variant(H("E0E0010101010101F1F1010101010101"), 4)[:1] == bytes([0xE0 ^ 0xDE])
    assert m.key_variant(K2, 0) == K2
    assert m.LMK_VARIANTS[1:] == (0xA6, 0x5A, 0x6A, 0xDE, 0x2B, 0x50, 0x74, 0x9C, 0xFA)
    assert m.has_odd_parity(H("0123456789ABCDEF"))
    assert not m.has_odd_parity(H("0023456789ABCDEF"))
    assert m.set_odd_parity(H("0023456789ABCDEE")) == H("0123456789ABCDEF")
    assert m.set_odd_parity(bytes(8)) == b"\x01" * 8


def test_sm4_1_and_sm4_2(crypto_impl: ModuleType) -> None:
    k = H("0123456789ABCDEFFEDCBA9876543210")
    assert crypto_impl.sm4_ecb_encrypt(k, k) == H("681EDF34D206965E86B3E94F536E4246")
    assert crypto_impl.sm4_ecb_decrypt(k, H("681EDF34D206965E86B3E94F536E4246")) == k
    work = crypto_impl.sm4_ecb_decrypt(
        H("1234567890ABCDEFABCDEF0987654321"), H("3D66234C49E4296FF9C78D8BACBD6A76")
    )
    assert work == H("F351D490994603795C6EBEE8FAEBB481")
    assert crypto_impl.kcv(work, method="sm4", length=8) == H("861E83E31FAEBF10")


# --------------------------------------------------------------------------- PIN verification, CVV


def test_cvv_1(crypto_impl: ModuleType) -> None:
    assert crypto_impl.cvv(K2, "4123456789012345", "8701", "101") == "561"
    assert crypto_impl.cvv(K2, "4999988887777", "9105", "111") == "649"


def test_ibm3624_offset_round_trip(crypto_impl: ModuleType) -> None:
    m = crypto_impl
    vd, table = "4123456789012FFF", "0123456789012345"
    offset = m.ibm3624_offset(K2, "1234", vd, table)
    assert len(offset) == 4 and offset.isdigit()
    assert m.ibm3624_verify(K2, "1234", offset, vd, table)
    assert not m.ibm3624_verify(K2, "1235", offset, vd, table)
    # natural PIN (offset 0000) is the decimalised TDES(PVK, validation data)
    natural = "".join(table[int(c, 16)] for c in m.tdes_ecb_encrypt(K2, H(vd)).hex())[:4]
    assert m.ibm3624_offset(K2, natural, vd, table) == "0000"


def test_visa_pvv_known_property(crypto_impl: ModuleType) -> None:
    pvv = crypto_impl.visa_pvv(K2, "4123456789012345", "1", "1234")
    assert len(pvv) == 4 and pvv.isdigit()
    assert crypto_impl.visa_pvv(K2, "4123456789012345", "1", "1234") == pvv
    assert crypto_impl.visa_pvv(K2, "4123456789012345", "2", "1234") != pvv


# --------------------------------------------------------------------------- DUKPT

KSN0 = H("FFFF9876543210E00000")


def test_dk1_ipek(crypto_impl: ModuleType) -> None:
    assert crypto_impl.dukpt_tdes_ipek(K2, KSN0) == H("6AC292FAA1315B4D858AB3A3D7D5933A")
    # the counter bits of the KSN do not change the IPEK
    assert crypto_impl.dukpt_tdes_ipek(K2, H("FFFF9876543210E00005")) == H("6AC292FAA1315B4D858AB3A3D7D5933A")


def test_dk2_counter_1(crypto_impl: ModuleType) -> None:
    m, ksn = crypto_impl, H("FFFF9876543210E00001")
    assert m.dukpt_tdes_transaction_key(K2, ksn) == H("042666B49184CFA368DE9628D0397BC9")
    pin_key = m.dukpt_tdes_pin_key(K2, ksn)
    assert pin_key == H("042666B49184CF5C68DE9628D0397B36")
    assert m.encrypt_pin_block(pin_key, "1234", "4012345678909", 0) == H("1B9C1845EB993A7A")
    assert m.dukpt_tdes_mac_key(K2, ksn) == H("042666B4918430A368DE9628D03984C9")
    assert m.dukpt_tdes_mac_key(K2, ksn, response=True) == bytes(
        a ^ b
        for a, b in zip(
            H("042666B49184CFA368DE9628D0397BC9"), H("00000000FF00000000000000FF000000"), strict=True
        )
    )


def test_dk3_counter_2(crypto_impl: ModuleType) -> None:
    ksn = H("FFFF9876543210E00002")
    assert crypto_impl.dukpt_tdes_transaction_key(K2, ksn) == H("C46551CEF9FD24B0AA9AD834130D3BC7")
    pin_key = crypto_impl.dukpt_tdes_pin_key(K2, ksn)
    assert crypto_impl.encrypt_pin_block(pin_key, "1234", "4012345678909", 0) == H("10A01C8D02C69107")


def test_dk4_rollover(crypto_impl: ModuleType) -> None:
    assert crypto_impl.dukpt_tdes_transaction_key(K2, H("FFFF9876543210EFF800")) == H(
        "F9CDFEBF4F5B1D9EB3EC12454527E176"
    )
    assert crypto_impl.dukpt_tdes_transaction_key(K2, H("FFFF9876543210F00000")) == H(
        "AA4D58DB653EC74A48C75F2F047DD2B5"
    )


def test_dukpt_data_key_is_variant_key_encrypted_under_itself(crypto_impl: ModuleType) -> None:
    ksn = H("FFFF9876543210E00001")
    txn = crypto_impl.dukpt_tdes_transaction_key(K2, ksn)
    variant = bytes(a ^ b for a, b in zip(txn, H("0000000000FF00000000000000FF0000"), strict=True))
    assert crypto_impl.dukpt_tdes_data_key(K2, ksn) == crypto_impl.tdes_ecb_encrypt(variant, variant)


AES_BDK = H("FEDCBA9876543210F1F1F1F1F1F1F1F1")
AES_IKID = H("1234567890123456")


def test_da1_aes_initial_key(crypto_impl: ModuleType) -> None:
    assert crypto_impl.dukpt_aes_initial_key(AES_BDK, AES_IKID) == H("1273671EA26AC29AFA4D1084127652A1")


@pytest.mark.parametrize(
    ("counter", "expected"),
    [
        (1, "4F21B565BAD9835E112B6465635EAE44"),
        (2, "2F34D68DE10F68D38091A73B9E7C437C"),
        (3, "031504E530365CF81264238540518318"),
    ],
)
def test_da2_aes_transaction_keys(crypto_impl: ModuleType, counter: int, expected: str) -> None:
    ksn = AES_IKID + counter.to_bytes(4, "big")
    assert crypto_impl.dukpt_aes_derivation_key(AES_BDK, ksn) == H(expected)


def test_da2_aes_pin_key(crypto_impl: ModuleType) -> None:
    ksn = AES_IKID + (1).to_bytes(4, "big")
    assert crypto_impl.dukpt_aes_working_key(AES_BDK, ksn, "pin") == H("AF8CB133A78F8DC2D1359F18527593FB")
    # the working key is AES(derivation key, usage data): different usages give different keys
    keys = {crypto_impl.dukpt_aes_working_key(AES_BDK, ksn, u) for u in crypto_impl.DUKPT_AES_USAGES}
    assert len(keys) == len(crypto_impl.DUKPT_AES_USAGES)
    assert len(crypto_impl.dukpt_aes_working_key(AES_BDK, ksn, "pin", working_key_type="AES256")) == 32


# --------------------------------------------------------------------------- EMV


def test_emv_1_2_3(crypto_impl: ModuleType) -> None:
    m = crypto_impl
    assert m.kcv(K2, length=2) == H("08D7")
    icc_mk = m.emv_icc_master_key(K2, "9901234567890123", "45")
    assert m.kcv(icc_mk, length=2) == H("1DA5")
    sk = m.emv_session_key(icc_mk, H("1234567890123456"))
    assert m.kcv(sk, length=2) == H("0995")
    arqc = m.emv_arqc(sk, H("0123456789ABCDEF0123456789ABCDEF"))
    assert arqc == H("4B46013359B7A58B")
    assert m.emv_arpc_method1(icc_mk, arqc, H("0000")) == H("F8C9CECAABD55AD1")
    assert m.emv_arpc_method2(sk, arqc, H("00000000"), H("1234567890ABCDEF")) == H("4962B76C")


def test_emv_session_key_atc_and_un_form_r(crypto_impl: ModuleType) -> None:
    m = crypto_impl
    icc_mk = m.emv_icc_master_key(K2, "6212345678901234", "01")
    atc, un = H("001C"), H("A1B2C3D4")
    assert m.emv_session_key(icc_mk, atc, un) == m.emv_session_key(icc_mk, atc + H("0000") + un)
    assert m.emv_session_key(icc_mk, atc) == m.emv_session_key(icc_mk, atc + bytes(6))


# --------------------------------------------------------------------------- block ciphers, degenerate keys


def test_equal_halves_run_as_single_des(crypto_impl: ModuleType) -> None:
    m = crypto_impl
    k = H("1C1C1C1C1C1C1C1C")
    block = H("0123456789ABCDEF")
    single = m.tdes_ecb_encrypt(k, block)
    assert m.tdes_ecb_encrypt(k + k, block) == single
    assert m.tdes_ecb_encrypt(k + k + k, block) == single
    # halves equal up to parity bits are degenerate too
    assert m.tdes_ecb_encrypt(k + H("1D1D1D1D1D1D1D1D"), block) == single
    other = H("0123456789ABCDEF")
    assert m.tdes_ecb_encrypt(k + k + other, block) == m.tdes_ecb_encrypt(other, block)
    assert m.tdes_ecb_encrypt(other + k + k, block) == m.tdes_ecb_encrypt(other, block)
    assert m.tdes_ecb_decrypt(k + k, single) == block
    # LMK pair 18-19 of the test set has equal halves
    lmk = H("01010101010101010101010101010101")
    assert m.decrypt_under_variant_lmk(lmk, 0, "Z", m.encrypt_under_variant_lmk(lmk, 0, "Z", block)) == block


def test_cbc_round_trip_and_iv(crypto_impl: ModuleType) -> None:
    data, iv = bytes(range(32)), H("1122334455667788")
    ct = crypto_impl.tdes_cbc_encrypt(K2, data, iv)
    assert crypto_impl.tdes_cbc_decrypt(K2, ct, iv) == data
    assert crypto_impl.tdes_cbc_encrypt(K2, data)[-8:] == crypto_impl.mac_iso9797_1(K2, data)
    assert crypto_impl.tdes_cbc_encrypt(K2, b"") == b""


def test_aes_ecb_round_trip(crypto_impl: ModuleType) -> None:
    key = bytes(range(32))
    ct = crypto_impl.aes_ecb_encrypt(key, bytes(32))
    assert ct[:16] == ct[16:] and crypto_impl.aes_ecb_decrypt(key, ct) == bytes(32)


def test_accepts_bytearray_and_memoryview(crypto_impl: ModuleType) -> None:
    data = b"Now is the time for all "
    assert crypto_impl.mac_x919(bytearray(K2), memoryview(data)) == H("A1C72E74EA3FA9B6")
    assert crypto_impl.kcv(memoryview(K2)) == H("08D7B4")


def test_key_cache_is_bounded_and_clearable(crypto_impl: ModuleType) -> None:
    crypto_impl.clear_key_cache()
    for i in range(crypto_impl.KEY_CACHE_SIZE + 50):
        crypto_impl.tdes_ecb_encrypt(i.to_bytes(8, "big"), bytes(8))
    assert crypto_impl.cached_key_count() <= crypto_impl.KEY_CACHE_SIZE
    assert crypto_impl.kcv(K2) == H("08D7B4")  # still correct after evictions
    crypto_impl.clear_key_cache()
    assert crypto_impl.cached_key_count() == 0
    assert crypto_impl.kcv(K2) == H("08D7B4")


# --------------------------------------------------------------------------- API shape


def test_selector_exports_the_twin_api(crypto_impl: ModuleType) -> None:
    import inspect

    from _fastcore import crypto

    assert set(crypto.__all__) == set(crypto_impl.__all__) | {"IMPLEMENTATION"}
    assert crypto.IMPLEMENTATION in ("c", "py")
    py = __import__("_fastcore._crypto_py", fromlist=["x"])
    for name in crypto_impl.__all__:
        obj = getattr(crypto_impl, name)
        if callable(obj):
            assert obj.__doc__, f"{name} has no docstring"
            assert inspect.signature(obj) == inspect.signature(getattr(py, name)), name
        else:
            assert obj == getattr(py, name), name


def test_threads_share_the_cache_safely(crypto_impl: ModuleType, monkeypatch: pytest.MonkeyPatch) -> None:
    """Evictions while other threads hold a cipher never corrupt results (small cache, many keys)."""
    from concurrent.futures import ThreadPoolExecutor

    monkeypatch.setattr(crypto_impl, "KEY_CACHE_SIZE", 4)
    keys = [bytes([i]) * 8 + bytes([i + 1]) * 8 for i in range(2, 40, 2)]
    data = bytes(range(200))
    expected = {k: crypto_impl.mac_x919(k, data) for k in keys}

    def work(seed: int) -> bool:
        ok = True
        for j in range(200):
            k = keys[(seed * 7 + j) % len(keys)]
            ok &= crypto_impl.mac_x919(k, data) == expected[k]
            ok &= (
                crypto_impl.decrypt_pin_block(k, crypto_impl.encrypt_pin_block(k, "1234", PAN6, 0), PAN6, 0)
                == "1234"
            )
        return ok

    with ThreadPoolExecutor(4) as pool:
        assert all(pool.map(work, range(8)))
    assert crypto_impl.cached_key_count() <= 4 + 4  # bound holds up to one racing insert per thread
    crypto_impl.clear_key_cache()


PAN6 = "6212142000000000012"
