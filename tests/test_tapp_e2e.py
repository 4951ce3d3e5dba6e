"""Terminal application end to end: TerminalApp -> real switch (testbed: HSM, issuers, journal) over loopback.

Every transaction type with each card type (magstripe, chip and contactless through the software EMV
card), receipts (ESC/POS bytes, masking), settlement with batch upload, sign-on key checks, the
host's re-sign-on request, and the reversal rules (98 timeout, A0 bad reply MAC, 06 card declined
after approval) including after a restart and with the network down.  Faults come from a real TCP
man-in-the-middle between terminal and switch.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from pathlib import Path

import pytest

from switch import testbed
from switch.testbed import MERCHANT_ID, Stack, qr_code, terminal_id
from terminal_bridge import emv_tlv
from terminal_bridge.app import NETWORK_MESSAGE, Insert, Scan, Swipe, Tap, TerminalApp, TerminalConfig
from terminal_bridge.client import decode
from terminal_bridge.display import ConsoleDisplay
from terminal_bridge.drivers.softcard import CardProfile, SoftCard
from terminal_bridge.state import StateError

pytestmark = pytest.mark.timeout(120)
PIN = "123456"


@pytest.fixture
async def stack(tmp_path: Path):
    s = await Stack.start(tmp_path / "stack", terminals=2)
    try:
        yield s
    finally:
        await s.stop()


class Proxy:
    """TCP man-in-the-middle: forwards frames, can swallow or damage the reply of one MTI."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.mode = "pass"  # pass / drop / flip_mac
        self.mti = "0210"
        self.times = 1
        self.server: asyncio.base_events.Server | None = None
        self.port = 0
        self.seen: list[str] = []
        self.requests: list[dict[str, str]] = []
        self.raw: list[bytes] = []  # request bodies as sent (no length, TPDU or header)
        self.cut: dict[str, int] = {}  # request MTI -> how many of them to cut off (connection closed, not forwarded)

    async def start(self) -> Proxy:
        self.server = await asyncio.start_server(self._conn, "127.0.0.1", self.port)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:  # "network down": nothing listens any more
        assert self.server is not None
        self.server.close()
        await self.server.wait_closed()

    async def _conn(self, cr: asyncio.StreamReader, cw: asyncio.StreamWriter) -> None:
        ur, uw = await asyncio.open_connection("127.0.0.1", self.target_port)
        try:
            head = await cr.readexactly(2)
            req = await cr.readexactly(int.from_bytes(head, "big"))
            mti = req[11:13].hex()
            self.seen.append(mti)
            self.requests.append(decode(req[11:]))
            self.raw.append(bytes(req[11:]))
            if self.cut.get(mti, 0) > 0:
                self.cut[mti] -= 1
                return
            uw.write(head + req)
            head = await ur.readexactly(2)
            rep = bytearray(await ur.readexactly(int.from_bytes(head, "big")))
            if rep[11:13].hex() == self.mti and self.times > 0 and self.mode != "pass":
                self.times -= 1
                if self.mode == "drop":
                    await cr.read()  # hold the line until the terminal gives up
                    return
                rep[-1] ^= 0x01  # flip_mac: last byte of field 64
            cw.write(head + bytes(rep))
            await cw.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            uw.close()
            cw.close()


def make_app(port: int, state: Path | None, i: int = 0, tmk: bytes | None = None, **kw) -> TerminalApp:
    cfg = TerminalConfig("127.0.0.1", port, terminal_id(i), MERCHANT_ID, tmk or testbed.test_tmk(i),
                         read_timeout=kw.pop("read_timeout", 10.0), connect_timeout=2.0, connect_retries=1,
                         retry_delay=0.05, **kw)
    app = TerminalApp(cfg, state_path=state)
    app.devices.display = ConsoleDisplay(out=open("/dev/null", "w"))  # noqa: SIM115 - closed with the process
    return app


def swipe_of(card) -> Swipe:
    """Track 2 of a magstripe-only card (service code 101): no chip, so not a fallback."""
    return Swipe(f";{card.pan}={card.expiry}1010000000000?")


def card_input(kind: str, card, cards: dict):
    if kind == "swipe":
        return swipe_of(card)
    key = (card.pan, kind)
    if key not in cards:
        cards[key] = SoftCard(CardProfile(pan=card.pan, expiry=card.expiry + "31"), contactless=kind == "tap")
    return Insert(cards[key]) if kind == "chip" else Tap(cards[key])


def receipt_text(app: TerminalApp) -> str:
    out = app.devices.escpos.output
    return out.decode("gb18030", "replace")


async def journal_row(stack: Stack, app: TerminalApp, stan: str):
    return await stack.journal.find_by_trace(app.tid, app.mid, app.state.batch, stan)


@pytest.mark.parametrize("kind", ["swipe", "chip", "tap"])
async def test_every_transaction_type_with_each_card_type(stack: Stack, tmp_path: Path, kind: str) -> None:
    app = make_app(stack.port, tmp_path / "t.json")
    cards: dict = {}
    card = stack.card("cup", 0)
    assert (await app.sign_on()).ok
    sale = await app.sale(1234, card=card_input(kind, card, cards), pin=PIN)
    assert sale.ok and sale.rc == "00" and len(sale.rrn) == 12, sale
    row = await journal_row(stack, app, sale.stan)
    assert row.state == "approved" and row.amount == 1234
    assert row.payment_method == {"swipe": "swipe", "chip": "chip", "tap": "contactless"}[kind]
    text = receipt_text(app)
    assert card.pan not in text and f"{card.pan[:6]}******{card.pan[-4:]}" in text
    assert "RMB 12.34" in text and sale.rrn in text and "支付成功" in text and f"{int(sale.stan):06d}" in text
    if kind != "swipe":
        assert "TC: " in text and "A000000333010101" in text

    bal = await app.balance(card=card_input(kind, card, cards), pin=PIN)
    assert bal.ok and bal.balance is not None and bal.balance > 0

    void = await app.void(sale.stan, card=card_input(kind, card, cards))
    assert void.ok, void
    assert (await journal_row(stack, app, sale.stan)).state == "voided"
    assert "消费撤销" in receipt_text(app) and "RMB -12.34" in receipt_text(app)

    sale2 = await app.sale(800, card=card_input(kind, card, cards), pin=PIN)
    assert sale2.ok
    refund = await app.refund(300, sale2.rrn, app.state.records[-1].date, card=card_input(kind, card, cards))
    assert refund.ok, refund
    row = await stack.journal.find_by_rrn(app.tid, app.mid, refund.rrn)
    assert row.txn_type == "refund" and row.amount == 300
    # wrong PIN: declined with the issuer's code, nothing to reverse, no receipt
    before = len(app.devices.escpos.output)
    bad = await app.sale(100, card=card_input(kind, card, cards), pin="000000")
    assert not bad.ok and bad.rc == "55" and app.state.pending_reversal is None
    assert len(app.devices.escpos.output) == before and "密码错" in bad.display[1]


async def test_qr_sale_and_void(stack: Stack, tmp_path: Path) -> None:
    app = make_app(stack.port, tmp_path / "t.json")
    code = qr_code("134500000001")
    res = await app.sale(4200, card=Scan(code))
    assert res.ok, res
    text = receipt_text(app)
    assert "扫码" in text and code not in text
    assert (await app.void(res.stan)).ok
    bad = await app.sale(100, card=Scan("99999"))
    assert not bad.ok and bad.rc == "CARD"


async def test_settlement_balanced_uploads_ic_records_and_opens_next_batch(stack: Stack, tmp_path: Path) -> None:
    app = make_app(stack.port, tmp_path / "t.json", i=1)
    cards: dict = {}
    assert (await app.sale(1000, card=swipe_of(stack.card("cup", 1)), pin=PIN)).ok
    assert (await app.sale(2000, card=card_input("chip", stack.card("cup", 2), cards), pin=PIN)).ok
    assert (await app.sale(3000, card=card_input("tap", stack.card("intl", 0), cards))).ok  # foreign card
    s3 = await app.sale(4000, card=swipe_of(stack.card("cup", 3)), pin=PIN)
    assert (await app.void(s3.stan)).ok  # §8: the voided sale stays on the debit side, the void is a credit
    s2 = await app.sale(500, card=swipe_of(stack.card("cup", 1)), pin=PIN)
    assert (await app.refund(200, s2.rrn, app.state.records[-1].date, card=swipe_of(stack.card("cup", 1)))).ok
    dom, foreign = app.totals()
    assert (dom.debit_amount, dom.debit_count, dom.credit_amount, dom.credit_count) == (7500, 4, 4200, 2)
    assert (foreign.debit_amount, foreign.debit_count) == (3000, 1)
    batch = app.state.batch
    res = await app.settle()
    assert res.ok and res.detail["balanced"] is True, res
    assert res.detail["uploaded"] == 2  # balanced: only the two IC (TC) records go up
    assert app.state.batch == batch + 1 and app.state.records == []
    host = await stack.journal.batch_totals(app.tid, app.mid, batch)
    assert host.domestic.debit_amount == 7500 and host.foreign.debit_amount == 3000
    # the next sign-on hands out the new batch and the terminal keeps it
    assert (await app.sign_on()).ok and app.state.batch == batch + 1


async def test_a_full_batch_is_settled_before_the_next_sale(stack: Stack, tmp_path: Path, monkeypatch) -> None:
    """Field 48 counts in 3 digits: like a real terminal, a batch holding the most debits is settled (and
    uploaded) before the next sale, which then opens the new batch."""
    import terminal_bridge.app as app_mod

    monkeypatch.setattr(app_mod, "MAX_BATCH_COUNT", 3)
    app = make_app(stack.port, tmp_path / "t.json", i=1)
    for amount in (100, 200, 300):
        assert (await app.sale(amount, card=swipe_of(stack.card("cup", 1)), pin=PIN)).ok
    batch = app.state.batch
    s4 = await app.sale(400, card=swipe_of(stack.card("cup", 1)), pin=PIN)
    assert s4.ok
    assert app.state.batch == batch + 1  # the full batch was settled first
    assert [r.amount for r in app.state.records] == [400]
    host = await stack.journal.batch_totals(app.tid, app.mid, batch)
    assert (host.domestic.debit_amount, host.domestic.debit_count) == (600, 3)
    row = await stack.journal.find_by_rrn(app.tid, app.mid, s4.rrn)
    assert row is not None and int(row.batch) == batch + 1
    # a void adds a credit: the credit side is far from full, so it stays in the open batch
    assert (await app.void(s4.stan)).ok and app.state.batch == batch + 1


async def test_key_check_value_mismatch_is_refused(stack: Stack, tmp_path: Path) -> None:
    app = make_app(stack.port, tmp_path / "t.json", tmk=testbed.test_tmk(1))  # terminal 0 with terminal 1's TMK
    res = await app.sign_on()
    assert not res.ok and res.rc == "KEY" and "check value mismatch" in res.message
    assert app.state.keys is None and not app.signed_on and res.display[0] == "密钥校验错"
    sale = await app.sale(100, card=swipe_of(stack.card("cup", 0)), pin=PIN)
    assert not sale.ok and sale.rc == "KEY"  # no sale without keys; nothing went out
    assert app.state.pending_reversal is None


async def test_host_request_to_sign_on_again_is_obeyed(stack: Stack, tmp_path: Path) -> None:
    app = make_app(stack.port, tmp_path / "t.json")
    assert (await app.sign_on()).ok
    old_mak = app.state.keys.mak
    stack.registry.require_resign(app.tid, app.mid)
    res = await app.sale(100, card=swipe_of(stack.card("cup", 0)), pin=PIN)
    assert res.ok
    assert not app.state.need_sign_on and app.state.keys.mak != old_mak  # signed on again right after
    assert (await app.sale(100, card=swipe_of(stack.card("cup", 0)), pin=PIN)).ok


async def test_sign_off_then_the_next_sale_signs_on_first(stack: Stack, tmp_path: Path) -> None:
    proxy = await Proxy(stack.port).start()
    try:
        app = make_app(proxy.port, tmp_path / "t.json")
        assert (await app.sign_on()).ok
        off = await app.sign_off()
        assert off.ok and not app.signed_on and not app.state.signed_on
        assert not stack.registry.get(app.tid, app.mid).signed_on  # the host knows
        res = await app.sale(100, card=swipe_of(stack.card("cup", 0)), pin=PIN)
        assert res.ok and proxy.seen[-3:] == ["0820", "0800", "0200"]
    finally:
        await proxy.stop()


async def test_bad_reply_mac_sends_a0_reversal(stack: Stack, tmp_path: Path) -> None:
    proxy = await Proxy(stack.port).start()
    try:
        app = make_app(proxy.port, tmp_path / "t.json")
        assert (await app.sign_on()).ok
        proxy.mode = "flip_mac"
        res = await app.sale(1500, card=swipe_of(stack.card("cup", 0)), pin=PIN)
        assert not res.ok and res.reversal == "A0" and res.reversal_sent
        assert proxy.seen[-2:] == ["0400", "0800"]  # reversal first, then the re-sign-on
        sale_req, rev = proxy.requests[-3], proxy.requests[-2]
        assert rev["39"] == "A0" and rev["11"] == sale_req["11"] == res.stan and rev["4"] == sale_req["4"]
        assert not {"35", "52", "53", "26"} & rev.keys() and "64" in rev
        assert rev["38"] == res.auth_code and len(res.auth_code.strip()) == 6  # the approval's auth code
        assert rev["60"] == sale_req["60"]
        assert app.state.pending_reversal is None and not app.state.need_sign_on
        row = await journal_row(stack, app, res.stan)
        assert row.state == "reversed"
        assert (await app.sale(100, card=swipe_of(stack.card("cup", 0)), pin=PIN)).ok
    finally:
        await proxy.stop()


async def test_timeout_sends_98_reversal(stack: Stack, tmp_path: Path) -> None:
    proxy = await Proxy(stack.port).start()
    try:
        app = make_app(proxy.port, tmp_path / "t.json", read_timeout=2.0)
        cards: dict = {}
        proxy.mode = "drop"
        res = await app.sale(2500, card=card_input("chip", stack.card("cup", 0), cards), pin=PIN)
        assert not res.ok and res.rc == "NET" and res.reversal == "98" and res.reversal_sent
        assert res.display[0] == NETWORK_MESSAGE
        assert (await journal_row(stack, app, res.stan)).state == "reversed"
        assert proxy.seen[-1] == "0400"
        rev = proxy.requests[-1]
        assert rev["39"] == "98" and rev["11"] == res.stan and rev["2"] == stack.card("cup", 0).pan
        tags = emv_tlv.decode(bytes.fromhex(rev["55"]))
        assert set(tags) <= {"95", "9F1E", "9F10", "9F36", "DF31"} and "9F36" in tags  # §11 reversal tag set
    finally:
        await proxy.stop()


async def test_reversal_is_retried_at_once_while_the_line_fails(stack: Stack, tmp_path: Path) -> None:
    proxy = await Proxy(stack.port).start()
    try:
        app = make_app(proxy.port, tmp_path / "t.json", read_timeout=2.0)
        assert (await app.sign_on()).ok
        proxy.mode, proxy.cut = "drop", {"0400": 2}  # the answer is lost, then two 0400s are cut off
        res = await app.sale(1100, card=swipe_of(stack.card("cup", 0)), pin=PIN)
        assert res.reversal == "98" and res.reversal_sent and app.state.pending_reversal is None
        assert proxy.seen[-4:] == ["0200", "0400", "0400", "0400"]  # 3 attempts (TerminalConfig.reversal_attempts)
        assert (await journal_row(stack, app, res.stan)).state == "reversed"
    finally:
        await proxy.stop()


async def test_card_declines_after_online_approval_sends_06(stack: Stack, tmp_path: Path) -> None:
    app = make_app(stack.port, tmp_path / "t.json")
    card = stack.card("cup", 0)
    # a card that checks the ARPC under the session key: the issuer's tag 91 fails, the card answers AAC
    soft = SoftCard(CardProfile(pan=card.pan, expiry=card.expiry + "31", arpc_key="session"))
    res = await app.sale(900, card=Insert(soft), pin=PIN)
    assert not res.ok and res.rc == "00" and res.reversal == "06" and res.reversal_sent
    assert (await journal_row(stack, app, res.stan)).state == "reversed"
    assert app.state.records == [] and app.state.pending_reversal is None


async def test_network_down_keeps_reversal_and_sends_it_first_after_restart(stack: Stack, tmp_path: Path) -> None:
    state = tmp_path / "t.json"
    proxy = await Proxy(stack.port).start()
    app = make_app(proxy.port, state, read_timeout=2.0)
    assert (await app.sign_on()).ok
    proxy.mode = "drop"

    async def drop_then_down() -> None:  # the line dies while the terminal waits for its answer
        while not proxy.seen or proxy.seen[-1] != "0200":
            await asyncio.sleep(0.01)
        await proxy.stop()

    down = asyncio.create_task(drop_then_down())
    res = await app.sale(3100, card=swipe_of(stack.card("cup", 0)), pin=PIN)
    await down
    assert not res.ok and res.reversal == "98" and not res.reversal_sent
    assert res.display[0] == NETWORK_MESSAGE
    assert app.state.pending_reversal is not None and app.state.pending_reversal.reason == "98"
    stan = res.stan
    # still down: the next sale is not sent, the reversal is kept
    again = await app.sale(100, card=swipe_of(stack.card("cup", 0)), pin=PIN)
    assert not again.ok and again.rc == "NET" and app.state.pending_reversal is not None
    # power cut: a new process on the same state file, network back (straight to the switch)
    with pytest.raises(StateError, match="in use by another terminal process"):
        make_app(stack.port, state)  # while the first one still runs
    app.close()  # (what the kernel does for a process that dies)
    app2 = make_app(stack.port, state)
    assert app2.state.pending_reversal is not None and app2.state.pending_reversal.request["11"] == stan
    res2 = await app2.sale(200, card=swipe_of(stack.card("cup", 0)), pin=PIN)
    assert res2.ok and app2.state.pending_reversal is None
    row = await journal_row(stack, app2, stan)
    assert row is not None and row.state == "reversed"


async def test_magstripe_errors_reach_the_display(stack: Stack, tmp_path: Path) -> None:
    app = make_app(stack.port, tmp_path / "t.json")
    card = stack.card("cup", 0)
    bad_month = await app.sale(100, card=Swipe(f";{card.pan}=3013101000?"), pin=PIN)
    assert not bad_month.ok and bad_month.rc == "CARD" and bad_month.display[0] == "读卡失败，请重试"
    assert "track 2" in bad_month.message
    luhn = await app.sale(100, card=Swipe(f";{card.pan[:-1]}{(int(card.pan[-1]) + 1) % 10}=30121010000?"), pin=PIN)
    assert not luhn.ok and "Luhn" in luhn.message
    chip = await app.sale(100, card=Swipe(f";{card.pan}=30122010000?"), pin=PIN)  # service code 2xx: insert
    assert not chip.ok and "请插卡" in chip.message
    fallback = await app.sale(100, card=Swipe(f";{card.pan}=30122010000?", fallback=True), pin=PIN)
    assert fallback.ok
    row = await journal_row(stack, app, fallback.stan)
    assert row.payment_method == "fallback"


async def test_tdk_track_encryption_mode_004(tmp_path: Path) -> None:
    stack = await Stack.start(tmp_path / "stack", terminals=1, key_mode="004")
    proxy = await Proxy(stack.port).start()
    try:
        app = make_app(proxy.port, tmp_path / "t.json", key_mode="004")
        assert (await app.sign_on()).ok and app.state.keys.tdk
        card = stack.card("cup", 0)
        res = await app.sale(1200, card=swipe_of(card), pin=PIN)
        assert res.ok, res
        req = proxy.requests[-1]
        clear = f"{card.pan}D{card.expiry}1010000000000"
        assert req["53"][2] == "1" and req["35"] != clear and len(req["35"]) == len(clear)
        assert req["35"][:4] == clear[:4]  # only the §9.3 block is encrypted
    finally:
        await proxy.stop()
        await stack.stop()


async def test_logs_never_carry_pan_or_track(stack: Stack, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    app = make_app(stack.port, tmp_path / "t.json")
    card = stack.card("cup", 0)
    cards: dict = {}
    assert (await app.sale(100, card=swipe_of(card), pin=PIN)).ok
    assert (await app.sale(100, card=card_input("chip", card, cards), pin=PIN)).ok
    assert not (await app.sale(100, card=Swipe(f";{card.pan}=3013101000?"))).ok  # error text path
    mine = [r for r in caplog.records if r.name.startswith("terminal_bridge")]
    assert mine
    for r in mine:
        text = r.getMessage() + repr(getattr(r, "fields", ""))
        assert card.pan not in text and "=3012101" not in text and "D3012101" not in text, text


async def test_printer_failure_keeps_the_approval(stack: Stack, tmp_path: Path) -> None:
    from terminal_bridge.receipt import EscPosReceiptPrinter, open_printer

    app = make_app(stack.port, tmp_path / "t.json")
    full = open_printer("file:/dev/full")  # every write fails (ENOSPC)
    app.devices.printer = EscPosReceiptPrinter(full)
    try:
        res = await app.sale(100, card=swipe_of(stack.card("cup", 0)), pin=PIN)
        assert res.ok and "printer_error" in res.detail and res.display[-1] == "打印机故障，请检查"
        assert app.state.records[-1].rrn == res.rrn and app.state.pending_reversal is None
    finally:
        with contextlib.suppress(OSError):
            full.close()
        full._device = False  # closed; keep escpos' __del__ from flushing into /dev/full again


async def test_power_cut_while_waiting_for_the_answer(stack: Stack, tmp_path: Path) -> None:
    """``posswitch terminal`` is SIGKILLed after its 0200 went out: the next run reverses it first."""
    import json
    import os
    import sys

    from terminal_bridge.state import StateStore

    proxy = await Proxy(stack.port).start()
    proxy.mode = "drop"
    card = stack.card("cup", 0)
    state = tmp_path / "t.json"
    (tmp_path / "s1.txt").write_text(f"signon\nsale 1.00 swipe=;{card.pan}={card.expiry}1010000000000? pin={PIN}\n")
    (tmp_path / "s2.txt").write_text(f"sale 2.00 swipe=;{card.pan}={card.expiry}1010000000000? pin={PIN}\n")
    env = {**os.environ, "POSSWITCH_TMK": testbed.test_tmk(0).hex()}
    root = Path(__file__).resolve().parents[1]

    def cli(port: int, script: str) -> list[str]:
        return [sys.executable, "-m", "switch.cli", "terminal", "--switch", f"127.0.0.1:{port}", "--terminal-id",
                terminal_id(0), "--merchant-id", MERCHANT_ID, "--state", str(state), "--script", str(tmp_path / script)]

    proc = await asyncio.create_subprocess_exec(*cli(proxy.port, "s1.txt"), cwd=root, env=env,
                                                stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)
    try:
        for _ in range(3000):
            if "0200" in proxy.seen:
                break
            await asyncio.sleep(0.02)
        assert "0200" in proxy.seen
        proc.kill()  # SIGKILL: no chance to clean up
        await proc.wait()
    finally:
        await proxy.stop()
    st = StateStore(state, testbed.test_tmk(0)).load(terminal_id(0), MERCHANT_ID)
    assert st.pending_reversal is not None and st.pending_reversal.sent and st.pending_reversal.reason == "98"
    stan = st.pending_reversal.request["11"]
    proc = await asyncio.create_subprocess_exec(*cli(stack.port, "s2.txt"), cwd=root, env=env,
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await proc.communicate()
    lines = [json.loads(x) for x in out.decode().splitlines() if x.startswith("{")]
    assert proc.returncode == 0 and lines[-1]["op"] == "sale" and lines[-1]["ok"], (out, err)
    row = await stack.journal.find_by_trace(terminal_id(0), MERCHANT_ID, 1, stan)
    assert row is not None and row.state == "reversed" and row.amount == 100


@pytest.mark.filterwarnings("ignore:.*TripleDES.*")
async def test_contactless_sale_over_simulated_rf(stack: Stack, tmp_path: Path) -> None:
    """Tap through nfcpy's ``udp:`` RF simulation (ISO-DEP card and reader in software) to the switch."""
    import socket

    pytest.importorskip("nfc", reason="nfcpy (devices extra) is not installed")
    from terminal_bridge.drivers.nfc_udp import NfcUdpCard, NfcUdpTransport

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    card = stack.card("cup", 2)
    soft = SoftCard(CardProfile(pan=card.pan, expiry=card.expiry + "31"), contactless=True)
    served = NfcUdpCard(soft, port).start()
    transport = await asyncio.to_thread(NfcUdpTransport, port)
    try:
        app = make_app(stack.port, tmp_path / "t.json")
        res = await app.sale(1999, card=Tap(transport))
        assert res.ok, res
        row = await journal_row(stack, app, res.stan)
        assert row.payment_method == "contactless" and row.amount == 1999
        assert soft.log[0][5:19] == b"2PAY.SYS.DDF01"  # the card was reached over the RF link
    finally:
        transport.close()
        served.stop()


async def test_issuer_script_results_go_up_in_a_0620(stack: Stack, tmp_path: Path) -> None:
    card = stack.card("cup", 3)
    # APPLICATION BLOCK with a static (wrong) MAC: the card refuses it and reports that in DF31
    script = bytes.fromhex("7112" "9F180400000001" "8609" "841E000004" "11223344")
    stack.issuers["cup"].host.config.accounts[card.pan].scripts = (script,)
    proxy = await Proxy(stack.port).start()
    try:
        app = make_app(proxy.port, tmp_path / "t.json")
        res = await app.sale(600, card=card_input("chip", card, {}), pin=PIN)
        assert res.ok and res.detail["script_advice"] == "00", res
        sale_req, advice = proxy.requests[-2], proxy.requests[-1]
        assert proxy.seen[-1] == "0620" and advice["60"][8:11] == "951" and "64" in advice
        assert advice["61"][6:12] == sale_req["11"] and advice["37"] == res.rrn
        df31 = emv_tlv.decode(bytes.fromhex(advice["55"]))["DF31"]
        assert df31[0] >> 4 == 1 and df31[1:5] == bytes.fromhex("00000001")  # script 00000001 failed
    finally:
        await proxy.stop()


class MuteChip:
    """A chip whose application does not answer (every command: 6F00)."""

    def atr(self) -> bytes:
        return bytes.fromhex("3B6500002063CBA000")

    def reset(self) -> bytes:
        return self.atr()

    def process(self, apdu: bytes) -> bytes:
        return b"\x6f\x00"


async def test_chip_failure_allows_one_fallback_swipe(stack: Stack, tmp_path: Path) -> None:
    app = make_app(stack.port, tmp_path / "t.json")
    card = stack.card("cup", 0)
    chip_swipe = Swipe(f";{card.pan}={card.expiry}2010000000000?")  # service code 201: chip card
    failed = await app.sale(100, card=Insert(MuteChip()), pin=PIN)
    assert not failed.ok and failed.rc == "CARD" and failed.display[0] == "读卡失败，请刷卡"
    res = await app.sale(100, card=chip_swipe, pin=PIN)
    assert res.ok, res
    assert (await journal_row(stack, app, res.stan)).payment_method == "fallback"
    again = await app.sale(100, card=chip_swipe, pin=PIN)  # the permission is used up
    assert not again.ok and "请插卡" in again.message


@pytest.mark.parametrize("kind", ["swipe", "chip"])
async def test_preauth_family_and_settlement(stack: Stack, tmp_path: Path, kind: str) -> None:
    app = make_app(stack.port, tmp_path / "t.json")
    cards: dict = {}
    card = stack.card("cup", 1)
    pa = await app.preauth(5000, card=card_input(kind, card, cards), pin=PIN)
    assert pa.ok and len(pa.auth_code.strip()) == 6, pa
    row = await journal_row(stack, app, pa.stan)
    assert row.txn_type == "preauth" and row.state == "approved"
    over = await app.completion(6000, pa.stan)  # more than pre-authorised
    assert not over.ok and over.rc == "64" and app.state.pending_reversal is None
    comp = await app.completion(4500, pa.stan, card=card_input(kind, card, cards))
    assert comp.ok, comp
    assert "预授权完成" in receipt_text(app)
    cv = await app.completion_void(comp.stan)
    assert cv.ok, cv
    assert (await journal_row(stack, app, comp.stan)).state == "voided"
    assert "预授权完成撤销" in receipt_text(app) and "RMB -45.00" in receipt_text(app)
    pa2 = await app.preauth(3000, card=card_input(kind, card, cards), pin=PIN)
    pv = await app.preauth_void(pa2.stan, card=card_input(kind, card, cards))
    assert pv.ok and (await journal_row(stack, app, pa2.stan)).state == "voided"
    assert "预授权撤销" in receipt_text(app)
    assert not (await app.preauth_void(pa2.stan)).ok  # already voided: refused locally (25)
    dom, _ = app.totals()
    assert (dom.debit_amount, dom.debit_count, dom.credit_amount, dom.credit_count) == (4500, 1, 4500, 1)
    settled = await app.settle()
    assert settled.ok and settled.detail["balanced"] is True


async def test_preauth_timeout_reverses_in_the_preauth_family(stack: Stack, tmp_path: Path) -> None:
    proxy = await Proxy(stack.port).start()
    try:
        app = make_app(proxy.port, tmp_path / "t.json", read_timeout=2.0)
        proxy.mode, proxy.mti = "drop", "0110"
        res = await app.preauth(7000, card=swipe_of(stack.card("cup", 0)), pin=PIN)
        assert not res.ok and res.reversal == "98" and res.reversal_sent
        rev = proxy.requests[-1]
        assert rev["t"] == "0400" and rev["3"] == "030000" and rev["60"][:2] == "10" and rev["25"] == "06"
        assert (await journal_row(stack, app, res.stan)).state == "reversed"
    finally:
        await proxy.stop()


class WedgeReader:
    """A keyboard-wedge reader (MagstripeReader protocol) that is swiped after ``delay`` seconds, or never."""

    def __init__(self, text: str | None, delay: float = 0.05) -> None:
        self.text, self.delay = text, delay

    async def read_swipe(self):
        from terminal_bridge.magstripe import parse_swipe

        if self.text is None:
            await asyncio.Event().wait()  # nobody swipes
        await asyncio.sleep(self.delay)
        return parse_swipe(self.text)


class ClosingTransport:
    """DirectTransport that remembers being closed."""

    def __init__(self, card) -> None:
        from terminal_bridge.apdu import DirectTransport

        self.inner, self.closed = DirectTransport(card), False

    def transmit(self, apdu: bytes) -> bytes:
        return self.inner.transmit(apdu)

    def atr(self) -> bytes:
        return self.inner.atr()

    def close(self) -> None:
        self.closed = True


async def test_real_device_wait_takes_whichever_card_comes_first(stack: Stack, tmp_path: Path) -> None:
    """``card=None``: the app waits on every reader (as with ``--devices real``) and takes the first card."""
    import time

    from terminal_bridge.devices import CardReadError

    card = stack.card("cup", 0)
    app = make_app(stack.port, tmp_path / "t.json")

    def no_chip():
        time.sleep(0.3)
        raise CardReadError("PC/SC: no card inserted within 0.3 s")

    app.devices.magstripe = WedgeReader(f";{card.pan}={card.expiry}1010000000000?")
    app.devices.chip = no_chip
    swiped = await app.sale(100, pin=PIN)
    assert swiped.ok and (await journal_row(stack, app, swiped.stan)).payment_method == "swipe"

    soft = SoftCard(CardProfile(pan=card.pan, expiry=card.expiry + "31"))
    opened: list[ClosingTransport] = []

    def insert() -> ClosingTransport:
        opened.append(ClosingTransport(soft))
        return opened[-1]

    app.devices.magstripe = WedgeReader(None)
    app.devices.chip = insert
    inserted = await app.sale(200, pin=PIN)
    assert inserted.ok and (await journal_row(stack, app, inserted.stan)).payment_method == "chip"
    assert len(opened) == 1 and opened[0].closed  # the app closes the reader connection it opened

    app.devices.chip = no_chip
    app.devices.magstripe = None
    none = await app.sale(300, pin=PIN)
    assert not none.ok and none.rc == "CARD" and "no card inserted" in none.message


async def test_voice_prompts_follow_the_outcome(stack: Stack, tmp_path: Path) -> None:
    import shutil
    import wave

    from terminal_bridge.voice import EspeakVoice, NullPlayer

    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng is not installed")
    app = make_app(stack.port, tmp_path / "t.json")
    player = NullPlayer()
    app.devices.voice = voice = EspeakVoice(tmp_path / "voice", player=player)
    assert (await app.sale(100, card=swipe_of(stack.card("cup", 0)), pin=PIN)).ok
    assert not (await app.sale(100, card=swipe_of(stack.card("cup", 0)), pin="000000")).ok
    for _ in range(1500):  # prompts are rendered and played in worker threads
        if len(player.played) >= 2:
            break
        await asyncio.sleep(0.02)
    assert player.played == [voice.prompt_path("approved"), voice.prompt_path("declined")]
    with wave.open(str(player.played[0])) as w:
        assert w.getnframes() / w.getframerate() > 0.3  # a real spoken prompt, not an empty file


@pytest.mark.parametrize("algorithm", ["x9.19", "x9.9"])
async def test_mac_algorithm_per_terminal_profile(stack: Stack, tmp_path: Path, algorithm: str) -> None:
    from hsm_sim import lmk

    tid, tmk = {"x9.19": "MACX9190", "x9.9": "MACX9900"}[algorithm], testbed.test_tmk(77)
    stack.registry.add(tid, MERCHANT_ID, lmk.encrypt_under_lmk(tmk, "TMK"), key_mode="003", mac_algorithm=algorithm)
    cfg = TerminalConfig("127.0.0.1", stack.port, tid, MERCHANT_ID, tmk, mac_algorithm=algorithm)
    app = TerminalApp(cfg, state_path=tmp_path / "t.json")
    app.devices.display = ConsoleDisplay(out=open("/dev/null", "w"))  # noqa: SIM115
    res = await app.sale(1000, card=swipe_of(stack.card("cup", 0)), pin=PIN)
    assert res.ok and res.reversal is None, res  # the switch checked our MAC and we checked its MAC
    wrong = TerminalApp(TerminalConfig("127.0.0.1", stack.port, tid, MERCHANT_ID, tmk, mac_algorithm="pos-ecb"))
    wrong.devices.display = app.devices.display
    bad = await wrong.sale(1000, card=swipe_of(stack.card("cup", 0)), pin=PIN)
    assert not bad.ok and bad.rc == "A0"  # the host refuses a MAC made with another algorithm


@pytest.mark.filterwarnings("ignore::cryptography.utils.CryptographyDeprecationWarning")  # psec's TDES use
async def test_wire_bytes_against_independent_libraries(stack: Stack, tmp_path: Path) -> None:
    """The 0200 as sent: pyiso8583 decodes it with POS_SPEC, psec verifies its X9.19 MAC and its PIN block."""
    import iso8583
    import psec

    from _fastcore import crypto
    from _fastcore.spec import POS_SPEC
    from hsm_sim import lmk

    tid, tmk = "WIRE0001", testbed.test_tmk(78)
    stack.registry.add(tid, MERCHANT_ID, lmk.encrypt_under_lmk(tmk, "TMK"), key_mode="003", mac_algorithm="x9.19")
    proxy = await Proxy(stack.port).start()
    try:
        cfg = TerminalConfig("127.0.0.1", proxy.port, tid, MERCHANT_ID, tmk, mac_algorithm="x9.19")
        app = TerminalApp(cfg, state_path=tmp_path / "t.json")
        app.devices.display = ConsoleDisplay(out=open("/dev/null", "w"))  # noqa: SIM115
        card = stack.card("cup", 0)
        res = await app.sale(4321, card=swipe_of(card), pin=PIN)
        assert res.ok, res
        body = proxy.raw[-1]
        doc, _ = iso8583.decode(bytearray(body), POS_SPEC)  # pyiso8583, not our codec
        assert (doc["t"], doc["3"], doc["4"], doc["11"], doc["41"]) == ("0200", "000000", "000000004321", res.stan, tid)
        assert doc["35"] == f"{card.pan}D{card.expiry}1010000000000" and doc["22"] == "021"
        mak = crypto.tdes_ecb_decrypt(tmk, bytes.fromhex(app.state.keys.mak))
        assert psec.mac.generate_retail_mac(mak, mak, body[:-8], padding=1) == body[-8:]
        pik = crypto.tdes_ecb_decrypt(tmk, bytes.fromhex(app.state.keys.pik))
        clear = psec.des.decrypt_tdes_ecb(pik, bytes.fromhex(doc["52"]))
        assert psec.pinblock.decode_pinblock_iso_0(clear, card.pan) == PIN
    finally:
        await proxy.stop()
