"""issuer_sim PIN and chip checks through the real HSM simulator (hsm_sim, in process, over TCP).

PIN verification data (PVV, IBM offset), PIN blocks and ARQCs are produced by independent libraries
(psec, pyemv) from the clear test keys; the issuer only ever sees LMK-encrypted keys and the HSM does
the checks. ARPC in tag 91 is checked against pyemv.
"""

from __future__ import annotations

import datetime as dt

import psec
import pytest
from pyemv import ac, kd

from issuer_sim import accounts as accounts_mod
from issuer_sim.server import start_issuer
from switch import h2h
from switch.issuer_link import IssuerLink

pytestmark = pytest.mark.filterwarnings("ignore:.*TripleDES.*")  # pyemv on recent cryptography

hsm_server = pytest.importorskip("hsm_sim.server")
from hsm_sim.lmk import encrypt_under_lmk  # noqa: E402
from switch.hsm_client import HsmClient, account_number  # noqa: E402

ZPK = bytes.fromhex("0123456789ABCDEF0123456789ABCDEF")[:8] + bytes.fromhex("FEDCBA9876543210")
PVK = bytes.fromhex("0123456789ABCDEFFEDCBA9876543210")
IMK_AC = bytes.fromhex("0123456789ABCDEFFEDCBA9876543210")  # vector EMV-1
DEC_TABLE = "0123456789012345"

PAN_PVV = "6212345678901234"
PAN_IBM = "6212340000000019"
PAN_CHIP = "6222021234567890"
PIN = "1234"
SCRIPT = "7110" + "9F180400000001" + "86078424000002AABB"  # script id + one command (APPEND RECORD)
EXP = f"{(dt.date.today().year + 1) % 100:02d}12"


def pvv(pan: str, pin: str = PIN) -> str:
    return psec.pin.generate_visa_pvv(PVK, "1", pin, pan)


def ibm_offset(pan: str, pin: str = PIN) -> str:
    acct = account_number(pan)
    validation = acct[:11] + acct[-5:]  # payShield: "N" = last 5 account digits (client pvd = acct[:11] + "N")
    return psec.pin.generate_ibm3624_offset(PVK, DEC_TABLE, pin, validation, 0, 16, "F")


def pin_block(pan: str, pin: str) -> str:
    from Crypto.Cipher import DES3

    clear = psec.pinblock.encode_pinblock_iso_0(pin, pan)
    return DES3.new(ZPK, DES3.MODE_ECB).encrypt(clear).hex().upper()


def config() -> dict:
    return {
        "issuer": {"keys": {"zpk": encrypt_under_lmk(ZPK, "ZPK"), "pvk": encrypt_under_lmk(PVK, "PVK"),
                            "imk_ac": encrypt_under_lmk(IMK_AC, "IMK-AC")}, "pin_tries": 3},
        "accounts": [
            {"pan": PAN_PVV, "expiry": EXP, "balance": 10_000, "pin": {"method": "pvv", "pvki": "1", "pvv": pvv(PAN_PVV)}},
            {"pan": PAN_IBM, "expiry": EXP, "balance": 10_000, "pin": {"method": "ibm", "offset": ibm_offset(PAN_IBM)}},
            {"pan": PAN_CHIP, "expiry": EXP, "balance": 10_000, "psn": "01", "org": "VIS",
             "scripts": [SCRIPT]},
        ],
    }


@pytest.fixture
async def stack():
    hsm, port = await hsm_server.start_hsm("127.0.0.1", 0)
    client = await HsmClient.connect("127.0.0.1", port)
    issuer = await start_issuer(accounts_mod.parse(config()), hsm=client)
    link = await IssuerLink("127.0.0.1", issuer.port, timeout=5).start(wait=2)
    yield issuer, link
    await link.close()
    await issuer.close(close_ledger=True)
    await client.close()
    await hsm.close()


_rrn = iter(range(1, 10**6))


def sale(pan: str, amount: int = 100, **kw) -> dict[str, str]:
    kw.setdefault("entry_mode", "021")
    return h2h.financial_request("sale", terminal_id="T0000001", merchant_id="898310048990001",
                                rrn=f"{next(_rrn):012d}", amount=amount, pan=pan, **kw)


@pytest.mark.parametrize("pan", [PAN_PVV, PAN_IBM])
async def test_right_pin_approved(stack, pan):
    issuer, link = stack
    resp = await link.request(sale(pan, pin_block=pin_block(pan, PIN)))
    assert resp["39"] == "00"
    assert issuer.ledger.balance(pan) == 9_900


@pytest.mark.parametrize("pan", [PAN_PVV, PAN_IBM])
async def test_wrong_pin_55_then_tries_exceeded_75(stack, pan):
    issuer, link = stack
    codes = [(await link.request(sale(pan, pin_block=pin_block(pan, "9999"))))["39"] for _ in range(3)]
    assert codes == ["55", "55", "75"]
    # even the right PIN is refused once the tries are exhausted
    assert (await link.request(sale(pan, pin_block=pin_block(pan, PIN))))["39"] == "75"
    assert issuer.ledger.balance(pan) == 10_000 and issuer.ledger.postings(pan) == []


async def test_pin_tries_zero_means_no_lockout():
    cfg = config()
    cfg["issuer"]["pin_tries"] = 0
    hsm, port = await hsm_server.start_hsm("127.0.0.1", 0)
    client = await HsmClient.connect("127.0.0.1", port)
    issuer = await start_issuer(accounts_mod.parse(cfg), hsm=client)
    link = await IssuerLink("127.0.0.1", issuer.port, timeout=5).start(wait=2)
    try:
        codes = [(await link.request(sale(PAN_PVV, pin_block=pin_block(PAN_PVV, "9999"))))["39"] for _ in range(5)]
        assert codes == ["55"] * 5
        assert (await link.request(sale(PAN_PVV, pin_block=pin_block(PAN_PVV, PIN))))["39"] == "00"
    finally:
        await link.close()
        await issuer.close(close_ledger=True)
        await client.close()
        await hsm.close()


async def test_right_pin_resets_the_failure_count(stack):
    issuer, link = stack
    assert (await link.request(sale(PAN_PVV, pin_block=pin_block(PAN_PVV, "0000"))))["39"] == "55"
    assert issuer.ledger.pin_fails(PAN_PVV) == 1
    assert (await link.request(sale(PAN_PVV, pin_block=pin_block(PAN_PVV, PIN))))["39"] == "00"
    assert issuer.ledger.pin_fails(PAN_PVV) == 0


def icc_request(amount: int, *, atc: bytes = b"\x00\x1c", un: bytes = bytes.fromhex("1A2B3C4D"),
                tamper: bool = False) -> tuple[dict[str, bytes], bytes, bytes]:
    tags = {
        "9F02": bytes.fromhex(f"{amount:012d}"),
        "9F03": bytes(6), "9F1A": bytes.fromhex("0156"), "95": bytes(5), "5F2A": bytes.fromhex("0156"),
        "9A": bytes.fromhex(dt.date.today().strftime("%y%m%d")), "9C": b"\x00", "9F37": un,
        "82": bytes.fromhex("7C00"), "9F36": atc, "9F10": bytes.fromhex("07010A03A0000001"),
        "9F27": b"\x80", "9F33": bytes.fromhex("E0F8C8"),
    }
    data = b"".join(tags[t] for t in ("9F02", "9F03", "9F1A", "95", "5F2A", "9A", "9C", "9F37", "82",
                                      "9F36", "9F10"))
    icc_mk = kd.derive_icc_mk_a(IMK_AC, PAN_CHIP, "01")
    sk = kd.derive_common_sk(icc_mk, atc + b"\x00\x00" + un)
    arqc = ac.generate_ac(sk, data, ac.PaddingType.EMV)
    tags["9F26"] = bytes([arqc[0] ^ 1]) + arqc[1:] if tamper else arqc
    return tags, arqc, icc_mk


async def test_good_arqc_approved_with_arpc(stack):
    issuer, link = stack
    tags, arqc, icc_mk = icc_request(500)
    resp = await link.request(sale(PAN_CHIP, 500, psn="01", icc=tags, entry_mode="051"))
    assert resp["39"] == "00"
    tags91 = h2h.field55_tags(resp["55"])
    tag91 = tags91["91"]
    assert tag91[8:] == b"00"                                  # ARC = response code, ASCII
    assert tag91[:8] == ac.generate_arpc_1(icc_mk, arqc, b"00")  # ARPC method 1 (HSM KQ convention)
    assert tags91["71"].hex().upper() == SCRIPT[4:]            # the account's issuer script follows
    assert resp["63"] == "VIS"
    assert issuer.ledger.balance(PAN_CHIP) == 9_500


async def test_decline_after_good_arqc_is_authenticated(stack):
    """51 after a good ARQC: tag 91 carries an ARPC over ARC "51" so the card can trust the decline."""
    issuer, link = stack
    tags, arqc, icc_mk = icc_request(20_000)
    resp = await link.request(sale(PAN_CHIP, 20_000, psn="01", icc=tags, entry_mode="051"))
    assert resp["39"] == "51"
    tag91 = h2h.field55_tags(resp["55"])["91"]
    assert tag91 == ac.generate_arpc_1(icc_mk, arqc, b"51") + b"51"
    assert "71" not in h2h.field55_tags(resp["55"])           # no scripts on a decline


async def test_bad_arqc_declined_05_without_arpc(stack):
    issuer, link = stack
    tags, _, _ = icc_request(500, tamper=True)
    resp = await link.request(sale(PAN_CHIP, 500, psn="01", icc=tags, entry_mode="051"))
    assert resp["39"] == "05"
    assert "55" not in resp
    assert issuer.ledger.balance(PAN_CHIP) == 10_000


async def test_arqc_over_other_amount_fails(stack):
    """The ARQC binds the amount: the same cryptogram with a different field 55 amount fails."""
    issuer, link = stack
    tags, _, _ = icc_request(500)
    tags["9F02"] = bytes.fromhex(f"{501:012d}")
    resp = await link.request(sale(PAN_CHIP, 501, psn="01", icc=tags, entry_mode="051"))
    assert resp["39"] == "05"


async def test_pin_without_hsm_is_96():
    issuer = await start_issuer(accounts_mod.parse(config()), hsm=None)
    link = await IssuerLink("127.0.0.1", issuer.port, timeout=5).start(wait=2)
    try:
        resp = await link.request(sale(PAN_PVV, pin_block=pin_block(PAN_PVV, PIN)))
        assert resp["39"] == "96"
    finally:
        await link.close()
        await issuer.close(close_ledger=True)


@pytest.mark.parametrize(("amount", "rc"), [(2_599, "00"), (20_000, "51")])
async def test_software_card_end_to_end(amount, rc):
    """terminal_bridge's software card + EMV kernel -> field 55 -> IssuerLink -> issuer (HSM KQ) -> tag 91 ->
    the card's 2nd GENERATE AC authenticates the issuer: TC on approval, AAC on the decline."""
    softcard = pytest.importorskip("terminal_bridge.drivers.softcard")
    from terminal_bridge import emv_tlv
    from terminal_bridge.apdu import DirectTransport
    from terminal_bridge.emv import EmvKernel

    pan, psn = "6212345678901232", "01"
    cfg = config()
    cfg["accounts"].append({"pan": pan, "expiry": "3012", "balance": 10_000, "psn": psn})
    hsm, port = await hsm_server.start_hsm("127.0.0.1", 0)
    client = await HsmClient.connect("127.0.0.1", port)
    issuer = await start_issuer(accounts_mod.parse(cfg), hsm=client)
    link = await IssuerLink("127.0.0.1", issuer.port, timeout=5).start(wait=2)
    try:
        kernel = EmvKernel(DirectTransport(softcard.SoftCard(pan=pan, psn=psn, expiry="301231")))
        txn = kernel.start(amount_fen=amount)
        field55 = kernel.first_generate_ac(txn, pin_entered=False)
        resp = await link.request(sale(pan, amount, psn=txn.card.psn or psn, entry_mode="052",
                                       icc=emv_tlv.decode(field55)))
        assert resp["39"] == rc
        done = kernel.second_generate_ac(txn, resp["39"], bytes.fromhex(resp["55"]))
        assert done.issuer_authenticated
        assert done.approved is (rc == "00")
        assert issuer.ledger.balance(pan) == 10_000 - (amount if rc == "00" else 0)
    finally:
        await link.close()
        await issuer.close(close_ledger=True)
        await client.close()
        await hsm.close()
