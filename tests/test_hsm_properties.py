"""Property tests of the simulator's command layer (in-process ``Hsm.handle``, no sockets).

* any request bytes give a well-formed reply (header echoed, reply code, known error code);
* CA/CC translate random PINs/PANs/formats correctly (checked with pycryptodome + psec);
* LMK storage round-trips every key type and scheme; M6/M8 agree with psec's MACs.
"""

from __future__ import annotations

import re
from unittest import mock

import psec.mac
import psec.pinblock
import pytest
from Crypto.Cipher import DES3
from hypothesis import given
from hypothesis import strategies as st

from _fastcore import crypto as fc
from hsm_sim import commands
from hsm_sim.commands import ERRORS, HANDLERS, Hsm
from hsm_sim.keystore import StoredKey
from hsm_sim.lmk import DEFAULT_LMK, KEY_TYPES, encrypt_under_lmk, random_key, set_odd_parity
from switch.hsm_client import account_number

pytestmark = pytest.mark.filterwarnings("ignore::cryptography.utils.CryptographyDeprecationWarning")

HSM = Hsm()
CODES = sorted(HANDLERS)

keys16 = st.binary(min_size=16, max_size=16).map(set_odd_parity).filter(lambda k: k[:8] != k[8:])
pans = st.text("0123456789", min_size=13, max_size=19)
pins = st.text("0123456789", min_size=4, max_size=12)


@given(st.binary(max_size=200))
def test_any_bytes_get_a_well_formed_reply(frame: bytes) -> None:
    reply = HSM.handle(frame)
    hl = len(frame[:4])  # frames shorter than the header echo what there is
    assert reply[:hl] == frame[:hl]
    assert reply[hl + 2 : hl + 4].decode() in ERRORS


@given(st.sampled_from(CODES), st.text(st.characters(max_codepoint=255), max_size=120))
def test_garbage_fields_for_every_command_get_an_error_code(code: str, fields: str) -> None:
    frame = b"HDR1" + code.encode() + fields.encode("latin-1")
    reply = HSM.handle(frame)
    assert reply[:6] == b"HDR1" + (code[0] + chr(ord(code[1]) + 1)).encode()
    assert reply[6:8].decode() in ERRORS


@given(keys16, keys16, pins, pans, st.sampled_from(["01", "47", "05", "03"]), st.sampled_from(["01", "47", "05"]))
def test_ca_translation_preserves_the_pin(tpk_c, zpk_c, pin, pan, sfmt, dfmt) -> None:
    tpk, zpk = encrypt_under_lmk(tpk_c, "TPK"), encrypt_under_lmk(zpk_c, "ZPK")
    acct = account_number(pan)
    clear = {
        "01": lambda: psec.pinblock.encode_pinblock_iso_0(pin, pan),
        "47": lambda: psec.pinblock.encode_pinblock_iso_3(pin, pan),
        "05": lambda: bytes.fromhex(f"1{len(pin):X}{pin}".ljust(16, "A")),
        "03": lambda: bytes.fromhex(pin.ljust(16, "F")),
    }[sfmt]()
    block = DES3.new(tpk_c, DES3.MODE_ECB).encrypt(clear).hex().upper()
    reply = HSM.handle(f"0000CA{tpk}{zpk}12{block}{sfmt}{dfmt}{acct}".encode())
    assert reply[4:8] == b"CB00", reply
    assert reply[8:10] == b"%02d" % len(pin) and reply[-2:] == dfmt.encode()
    out = DES3.new(zpk_c, DES3.MODE_ECB).decrypt(bytes.fromhex(reply[10:26].decode()))
    if dfmt == "01":
        assert psec.pinblock.decode_pinblock_iso_0(out, pan) == pin
    elif dfmt == "47":
        assert psec.pinblock.decode_pinblock_iso_3(out, pan) == pin
    else:
        text = out.hex().upper()
        assert text[0] == "1" and int(text[1], 16) == len(pin) and text[2 : 2 + len(pin)] == pin


@given(st.sampled_from(sorted(KEY_TYPES)), st.sampled_from([8, 16, 24]), st.sampled_from(["U", "X"]))
def test_lmk_round_trip_every_key_type(name: str, length: int, scheme: str) -> None:
    clear = random_key(length)
    field = encrypt_under_lmk(clear, name, scheme)
    assert DEFAULT_LMK.decrypt_key(field, name) == clear
    assert clear.hex().upper() not in field


@given(keys16, st.binary(max_size=64), st.sampled_from([1, 2, 3]))
def test_m6_x919_matches_psec(key: bytes, data: bytes, pad: int) -> None:
    zak = encrypt_under_lmk(key, "ZAK")
    reply = HSM.handle(f"0000M60003{pad}008{zak}{len(data):04X}".encode() + data)
    assert reply[4:8] == b"M700"
    want = psec.mac.generate_retail_mac(key[:8], key[8:], data, pad)
    assert bytes.fromhex(reply[8:].decode()) == want
    ok = HSM.handle(f"0000M80003{pad}008{zak}{len(data):04X}".encode() + data + reply[8:])
    assert ok[4:8] == b"M900"
    bad = HSM.handle(f"0000M80003{pad}008{zak}{len(data):04X}".encode() + data + b"0" * 16)
    assert bad[4:8] == (b"M901" if want != bytes(8) else b"M900")


_CA_TPK = encrypt_under_lmk(bytes.fromhex("0123456789ABCDEFFEDCBA9876543210"), "TPK")
_CA_ZPK = encrypt_under_lmk(bytes(range(1, 17)), "ZPK")
_CA_LAYOUT = re.compile(r"\d\d[0-9A-Fa-f]{16}(01|03|05|47)(01|03|05|47)\d{12}(%00)?(\x19.{0,32})?", re.S)
_ca_tail = st.one_of(
    st.text(st.sampled_from("0123456789ABCDEF%;\x19 Z"), max_size=45),
    st.builds(
        lambda ml, blk, sf, df, acct, extra: ml + blk + sf + df + acct + extra,
        st.sampled_from(["04", "12", "1X", ""]),
        st.text(st.sampled_from("0123456789ABCDEF "), min_size=15, max_size=17),
        st.sampled_from(["01", "47", "48", "99", "0"]),
        st.sampled_from(["01", "05", "03", "4"]),
        st.text(st.sampled_from("0123456789"), min_size=10, max_size=13),
        st.sampled_from(["", "%00", "%01", "\x19abc", "X"]),
    ),
)


@given(_ca_tail)
def test_ca_accepts_only_the_documented_layout(tail: str) -> None:
    reply = HSM.handle(f"0000CA{_CA_TPK}{_CA_ZPK}{tail}".encode("latin-1"))
    code = reply[6:8].decode()
    if code == "00":  # accepted: the tail is exactly the layout
        assert _CA_LAYOUT.fullmatch(tail), (tail, reply)
    elif code in ("20", "24"):  # fields parsed, PIN rejected (leftover data is checked only on success)
        assert _CA_LAYOUT.match(tail[:34] + "%00"), (tail, reply)
    else:
        assert code in ("15", "23", "13", "69"), (tail, reply)


# -- fast paths: the sale's commands (M6/M8 alg 91, CA/CC, EC/DC) answered without the Fields cursor


def _general_reply(hsm: Hsm, frame: bytes) -> bytes:
    with mock.patch.dict(commands._FAST, clear=True):
        return hsm.handle(frame)


def _fast_bases() -> list[bytes]:
    tak_c, tpk_c, zpk_c, pvk_c = (set_odd_parity(bytes([i]) * 8 + bytes([i + 16]) * 8) for i in (2, 4, 6, 8))
    tak, tpk, zpk, pvk = (encrypt_under_lmk(k, t) for k, t in ((tak_c, "TAK"), (tpk_c, "TPK"), (zpk_c, "ZPK"), (pvk_c, "PVK")))
    zak1 = encrypt_under_lmk(set_odd_parity(bytes(range(8))), "ZAK")  # single length, 16-hex form
    pan, pin = "6212345678901234", "123456"
    acct = account_number(pan)
    pan13 = acct + "0"
    data = b"0200\x00\x19%;K" + bytes(range(40))
    mac = fc.mac_pos_ecb(tak_c, data)
    out = []
    for key, kt in ((tak, "003"), (zak1, "008"), ("K001", "003"), ("UK001", "003")):
        out.append(f"0001M60091{0}{kt}{key}{len(data):04X}".encode() + data)
        out.append(f"0002M80091{1}{kt}{key}{len(data):04X}".encode() + data + mac)
    out.append(f"0003M80091{3}003{tak}{len(data):04X}".encode() + data + b"00000000")
    for fmt, ffmt in (("01", 0), ("03", 3624), ("47", 3), ("05", 1)):
        tblk = fc.encrypt_pin_block(tpk_c, pin, pan13, ffmt).hex().upper()
        zblk = fc.encrypt_pin_block(zpk_c, pin, pan13, ffmt).hex().upper()
        out.append(f"0004CA{tpk}{zpk}12{tblk}{fmt}01{acct}".encode())
        out.append(f"0005CC{zpk}{zpk}06{zblk}{fmt}03{acct}".encode())
        pvv = fc.visa_pvv(pvk_c, pan13, "1", pin)
        out.append(f"0006EC{zpk}{pvk}{zblk}{fmt}{acct}1{pvv}".encode())
        out.append(f"0007DC{tpk}{pvk}{tblk}{fmt}{acct}1{int(pvv) ^ 1:04d}".encode())
    # errors found after the fields parse: PIN longer than the maximum (24), block under another key (20)
    out.append(f"0008CA{tpk}{zpk}05{tblk}{fmt}01{acct}".encode())
    out.append(f"0009CA{zpk}{zpk}12{tblk}{fmt}01{acct}".encode())
    out.append(f"0010EC{zpk}{pvk}{tblk}{fmt}{acct}1{pvv}".encode())
    out.append(f"0011EC{zpk}{encrypt_under_lmk(pvk_c[:8], 'PVK')}{zblk}{fmt}{acct}1{pvv}".encode())  # 27
    HSM.keystore.put("001", StoredKey(tak, "003", "000000"))
    return out


FAST_BASES = _fast_bases()


def test_fast_paths_answer_the_valid_sale_commands() -> None:
    for frame in FAST_BASES:
        general = _general_reply(HSM, frame)  # also fills the key cache
        text = frame[4:].decode("latin-1")
        fast = commands._FAST[text[:2]](HSM, text)
        if b"K001" in frame or general[6:8] not in (b"00", b"01"):  # stored keys, errors: general path
            assert fast is None, (frame, fast, general)
        else:
            assert fast is not None and frame[:4] + fast == general, (frame, fast, general)
    assert sum(HSM.handle(f)[6:8] == b"00" for f in FAST_BASES) > len(FAST_BASES) // 2


def _same_reply(frame: bytes, fast: bytes, general: bytes) -> bool:
    text = frame[4:].decode("latin-1")
    if general[6:8] == b"00" and text[:2] in ("CA", "CC") and general[-2:] in (b"05", b"47"):
        # ISO 1/3 output blocks carry random fill: compare all but the block
        return (fast[:10], fast[-2:], len(fast)) == (general[:10], general[-2:], len(general))
    return fast == general


def test_fast_paths_reply_as_the_general_path_to_every_one_character_edit() -> None:
    frames = [
        base[:i] + bytes([c]) + base[i + 1 :] for base in FAST_BASES for i in range(4, len(base)) for c in b"019AfKUZ %\x19\xe9"
    ]
    with mock.patch.dict(commands._FAST, clear=True):
        general = [HSM.handle(f) for f in frames]
    for frame, want in zip(frames, general, strict=True):
        got = HSM.handle(frame)
        assert _same_reply(frame, got, want), (frame, got, want)


_EDIT_CHARS = st.sampled_from(list("0123456789ABCDEFabcdef KUXTYZ%;\x19\x00\xe9-"))


@given(
    st.sampled_from(FAST_BASES),
    st.lists(st.tuples(st.floats(0, 1, exclude_max=True), _EDIT_CHARS), max_size=3),
    st.one_of(st.none(), st.floats(0, 1)),
    st.sampled_from(["", "%00", "%01", "\x19trailer", "0", "00000000", "F" * 16]),
)
def test_fast_paths_reply_as_the_general_path(base: bytes, edits, cut, suffix: str) -> None:
    """Whatever the request, the fast path answers byte for byte as the general handler (or not at all)."""
    frame = bytearray(base)
    for where, ch in edits:
        frame[4 + int(where * (len(frame) - 4))] = ord(ch)
    if cut is not None:
        del frame[4 + int(cut * (len(frame) - 4)) :]
    frame = bytes(frame) + suffix.encode("latin-1")
    general = _general_reply(HSM, frame)
    fast = HSM.handle(frame)
    assert _same_reply(frame, fast, general), (frame, fast, general)
