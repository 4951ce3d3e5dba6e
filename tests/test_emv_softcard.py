"""EMV flow: terminal kernel against the software card in process (contact, contactless, T=0).

The ARQC/TC are checked with pyemv as an independent oracle, using the key and
data convention ``issuer_sim`` verifies (IMK-AC test key, option A, common
session key with R = ATC||0000||UN, data 9F02 9F03 9F1A 95 5F2A 9A 9C 9F37 82
9F36 9F10, ARPC method 1 with the ICC master key as the HSM's KQ does).
"""

from __future__ import annotations

import datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pyemv import ac, kd
from pyemv import tlv as pyemv_tlv

from terminal_bridge import emv_crypto, emv_tlv
from terminal_bridge.apdu import ApduError, DirectTransport, exchange
from terminal_bridge.devices import CardReadError, EntryMode
from terminal_bridge.drivers.softcard import TEST_IMK_AC, CardProfile, SoftCard
from terminal_bridge.emv import REQUEST_MANDATORY, REQUEST_TAGS, EmvKernel, build_field55

pytestmark = pytest.mark.filterwarnings("ignore:.*TripleDES.*")

NOW = datetime.datetime(2026, 11, 22, 10, 30, 0)
UN = bytes.fromhex("1A2B3C4D")
ARQC_DATA_ORDER = ["9F02", "9F03", "9F1A", "95", "5F2A", "9A", "9C", "9F37", "82", "9F36", "9F10"]


def make(t0: bool = False, contactless: bool = False, card_contactless: bool | None = None, **profile):
    card = SoftCard(CardProfile(**profile), t0=t0,
                    contactless=contactless if card_contactless is None else card_contactless)
    kernel = EmvKernel(DirectTransport(card), contactless=contactless, clock=lambda: NOW,
                       unpredictable=lambda n: UN[:n])
    return card, kernel


def oracle_sk(pan: str, psn: str, atc: bytes, un: bytes) -> bytes:
    mk = kd.derive_icc_mk_a(TEST_IMK_AC, pan, psn)
    return kd.derive_common_sk(mk, atc + b"\x00\x00" + un)


def issuer_reply(f55: bytes, pan: str, psn: str, arc: bytes = b"00") -> tuple[bytes, bytes]:
    """What issuer_sim does: verify the ARQC, answer 91 = ARPC || ARC.  Returns (reply 55, ARQC)."""
    d = pyemv_tlv.decode(f55, flatten=True)
    sk = oracle_sk(pan, psn, d["9F36"], d["9F37"])
    arqc = ac.generate_ac(sk, b"".join(d[t] for t in ARQC_DATA_ORDER))
    assert arqc == d["9F26"], "ARQC does not verify with the issuer convention"
    mk = kd.derive_icc_mk_a(TEST_IMK_AC, pan, psn)
    return pyemv_tlv.encode({"91": ac.generate_arpc_1(mk, arqc, arc) + arc}), arqc


def test_crypto_backend_known_answers() -> None:
    """payment-crypto.md EMV-1/EMV-2/EMV-3 through whichever backend the card uses."""
    mk = emv_crypto.icc_master_key(TEST_IMK_AC, "9901234567890123", "45")
    assert emv_crypto._kcv(mk) == "1DA5"
    sk = bytes(kd.derive_common_sk(mk, bytes.fromhex("1234567890123456")))
    assert emv_crypto._kcv(sk) == "0995"
    assert emv_crypto.session_key(mk, bytes.fromhex("1234"), bytes.fromhex("90123456")) == kd.derive_common_sk(
        mk, bytes.fromhex("1234000090123456"))
    arqc = emv_crypto.application_cryptogram(sk, bytes.fromhex("0123456789ABCDEF0123456789ABCDEF"))
    assert arqc.hex().upper() == "4B46013359B7A58B"
    assert emv_crypto.arpc_method1(mk, arqc, b"\x00\x00").hex().upper() == "F8C9CECAABD55AD1"


@pytest.mark.parametrize("t0", [False, True], ids=["t1", "t0"])
def test_contact_sale_approved(t0: bool) -> None:
    card, k = make(t0=t0)
    txn = k.start(1234, sequence=42)
    c = txn.card
    assert (c.pan, c.psn, c.expiry, c.entry_mode) == ("6212345678901232", "01", "3012", EntryMode.CHIP)
    assert c.track2 == "6212345678901232=301222000000"
    assert c.aid == "A000000333010101" and c.app_label == "UnionPay Debit"
    f55 = k.first_generate_ac(txn, pin_entered=True)
    assert txn.online_requested and c.icc_data == f55

    d = pyemv_tlv.decode(f55, flatten=True)  # independent decoder
    assert set(REQUEST_MANDATORY) <= set(d)
    assert list(d) == [t for t in REQUEST_TAGS if t in d]  # §11 order
    assert d["9F02"] == bytes.fromhex("000000001234") and d["9F03"] == bytes(6)
    assert d["5F2A"] == d["9F1A"] == bytes.fromhex("0156")
    assert d["9A"] == bytes.fromhex("261122") and d["9C"] == b"\x00" and d["9F37"] == UN
    assert d["9F27"] == b"\x80" and d["9F36"] == b"\x00\x01" and d["82"] == bytes.fromhex("1C00")
    assert d["9F34"] == bytes.fromhex("420300") and d["95"][2] & 0x04  # online PIN
    assert d["84"] == bytes.fromhex("A000000333010101") and d["9F41"] == bytes.fromhex("00000042")
    assert d["9F1E"] == b"POS00001"

    reply, _ = issuer_reply(f55, c.pan, c.psn)
    done = k.second_generate_ac(txn, "00", reply)
    assert done.approved and done.cid == 0x40 and done.reversal_reason is None and done.issuer_authenticated
    # the TC uses the same convention (CDOL2 values, CVR updated) and is in the TC-upload set
    tc = pyemv_tlv.decode(done.tc_field55, flatten=True)
    sk = oracle_sk(c.pan, c.psn, tc["9F36"], tc["9F37"])
    assert ac.generate_ac(sk, b"".join(({**d, **tc})[t] for t in ARQC_DATA_ORDER)) == tc["9F26"]
    assert set(pyemv_tlv.decode(done.reversal_field55, flatten=True)) == {"95", "9F1E", "9F10", "9F36"}
    if t0:
        ins = [a[1] for a in card.log]
        assert 0xC0 in ins  # GET RESPONSE after 61xx
        rr = [a for a in card.log if a[1] == 0xB2]
        assert any(a[-1] == 0 for a in rr) and any(a[-1] != 0 for a in rr)  # 6Cxx -> resent with Le = xx


def test_contactless_uses_ppse_and_entry_mode_07() -> None:
    card, k = make(contactless=True)
    txn = k.start(500)
    k.first_generate_ac(txn)
    assert txn.card.entry_mode == EntryMode.CONTACTLESS and txn.card.entry_mode.value == "07"
    assert card.log[0][5:19] == b"2PAY.SYS.DDF01"
    reply, _ = issuer_reply(txn.field55, txn.card.pan, txn.card.psn)
    assert k.second_generate_ac(txn, "00", reply).approved


def test_contactless_reader_with_contact_only_card() -> None:
    _, k = make(contactless=True, card_contactless=False)
    with pytest.raises(ApduError, match="SELECT PPSE failed with SW 6A82"):
        k.start(500)


def test_wrong_arpc_card_declines_and_asks_for_reversal() -> None:
    _, k = make()
    txn = k.start(1000)
    k.first_generate_ac(txn)
    reply, arqc = issuer_reply(txn.field55, txn.card.pan, txn.card.psn)
    tampered = bytearray(pyemv_tlv.decode(reply)["91"])
    tampered[0] ^= 1
    done = k.second_generate_ac(txn, "00", pyemv_tlv.encode({"91": bytes(tampered)}))
    assert done.cid == 0x00 and not done.approved
    assert done.reversal_reason == "06" and done.issuer_authenticated is False


def test_arpc_for_other_arc_is_rejected() -> None:
    """An ARPC computed for ARC '51' must not authenticate an approval ('00' in field 39)."""
    _, k = make()
    txn = k.start(1000)
    k.first_generate_ac(txn)
    reply, _ = issuer_reply(txn.field55, txn.card.pan, txn.card.psn, arc=b"51")
    done = k.second_generate_ac(txn, "00", reply)
    assert not done.approved and done.reversal_reason == "06"


def test_host_decline_and_no_answer() -> None:
    _, k = make()
    txn = k.start(1000)
    k.first_generate_ac(txn)
    reply, _ = issuer_reply(txn.field55, txn.card.pan, txn.card.psn, arc=b"51")
    done = k.second_generate_ac(txn, "51", reply)
    assert done.cid == 0x00 and not done.approved and done.reversal_reason is None and done.issuer_authenticated

    _, k2 = make()
    txn2 = k2.start(1000)
    k2.first_generate_ac(txn2)
    done2 = k2.second_generate_ac(txn2, None, None)
    assert done2.cid == 0x00 and done2.issuer_authenticated is None and done2.reversal_reason is None


def test_atc_increments_per_transaction_and_keys_follow_pan_psn() -> None:
    card, k = make(pan="6212340000000000006", psn="02")
    atcs = []
    for _ in range(3):
        txn = k.start(1)
        k.first_generate_ac(txn)
        issuer_reply(txn.field55, "6212340000000000006", "02")  # asserts the ARQC verifies
        atcs.append(txn.tags["9F36"])
        card.reset()
    assert atcs == [b"\x00\x01", b"\x00\x02", b"\x00\x03"]


def test_arqc_does_not_verify_under_other_imk() -> None:
    _, k = make(imk_ac=bytes.fromhex("00112233445566778899AABBCCDDEEFF"))
    txn = k.start(1)
    k.first_generate_ac(txn)
    with pytest.raises(AssertionError, match="ARQC does not verify"):
        issuer_reply(txn.field55, txn.card.pan, txn.card.psn)


def test_card_status_words() -> None:
    card = SoftCard()
    assert card.process(bytes.fromhex("80A8000002830000"))[-2:] == b"\x69\x85"  # GPO before SELECT
    assert card.process(bytes.fromhex("00A404000EFF"))[-2:] == b"\x67\x00"  # Lc mismatch
    assert card.process(bytes.fromhex("00A4040008A00000033301019900"))[-2:] == b"\x6a\x82"
    assert card.process(bytes.fromhex("0020008000"))[-2:] == b"\x6d\x00"
    assert card.process(bytes.fromhex("B0B2010C00"))[-2:] == b"\x6e\x00"
    assert card.process(bytes.fromhex("00A4040008A00000033301010100"))[-2:] == b"\x90\x00"
    assert card.process(bytes.fromhex("80A80000028300"))[-2:] == b"\x67\x00"  # PDOL wants 2 bytes
    assert card.process(bytes.fromhex("00B2030C00"))[-2:] == b"\x6a\x83"
    assert card.process(bytes.fromhex("80AE8000021234"))[-2:] == b"\x69\x85"  # GAC before GPO


class _BrokenCard(SoftCard):
    def process(self, apdu: bytes) -> bytes:
        resp = super().process(apdu)
        if apdu[1] == 0xB2 and apdu[2] == 2:
            return resp[:30] + b"\x90\x00"  # record 2 truncated inside a tag
        return resp


def test_malformed_record_names_tag_and_offset() -> None:
    k = EmvKernel(DirectTransport(_BrokenCard()), clock=lambda: NOW)
    with pytest.raises(CardReadError, match=r"READ RECORD 1/2: card answer is malformed .*tag 70"):
        k.start(1)


def test_field55_missing_mandatory_tag() -> None:
    with pytest.raises(CardReadError, match="missing mandatory tag.*9F26"):
        build_field55({"95": bytes(5)}, "request")
    assert emv_tlv.decode(build_field55({"9F36": b"\x00\x07", "95": bytes(5)}, "reversal")) == {
        "95": bytes(5), "9F36": b"\x00\x07"}


def test_exchange_follows_61xx_chains() -> None:
    class Chunky:
        def __init__(self) -> None:
            self.rest = bytes(range(40))

        def transmit(self, apdu: bytes) -> bytes:
            if apdu[1] != 0xC0:
                return b"\x61\x10"
            chunk, self.rest = self.rest[: apdu[4]], self.rest[apdu[4] :]
            return chunk + (bytes([0x61, min(16, len(self.rest))]) if self.rest else b"\x90\x00")

    data, sw = exchange(Chunky(), bytes.fromhex("80A8000002830000"))
    assert data == bytes(range(40)) and sw == b"\x90\x00"


def test_no_pan_in_reprs() -> None:
    _, k = make()
    txn = k.start(1)
    assert "6212345678901232" not in repr(txn) and "6212345678901232" not in repr(txn.card)


def test_arpc_key_option_session() -> None:
    """CardProfile.arpc_key: an ARPC under the ICC MK does not authenticate a card set to the session key."""
    _, k = make(arpc_key="session")
    txn = k.start(1000)
    k.first_generate_ac(txn)
    reply, _ = issuer_reply(txn.field55, txn.card.pan, txn.card.psn)
    assert k.second_generate_ac(txn, "00", reply).reversal_reason == "06"
    _, k = make(arpc_key="session")
    txn = k.start(1000)
    k.first_generate_ac(txn)
    d = pyemv_tlv.decode(txn.field55, flatten=True)
    sk = oracle_sk(txn.card.pan, txn.card.psn, d["9F36"], d["9F37"])
    good = pyemv_tlv.encode({"91": ac.generate_arpc_1(sk, d["9F26"], b"00") + b"00"})
    assert k.second_generate_ac(txn, "00", good).approved


@settings(max_examples=40)
@given(pan=st.text("0123456789", min_size=13, max_size=19), psn=st.integers(0, 99),
       amount=st.integers(0, 10**12 - 1), other=st.integers(0, 10**6), txn_type=st.sampled_from(["00", "31", "03"]),
       un=st.binary(min_size=4, max_size=4), t0=st.booleans(), approve=st.booleans(),
       oda=st.sampled_from(["none", "sda", "dda", "cda"]))
def test_property_any_card_any_amount(pan: str, psn: int, amount: int, other: int, txn_type: str, un: bytes,
                                      t0: bool, approve: bool, oda: str) -> None:
    """For any PAN/PSN/amount/ODA mode the card data reads back, ODA passes, the ARQC verifies with
    pyemv, and the 2nd GENERATE AC follows the host decision."""
    from terminal_bridge.drivers.test_pki import TEST_CAPK
    from terminal_bridge.emv import TerminalParams

    card = SoftCard(CardProfile(pan=pan, psn=f"{psn:02d}", oda=oda), t0=t0)
    k = EmvKernel(DirectTransport(card), TerminalParams(capks=(TEST_CAPK,)), clock=lambda: NOW,
                  unpredictable=lambda n: un)
    txn = k.start(amount, other_fen=other, txn_type=txn_type)
    assert txn.oda_result == {"none": "not performed", "cda": "cda pending"}.get(oda, oda)
    assert (txn.card.pan, txn.card.psn) == (pan, f"{psn:02d}")
    assert txn.card.track2 is not None and txn.card.track2.startswith(pan + "=3012")
    f55 = k.first_generate_ac(txn)
    assert txn.oda_result == ("not performed" if oda == "none" else oda)
    d = pyemv_tlv.decode(f55, flatten=True)
    assert d["9F02"].hex() == f"{amount:012d}" and d["9F03"].hex() == f"{other:012d}"
    assert d["9C"].hex() == txn_type and d["9F37"] == un
    rc = "00" if approve else "51"
    reply, _ = issuer_reply(f55, pan, f"{psn:02d}", arc=rc.encode())
    done = k.second_generate_ac(txn, rc, reply)
    assert done.approved is approve and done.cid == (0x40 if approve else 0x00)
    assert done.issuer_authenticated and done.reversal_reason is None


class _GreedyCard(SoftCard):
    """A card whose FCI and records try to overwrite terminal data (amount, UN, country)."""

    def process(self, apdu: bytes) -> bytes:
        resp = super().process(apdu)
        if apdu[1] in (0xA4, 0xB2) and resp[-2:] == b"\x90\x00" and resp[:1] in (b"\x6f", b"\x70"):
            extra = emv_tlv.tl("9F02", bytes.fromhex("999999999999")) + emv_tlv.tl("9F37", b"\xff" * 4)
            inner = next(emv_tlv.iter_tlv(resp[:-2]))[1] + extra
            return emv_tlv.tl(resp[:1].hex(), inner) + b"\x90\x00"
        return resp


def test_card_cannot_override_terminal_data() -> None:
    k = EmvKernel(DirectTransport(_GreedyCard()), clock=lambda: NOW, unpredictable=lambda n: UN[:n])
    txn = k.start(1234)
    assert txn.tags["9F02"] == bytes.fromhex("000000001234") and txn.tags["9F37"] == UN
    assert txn.card.entry_mode == EntryMode.CHIP


def _script(sk_smi: bytes, cla_ins: str, p1p2: str, data: bytes, atc: bytes, arqc: bytes) -> bytes:
    """An issuer script command with a 4-byte MAC computed by pyemv (the oracle)."""
    from pyemv import sm

    header = bytes.fromhex(cla_ins + p1p2) + bytes([len(data) + 4])
    return header + data + sm.generate_command_mac(sk_smi, header + atc + arqc + data)[:4]


def _smi_key(pan: str, psn: str, arqc: bytes) -> bytes:
    return kd.derive_common_sk(kd.derive_icc_mk_a(TEST_IMK_AC, pan, psn), arqc)


def test_issuer_scripts_block_then_unblock() -> None:
    card, k = make()
    txn = k.start(1000)
    f55 = k.first_generate_ac(txn)
    reply, arqc = issuer_reply(f55, txn.card.pan, txn.card.psn)
    d = pyemv_tlv.decode(f55, flatten=True)
    sk = _smi_key(txn.card.pan, txn.card.psn, arqc)
    put = _script(sk, "04DA", "9F58", b"\x05", d["9F36"], arqc)
    block = _script(sk, "841E", "0000", b"", d["9F36"], arqc)
    t71 = emv_tlv.tl("71", emv_tlv.tl("9F18", bytes.fromhex("00000001")) + emv_tlv.tl("86", put))
    t72 = emv_tlv.tl("72", emv_tlv.tl("9F18", bytes.fromhex("00000002")) + emv_tlv.tl("86", block))
    done = k.second_generate_ac(txn, "00", reply + t71 + t72)
    assert done.approved
    assert done.script_results == bytes.fromhex("2000000001" "2000000002")
    assert card.data_objects == {"9F58": b"\x05"} and card.blocked
    assert pyemv_tlv.decode(done.tc_field55, flatten=True)["DF31"] == done.script_results
    assert pyemv_tlv.decode(done.reversal_field55, flatten=True)["DF31"] == done.script_results

    card.reset()
    with pytest.raises(CardReadError, match="application is blocked"):
        k.start(1)
    card.blocked = False  # (unblock goes through a script below, on a fresh session)
    card.reset()
    txn = k.start(1)
    f55 = k.first_generate_ac(txn)
    reply, arqc = issuer_reply(f55, txn.card.pan, txn.card.psn)
    card.blocked = True  # blocked by an earlier script in a real life: UNBLOCK arrives now
    d = pyemv_tlv.decode(f55, flatten=True)
    unblock = _script(_smi_key(txn.card.pan, txn.card.psn, arqc), "8418", "0000", b"", d["9F36"], arqc)
    done = k.second_generate_ac(txn, "00", reply + emv_tlv.tl("72", emv_tlv.tl("86", unblock)))
    assert done.script_results == bytes.fromhex("2000000000") and not card.blocked


def test_issuer_script_with_bad_mac_fails_and_sets_tvr() -> None:
    card, k = make()
    txn = k.start(1000)
    f55 = k.first_generate_ac(txn)
    reply, arqc = issuer_reply(f55, txn.card.pan, txn.card.psn)
    d = pyemv_tlv.decode(f55, flatten=True)
    good = _script(_smi_key(txn.card.pan, txn.card.psn, arqc), "04DA", "9F58", b"\x07", d["9F36"], arqc)
    bad = bytearray(_script(_smi_key(txn.card.pan, txn.card.psn, arqc), "841E", "0000", b"", d["9F36"], arqc))
    bad[-1] ^= 0xFF
    t72 = emv_tlv.tl("72", emv_tlv.tl("9F18", b"\x00\x00\x00\x09") + emv_tlv.tl("86", good) + emv_tlv.tl("86", bytes(bad)))
    done = k.second_generate_ac(txn, "00", reply + t72)
    assert done.approved  # scripts do not change the outcome
    assert done.script_results == bytes.fromhex("1200000009")  # failed at command 2
    assert not card.blocked and card.data_objects == {"9F58": b"\x07"}
    assert pyemv_tlv.decode(done.tc_field55, flatten=True)["95"][4] & 0x20  # failed after final GAC


class _FlakyCard(SoftCard):
    """Corrupts one answer: truncation, a flipped byte or garbage, chosen by the test."""

    def __init__(self, victim: int, mode: int, pos: int, byte: int) -> None:
        super().__init__()
        self.victim, self.mode, self.pos, self.byte = victim, mode, pos, byte
        self.n = 0

    def process(self, apdu: bytes) -> bytes:
        resp = super().process(apdu)
        self.n += 1
        if self.n != self.victim or len(resp) < 3:
            return resp
        body, sw = bytearray(resp[:-2]), resp[-2:]
        i = self.pos % len(body)
        if self.mode == 0:
            body = body[:i]
        elif self.mode == 1:
            body[i] ^= self.byte or 1
        else:
            body[i:] = bytes([self.byte]) * (len(body) - i)
        return bytes(body) + sw


@settings(max_examples=150)
@given(victim=st.integers(1, 7), mode=st.integers(0, 2), pos=st.integers(0, 300), byte=st.integers(0, 255))
def test_property_corrupt_card_answers_give_clear_errors(victim: int, mode: int, pos: int, byte: int) -> None:
    """Whatever one corrupted card answer looks like, the kernel either completes or raises CardReadError."""
    k = EmvKernel(DirectTransport(_FlakyCard(victim, mode, pos, byte)), clock=lambda: NOW)
    try:
        txn = k.start(100)
        k.first_generate_ac(txn)
        k.second_generate_ac(txn, "00", None)
    except CardReadError as exc:
        assert str(exc)


@settings(max_examples=100)
@given(apdus=st.lists(st.binary(min_size=0, max_size=40), min_size=1, max_size=8), t0=st.booleans(),
       oda=st.sampled_from(["none", "dda"]))
def test_property_card_answers_any_apdu_with_a_status_word(apdus: list[bytes], t0: bool, oda: str) -> None:
    card = SoftCard(CardProfile(oda=oda), t0=t0)
    card.process(bytes.fromhex("00A4040008A00000033301010100"))
    for apdu in apdus:
        resp = card.process(apdu)
        assert len(resp) >= 2 and resp[-2] in (0x90, 0x61, 0x6C, 0x62, 0x67, 0x69, 0x6A, 0x6D, 0x6E)
