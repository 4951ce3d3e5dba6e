"""A simple simulated POS terminal speaking the POS dialect to the switch (demo and tests).

It does what a real terminal application does on the wire: signs on and unwraps the working keys
from field 62 with its TMK (checking the check values), builds ISO 9564 format 0 PIN blocks under
the PIK, MACs requests with the MAK (MTI .. field 63) and checks the MAC of approved replies,
keeps STAN and batch, remembers its approvals for voids, refunds, reversals and the settlement
totals of field 48.  Card data comes from :class:`SimCard` (track 2, or an EMV ARQC computed with
the card's ICC master key so the issuer simulator can verify it).  A later issue replaces this
module with ``terminal_bridge``; nothing in the switch imports it.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import time
from dataclasses import dataclass

from _fastcore import crypto
from _fastcore.framing import FrameSplitter
from switch.flows import wire

#: the test issuer master key for application cryptograms (payment-crypto.md EMV-1); never a real key
TEST_IMK_AC = bytes.fromhex("0123456789ABCDEFFEDCBA9876543210")

DEFAULT_TPDU = bytes.fromhex("6000030000")
DEFAULT_HEADER = bytes.fromhex("603100311001")


@dataclass(slots=True)
class SimCard:
    pan: str
    expiry: str = "3012"  # YYMM
    pin: str = "123456"
    psn: str = "01"
    service_code: str = "201"
    imk_ac: bytes = TEST_IMK_AC
    atc: int = 1

    @property
    def track2(self) -> str:
        return f"{self.pan}D{self.expiry}{self.service_code}0000000000"[:37]

    def field55(self, amount: int, txn_type: int = 0x00) -> str:
        """Online request field 55 with a real ARQC (CDOL1 data as the issuer checks it)."""
        self.atc += 1
        atc = self.atc.to_bytes(2, "big")
        un = os.urandom(4)
        today = bytes.fromhex(time.strftime("%y%m%d"))
        tags: list[tuple[str, bytes]] = [
            ("9F02", bytes.fromhex(f"{amount:012d}")), ("9F03", bytes(6)), ("9F1A", bytes.fromhex("0156")),
            ("95", bytes(5)), ("5F2A", bytes.fromhex("0156")), ("9A", today), ("9C", bytes([txn_type])),
            ("9F37", un), ("82", bytes.fromhex("7C00")), ("9F36", atc), ("9F10", bytes.fromhex("07010A03A0000001")),
        ]
        data = b"".join(v for _, v in tags)
        mk = crypto.emv_icc_master_key(self.imk_ac, self.pan, self.psn)
        sk = crypto.emv_session_key(mk, atc, un)
        arqc = crypto.emv_arqc(sk, data)
        tags = [("9F26", arqc), ("9F27", b"\x80"), *tags, ("9F33", bytes.fromhex("E0F8C8")),
                ("9F34", bytes.fromhex("420300")), ("9F35", b"\x22"), ("9F1E", b"SIM00001"),
                ("84", bytes.fromhex("A000000333010101")), ("9F09", bytes.fromhex("0030")), ("5F34", bytes([int(self.psn)]))]
        out = bytearray()
        for tag, value in tags:
            out += bytes.fromhex(tag) + bytes([len(value)]) + value
        return out.hex().upper()


@dataclass(slots=True)
class Reply:
    doc: dict[str, str]
    request: dict[str, str]
    processing_request: str = "0"
    mac_ok: bool | None = None  # None: no MAC expected/checked

    @property
    def rc(self) -> str:
        return self.doc.get("39", "")

    @property
    def approved(self) -> bool:
        return self.rc == "00"

    @property
    def rrn(self) -> str:
        return self.doc.get("37", "")


@dataclass(slots=True)
class _Approval:
    kind: str  # sale / void / refund / completion / preauth
    amount: int
    stan: str
    rrn: str
    domestic: bool


class SimTerminalError(Exception):
    pass


class SimTerminal:
    """One terminal on one TCP connection; requests may be pipelined (replies matched by STAN)."""

    def __init__(self, host: str, port: int, tid: str, mid: str, tmk: bytes, *, key_mode: str = "003",
                 mac_algorithm: str = "pos-ecb", tpdu: bytes = DEFAULT_TPDU, header: bytes = DEFAULT_HEADER,
                 timeout: float = 15.0) -> None:
        self.host, self.port = host, port
        self.tid, self.mid = tid.ljust(8), mid.ljust(15)
        self._tmk = bytes(tmk)
        self.key_mode = key_mode
        self.mac_algorithm = mac_algorithm
        self.tpdu, self.header = tpdu, header
        self.timeout = timeout
        self.batch = 1
        self._stan = itertools.count(1)
        self._pik: bytes | None = None
        self._mak: bytes | None = None
        self._tdk: bytes | None = None
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._pending: dict[tuple[str, str], asyncio.Future[Reply]] = {}
        self._rx_task: asyncio.Task[None] | None = None
        self.approvals: list[_Approval] = []
        self.last_processing_request = "0"
        self.encrypt_tracks = False  # set to encrypt track data with the TDK (after a 004 sign-on)

    # ------------------------------------------------------------------ connection
    async def connect(self) -> SimTerminal:
        self._reader, self._writer = await asyncio.open_connection(self.host, self.port)
        self._rx_task = asyncio.get_running_loop().create_task(self._rx())
        return self

    async def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            try:
                await self._writer.wait_closed()
            except (ConnectionError, OSError):
                pass
        if self._rx_task is not None:
            self._rx_task.cancel()
            try:
                await self._rx_task
            except (asyncio.CancelledError, Exception):
                pass

    @property
    def signed_on(self) -> bool:
        return self._mak is not None

    async def _rx(self) -> None:
        assert self._reader is not None
        splitter = FrameSplitter(8192, 1)
        try:
            while True:
                data = await self._reader.read(65536)
                if not data:
                    break
                for payload in splitter.feed(data):
                    self._on_frame(payload)
        except (ConnectionError, OSError):
            pass
        finally:
            for fut in self._pending.values():
                if not fut.done():
                    fut.set_exception(SimTerminalError("connection closed by the switch"))
            self._pending.clear()

    def _on_frame(self, payload: bytes) -> None:
        frame = wire.Frame.parse(payload)
        doc = wire.decode(frame.body)
        key = (doc["t"], doc.get("11", ""))
        fut = self._pending.pop(key, None)
        if fut is None and "11" not in doc:  # a 30 reply without 11: the oldest request of that MTI
            for k in list(self._pending):
                if k[0] == doc["t"]:
                    fut = self._pending.pop(k)
                    break
        if fut is None or fut.done():
            return
        digit6 = frame.header.hex()[5]
        self.last_processing_request = digit6
        reply = Reply(doc, {}, digit6)
        if doc.get("39") == "00" and "64" in doc and self._mak is not None:
            reply.mac_ok = crypto.mac_equal(self._mac_of(wire.mac_input(frame.body)), bytes.fromhex(doc["64"]))
        fut.set_result(reply)

    # ------------------------------------------------------------------ message plumbing
    def next_stan(self) -> str:
        return f"{next(self._stan) % 1000000:06d}"

    def _mac_of(self, data: bytes) -> bytes:
        assert self._mak is not None
        alg = self.mac_algorithm
        if alg == "pos-ecb":
            return crypto.mac_pos_ecb(self._mak, data)
        if alg == "x9.19":
            return crypto.mac_x919(self._mak if len(self._mak) == 16 else self._mak * 2, data)
        return crypto.mac_x99(self._mak[:8], data)

    def encode(self, doc: dict[str, str], mac: bool) -> bytes:
        if mac:
            body = wire.encode({**doc, "64": "0" * 16})
            return body[:-8] + self._mac_of(wire.mac_input(body))
        return wire.encode(doc)

    async def send(self, doc: dict[str, str], *, mac: bool = False, raw_body: bytes | None = None) -> Reply:
        """Send one request and wait for its reply (matched on response MTI + STAN)."""
        if self._writer is None:
            raise SimTerminalError("not connected")
        body = raw_body if raw_body is not None else self.encode(doc, mac)
        key = (f"{int(doc['t']) + 10:04d}", doc.get("11", ""))
        fut: asyncio.Future[Reply] = asyncio.get_running_loop().create_future()
        self._pending[key] = fut
        self._writer.write(wire.frame_bytes(self.tpdu, self.header, body))
        try:
            reply = await asyncio.wait_for(fut, self.timeout)
        finally:
            self._pending.pop(key, None)
        reply.request = doc
        return reply

    async def send_raw(self, data: bytes) -> None:
        assert self._writer is not None
        self._writer.write(data)
        await self._writer.drain()

    def _base(self, mti: str, proc: str | None, t601: str, nmi: str = "000", *, tail: str = "") -> dict[str, str]:
        doc = {"t": mti, "11": self.next_stan(), "41": self.tid, "42": self.mid,
               "60": f"{t601}{self.batch:06d}{nmi}{tail}"}
        if proc is not None:
            doc["3"] = proc
        return doc

    # ------------------------------------------------------------------ management
    async def sign_on(self, mode: str | None = None) -> Reply:
        mode = mode or self.key_mode
        doc = self._base("0800", None, "00", mode)
        doc["63"] = "01 "
        reply = await self.send(doc)
        if reply.approved:
            self._install_keys(mode, bytes.fromhex(reply.doc["62"]))
            self.batch = int(reply.doc["60"][2:8])
        return reply

    def _install_keys(self, mode: str, f62: bytes) -> None:
        def unwrap(ct: bytes, cv: bytes) -> bytes:
            key = crypto.tdes_ecb_decrypt(self._tmk, ct)
            if crypto.kcv(key, length=4) != cv:
                raise SimTerminalError("working key check value mismatch")
            return key

        if mode == "001":
            self._pik = unwrap(f62[0:8], f62[8:12])
            self._mak = unwrap(f62[12:20], f62[20:24])
        else:
            self._pik = unwrap(f62[0:16], f62[16:20])
            self._mak = unwrap(f62[20:28], f62[36:40])
            if mode == "004":
                self._tdk = unwrap(f62[40:56], f62[56:60])

    async def sign_off(self) -> Reply:
        return await self.send(self._base("0820", None, "00", "002"))

    async def echo(self) -> Reply:
        return await self.send(self._base("0820", None, "00", "301"))

    # ------------------------------------------------------------------ card data
    def _card_fields(self, doc: dict[str, str], card: SimCard, entry: str, pin: str | None, amount: int) -> None:
        """Fill 2/14/22/23/26/35/52/53/55 and 60.4 for ``entry`` (swipe, chip, contactless, keyed)."""
        with_pin = pin is not None
        if entry == "swipe":
            doc["35"] = card.track2
            doc["22"] = "021" if with_pin else "022"
        elif entry in ("chip", "contactless"):
            doc["2"] = card.pan
            doc["14"] = card.expiry
            doc["23"] = f"{int(card.psn):03d}"
            doc["35"] = card.track2
            doc["55"] = card.field55(amount)
            mode = "05" if entry == "chip" else "07"
            doc["22"] = mode + ("1" if with_pin else "2")
            if entry == "contactless":
                doc["60"] = doc["60"][:11] + "6"
            else:
                doc["60"] = doc["60"][:11] + "5"
        else:
            doc["2"] = card.pan
            doc["14"] = card.expiry
            doc["22"] = "011" if with_pin else "012"
        if with_pin:
            assert self._pik is not None, "sign on first"
            doc["26"] = "12"
            doc["52"] = crypto.encrypt_pin_block(self._pik, pin, card.pan, crypto.PIN_ISO0).hex().upper()
            doc["53"] = "2600000000000000"
        if self.encrypt_tracks and self._tdk is not None and "35" in doc:
            # dialect §9.3: the 8-byte block near the end of the track, TDES-ECB under the TDK
            from _fastcore.fields import tdk_block, tdk_replace

            padded, start, block = tdk_block(doc["35"])
            doc["35"] = tdk_replace(padded, start, crypto.tdes_ecb_encrypt(self._tdk, block))
            doc["53"] = ("2" if with_pin else "0") + "61" + "0" * 13

    def _remember(self, reply: Reply, kind: str, amount: int) -> None:
        if reply.approved:
            self.approvals.append(_Approval(kind, amount, reply.request["11"], reply.rrn,
                                            reply.doc.get("63", "CUP")[:3] == "CUP"))

    # ------------------------------------------------------------------ financial
    async def sale(self, card: SimCard, amount: int, *, entry: str = "swipe", pin: str | None = None) -> Reply:
        doc = self._base("0200", "000000", "22")
        doc.update({"4": f"{amount:012d}", "25": "00", "49": "156"})
        self._card_fields(doc, card, entry, pin, amount)
        reply = await self.send(doc, mac=True)
        self._remember(reply, "sale", amount)
        return reply

    async def qr_sale(self, payment_code: str, amount: int) -> Reply:
        """Merchant scans the customer's payment code: 0200 sale, 22 = 032, code in field 48."""
        doc = self._base("0200", "000000", "22")
        doc.update({"4": f"{amount:012d}", "25": "00", "49": "156", "22": "032", "48": payment_code})
        reply = await self.send(doc, mac=True)
        self._remember(reply, "sale", amount)
        return reply

    async def qr_void(self, original: Reply) -> Reply:
        doc = self._base("0200", "200000", "23")
        doc.update({"4": original.request["4"], "25": "00", "49": "156", "22": "032",
                    "48": original.request["48"]})
        self._original_ref(doc, original)
        reply = await self.send(doc, mac=True)
        self._remember(reply, "void", int(original.request["4"]))
        return reply

    async def balance(self, card: SimCard, *, entry: str = "swipe", pin: str | None = None) -> Reply:
        doc = self._base("0200", "310000", "01")
        doc.update({"25": "00", "49": "156"})
        self._card_fields(doc, card, entry, pin, 0)
        return await self.send(doc, mac=True)

    async def preauth(self, card: SimCard, amount: int, *, entry: str = "swipe", pin: str | None = None) -> Reply:
        doc = self._base("0100", "030000", "10")
        doc.update({"4": f"{amount:012d}", "25": "06", "49": "156"})
        self._card_fields(doc, card, entry, pin, amount)
        reply = await self.send(doc, mac=True)
        self._remember(reply, "preauth", amount)
        return reply

    def _original_ref(self, doc: dict[str, str], original: Reply, with_date: bool = False) -> None:
        req = original.request
        doc["37"] = original.rrn or "0" * 12
        if original.doc.get("38"):
            doc["38"] = original.doc["38"]
        doc["61"] = req["60"][2:8] + req["11"] + (time.strftime("%m%d") if with_date else "")

    async def void(self, card: SimCard, original: Reply, amount: int | None = None) -> Reply:
        doc = self._base("0200", "200000", "23")
        amt = int(original.request["4"]) if amount is None else amount
        doc.update({"4": f"{amt:012d}", "25": "00", "49": "156", "2": card.pan, "22": "012"})
        self._original_ref(doc, original)
        reply = await self.send(doc, mac=True)
        self._remember(reply, "void", amt)
        return reply

    async def refund(self, card: SimCard, original: Reply, amount: int) -> Reply:
        doc = self._base("0220", "200000", "25")
        doc.update({"4": f"{amount:012d}", "25": "00", "49": "156", "2": card.pan, "22": "012", "63": "CUP"})
        self._original_ref(doc, original, with_date=True)
        reply = await self.send(doc, mac=True)
        self._remember(reply, "refund", amount)
        return reply

    async def completion(self, card: SimCard, original: Reply, amount: int) -> Reply:
        doc = self._base("0200", "000000", "20")
        doc.update({"4": f"{amount:012d}", "25": "06", "49": "156", "2": card.pan, "22": "012"})
        self._original_ref(doc, original, with_date=True)
        reply = await self.send(doc, mac=True)
        self._remember(reply, "completion", amount)
        return reply

    async def preauth_void(self, card: SimCard, original: Reply) -> Reply:
        doc = self._base("0100", "200000", "11")
        doc.update({"4": original.request["4"], "25": "06", "49": "156", "2": card.pan, "22": "012"})
        self._original_ref(doc, original, with_date=True)
        return await self.send(doc, mac=True)

    async def completion_void(self, card: SimCard, original: Reply) -> Reply:
        doc = self._base("0200", "200000", "21")
        amount = int(original.request["4"])
        doc.update({"4": f"{amount:012d}", "25": "06", "49": "156", "2": card.pan, "22": "012"})
        self._original_ref(doc, original, with_date=True)
        reply = await self.send(doc, mac=True)
        self._remember(reply, "void", amount)
        return reply

    async def reversal(self, original: Reply | dict[str, str], reason: str = "98") -> Reply:
        """0400 for an earlier request (its Reply, or the request dict if no reply came)."""
        req = original.request if isinstance(original, Reply) else original
        doc = {k: v for k, v in req.items() if k not in ("26", "35", "36", "37", "52", "53", "64")}
        doc["t"] = "0400"
        doc["39"] = reason
        if isinstance(original, Reply) and original.doc.get("38"):
            doc["38"] = original.doc["38"]
        if "55" in doc:
            doc.pop("55")
        reply = await self.send(doc, mac=True)
        if reply.rc in ("00", "12", "25"):
            self.approvals = [a for a in self.approvals if a.stan != req["11"]]
        return reply

    # ------------------------------------------------------------------ batch
    def field48_totals(self) -> str:
        """0500 field 48 from this terminal's own approvals (§8: sales+completions debit, voids+refunds credit)."""
        parts = []
        for domestic in (True, False):
            mine = [a for a in self.approvals if a.domestic == domestic]
            debit = [a.amount for a in mine if a.kind in ("sale", "completion")]
            credit = [a.amount for a in mine if a.kind in ("void", "refund")]
            parts.append(f"{sum(debit):012d}{len(debit):03d}{sum(credit):012d}{len(credit):03d}0")
        return "".join(parts)

    async def settle(self, field48: str | None = None) -> Reply:
        doc = self._base("0500", None, "00", "201")
        doc.update({"48": field48 or self.field48_totals(), "49": "156", "63": "01 "})
        reply = await self.send(doc)
        return reply

    async def end_batch(self, count: int = 0) -> Reply:
        doc = self._base("0320", None, "00", "202")
        doc["48"] = f"{count:04d}"
        reply = await self.send(doc)
        if reply.approved:
            self.batch += 1
            self.approvals.clear()
        return reply


def settlement_balanced(reply: Reply) -> bool | None:
    """True/False from a 0510's field 48 result digits; None when absent."""
    f48 = reply.doc.get("48", "")
    if len(f48) < 62:
        return None
    return f48[30] == "1" and f48[61] == "1"


__all__ = ["SimCard", "SimTerminal", "Reply", "SimTerminalError", "settlement_balanced", "TEST_IMK_AC"]


