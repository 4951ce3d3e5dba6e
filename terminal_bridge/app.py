"""The POS terminal application: sign-on, sale, balance, void, refund, QR sale, settlement + batch upload.

:class:`TerminalApp` drives the device layer (card readers, EMV kernel, PIN pad, printer,
display, voice) and talks to the switch through :class:`terminal_bridge.client.PosClient`.
Its durable memory is :class:`terminal_bridge.state.StateStore` (saved before every request
goes out and after every answer).

Reversal rules (pos-8583-dialect.md §7): before a request that reverses on no answer (sale,
void, QR sale) goes out, a pending reversal is stored with reason ``98``.  It is cleared only by
the answer.  No answer → the 0400 goes out with ``98``; an approved answer whose MAC does not
verify → ``A0``; a chip card that declines (AAC) in the 2nd GENERATE AC after an online approval
→ ``06``.  A pending reversal is sent before anything else, also after a restart; the host's
``00``/``12``/``25`` clears it.  A request that never reached the wire needs no reversal.

Python API (scripted use, tests, the demo)::

    app = TerminalApp(TerminalConfig(host, port, tid, mid, tmk), state_path="t.json")
    await app.sign_on()
    r = await app.sale(1234, card=Swipe(";6212...=3012101...?"), pin="123456")
    r = await app.sale(500, card=Insert(SoftCard(...)), pin="123456")
    r = await app.void(r.stan, card=...)
    r = await app.settle()
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import datetime
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from _fastcore import crypto
from _fastcore import fields as F
from _fastcore.spec import RESPONSE_CODES
from switch.logsafe import kv, mask_pan

from . import emv_tlv
from .apdu import DirectTransport
from .client import NetworkError, PosClient, Reply, ReplyError, check_reply, encode, encode_maced, mac_ok
from .devices import CardData, CardReadError, DeviceError, EntryMode, SwipeData
from .display import ConsoleDisplay
from .emv import EmvKernel, EmvTransaction, TerminalParams, build_field55
from .magstripe import FeedMagstripeReader
from .pinpad import ScriptedPinPad
from .qr import QrCodeError, classify_payment_code
from .receipt import EscPosReceiptPrinter, Receipt, open_printer
from .state import REVERSAL_DROP, BatchRecord, PendingReversal, StateStore, StoredKeys, TerminalState

log = logging.getLogger(__name__)

NETWORK_MESSAGE = "网络异常，请重试"
#: field 48 of the 0500 counts debits and credits per half in 3 digits (dialect §8): a batch holding
#: this many of one kind is full and is settled before the next transaction that adds a record
MAX_BATCH_COUNT = F.MAX_SETTLEMENT_COUNT
#: operations that add a debit / a credit to the batch's settlement totals
_DEBIT_OPS = frozenset({"sale", "qr_sale", "completion"})
_CREDIT_OPS = frozenset({"void", "refund", "completion_void"})
REVERSAL_DONE = frozenset(("00", "12", "25"))
APPROVED = frozenset(("00", "10", "11", "A2", "A4", "A5", "A6"))
#: field 39 -> what the merchant's screen says (the rest: "交易失败 NN" + the English text of §10)
RC_TEXT = {
    "00": "交易成功", "01": "请持卡人与发卡银行联系", "03": "无效商户", "04": "此卡被没收", "05": "持卡人认证失败",
    "12": "无效交易", "13": "无效金额", "14": "无效卡号", "15": "无此发卡行", "25": "原交易不存在",
    "30": "报文格式错误", "51": "余额不足", "54": "过期卡", "55": "密码错", "57": "不允许此卡交易",
    "61": "超出金额限制", "64": "原始金额不符", "75": "密码错误次数超限", "91": "发卡行无应答", "92": "发卡行线路异常",
    "94": "重复交易", "96": "系统故障", "97": "终端未登记", "98": "发卡行超时", "99": "PIN格式错，请重新签到",
    "A0": "MAC校验错，请重新签到",
}


# ---------------------------------------------------------------------------- card inputs


@dataclass(frozen=True)
class Swipe:
    """A magstripe swipe as a keyboard-wedge reader types it; ``fallback`` after a failed chip read."""

    text: str = field(repr=False)
    fallback: bool = False


@dataclass(frozen=True)
class Insert:
    """A contact chip card: a :class:`~terminal_bridge.apdu.CardApplet` (e.g. SoftCard) or an APDU transport."""

    card: Any


@dataclass(frozen=True)
class Tap:
    """A contactless card: an applet (run over DirectTransport) or a transport (PC/SC, nfcpy ``udp:``)."""

    card: Any


@dataclass(frozen=True)
class Scan:
    """A customer payment code scanned by the merchant (WeChat Pay / Alipay / UnionPay C2B)."""

    code: str


CardInput = Swipe | Insert | Tap | Scan


@dataclass
class Result:
    """Outcome of one operation, as the merchant sees it."""

    operation: str
    ok: bool
    rc: str = ""
    message: str = ""
    amount: int = 0
    stan: str = ""
    rrn: str = ""
    auth_code: str = ""
    balance: int | None = None
    receipt: Receipt | None = None
    reversal: str | None = None  # reason of a reversal this operation triggered
    reversal_sent: bool = False
    display: list[str] = field(default_factory=list)
    detail: dict[str, Any] = field(default_factory=dict)

    @property
    def approved(self) -> bool:
        return self.ok

    @property
    def mac_ok(self) -> bool | None:
        """False when the reply's MAC did not verify (the A0 reversal went out); None otherwise."""
        return False if self.reversal == "A0" else None


# ---------------------------------------------------------------------------- configuration / devices


@dataclass
class TerminalConfig:
    host: str
    port: int
    terminal_id: str
    merchant_id: str
    tmk: bytes = field(repr=False)
    merchant_name: str = "POSSWITCH TEST MERCHANT"
    key_mode: str = "003"  # 60.3 of the sign-on: 001 / 003 / 004
    mac_algorithm: str = "pos-ecb"
    connect_timeout: float = 5.0
    read_timeout: float = 30.0
    connect_retries: int = 2
    retry_delay: float = 0.5
    reversal_attempts: int = 3  # immediate 0400 tries after a timeout / bad MAC / card decline
    operator: str = "01"
    check_luhn: bool = True


@dataclass
class Devices:
    """The devices the application uses; :func:`software_devices` builds the headless set."""

    display: Any
    pinpad: Any  # ScriptedPinPad / ConsolePinPad (holds the TMK, loads the PIK)
    printer: Any = None  # ReceiptPrinter
    escpos: Any = None  # the python-escpos object behind ``printer`` (status for the self-test)
    magstripe: Any = None  # MagstripeReader
    chip: Any = None  # callable -> ApduTransport (contact reader) for card=None
    contactless: Any = None  # callable -> ApduTransport (contactless reader)
    qr: Any = None  # QrScanner
    voice: Any = None
    kind: str = "software"
    reader_name: str = ""  # PC/SC reader name (substring) of ``chip``, for the self-test


def software_devices(tmk: bytes, *, printer_url: str = "dummy:", display: Any = None,
                     check_luhn: bool = True) -> Devices:
    """Headless devices: console display, scripted PIN pad, ESC/POS printer (``dummy:`` keeps bytes)."""
    escpos = open_printer(printer_url)
    return Devices(display=display or ConsoleDisplay(), pinpad=ScriptedPinPad(tmk=tmk),
                   printer=EscPosReceiptPrinter(escpos), escpos=escpos,
                   magstripe=FeedMagstripeReader(check_luhn=check_luhn), kind="software")


@dataclass
class _Card:
    data: CardData
    fallback: bool = False
    kernel: EmvKernel | None = None
    emv: EmvTransaction | None = None
    qr_code: str = ""


# ---------------------------------------------------------------------------- the application


class TerminalApp:
    """One POS terminal (one terminal ID), its state file and its devices."""

    def __init__(self, config: TerminalConfig, *, state_path: str | Path | None = None,
                 devices: Devices | None = None, clock: Any = None) -> None:
        self.config = config
        self.tid = config.terminal_id.ljust(8)[:8]
        self.mid = config.merchant_id.ljust(15)[:15]
        self.devices = devices or software_devices(config.tmk, check_luhn=config.check_luhn)
        self.client = PosClient(config.host, config.port, connect_timeout=config.connect_timeout,
                                read_timeout=config.read_timeout, connect_retries=config.connect_retries,
                                retry_delay=config.retry_delay)
        self._store = StateStore(state_path, config.tmk) if state_path is not None else None
        if self._store is not None:
            self._store.lock()  # one terminal process per state file
            try:
                self.state = self._store.load(self.tid, self.mid)
            except BaseException:
                self._store.unlock()
                raise
        else:
            self.state = TerminalState(self.tid, self.mid)
        self._clock = clock or datetime.datetime.now
        self._mak: bytes | None = None
        self._tdk: bytes | None = None
        self._lock = asyncio.Lock()
        self._fallback_allowed = False  # the last chip read failed: a chip card may be swiped (60.5 = 2)
        self._last_input: Any = None  # the card input of the current operation (for the fallback rule)
        self._voice_pool: concurrent.futures.ThreadPoolExecutor | None = None
        self._opened: Any = None  # a transport the app opened from a reader (closed after the operation)
        if self.state.keys is not None and self.state.signed_on:
            try:
                self._install(self.state.keys)
            except DeviceError as exc:  # TMK changed since: the stored keys are useless
                log.warning("stored keys refused", extra=kv(tid=self.tid, error=str(exc)))
                self.state.signed_on = False
                self.state.need_sign_on = True

    def close(self) -> None:
        """Release the state file and the voice worker (the state itself is always saved already)."""
        self._release_card()
        if self._store is not None:
            self._store.unlock()
        if self._voice_pool is not None:
            self._voice_pool.shutdown(wait=False)
            self._voice_pool = None

    # ------------------------------------------------------------------ small helpers
    def save(self) -> None:
        if self._store is not None:
            self._store.save(self.state)

    def show(self, *lines: str) -> list[str]:
        self.devices.display.show(*lines)
        return list(lines)

    def say(self, prompt: str) -> None:
        """Voice prompt on a worker thread (rendering and playback block); failures are logged only."""
        voice = self.devices.voice
        if voice is None:
            return

        def speak() -> None:
            try:
                voice.say(prompt)
            except DeviceError as exc:
                log.warning("voice failed", extra=kv(prompt=prompt, error=str(exc)))

        if self._voice_pool is None:  # one worker: prompts are spoken in the order they were asked for
            self._voice_pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="voice")
        self._voice_pool.submit(speak)

    @property
    def signed_on(self) -> bool:
        return self.state.signed_on and self._mak is not None

    def _f60(self, type_code: str, network_code: str = "000", card: _Card | None = None) -> str:
        if card is None or card.qr_code:
            return F.build_field60(type_code, self.state.batch, network_code)
        cap = "6" if card.data.entry_mode is EntryMode.CONTACTLESS else "5"
        return F.build_field60(type_code, self.state.batch, network_code, cap, "2" if card.fallback else "0")

    def _base(self, mti: str, proc: str | None, type_code: str, network_code: str = "000",
              card: _Card | None = None) -> dict[str, str]:
        doc = {"t": mti, "11": self.state.take_stan(), "41": self.tid, "42": self.mid,
               "60": self._f60(type_code, network_code, card)}
        if proc is not None:
            doc["3"] = proc
        return doc

    def _network_failure(self, op: str, exc: Exception, **extra: Any) -> Result:
        log.warning("network failure", extra=kv(tid=self.tid, op=op, error=str(exc)))
        return Result(op, False, "NET", f"{NETWORK_MESSAGE} ({exc})", display=self.show(NETWORK_MESSAGE, str(exc)[:32]),
                      **extra)

    # ------------------------------------------------------------------ keys
    def _unwrap(self, name: str, ct_hex: str, cv_hex: str) -> bytes:
        key = crypto.tdes_ecb_decrypt(self.config.tmk, bytes.fromhex(ct_hex))
        if crypto.kcv(key, length=4) != bytes.fromhex(cv_hex):
            raise DeviceError(f"{name} check value mismatch: key refused (TMK out of sync?)")
        return key

    def _install(self, keys: StoredKeys) -> None:
        """Decrypt MAK/TDK with the TMK, load the PIK into the PIN pad; every check value must match."""
        mak = self._unwrap("MAK", keys.mak, keys.mak_cv)
        tdk = self._unwrap("TDK", keys.tdk, keys.tdk_cv or "") if keys.tdk else None
        self._unwrap("PIK", keys.pik, keys.pik_cv)  # refuse before touching the PIN pad
        self.devices.pinpad.load_pik(bytes.fromhex(keys.pik), bytes.fromhex(keys.pik_cv))
        self._mak, self._tdk = mak, tdk

    async def sign_on(self) -> Result:
        """0800/0810: new working keys (checked against their check values) and the host's batch number."""
        doc = self._base("0800", None, "00", self.config.key_mode)
        doc["63"] = self.config.operator.ljust(3)
        self.save()
        try:
            reply = await self.client.exchange(encode(doc))
            check_reply(doc, reply)
        except NetworkError as exc:
            return self._network_failure("sign_on", exc)
        except ReplyError as exc:
            return Result("sign_on", False, "REPLY", str(exc), display=self.show("签到失败", str(exc)[:32]))
        if reply.rc != "00":
            text = RC_TEXT.get(reply.rc, RESPONSE_CODES.get(reply.rc, ""))
            return Result("sign_on", False, reply.rc, f"sign-on refused: {reply.rc} {text}",
                          display=self.show("签到失败", f"{reply.rc} {text}"))
        try:
            wk = F.parse_working_keys(reply.doc.get("62", ""), self.config.key_mode)
            keys = StoredKeys(wk.mode, wk.pik.hex().upper(), wk.pik_cv.hex().upper(), wk.mak.hex().upper(),
                              wk.mak_cv.hex().upper(), wk.tdk.hex().upper() if wk.tdk else None,
                              wk.tdk_cv.hex().upper() if wk.tdk_cv else None)
            self._install(keys)
        except (F.FieldFormatError, DeviceError) as exc:
            self.state.signed_on = False
            self.state.need_sign_on = True
            self.state.last_mac_error = f"sign-on keys refused: {exc}"
            self.save()
            log.error("working keys refused", extra=kv(tid=self.tid, error=str(exc)))
            return Result("sign_on", False, "KEY", f"密钥校验错 {exc}", display=self.show("密钥校验错", "请联系收单机构"))
        self.state.keys = keys
        self.state.signed_on = True
        self.state.need_sign_on = False
        self.state.last_mac_error = ""
        batch = F.parse_field60(reply.doc["60"]).batch_number if reply.doc.get("60") else self.state.batch
        if not self.state.records:
            self.state.batch = batch
        self.save()
        log.info("signed on", extra=kv(tid=self.tid, batch=self.state.batch, mode=keys.mode))
        return Result("sign_on", True, "00", "签到成功", detail={"batch": self.state.batch},
                      display=self.show("签到成功", f"批次号 {self.state.batch:06d}"))

    # ------------------------------------------------------------------ reversal
    def _record_reversal(self, req: dict[str, str], card: _Card | None) -> None:
        stored = {k: v for k, v in req.items() if k not in REVERSAL_DROP}
        if card is not None and card.emv is not None:
            stored["55"] = build_field55(card.emv.tags, "reversal").hex().upper()
        # "sent" from the start: a crash between this fsync and the send costs one reversal answered 25;
        # a connect failure (known not sent) drops the record below
        self.state.pending_reversal = PendingReversal(stored, "98", sent=True)
        self.save()

    async def send_pending_reversal(self) -> Result | None:
        """Send the stored 0400, if any.  ``None`` when there was nothing to send."""
        rev = self.state.pending_reversal
        if rev is None:
            return None
        if not rev.sent:  # the original never left the terminal: nothing to undo
            self.state.pending_reversal = None
            self.save()
            return None
        if self._mak is None:
            return Result("reversal", False, "KEY", "sign on first", display=self.show("请先签到"))
        doc = {k: v for k, v in rev.request.items()}
        doc["t"] = "0400"
        doc["39"] = rev.reason
        try:
            reply = await self.client.exchange(encode_maced(doc, self._mak, self.config.mac_algorithm))
            check_reply(doc, reply)
        except NetworkError as exc:
            return self._network_failure("reversal", exc, reversal=rev.reason)
        except ReplyError as exc:
            return Result("reversal", False, "REPLY", str(exc), reversal=rev.reason)
        self._host_requests(reply)
        if reply.rc in REVERSAL_DONE:
            self.state.pending_reversal = None
            self.save()
            log.info("reversal done", extra=kv(tid=self.tid, stan=doc.get("11"), reason=rev.reason, rc=reply.rc))
            self.say("reversal")
            return Result("reversal", True, reply.rc, "冲正成功", stan=doc.get("11", ""), reversal=rev.reason,
                          reversal_sent=True, display=self.show("冲正成功"))
        if reply.rc == "A0":
            self.state.need_sign_on = True
            self.state.last_mac_error = "reversal answered A0"
            self.save()
        return Result("reversal", False, reply.rc, f"reversal not accepted: {reply.rc}", reversal=rev.reason,
                      display=self.show("冲正失败", reply.rc))

    async def _reverse_now(self) -> Result | None:
        """Send the pending reversal right away: up to ``reversal_attempts`` tries while the network fails
        (``retry_delay`` apart); what is still pending goes out before the next operation."""
        res = None
        for attempt in range(max(1, self.config.reversal_attempts)):
            if attempt:
                await asyncio.sleep(self.config.retry_delay)
            res = await self.send_pending_reversal()
            if res is None or res.ok or res.rc != "NET":
                break
        return res

    async def _prepare(self, op: str) -> Result | None:
        """Before any transaction: pending reversal first, then a sign-on when needed.  None = go ahead."""
        if self.state.pending_reversal is not None and self.state.pending_reversal.sent and self._mak is not None:
            res = await self.send_pending_reversal()
            if res is not None and not res.ok and res.rc == "A0":
                signed = await self.sign_on()
                if signed.ok:
                    res = await self.send_pending_reversal()
            if res is not None and not res.ok:
                res.operation = op
                return res
        if not self.signed_on or self.state.need_sign_on:
            res = await self.sign_on()
            if not res.ok:
                res.operation = op
                return res
        if self.state.pending_reversal is not None:  # signed on only now
            res = await self.send_pending_reversal()
            if res is not None and not res.ok:
                res.operation = op
                return res
        if self._batch_full(op):  # like a real terminal: settle the full batch first
            log.info("batch full, settling first", extra=kv(tid=self.tid, batch=self.state.batch, op=op))
            res = await self._settle_locked()
            if not res.ok:
                return Result(op, False, "BATCH", f"batch full and settlement failed: {res.message}",
                              display=self.show("批次已满", "请先结算"))
        return None

    def _batch_full(self, op: str) -> bool:
        """True when ``op`` would add a debit (or credit) to a batch already holding the most field 48 counts."""
        if op in _DEBIT_OPS:
            return any(half.debit_count >= MAX_BATCH_COUNT for half in self.totals())
        if op in _CREDIT_OPS:
            return any(half.credit_count >= MAX_BATCH_COUNT for half in self.totals())
        return False

    def _host_requests(self, reply: Reply) -> None:
        """Header digit 6 = 3: the host wants a new sign-on (e.g. after a key rotation)."""
        if reply.processing_request == "3":
            log.info("host requests sign-on", extra=kv(tid=self.tid))
            self.state.need_sign_on = True
            self.save()

    # ------------------------------------------------------------------ cards
    async def _read_card(self, card: CardInput | None, amount: int, txn_type: str, stan: int,
                         generate_ac: bool) -> _Card:
        self._release_card()
        self._last_input = card
        if card is None:
            card = await self._wait_for_card()  # type: ignore[assignment]
            self._last_input = card  # type: ignore[assignment]
            if isinstance(card, Insert | Tap):  # opened here: closed when the operation is over
                self._opened = card.card
        if isinstance(card, Scan):
            classify_payment_code(card.code)
            return _Card(CardData(EntryMode.QR, "", ""), qr_code=card.code)
        if isinstance(card, Swipe | SwipeData):
            if isinstance(card, Swipe):
                reader = self.devices.magstripe
                if not isinstance(reader, FeedMagstripeReader):
                    reader = FeedMagstripeReader(check_luhn=self.config.check_luhn)
                reader.feed(card.text)
                swipe, forced = await reader.read_swipe(), card.fallback
            else:
                swipe, forced = card, False
            t2 = swipe.track2
            if t2 is None:
                raise CardReadError("track 2 not read", track=2)
            fallback = forced or (t2.chip_card and self._fallback_allowed)
            if t2.chip_card and not fallback:
                raise CardReadError("chip card: please insert the card (请插卡)")
            self._fallback_allowed = False
            data = CardData(EntryMode.MAGSTRIPE, t2.pan, t2.expiry, track2=t2.raw)
            return _Card(data, fallback=fallback)
        contactless = isinstance(card, Tap)
        target = card.card
        transport = target if hasattr(target, "transmit") else DirectTransport(target)
        kernel = EmvKernel(transport, TerminalParams(ifd_serial=self.tid), contactless=contactless)
        emv = await asyncio.to_thread(kernel.start, amount, txn_type=txn_type, sequence=stan)
        if contactless:
            emv.card.entry_mode = EntryMode.CONTACTLESS
        return _Card(emv.card, kernel=kernel, emv=emv if generate_ac else None)

    def _release_card(self) -> None:
        """Close a reader connection the app opened itself (real devices); callers' transports stay open."""
        opened, self._opened = self._opened, None
        if opened is not None:
            try:
                opened.close()
            except Exception as exc:  # noqa: BLE001 - a reader that fails to close must not fail the sale
                log.warning("card reader close failed", extra=kv(error=repr(exc)))

    async def _wait_for_card(self) -> CardInput | SwipeData:
        """Real devices: whichever comes first, a swipe, an inserted or a tapped card ("请刷卡/插卡/挥卡")."""
        d = self.devices
        self.show("请刷卡/插卡/挥卡", "swipe, insert or tap")
        self.say("insert_card")
        waits: dict[asyncio.Future[Any], str] = {}
        if d.magstripe is not None and not isinstance(d.magstripe, FeedMagstripeReader):
            waits[asyncio.ensure_future(d.magstripe.read_swipe())] = "swipe"
        if d.chip is not None:
            waits[asyncio.ensure_future(asyncio.to_thread(d.chip))] = "chip"
        if d.contactless is not None:
            waits[asyncio.ensure_future(asyncio.to_thread(d.contactless))] = "tap"
        if not waits:
            raise CardReadError("no card reader configured")
        pending = set(waits)
        errors: list[str] = []
        try:
            while pending:
                done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                for fut in done:
                    if fut.exception() is not None:  # this reader gave up (no card, reader error)
                        errors.append(f"{waits[fut]}: {fut.exception()}")
                        continue
                    value, how = fut.result(), waits[fut]
                    if how == "swipe":
                        return value
                    return Insert(value) if how == "chip" else Tap(value)
        finally:
            for fut in pending:  # reader threads finish on their own timeout
                fut.cancel()
        raise CardReadError("no card read (" + "; ".join(errors) + ")")

    def _card_fields(self, doc: dict[str, str], card: _Card, pin_block: bytes | None) -> None:
        cd = card.data
        pin_digit = "1" if pin_block is not None else "2"
        if card.qr_code:
            doc["22"] = "032"
            doc["48"] = card.qr_code
            return
        if cd.entry_mode is EntryMode.MAGSTRIPE:
            doc["22"] = "02" + pin_digit
            doc["35"] = F.track_to_wire(cd.track2 or "")
        else:
            doc["2"] = cd.pan
            doc["14"] = cd.expiry
            if cd.psn:
                doc["23"] = f"{int(cd.psn, 16) if not cd.psn.isdigit() else int(cd.psn):03d}"
            if cd.track2:
                doc["35"] = F.track_to_wire(cd.track2)
            doc["22"] = cd.entry_mode.value + pin_digit
            if card.emv is not None and card.emv.field55:
                doc["55"] = card.emv.field55.hex().upper()
        encrypted = False
        if self._tdk is not None and "35" in doc:  # 60.3 004: track 2 under the TDK (dialect §9.3)
            padded, start, block = F.tdk_block(doc["35"])
            doc["35"] = F.tdk_replace(padded, start, crypto.tdes_ecb_encrypt(self._tdk, block))
            encrypted = True
        if pin_block is not None:
            doc["26"] = "12"
            doc["52"] = pin_block.hex().upper()
        if pin_block is not None or encrypted:
            doc["53"] = F.build_field53(True, double_length=self.config.key_mode != "001",
                                        tracks_encrypted=encrypted)

    async def _pin(self, card: _Card, pin: str | None, amount: int | None) -> bytes | None:
        if card.qr_code:
            return None
        pad = self.devices.pinpad
        if isinstance(pad, ScriptedPinPad):
            if pin is None:
                return None
            pad.enter(pin)
        return await pad.get_pin_block(card.data.pan, amount_fen=amount)

    # ------------------------------------------------------------------ the online exchange
    async def _online(self, op: str, doc: dict[str, str], card: _Card | None, *, reverses: bool) -> tuple[Result, Reply | None]:
        """MAC, store the reversal, send, check the answer (MAC, card's 2nd GENERATE AC)."""
        assert self._mak is not None
        body = encode_maced(doc, self._mak, self.config.mac_algorithm)
        if reverses:
            self._record_reversal(doc, card)
        else:
            self.save()
        base = Result(op, False, amount=int(doc.get("4", "0") or 0), stan=doc["11"])
        try:
            reply = await self.client.exchange(body)
            check_reply(doc, reply)
        except NetworkError as exc:
            if reverses and not exc.sent:
                self.state.pending_reversal = None
                self.save()
            res = self._network_failure(op, exc, amount=base.amount, stan=base.stan)
            if card is not None and card.emv is not None:
                await self._second_ac(card, None, None)
            if reverses and exc.sent:
                res.reversal = "98"
                rev = await self._reverse_now()
                res.reversal_sent = bool(rev and rev.ok)
            return res, None
        except ReplyError as exc:  # garbage for this request: treat like no answer
            res = Result(op, False, "REPLY", str(exc), amount=base.amount, stan=base.stan,
                         display=self.show("交易失败", "应答报文错误"))
            if reverses:
                res.reversal = "98"
                rev = await self._reverse_now()
                res.reversal_sent = bool(rev and rev.ok)
            return res, None
        self._host_requests(reply)
        rc = reply.rc
        base.rc = rc
        base.rrn = reply.doc.get("37", "")
        base.auth_code = reply.doc.get("38", "")
        if rc == "00" and not (("64" in reply.doc) and mac_ok(reply.body, self._mak, self.config.mac_algorithm)):
            log.error("bad reply MAC", extra=kv(tid=self.tid, stan=doc["11"], op=op))
            self.state.last_mac_error = "reply MAC did not verify"
            self.state.need_sign_on = True
            if card is not None and card.emv is not None:
                await self._second_ac(card, None, None)
            base.message = "应答MAC校验错 reply MAC error"
            base.display = self.show("交易失败", "MAC校验错")
            if reverses:
                rev_rec = self.state.pending_reversal
                assert rev_rec is not None
                rev_rec.reason = "A0"
                if base.auth_code.strip():
                    rev_rec.request["38"] = base.auth_code  # §7: the original's auth code when there is one
                self.save()
                base.reversal = "A0"
                rev = await self._reverse_now()
                base.reversal_sent = bool(rev and rev.ok)
            return base, None
        done = None
        if card is not None and card.emv is not None:
            done = await self._second_ac(card, rc, reply.doc.get("55"))
            if done is not None and done.reversal_reason and reverses:
                self.state.pending_reversal = PendingReversal(
                    {**self.state.pending_reversal.request, "55": done.reversal_field55.hex().upper(),  # type: ignore[union-attr]
                     **({"38": base.auth_code} if base.auth_code else {})}, done.reversal_reason, sent=True)
                self.save()
                base.rc = rc
                base.message = "卡片拒绝 card declined after online approval"
                base.display = self.show("交易失败", "卡片拒绝")
                base.reversal = done.reversal_reason
                rev = await self._reverse_now()
                base.reversal_sent = bool(rev and rev.ok)
                return base, None
        if reverses:
            self.state.pending_reversal = None
        self.save()
        if card is not None and getattr(done, "script_results", b""):
            base.detail["script_advice"] = await self._script_advice(doc, reply, card, done)
        base.ok = rc in APPROVED
        text = RC_TEXT.get(rc, RESPONSE_CODES.get(rc, ""))
        base.message = text
        if not base.ok:
            base.display = self.show("交易失败", f"{rc} {text}"[:32])
            self.say("declined")
        if rc == "A0":
            self.state.need_sign_on = True
            self.state.last_mac_error = "host answered A0 (MAC error)"
            self.save()
        return base, reply

    async def _script_advice(self, req: dict[str, str], reply: Reply, card: _Card, done: Any) -> str:
        """0620 script result advice (60.3 951, §6): DF31 from the card after issuer scripts ran.

        Best effort: the answer (or ``NET``) is returned and logged; an advice is never reversed.
        """
        assert self._mak is not None
        f60 = F.parse_field60(req["60"])
        doc = self._base("0620", req.get("3"), "00", "951")
        doc["60"] = F.build_field60("00", self.state.batch, "951", f60.read_capability, f60.ic_condition)
        doc.update({f: req[f] for f in ("2", "4", "22", "23", "49") if f in req})
        doc["37"] = reply.doc.get("37", "0" * 12)
        if reply.doc.get("38", "").strip():
            doc["38"] = reply.doc["38"]
        doc["55"] = done.tc_field55.hex().upper()
        doc["61"] = F.build_field61(f60.batch, req["11"], self._clock().strftime("%m%d"))
        self.save()
        try:
            answer = await self.client.exchange(encode_maced(doc, self._mak, self.config.mac_algorithm))
            check_reply(doc, answer)
        except (NetworkError, ReplyError) as exc:
            log.warning("script advice not delivered", extra=kv(tid=self.tid, stan=doc["11"], error=str(exc)))
            return "NET"
        log.info("script advice", extra=kv(tid=self.tid, stan=doc["11"], rc=answer.rc,
                                           df31=done.script_results.hex().upper()))
        return answer.rc

    async def _second_ac(self, card: _Card, rc: str | None, f55: str | None) -> Any:
        assert card.kernel is not None and card.emv is not None
        try:
            return await asyncio.to_thread(card.kernel.second_generate_ac, card.emv, rc,
                                           bytes.fromhex(f55) if f55 else None)
        except DeviceError as exc:
            log.warning("2nd GENERATE AC failed", extra=kv(tid=self.tid, error=str(exc)))
            if rc is not None and rc in APPROVED:
                return _CardFailed(build_field55(card.emv.tags, "reversal"))
            return None

    async def _after(self, result: Result) -> Result:
        """Act on the host's processing request once the operation is over."""
        self._release_card()
        if self.state.need_sign_on and self.state.pending_reversal is None:
            try:
                await self.sign_on()
            except Exception as exc:  # noqa: BLE001 - best effort, retried before the next transaction
                log.warning("re-sign-on failed", extra=kv(error=repr(exc)))
        return result

    def _card_error(self, op: str, exc: Exception, card: CardInput | None = None) -> Result:
        """A card that could not be read; after a chip failure the next swipe of a chip card is a fallback."""
        log.warning("card read failed", extra=kv(tid=self.tid, op=op, error=str(exc)))
        self._release_card()
        card = card or self._last_input
        if isinstance(card, Insert) and isinstance(exc, CardReadError):
            self._fallback_allowed = True
            return Result(op, False, "CARD", f"读卡失败，请刷卡: {exc}", detail={"fallback_allowed": True},
                          display=self.show("读卡失败，请刷卡", str(exc)[:32]))
        return Result(op, False, "CARD", f"读卡失败: {exc}", display=self.show("读卡失败，请重试", str(exc)[:32]))

    def _receipt(self, kind: str, res: Result, card: _Card, reply: Reply, amount: int) -> Receipt:
        org = reply.doc.get("63", "")[:3] or "CUP"
        tc = ""
        if card.emv is not None and "9F26" in card.emv.tags:
            tc = bytes(card.emv.tags["9F26"]).hex().upper()
        return Receipt(
            merchant_name=self.config.merchant_name, merchant_id=self.mid, terminal_id=self.tid,
            pan=card.data.pan or card.qr_code, entry_mode=card.data.entry_mode, amount_fen=amount,
            rrn=res.rrn, auth_code=res.auth_code, batch=self.state.batch, trace=int(res.stan), when=self._clock(),
            txn_type=kind, operator=self.config.operator, card_org=org, expiry=card.data.expiry,
            aid=card.data.aid or "", app_label=card.data.app_label or "", tc=tc,
            reference=card.qr_code and mask_pan(card.qr_code))

    def _print(self, receipt: Receipt, res: Result) -> None:
        res.receipt = receipt
        if self.devices.printer is None:
            return
        try:
            self.devices.printer.print_receipt(receipt)
        except DeviceError as exc:  # the transaction stands; the slip can be reprinted
            log.error("receipt not printed", extra=kv(tid=self.tid, error=str(exc)))
            res.detail["printer_error"] = str(exc)
            res.display = self.show(*(res.display[:1] or ["交易成功"]), "打印机故障，请检查")

    def _approved(self, kind: str, res: Result, card: _Card, reply: Reply, amount: int, **extra: Any) -> None:
        org = reply.doc.get("63", "")[:3] or "CUP"
        entry = extra.pop("entry", "") or card.data.entry_mode.value + "0"
        if res.rc == "10" and reply.doc.get("4", "").isdigit():  # partial approval: the host's amount counts
            amount = int(reply.doc["4"])
            res.amount = amount
        rec = BatchRecord(kind=kind, amount=amount, stan=res.stan, batch=self.state.batch, rrn=res.rrn,
                          auth_code=res.auth_code, date=self._clock().strftime("%m%d"),
                          entry=entry, card_org=org, pan=card.data.pan,
                          expiry=card.data.expiry, qr_code=card.qr_code, **extra)
        if card.emv is not None:
            rec.tc_field55 = build_field55(card.emv.tags, "tc_upload").hex().upper()
        self.state.records.append(rec)
        self.save()
        res.display = self.show("交易成功", f"RMB {amount / 100:.2f}")
        self.say("approved")
        self._print(self._receipt(kind, res, card, reply, amount), res)

    # ------------------------------------------------------------------ transactions
    async def sale(self, amount: int, card: CardInput | None = None, pin: str | None = None) -> Result:
        """Sale 0200/000000 (card or scanned payment code)."""
        async with self._lock:
            if amount <= 0:
                return Result("sale", False, "AMOUNT", "amount must be positive", display=self.show("金额错误"))
            blocked = await self._prepare("sale")
            if blocked:
                return blocked
            doc = self._base("0200", "000000", "22")
            try:
                c = await self._read_card(card, amount, "00", int(doc["11"]), generate_ac=True)
                pin_block = await self._pin(c, pin, amount)
                if c.emv is not None:
                    await asyncio.to_thread(c.kernel.first_generate_ac, c.emv,  # type: ignore[union-attr]
                                            pin_entered=pin_block is not None)
            except (DeviceError, QrCodeError, ValueError) as exc:
                return self._card_error("sale", exc, card)
            doc["60"] = self._f60("22", "000", c)
            doc.update({"4": f"{amount:012d}", "25": "00", "49": "156"})
            self._card_fields(doc, c, pin_block)
            res, reply = await self._online("sale", doc, c, reverses=True)
            if res.ok and reply is not None:
                self._approved("qr_sale" if c.qr_code else "sale", res, c, reply, amount, entry=doc.get("22", ""))
            return await self._after(res)

    async def balance(self, card: CardInput | None = None, pin: str | None = None) -> Result:
        """Balance inquiry 0200/310000 (no reversal)."""
        async with self._lock:
            blocked = await self._prepare("balance")
            if blocked:
                return blocked
            doc = self._base("0200", "310000", "01")
            try:
                c = await self._read_card(card, 0, "31", int(doc["11"]), generate_ac=True)
                pin_block = await self._pin(c, pin, None)
                if c.emv is not None:
                    await asyncio.to_thread(c.kernel.first_generate_ac, c.emv,  # type: ignore[union-attr]
                                            pin_entered=pin_block is not None)
            except (DeviceError, ValueError) as exc:
                return self._card_error("balance", exc, card)
            doc["60"] = self._f60("01", "000", c)
            doc.update({"25": "00", "49": "156"})
            self._card_fields(doc, c, pin_block)
            res, reply = await self._online("balance", doc, c, reverses=False)
            if res.ok and reply is not None and reply.doc.get("54"):
                try:
                    res.balance = F.parse_balance(reply.doc["54"]).amount
                except F.FieldFormatError as exc:
                    res.detail["balance_error"] = str(exc)
                if res.balance is not None:
                    res.display = self.show("余额查询成功", f"余额 RMB {res.balance / 100:.2f}")
            return await self._after(res)

    def find_record(self, stan: str) -> BatchRecord | None:
        stan = f"{int(stan):06d}"
        for r in self.state.records:
            if r.stan == stan and r.batch == self.state.batch:
                return r
        return None

    async def void(self, stan: str, card: CardInput | None = None, pin: str | None = None) -> Result:
        """Void 0200/200000 (60.1 23) of a sale of the open batch, named by its trace (voucher) number."""
        async with self._lock:
            orig = self.find_record(stan)
            if orig is None or orig.kind not in ("sale", "qr_sale") or orig.voided:
                return self._no_original("void", stan)
            return await self._referenced("void", "0200", "200000", "23", "00", orig.amount, orig, card, pin)

    async def preauth(self, amount: int, card: CardInput | None = None, pin: str | None = None) -> Result:
        """Pre-authorisation 0100/030000 (60.1 10, 25 = 06): holds funds, not in the settlement totals."""
        async with self._lock:
            if amount <= 0:
                return Result("preauth", False, "AMOUNT", "amount must be positive", display=self.show("金额错误"))
            blocked = await self._prepare("preauth")
            if blocked:
                return blocked
            doc = self._base("0100", "030000", "10")
            try:
                c = await self._read_card(card, amount, "03", int(doc["11"]), generate_ac=True)
                if c.qr_code:
                    raise CardReadError("a payment code cannot be pre-authorised")
                pin_block = await self._pin(c, pin, amount)
                if c.emv is not None:
                    await asyncio.to_thread(c.kernel.first_generate_ac, c.emv,  # type: ignore[union-attr]
                                            pin_entered=pin_block is not None)
            except (DeviceError, ValueError) as exc:
                return self._card_error("preauth", exc, card)
            doc["60"] = self._f60("10", "000", c)
            doc.update({"4": f"{amount:012d}", "25": "06", "49": "156"})
            self._card_fields(doc, c, pin_block)
            res, reply = await self._online("preauth", doc, c, reverses=True)
            if res.ok and reply is not None:
                self._approved("preauth", res, c, reply, amount, entry=doc.get("22", ""))
            return await self._after(res)

    async def preauth_void(self, stan: str, card: CardInput | None = None, pin: str | None = None) -> Result:
        """Pre-auth void 0100/200000 (60.1 11) of a pre-authorisation of the open batch, by its trace."""
        async with self._lock:
            orig = self.find_record(stan)
            if orig is None or orig.kind != "preauth" or orig.voided:
                return self._no_original("preauth_void", stan)
            return await self._referenced("preauth_void", "0100", "200000", "11", "06", orig.amount, orig, card,
                                          pin, with_date=True)

    async def completion(self, amount: int, stan: str | None = None, card: CardInput | None = None,
                         pin: str | None = None, *, rrn: str = "", auth_code: str = "", orig_date: str = "",
                         orig_trace: str = "000000", orig_batch: int = 0) -> Result:
        """Pre-auth completion 0200/000000 (60.1 20): by the pre-auth's trace in the open batch, or by its
        RRN + auth code + date (MMDD) (then ``card`` is needed); amount ≤ the pre-authorised amount."""
        async with self._lock:
            if amount <= 0:
                return Result("completion", False, "AMOUNT", "amount must be positive", display=self.show("金额错误"))
            if stan is not None:
                orig = self.find_record(stan)
                if orig is None or orig.kind != "preauth" or orig.voided:
                    return self._no_original("completion", stan)
            else:
                if card is None or not (rrn and orig_date):
                    return Result("completion", False, "CARD", "card, rrn and orig_date needed",
                                  display=self.show("请刷卡/插卡"))
                orig = BatchRecord("preauth", amount, f"{int(orig_trace):06d}", orig_batch, rrn, auth_code, orig_date,
                                   "", "")
            return await self._referenced("completion", "0200", "000000", "20", "06", amount, orig, card, pin,
                                          with_date=True)

    async def completion_void(self, stan: str, card: CardInput | None = None, pin: str | None = None) -> Result:
        """Completion void 0200/200000 (60.1 21) of a completion of the open batch, by its trace."""
        async with self._lock:
            orig = self.find_record(stan)
            if orig is None or orig.kind != "completion" or orig.voided:
                return self._no_original("completion_void", stan)
            return await self._referenced("completion_void", "0200", "200000", "21", "06", orig.amount, orig,
                                          card, pin, with_date=True)

    def _no_original(self, op: str, stan: str) -> Result:
        return Result(op, False, "25", f"原交易不存在 (trace {stan})", display=self.show("原交易不存在"))

    async def _referenced(self, op: str, mti: str, proc: str, type_code: str, condition: str, amount: int,
                          orig: BatchRecord, card: CardInput | None, pin: str | None, *,
                          with_date: bool = False) -> Result:
        """A request naming an original (37 RRN, 38 auth code, 61 batch + trace [+ date]); reverses on no answer.

        The card is read again (no cryptogram) and must be the original's; without a card the stored PAN
        goes out keyed (22 = 01x).  Called with ``self._lock`` held.
        """
        blocked = await self._prepare(op)
        if blocked:
            return blocked
        doc = self._base(mti, proc, type_code)
        try:
            if orig.qr_code:
                c = _Card(CardData(EntryMode.QR, "", ""), qr_code=orig.qr_code)
            elif card is None:  # card not presented: the stored PAN, keyed
                if not orig.pan:
                    raise CardReadError("present the card (no stored card number for this original)")
                c = _Card(CardData(EntryMode.KEYED, orig.pan, orig.expiry))
            else:
                c = await self._read_card(card, amount, "20" if proc == "200000" else "00", int(doc["11"]),
                                          generate_ac=False)
                if orig.pan and c.data.pan != orig.pan:
                    raise CardReadError("card differs from the original transaction's card")
            pin_block = await self._pin(c, pin, amount)
        except (DeviceError, ValueError) as exc:
            return self._card_error(op, exc, card)
        doc["60"] = self._f60(type_code, "000", c)
        doc.update({"4": f"{amount:012d}", "25": condition, "49": "156", "37": orig.rrn or "0" * 12,
                    "61": F.build_field61(orig.batch, orig.stan, orig.date if with_date else None)})
        if orig.auth_code.strip():
            doc["38"] = orig.auth_code.ljust(6)
        self._card_fields(doc, c, pin_block)
        if c.data.entry_mode is EntryMode.KEYED:
            doc.pop("14", None)
        res, reply = await self._online(op, doc, c, reverses=True)
        if res.ok and reply is not None:
            if op != "completion":
                orig.voided = True
            kind = {"void": "void", "preauth_void": "preauth_void", "completion": "completion",
                    "completion_void": "completion_void"}[op]
            self._approved(kind, res, c, reply, amount, orig_stan=orig.stan, entry=doc.get("22", ""))
        return await self._after(res)

    async def refund(self, amount: int, rrn: str, orig_date: str, card: CardInput | None = None,
                     pin: str | None = None, orig_trace: str | None = None, orig_batch: int | None = None) -> Result:
        """Refund 0220/200000 of an earlier sale (any batch), named by its RRN and date (MMDD)."""
        async with self._lock:
            if amount <= 0:
                return Result("refund", False, "AMOUNT", "amount must be positive", display=self.show("金额错误"))
            blocked = await self._prepare("refund")
            if blocked:
                return blocked
            doc = self._base("0220", "200000", "25")
            try:
                c = await self._read_card(card, amount, "20", int(doc["11"]), generate_ac=False)
                pin_block = await self._pin(c, pin, amount)
            except (DeviceError, ValueError) as exc:
                return self._card_error("refund", exc, card)
            local = next((r for r in self.state.records if r.rrn == rrn and r.kind in ("sale", "qr_sale")), None)
            if local is not None and orig_trace is None:
                orig_trace, orig_batch = local.stan, local.batch
            doc["60"] = self._f60("25", "000", c)
            doc.update({"4": f"{amount:012d}", "25": "00", "49": "156", "37": rrn.ljust(12)[:12],
                        "61": F.build_field61(orig_batch or 0, orig_trace or "000000", orig_date),
                        "63": "CUP"})
            self._card_fields(doc, c, pin_block)
            res, reply = await self._online("refund", doc, c, reverses=False)
            if res.ok and reply is not None:
                self._approved("refund", res, c, reply, amount, orig_stan=orig_trace or "", entry=doc.get("22", ""))
            return await self._after(res)

    async def qr_sale(self, amount: int, code: str | None = None) -> Result:
        """Merchant scans the customer's payment code (the QR scanner when ``code`` is None)."""
        if code is None:
            if self.devices.qr is None:
                return Result("sale", False, "CARD", "no QR scanner", display=self.show("未配置扫码器"))
            code = await self.devices.qr.read_code()
        return await self.sale(amount, card=Scan(code))

    # ------------------------------------------------------------------ settlement
    def totals(self) -> tuple[F.SettlementHalf, F.SettlementHalf]:
        """§8 totals of the open batch: sales debit (even if voided later), voids and refunds credit."""
        halves = []
        for domestic in (True, False):
            mine = [r for r in self.state.records if r.domestic == domestic and r.batch == self.state.batch]
            debit = [r.amount for r in mine if r.kind in ("sale", "qr_sale", "completion")]
            credit = [r.amount for r in mine if r.kind in ("void", "refund", "completion_void")]
            halves.append(F.SettlementHalf(sum(debit), len(debit), sum(credit), len(credit)))
        return halves[0], halves[1]

    async def settle(self) -> Result:
        """0500 settlement, then the 0320 batch upload (all records when not balanced, IC records always)."""
        async with self._lock:
            return await self._settle_locked()

    async def _settle_locked(self) -> Result:
        blocked = await self._prepare("settle")
        if blocked:
            return blocked
        dom, forn = self.totals()
        doc = self._base("0500", None, "00", "201")
        doc.update({"48": F.build_settlement_totals(dom, forn), "49": "156",
                    "63": self.config.operator.ljust(3)})
        self.save()
        try:
            reply = await self.client.exchange(encode(doc))
            check_reply(doc, reply)
        except NetworkError as exc:
            return self._network_failure("settle", exc)
        except ReplyError as exc:
            return Result("settle", False, "REPLY", str(exc), display=self.show("结算失败"))
        self._host_requests(reply)
        if reply.rc != "00":
            return Result("settle", False, reply.rc, f"settlement refused: {reply.rc}",
                          display=self.show("结算失败", reply.rc))
        try:
            rdom, rforn = F.parse_settlement_totals(reply.doc.get("48", ""))
            balanced = rdom.result == "1" and rforn.result == "1"
        except F.FieldFormatError:
            balanced = False
        try:
            uploaded = await self._batch_upload(balanced)
        except NetworkError as exc:
            return self._network_failure("settle", exc, detail={"balanced": balanced})
        batch = self.state.batch
        self.state.batch = batch % 999999 + 1
        self.state.records = []
        self.save()
        text = "对账平" if balanced else "对账不平"
        log.info("batch settled", extra=kv(tid=self.tid, batch=batch, balanced=balanced, uploaded=uploaded))
        res = Result("settle", True, "00", f"结算完成 {text}", detail={
            "balanced": balanced, "uploaded": uploaded, "batch": batch,
            "debit": dom.debit_amount + forn.debit_amount, "credit": dom.credit_amount + forn.credit_amount},
            display=self.show("结算完成", text))
        return await self._after(res)

    async def _send_0320(self, doc: dict[str, str]) -> None:
        self.save()
        reply = await self.client.exchange(encode(doc))
        check_reply(doc, reply)
        if reply.rc != "00":
            raise NetworkError(f"batch upload refused: {reply.rc}", kind="refused", sent=True)

    async def _batch_upload(self, balanced: bool) -> int:
        records = [r for r in self.state.records if r.batch == self.state.batch]
        ic = [r for r in records if r.chip and r.tc_field55 and r.kind == "sale"]
        mag = [] if balanced else [r for r in records if r not in ic and not r.qr_code
                                   and r.kind not in ("preauth", "preauth_void")]
        count = 0
        for i in range(0, len(mag), 8):
            chunk = mag[i:i + 8]
            doc = self._base("0320", None, "00", "201")
            doc["48"] = F.build_batch_upload([F.BatchRecord("00" if r.domestic else "01", r.stan, r.pan, r.amount)
                                              for r in chunk])
            await self._send_0320(doc)
            count += len(chunk)
        for r in ic:
            doc = self._base("0320", "000000", "00", "203")
            doc.update({"2": r.pan, "4": f"{r.amount:012d}", "22": r.entry, "25": "00", "37": r.rrn,
                        "55": r.tc_field55, "61": F.build_field61(r.batch, r.stan, r.date), "63": r.card_org[:3]})
            if r.auth_code.strip():
                doc["38"] = r.auth_code.ljust(6)
            await self._send_0320(doc)
            count += 1
        doc = self._base("0320", None, "00", "207" if balanced and ic else "202")
        doc["48"] = f"{count:04d}"
        await self._send_0320(doc)
        return count

    async def sign_off(self) -> Result:
        """0820/002 sign-off: the host stops accepting MACed requests; the next operation signs on first."""
        async with self._lock:
            if self.state.pending_reversal is not None and self.state.pending_reversal.sent and self._mak:
                res = await self.send_pending_reversal()  # never leave a reversal behind a sign-off
                if res is not None and not res.ok:
                    res.operation = "sign_off"
                    return res
            doc = self._base("0820", None, "00", "002")
            self.save()
            try:
                reply = await self.client.exchange(encode(doc))
                check_reply(doc, reply)
            except (NetworkError, ReplyError) as exc:
                return self._network_failure("sign_off", exc)
            if reply.rc != "00":
                return Result("sign_off", False, reply.rc, f"sign-off refused: {reply.rc}",
                              display=self.show("签退失败", reply.rc))
            self.state.signed_on = False
            self._mak = self._tdk = None
            self.save()
            return Result("sign_off", True, "00", "签退成功", display=self.show("签退成功"))

    async def echo(self) -> Result:
        """0820/301 echo test (network check, no MAC)."""
        doc = self._base("0820", None, "00", "301")
        self.save()
        try:
            reply = await self.client.exchange(encode(doc))
            check_reply(doc, reply)
        except (NetworkError, ReplyError) as exc:
            return Result("echo", False, "NET", str(exc))
        self._host_requests(reply)
        return Result("echo", reply.rc == "00", reply.rc, RC_TEXT.get(reply.rc, ""))


@dataclass(frozen=True)
class _CardFailed:
    """The card could not finish (2nd GENERATE AC failed) after an online approval: reverse with 06."""

    reversal_field55: bytes
    reversal_reason: str = "06"


def tlv_tags(f55_hex: str) -> dict[str, bytes]:
    """Field 55 (hex) -> tag dict, for tests and diagnostics."""
    return emv_tlv.decode(bytes.fromhex(f55_hex))


__all__ = ["Devices", "Insert", "NETWORK_MESSAGE", "RC_TEXT", "Result", "Scan", "Swipe", "Tap", "TerminalApp",
           "TerminalConfig", "software_devices"]
