"""Property tests of the simulator's command layer (in-process ``Hsm.handle``, no sockets).

* any request bytes give a well-formed reply (header echoed, reply code, known error code);
* CA/CC translate random PINs/PANs/formats correctly (checked with pycryptodome + psec);
* LMK storage round-trips every key type and scheme; M6/M8 agree with psec's MACs.
"""

from __future__ import annotations

import re

import psec.mac
import psec.pinblock
import pytest
from Crypto.Cipher import DES3
from hypothesis import given
from hypothesis import strategies as st

from hsm_sim.commands import ERRORS, HANDLERS, Hsm
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
