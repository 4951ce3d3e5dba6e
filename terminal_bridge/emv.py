"""The terminal-side EMV flow (contact and contactless over any APDU transport) and field 55.

One card session::

    kernel = EmvKernel(transport, TerminalParams(ifd_serial="POS00001"), contactless=False)
    txn = kernel.start(amount_fen=1234)          # SELECT PSE/PPSE + AID, GPO, READ RECORDs
    txn.card.pan, txn.card.track2, txn.card.psn  # fields 2, 35, 23 (and 14 from txn.card.expiry)
    kernel.first_generate_ac(txn, pin_entered=True)
    txn.field55                                  # request tag list of pos-8583-dialect.md §11
    ...send 0200, get 0210...
    done = kernel.second_generate_ac(txn, response_code="00", icc_response=reply_field55)
    done.approved, done.reversal_reason          # "06" when the card declines an online approval

The kernel is synchronous (pyscard is); the asyncio terminal calls it through
``asyncio.to_thread``.  It keeps no PIN and logs PANs masked only.  Issuer scripts
from the reply (71 before, 72 after the 2nd GENERATE AC) are sent to the card and
reported in DF31 (``Completion.script_results``, also in the TC-upload and reversal
field 55).  Offline data authentication (SDA/DDA/CDA) and offline approval are not
performed: the terminal is online-only and says so in the TVR.
"""

from __future__ import annotations

import datetime
import hashlib
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field

from _fastcore.errors import TLVError
from switch.logsafe import kv

from . import emv_tlv, oda
from .apdu import ApduError, exchange
from .devices import CardData, CardReadError, EntryMode

log = logging.getLogger(__name__)

PSE = b"1PAY.SYS.DDF01"
PPSE = b"2PAY.SYS.DDF01"
UNIONPAY_AIDS = (bytes.fromhex("A000000333010101"), bytes.fromhex("A000000333010102"),
                 bytes.fromhex("A000000333010103"))

#: pos-8583-dialect.md §11, request (sale / balance / pre-auth, contact and contactless online)
REQUEST_TAGS = ("9F26", "9F27", "9F10", "9F37", "9F36", "95", "9A", "9C", "9F02", "5F2A", "82", "9F1A", "9F03",
                "9F33", "9F34", "9F35", "9F1E", "84", "9F09", "9F41", "9F63")
REQUEST_MANDATORY = frozenset(("9F26", "9F27", "9F10", "9F37", "9F36", "95", "9A", "9C", "9F02", "5F2A", "82",
                               "9F1A", "9F03", "9F33"))
REVERSAL_TAGS = ("95", "9F1E", "9F10", "9F36", "DF31")
REVERSAL_MANDATORY = frozenset(("9F36",))
TC_UPLOAD_TAGS = ("9F33", "95", "9F37", "9F1E", "9F10", "9F26", "9F36", "82", "DF31", "9F1A", "9A")
TAG_LISTS = {"request": (REQUEST_TAGS, REQUEST_MANDATORY), "reversal": (REVERSAL_TAGS, REVERSAL_MANDATORY),
             "tc_upload": (TC_UPLOAD_TAGS, frozenset())}

APPROVED_RESPONSE_CODES = frozenset(("00", "10", "11", "A2", "A4", "A5", "A6"))


@dataclass(frozen=True)
class TerminalParams:
    """Terminal-resident EMV data (9F1A, 5F2A, 9F33, 9F35, 9F1E, 9F09, 9F40) and the supported AIDs."""

    country: str = "0156"
    currency: str = "0156"
    capabilities: str = "E0F8C8"  # keyed, magstripe, IC; online PIN, signature, no CVM; SDA/DDA/CDA
    terminal_type: str = "22"  # attended, merchant-operated, online with offline capability
    additional_capabilities: str = "F000F0A001"
    ifd_serial: str = "POS00001"
    app_version: str = "0030"
    aids: tuple[bytes, ...] = UNIONPAY_AIDS
    capks: tuple[oda.Capk, ...] = ()  # CA public keys for SDA/DDA (from the acquirer's CAPK download)


@dataclass
class EmvTransaction:
    """State of one card session between :meth:`EmvKernel.start` and the 2nd GENERATE AC."""

    card: CardData
    contactless: bool
    tags: dict[str, bytes] = field(default_factory=dict, repr=False)  # terminal + card data elements
    cid: int | None = None  # 9F27 of the 1st GENERATE AC
    field55: bytes = b""
    oda_result: str = "not performed"  # "sda", "dda", "cda", "not performed" or "failed: <reason>"
    cda_key: tuple[bytes, bytes] | None = field(default=None, repr=False)  # ICC public key when CDA runs
    pdol_data: bytes = field(default=b"", repr=False)

    @property
    def online_requested(self) -> bool:
        return self.cid is not None and self.cid & 0xC0 == 0x80


@dataclass(frozen=True)
class Completion:
    """Outcome of the 2nd GENERATE AC."""

    cid: int
    approved: bool  # host approved AND the card produced a TC
    reversal_reason: str | None  # "06": host approved but the card declined -> send 0400 with 39 = 06
    issuer_authenticated: bool | None  # None when the host sent no tag 91
    tc_field55: bytes  # TC-upload / script-advice tag set
    reversal_field55: bytes
    script_results: bytes = b""  # DF31: per script, result byte (2x ok, 1n failed at command n) + script ID


def _bcd_amount(fen: int) -> bytes:
    if not 0 <= fen < 10**12:
        raise ValueError(f"amount {fen} fen does not fit n12")
    return bytes.fromhex(f"{fen:012d}")


def _digits(b: bytes) -> str:
    return b.hex().upper().rstrip("F")


class EmvKernel:
    """Drives one card through the EMV online flow over an APDU transport."""

    def __init__(self, transport: object, params: TerminalParams | None = None, *, contactless: bool = False,
                 clock: Callable[[], datetime.datetime] | None = None,
                 unpredictable: Callable[[int], bytes] = os.urandom) -> None:
        self.transport = transport
        self.params = params or TerminalParams()
        self.contactless = contactless
        self._clock = clock or datetime.datetime.now
        self._random = unpredictable

    # ---------------------------------------------------------------- APDU helpers
    def _cmd(self, name: str, apdu: bytes, ok: tuple[bytes, ...] = (b"\x90\x00",)) -> bytes:
        data, sw = exchange(self.transport, apdu)
        if sw not in ok:
            raise ApduError(name, sw)
        return data

    def _select(self, name: bytes) -> tuple[bytes, bytes]:
        return exchange(self.transport, b"\x00\xa4\x04\x00" + bytes([len(name)]) + name + b"\x00")

    # ---------------------------------------------------------------- flow
    def start(self, amount_fen: int, *, txn_type: str = "00", other_fen: int = 0, sequence: int = 1) -> EmvTransaction:
        """Application selection, GET PROCESSING OPTIONS and READ RECORD; returns the card data."""
        _bcd_amount(amount_fen), _bcd_amount(other_fen)  # caller errors stay ValueError
        if len(txn_type) != 2 or not txn_type.isdigit():
            raise ValueError(f"transaction type {txn_type!r} must be 2 digits (tag 9C)")
        with _CardAnswers("reading the card"):
            return self._start(amount_fen, txn_type, other_fen, sequence)

    def _start(self, amount_fen: int, txn_type: str, other_fen: int, sequence: int) -> EmvTransaction:
        now = self._clock()
        p = self.params
        tags: dict[str, bytes] = {
            "9F02": _bcd_amount(amount_fen), "9F03": _bcd_amount(other_fen),
            "9F1A": bytes.fromhex(p.country), "5F2A": bytes.fromhex(p.currency),
            "9A": bytes.fromhex(now.strftime("%y%m%d")), "9F21": bytes.fromhex(now.strftime("%H%M%S")),
            "9C": bytes.fromhex(txn_type), "9F37": self._random(4),
            "9F33": bytes.fromhex(p.capabilities), "9F35": bytes.fromhex(p.terminal_type),
            "9F40": bytes.fromhex(p.additional_capabilities), "9F1E": p.ifd_serial.encode("ascii")[:8].ljust(8),
            "9F09": bytes.fromhex(p.app_version), "9F41": bytes.fromhex(f"{sequence % 10**8:08d}"),
            "95": bytearray(5),
        }
        aid, fci = self._select_application()
        tags["84"] = aid
        for tag, value in _safe_flatten(fci, "SELECT AID").items():
            tags.setdefault(tag, value)  # card data never overrides terminal data (9F02, 9F37, ...)
        pdol = emv_tlv.parse_dol(tags["9F38"]) if "9F38" in tags else []
        pdol_data = emv_tlv.build_dol_data(pdol, tags)
        gpo = self._cmd("GET PROCESSING OPTIONS",
                        b"\x80\xa8\x00\x00" + bytes([len(pdol_data) + 2, 0x83, len(pdol_data)]) + pdol_data + b"\x00")
        aip, afl = self._parse_gpo(gpo)
        tags["82"], tags["94"] = aip, afl
        static = bytearray()  # static data to be authenticated (ODA)
        for sfi, first, last, n_oda in _afl_entries(afl):
            for rec in range(first, last + 1):
                data = self._cmd("READ RECORD", bytes([0x00, 0xB2, rec, (sfi << 3) | 4, 0x00]))
                if not data or data[0] != 0x70:
                    raise CardReadError(f"record {rec} of SFI {sfi} is not a 70 template")
                if rec < first + n_oda:
                    static += next(emv_tlv.iter_tlv(data))[1] if sfi <= 10 else data
                for tag, value in _safe_flatten(data, f"READ RECORD {sfi}/{rec}").items():
                    tags.setdefault(tag, value)
        card = self._card_data(tags)
        if self.contactless:
            card.entry_mode = EntryMode.CONTACTLESS
        self._risk(tags, now)
        result, cda_key = self._offline_auth(tags, bytes(static), card.pan, now.date())
        log.info("card read", extra=kv(pan=card.pan, aid=aid.hex().upper(), contactless=self.contactless,
                                      oda=result))
        return EmvTransaction(card=card, contactless=self.contactless, tags=tags, oda_result=result,
                              cda_key=cda_key, pdol_data=pdol_data)

    def _offline_auth(self, tags: dict[str, bytes], static: bytes, pan: str,
                      today: datetime.date) -> tuple[str, tuple[bytes, bytes] | None]:
        """CDA, DDA or SDA as the AIP and 9F33 allow; sets TVR byte 1 and TSI; never aborts the transaction.
        For CDA the keys are checked here and the signature at the GENERATE AC (returns the ICC key)."""
        tvr = tags["95"]
        tags["9B"] = bytearray(2)
        aip, caps = tags["82"], tags["9F33"]
        cda = bool(aip[0] & 0x01 and caps[2] & 0x08)
        dda = not cda and bool(aip[0] & 0x20 and caps[2] & 0x40)
        sda = not (cda or dda) and bool(aip[0] & 0x40 and caps[2] & 0x80)
        if not (cda or dda or sda):
            tvr[0] |= 0x80  # offline data authentication not performed
            return "not performed", None
        tags["9B"][0] |= 0x80  # TSI: offline data authentication performed
        failed_bit = 0x04 if cda else 0x08 if dda else 0x40
        try:
            if "9F4A" in tags:
                if tags["9F4A"] != b"\x82":
                    raise oda.OdaError("static data authentication tag list other than 82")
                static += bytes(aip)
            index = tags.get("8F", b"")
            if len(index) != 1:
                raise oda.OdaDataMissing("missing 8F (CA public key index)")
            rid = bytes(tags["84"][:5])
            capk = next((k for k in self.params.capks if k.rid == rid and k.index == index[0]), None)
            if capk is None:
                raise oda.OdaError(f"no CA public key {rid.hex().upper()}/{index[0]:02X} in the terminal")
            issuer = oda.issuer_key(capk, tags, pan, today)
            if sda:
                oda.verify_sda(issuer, tags, static)
                return "sda", None
            icc = oda.icc_key(issuer, tags, pan, static, today)
            if cda:
                return "cda pending", icc
            ddol = emv_tlv.parse_dol(tags.get("9F49") or bytes.fromhex("9F3704"))
            ddol_data = emv_tlv.build_dol_data(ddol, tags)
            try:
                answer = self._cmd("INTERNAL AUTHENTICATE",
                                   b"\x00\x88\x00\x00" + bytes([len(ddol_data)]) + ddol_data + b"\x00")
            except ApduError as exc:
                raise oda.OdaError(str(exc)) from exc
            if answer[:1] == b"\x80":
                sdad = next(emv_tlv.iter_tlv(answer))[1]
            else:
                sdad = emv_tlv.flatten(answer).get("9F4B", b"")
            tags["9F4C"] = oda.verify_dda(icc, sdad, ddol_data)
            return "dda", None
        except oda.OdaDataMissing as exc:
            tvr[0] |= 0x20 | failed_bit  # ICC data missing + SDA/DDA/CDA failed
            return f"failed: {exc}", None
        except (oda.OdaError, TLVError) as exc:
            tvr[0] |= failed_bit
            return f"failed: {exc}", None

    def _select_application(self) -> tuple[bytes, bytes]:
        directory = PPSE if self.contactless else PSE
        data, sw = self._select(directory)
        candidates: list[tuple[int, bytes]] = []
        if sw == b"\x90\x00":
            for entry in emv_tlv.find_all(data, "61"):
                inner = emv_tlv.flatten(entry)
                aid = inner.get("4F")
                if aid and any(aid.startswith(a) or a.startswith(aid) for a in self.params.aids):
                    candidates.append((inner.get("87", b"\x0f")[0] & 0x0F, aid))
        elif self.contactless:
            raise ApduError("SELECT PPSE", sw)
        if not candidates and not self.contactless:
            candidates = [(i, a) for i, a in enumerate(self.params.aids)]  # list of AIDs method
        blocked = False
        for _, aid in sorted(candidates):
            fci, sw = self._select(aid)
            if sw == b"\x90\x00":
                df_name = emv_tlv.find(fci, "84") or aid
                return df_name, fci
            blocked |= sw == b"\x62\x83"
        if blocked:
            raise CardReadError("the card's payment application is blocked (SELECT answered 6283)")
        raise CardReadError("no supported application on the card")

    @staticmethod
    def _parse_gpo(data: bytes) -> tuple[bytes, bytes]:
        if data[:1] == b"\x80":  # format 1: AIP (2) + AFL
            value = next(emv_tlv.iter_tlv(data), ("80", b"", False, 0))[1]
            if len(value) < 2:
                raise CardReadError("GET PROCESSING OPTIONS format 1 answer too short")
            return value[:2], value[2:]
        if data[:1] == b"\x77":
            flat = emv_tlv.flatten(data)
            if "82" in flat and "94" in flat:
                return flat["82"], flat["94"]
        raise CardReadError("GET PROCESSING OPTIONS answer has no AIP/AFL")

    @staticmethod
    def _card_data(tags: dict[str, bytes]) -> CardData:
        missing = [t for t in ("5A", "5F24", "8C", "8D") if t not in tags]
        if missing:
            raise CardReadError(f"card data incomplete: missing tag(s) {' '.join(missing)}")
        pan = _digits(tags["5A"])
        track2 = None
        if "57" in tags:
            track2 = _digits(tags["57"]).replace("D", "=")
            if track2.split("=")[0] != pan:
                raise CardReadError("tag 57 PAN differs from tag 5A")
        psn = tags["5F34"].hex() if "5F34" in tags else None
        return CardData(
            entry_mode=EntryMode.CHIP, pan=pan, expiry=tags["5F24"].hex()[:4], track2=track2, psn=psn,
            aid=tags.get("84", b"").hex().upper(), app_label=tags.get("50", b"").decode("ascii", "replace"),
        )

    @staticmethod
    def _risk(tags: dict[str, bytes], now: datetime.datetime) -> None:
        tvr = bytearray(tags["95"])
        today = now.strftime("%y%m%d")
        if tags["5F24"].hex() < today:
            tvr[1] |= 0x40  # expired application
        if "5F25" in tags and tags["5F25"].hex() > today:
            tvr[1] |= 0x20  # application not yet effective
        tvr[3] |= 0x08  # merchant forced / online-only terminal: transaction goes online
        tags["95"] = tvr

    def first_generate_ac(self, txn: EmvTransaction, *, pin_entered: bool = False) -> bytes:
        """Ask the card for an ARQC; returns (and stores in ``txn.field55``) the request field 55."""
        with _CardAnswers("GENERATE AC (1st)"):
            return self._first_generate_ac(txn, pin_entered)

    def _first_generate_ac(self, txn: EmvTransaction, pin_entered: bool) -> bytes:
        tags = txn.tags
        tags["9F34"] = bytes.fromhex("420300" if pin_entered else "1F0002")  # online PIN / no CVM
        if pin_entered:
            tags["95"][2] |= 0x04  # online PIN entered
        cdol1 = emv_tlv.parse_dol(tags["8C"])
        data = emv_tlv.build_dol_data(cdol1, tags)
        p1 = 0x90 if txn.cda_key else 0x80  # ARQC (+ CDA signature requested)
        answer = self._cmd("GENERATE AC (1st)", bytes([0x80, 0xAE, p1, 0x00, len(data)]) + data + b"\x00")
        if txn.cda_key:
            answer = self._check_cda(txn, answer, data)
        cid, fields = _parse_ac(answer)
        tags.update(fields)
        txn.cid = cid
        if cid & 0xC0 != 0x80:
            raise CardReadError(f"card declined offline (CID {cid:02X}): no ARQC")
        txn.field55 = build_field55(tags, "request")
        txn.card.icc_data = txn.field55
        txn.card.tags = {t: bytes(v) for t, v in tags.items()}
        return txn.field55

    def _check_cda(self, txn: EmvTransaction, answer: bytes, cdol1_data: bytes) -> bytes:
        """Verify the CDA signature; returns the answer with 9F26 recovered from it.  A bad signature
        sets TVR "CDA failed"; without a recoverable AC the transaction cannot go online."""
        key = txn.cda_key
        if key is None:
            return answer
        if answer[:1] != b"\x77":
            return self._cda_failed(txn, "GENERATE AC answer in format 1", answer)
        items = list(emv_tlv.iter_tlv(next(emv_tlv.iter_tlv(answer))[1]))
        sdad = next((v for t, v, _, _ in items if t == "9F4B"), None)
        if sdad is None:
            return self._cda_failed(txn, "no 9F4B in the GENERATE AC answer", answer)
        others = b"".join(emv_tlv.tl(t, v) for t, v, _, _ in items if t != "9F4B")
        try:
            cid, ac, tdhc = oda.verify_cda(key, sdad, txn.tags["9F37"])
        except oda.OdaError as exc:
            txn.tags["95"][0] |= 0x04
            txn.oda_result = f"failed: {exc}"
            raise CardReadError(f"CDA failed and no cryptogram can be recovered: {exc}") from exc
        cid_tlv = next((v for t, v, _, _ in items if t == "9F27"), b"")
        if cid_tlv != bytes([cid]):
            return self._cda_failed(txn, "CID differs from the signed CID", answer, ac)
        if hashlib.sha1(txn.pdol_data + cdol1_data + others).digest() != tdhc:
            return self._cda_failed(txn, "transaction data hash mismatch", answer, ac)
        txn.oda_result = "cda"
        return emv_tlv.tl("77", others + emv_tlv.tl("9F26", ac))

    @staticmethod
    def _cda_failed(txn: EmvTransaction, reason: str, answer: bytes, ac: bytes | None = None) -> bytes:
        txn.tags["95"][0] |= 0x04  # CDA failed; the issuer still sees the ARQC and decides
        txn.oda_result = f"failed: {reason}"
        if ac is None:
            return answer
        items = list(emv_tlv.iter_tlv(next(emv_tlv.iter_tlv(answer))[1]))
        return emv_tlv.tl("77", b"".join(emv_tlv.tl(t, v) for t, v, _, _ in items if t != "9F4B")
                          + emv_tlv.tl("9F26", ac))

    def second_generate_ac(self, txn: EmvTransaction, response_code: str | None,
                           icc_response: bytes | None) -> Completion:
        """Finish with the host answer: ``response_code`` (field 39, ``None`` = no answer) and the reply's
        field 55 (tag 91, optionally 71/72)."""
        with _CardAnswers("GENERATE AC (2nd)"):
            return self._second_generate_ac(txn, response_code, icc_response)

    def _second_generate_ac(self, txn: EmvTransaction, response_code: str | None,
                            icc_response: bytes | None) -> Completion:
        tags = txn.tags
        iad91 = b""
        scripts: list[tuple[str, bytes]] = []
        if icc_response:
            try:
                for tag, value, _, _ in emv_tlv.iter_tlv(icc_response):
                    if tag == "91":
                        iad91 = value
                    elif tag in ("71", "72"):
                        scripts.append((tag, value))
            except TLVError as exc:
                raise CardReadError(f"reply field 55 is malformed: {exc}") from exc
        results = bytearray()
        results += self._run_scripts(tags, [v for t, v in scripts if t == "71"], final=False)
        if response_code is None:
            arc, want_tc = b"Z3", False  # unable to go online: decline
        else:
            arc, want_tc = response_code.encode("ascii")[:2], response_code in APPROVED_RESPONSE_CODES
        tags["8A"] = arc
        tags["91"] = iad91.ljust(10, b"\x00")[:10] if iad91 else bytes(10)
        cdol2 = emv_tlv.parse_dol(tags["8D"])
        data = emv_tlv.build_dol_data(cdol2, tags)
        p1 = 0x40 if want_tc else 0x00
        answer = self._cmd("GENERATE AC (2nd)", bytes([0x80, 0xAE, p1, 0x00, len(data)]) + data + b"\x00")
        cid, fields = _parse_ac(answer)
        tags.update(fields)
        results += self._run_scripts(tags, [v for t, v in scripts if t == "72"], final=True)
        if results:
            tags["DF31"] = bytes(results)
        card_tc = cid & 0xC0 == 0x40
        approved = want_tc and card_tc
        reversal = "06" if want_tc and not card_tc else None
        issuer_auth = None
        if iad91:
            cvr = fields.get("9F10", b"")[3:7]
            issuer_auth = not (len(cvr) == 4 and cvr[2] & 0x10)
        log.info("emv complete", extra=kv(pan=txn.card.pan, cid=f"{cid:02X}", rc=response_code,
                                         approved=approved, reversal=reversal))
        return Completion(cid=cid, approved=approved, reversal_reason=reversal, issuer_authenticated=issuer_auth,
                          tc_field55=build_field55(tags, "tc_upload"),
                          reversal_field55=build_field55(tags, "reversal"), script_results=bytes(results))

    def _run_scripts(self, tags: dict[str, bytes], templates: list[bytes], *, final: bool) -> bytes:
        """Send each issuer script's commands (tag 86) in order; stop a script at its first failure.
        Returns the DF31 entries; sets TVR byte 5 "script processing failed before/after final GAC"."""
        out = bytearray()
        for template in templates:
            try:
                inner = list(emv_tlv.iter_tlv(template))
            except TLVError:
                inner = []
            script_id = next((v for t, v, _, _ in inner if t == "9F18"), b"")[:4].rjust(4, b"\x00")
            commands = [v for t, v, _, _ in inner if t == "86"]
            result = 0x20  # performed, successful
            if not commands:
                result = 0x10
            for seq, command in enumerate(commands, start=1):
                _, sw = exchange(self.transport, command)
                if not (sw == b"\x90\x00" or sw[0] in (0x62, 0x63)):
                    result = 0x10 | min(seq, 15)
                    break
            if result != 0x20:
                tags["95"][4] |= 0x20 if final else 0x10
            out += bytes([result]) + script_id
            log.info("issuer script", extra=kv(script_id=script_id.hex().upper(), result=f"{result:02X}",
                                              commands=len(commands), final=final))
        return bytes(out)


class _CardAnswers:
    """Turn any malformed-card-data failure inside a kernel step into a :class:`CardReadError`."""

    def __init__(self, step: str) -> None:
        self.step = step

    def __enter__(self) -> None:
        return None

    def __exit__(self, et: type[BaseException] | None, exc: BaseException | None, tb: object) -> None:
        if exc is not None and isinstance(exc, TLVError | IndexError | KeyError | ValueError | StopIteration):
            raise CardReadError(f"{self.step}: malformed card data ({type(exc).__name__}: {exc})") from exc


def _safe_flatten(data: bytes, what: str) -> dict[str, bytes]:
    try:
        return emv_tlv.flatten(data)
    except TLVError as exc:
        raise CardReadError(f"{what}: card answer is malformed ({exc})") from exc


def _afl_entries(afl: bytes) -> list[tuple[int, int, int, int]]:
    """``(sfi, first record, last record, records signed for ODA)`` per AFL entry."""
    if len(afl) % 4 or not afl:
        raise CardReadError(f"AFL length {len(afl)} is not a positive multiple of 4")
    out = []
    for i in range(0, len(afl), 4):
        sfi, first, last, n_oda = afl[i] >> 3, afl[i + 1], afl[i + 2], afl[i + 3]
        if not 1 <= sfi <= 30 or first == 0 or last < first or n_oda > last - first + 1:
            raise CardReadError(f"bad AFL entry {afl[i:i + 4].hex().upper()} at offset {i}")
        out.append((sfi, first, last, n_oda))
    return out


def _parse_ac(answer: bytes) -> tuple[int, dict[str, bytes]]:
    if answer[:1] == b"\x80":  # format 1: CID (1) ATC (2) AC (8) IAD (var)
        v = next(emv_tlv.iter_tlv(answer), ("80", b"", False, 0))[1]
        if len(v) < 11:
            raise CardReadError("GENERATE AC format 1 answer too short")
        return v[0], {"9F27": v[:1], "9F36": v[1:3], "9F26": v[3:11], "9F10": v[11:]}
    fields = _safe_flatten(answer, "GENERATE AC")
    missing = [t for t in ("9F27", "9F36", "9F26") if t not in fields]
    if missing:
        raise CardReadError(f"GENERATE AC answer lacks {' '.join(missing)}")
    return fields["9F27"][0], {t: fields[t] for t in ("9F27", "9F36", "9F26", "9F10") if t in fields}


def build_field55(tags: dict[str, bytes], use: str = "request") -> bytes:
    """Field 55 for ``use`` in ``request`` / ``reversal`` / ``tc_upload`` (tag lists of §11)."""
    order, mandatory = TAG_LISTS[use]
    missing = [t for t in mandatory if t not in tags]
    if missing:
        raise CardReadError(f"field 55 ({use}): missing mandatory tag(s) {' '.join(sorted(missing))}")
    return emv_tlv.encode({t: bytes(tags[t]) for t in order if t in tags})
