"""Offline data authentication: SDA and DDA between the kernel and the software card's test PKI."""

from __future__ import annotations

import datetime

import pytest
from pyemv import tlv as pyemv_tlv

from terminal_bridge import emv_tlv
from terminal_bridge.apdu import DirectTransport
from terminal_bridge.drivers.softcard import CardProfile, SoftCard
from terminal_bridge.drivers.test_pki import TEST_CAPK
from terminal_bridge.emv import EmvKernel, TerminalParams
from terminal_bridge.oda import Capk

pytestmark = pytest.mark.filterwarnings("ignore:.*TripleDES.*")
NOW = datetime.datetime(2026, 11, 22, 10, 0)
WITH_CAPK = TerminalParams(capks=(TEST_CAPK,))


def run(card: SoftCard, params: TerminalParams = WITH_CAPK):
    k = EmvKernel(DirectTransport(card), params, clock=lambda: NOW)
    txn = k.start(100)
    k.first_generate_ac(txn)
    return txn, pyemv_tlv.decode(txn.field55, flatten=True)


@pytest.mark.parametrize("mode", ["sda", "dda"])
def test_oda_succeeds(mode: str) -> None:
    card = SoftCard(CardProfile(oda=mode))
    txn, d = run(card)
    assert txn.oda_result == mode
    assert d["95"][0] == 0x00  # no ODA bit set in TVR byte 1
    assert txn.tags["9B"][0] & 0x80  # TSI: ODA performed
    assert d["82"][0] & (0x20 if mode == "dda" else 0x40)
    if mode == "dda":
        assert any(a[1] == 0x88 for a in card.log)  # INTERNAL AUTHENTICATE with the UN
        assert txn.tags["9F4C"][:2] == d["9F36"]  # ICC dynamic number starts with the ATC
    else:
        assert not any(a[1] == 0x88 for a in card.log)


def test_no_oda_card_marks_not_performed() -> None:
    txn, d = run(SoftCard())
    assert txn.oda_result == "not performed" and d["95"][0] == 0x80


@pytest.mark.parametrize(("mode", "bit"), [("sda", 0x40), ("dda", 0x08)])
def test_missing_capk_fails_oda_but_goes_online(mode: str, bit: int) -> None:
    txn, d = run(SoftCard(CardProfile(oda=mode)), TerminalParams())
    assert txn.oda_result.startswith("failed: no CA public key A000000333/F1")
    assert d["95"][0] == bit and txn.online_requested


def test_wrong_capk_modulus() -> None:
    other = Capk(TEST_CAPK.rid, TEST_CAPK.index, bytes.fromhex("C3") + TEST_CAPK.modulus[1:], b"\x03")
    txn, d = run(SoftCard(CardProfile(oda="dda")), TerminalParams(capks=(other,)))
    assert txn.oda_result.startswith("failed: issuer certificate") and d["95"][0] == 0x08


class _AlteredRecord(SoftCard):
    """Changes a signed record after personalisation (e.g. a cloned card with another expiry)."""

    def process(self, apdu: bytes) -> bytes:
        resp = super().process(apdu)
        if apdu[1] == 0xB2 and apdu[2] == 1 and apdu[3] == 0x0C:
            return resp.replace(b"ZHANG/SAN", b"ZHANG/SAM")
        return resp


@pytest.mark.parametrize(("mode", "bit", "reason"), [
    ("sda", 0x40, "signed static application data hash mismatch"),
    ("dda", 0x08, "ICC certificate hash mismatch"),
])
def test_altered_static_data_is_detected(mode: str, bit: int, reason: str) -> None:
    txn, d = run(_AlteredRecord(CardProfile(oda=mode)))
    assert txn.oda_result == f"failed: {reason}" and d["95"][0] == bit


class _Replayer(SoftCard):
    """Answers INTERNAL AUTHENTICATE with a signature made for another unpredictable number."""

    def process(self, apdu: bytes) -> bytes:
        if apdu[1] == 0x88:
            apdu = apdu[:5] + b"\x00\x00\x00\x00" + apdu[9:]
        return super().process(apdu)


def test_dda_replayed_signature_is_rejected() -> None:
    txn, d = run(_Replayer(CardProfile(oda="dda")))
    assert txn.oda_result == "failed: signed dynamic application data hash mismatch" and d["95"][0] == 0x08


class _NoCertificate(SoftCard):
    def process(self, apdu: bytes) -> bytes:
        resp = super().process(apdu)
        if apdu[1] == 0xB2 and apdu[3] == 0x14:  # SFI 2 records: drop tag 93
            record = next(emv_tlv.iter_tlv(resp[:-2]))[1]
            inner = b"".join(emv_tlv.tl(t, v) for t, v, _, _ in emv_tlv.iter_tlv(record) if t != "93")
            return emv_tlv.tl("70", inner) + b"\x90\x00"
        return resp


def test_missing_signed_data_sets_icc_data_missing() -> None:
    txn, d = run(_NoCertificate(CardProfile(oda="sda")))
    assert txn.oda_result == "failed: missing 93" and d["95"][0] == 0x60  # ICC data missing + SDA failed


def test_expired_issuer_certificate() -> None:
    k = EmvKernel(DirectTransport(SoftCard(CardProfile(oda="sda"))), WITH_CAPK,
                  clock=lambda: datetime.datetime(2031, 1, 5))
    txn = k.start(1)
    assert txn.oda_result == "failed: issuer certificate expired 1230"


def test_cda_signature_on_the_arqc() -> None:
    from pyemv import ac, kd

    from terminal_bridge.drivers.softcard import TEST_IMK_AC

    card = SoftCard(CardProfile(oda="cda"))
    txn, d = run(card)
    assert txn.oda_result == "cda" and d["95"][0] == 0x00 and d["82"][0] & 0x01
    gac = [a for a in card.log if a[1] == 0xAE][0]
    assert gac[2] == 0x90  # ARQC with CDA requested
    assert not any(a[1] == 0x88 for a in card.log)  # no INTERNAL AUTHENTICATE with CDA
    # the AC recovered from the signature is the ARQC the issuer verifies
    mk = kd.derive_icc_mk_a(TEST_IMK_AC, txn.card.pan, txn.card.psn)
    sk = kd.derive_common_sk(mk, d["9F36"] + b"\0\0" + d["9F37"])
    data = b"".join(d[t] for t in ("9F02", "9F03", "9F1A", "95", "5F2A", "9A", "9C", "9F37", "82", "9F36", "9F10"))
    assert ac.generate_ac(sk, data) == d["9F26"]


class _CdaTamper(SoftCard):
    def __init__(self, how: str) -> None:
        super().__init__(CardProfile(oda="cda"))
        self.how = how

    def process(self, apdu: bytes) -> bytes:
        resp = super().process(apdu)
        if apdu[1] == 0xAE and resp[-2:] == b"\x90\x00":
            if self.how == "iad":  # unsigned data changed after signing: hash mismatch
                return resp.replace(bytes.fromhex("9F100807010A"), bytes.fromhex("9F100807020A"))
            if self.how == "sig":  # signature damaged: nothing can be recovered
                i = resp.find(bytes.fromhex("9F4B")) + 10
                return resp[:i] + bytes([resp[i] ^ 0xFF]) + resp[i + 1 :]
        return resp


def test_cda_transaction_data_changed() -> None:
    txn, d = run(_CdaTamper("iad"))
    assert txn.oda_result == "failed: transaction data hash mismatch"
    assert d["95"][0] == 0x04 and len(d["9F26"]) == 8  # CDA failed, still online with the signed AC


def test_cda_broken_signature_stops_the_card_read() -> None:
    from terminal_bridge.devices import CardReadError

    k = EmvKernel(DirectTransport(_CdaTamper("sig")), WITH_CAPK, clock=lambda: NOW)
    txn = k.start(100)
    with pytest.raises(CardReadError, match="CDA failed and no cryptogram can be recovered"):
        k.first_generate_ac(txn)
    assert txn.tags["95"][0] & 0x04
