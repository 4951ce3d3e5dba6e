"""A software EMV (PBOC/UnionPay-style) card application with real keys.

:class:`SoftCard` answers C-APDUs exactly as a contact or contactless chip would:
SELECT PSE/PPSE and AID, GET PROCESSING OPTIONS, READ RECORD, GENERATE AC (1st
and 2nd), GET DATA, and - in T=0 mode - ``61xx`` + GET RESPONSE for case-4
commands and ``6Cxx`` for a wrong Le.  Its ARQC is what ``issuer_sim`` verifies:

* ICC MK-AC = EMV option A (PAN, PSN) under IMK-AC (test key
  ``0123456789ABCDEFFEDCBA9876543210``);
* SK = EMV common session key, R = ATC || 00 00 || UN;
* AC = ISO 9797-1 alg 3, padding method 2, over
  ``CDOL1 data (9F02 9F03 9F1A 95 5F2A 9A 9C 9F37) || AIP || ATC || IAD``;
* the 2nd GENERATE AC verifies the ARPC in tag 91 (method 1 with the ICC master
  key, as the HSM's ``KQ`` computes it: ``TDES(MK-AC, ARQC XOR ARC||00*6)``,
  91 = ARPC || ARC; ``CardProfile.arpc_key="session"`` switches to the session
  key) and returns a TC only for an
  approved, authenticated host answer; otherwise an AAC.  The TC/AAC uses the
  same data layout with the CDOL2 values and the updated CVR.

It is reached through :class:`terminal_bridge.apdu.DirectTransport` (in process) or
:class:`terminal_bridge.drivers.vpcd.VpcdCard` (pcscd + vpcd + pyscard).
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
from dataclasses import dataclass, field

from switch.logsafe import kv

from .. import emv_crypto
from ..emv_tlv import parse_dol, tl

log = logging.getLogger(__name__)

TEST_IMK_AC = bytes.fromhex("0123456789ABCDEFFEDCBA9876543210")
PSE = b"1PAY.SYS.DDF01"
PPSE = b"2PAY.SYS.DDF01"
UNIONPAY_DEBIT = bytes.fromhex("A000000333010101")

CDOL1 = bytes.fromhex("9F0206" "9F0306" "9F1A02" "9505" "5F2A02" "9A03" "9C01" "9F3704")
CDOL2 = bytes.fromhex("8A02" "910A" "9F3704" "9505" "9F0206" "9F0306" "9F1A02" "5F2A02" "9A03" "9C01")
PDOL = bytes.fromhex("9F1A02")
APPROVED_ARCS = {b"00", b"10", b"11", b"A2", b"A4", b"A5", b"A6"}

SW_OK = b"\x90\x00"
SW_NOT_FOUND = b"\x6a\x82"
SW_RECORD_NOT_FOUND = b"\x6a\x83"
SW_WRONG_LENGTH = b"\x67\x00"
SW_CONDITIONS = b"\x69\x85"
SW_INS = b"\x6d\x00"
SW_CLA = b"\x6e\x00"
SW_P1P2 = b"\x6a\x86"
SW_DATA = b"\x6a\x80"
SW_BLOCKED = b"\x62\x83"  # selected file invalidated (application blocked)
SW_SM_WRONG = b"\x69\x88"  # incorrect secure-messaging data objects (bad script MAC)


def _bcd(digits: str) -> bytes:
    if len(digits) % 2:
        digits += "F"
    return bytes.fromhex(digits)


@dataclass
class CardProfile:
    """Personalisation data of one software card."""

    pan: str = "6212345678901232"
    psn: str = "01"
    expiry: str = "301231"  # YYMMDD
    effective: str = "200101"
    name: str = "ZHANG/SAN"
    service_code: str = "220"  # 2xx: chip card (a swipe is a fallback)
    aid: bytes = UNIONPAY_DEBIT
    label: str = "UnionPay Debit"
    imk_ac: bytes = field(default=TEST_IMK_AC, repr=False)
    imk_smi: bytes = field(default=TEST_IMK_AC, repr=False)  # issuer-script MAC master key
    atc: int = 0
    aip: bytes = bytes.fromhex("1C00")  # CVM, terminal risk management, issuer authentication; no ODA
    oda: str = "none"  # offline data authentication: "none", "sda", "dda" or "cda" (AIP bits, test PKI)
    dki: int = 0x01
    cvn: int = 0x0A
    app_version: bytes = bytes.fromhex("0030")
    country: bytes = bytes.fromhex("0156")
    arpc_key: str = "mk"  # ARPC method 1 key: "mk" (ICC MK-AC, HSM KQ / vector EMV-3) or "session"

    def track2_equivalent(self) -> bytes:
        return _bcd(f"{self.pan}D{self.expiry[:4]}{self.service_code}{'0' * 5}")


class SoftCard:
    """An EMV card application: feed it C-APDUs (:meth:`process`), get R-APDUs back."""

    def __init__(self, profile: CardProfile | None = None, *, t0: bool = False, contactless: bool = False,
                 **personalise: object) -> None:
        self.profile = profile or CardProfile(**personalise)  # type: ignore[arg-type]
        self.t0 = t0
        self.contactless = contactless
        self._icc_mk = emv_crypto.icc_master_key(self.profile.imk_ac, self.profile.pan, self.profile.psn)
        self._mk_smi = emv_crypto.icc_master_key(self.profile.imk_smi, self.profile.pan, self.profile.psn)
        if self.profile.oda not in ("none", "sda", "dda", "cda"):
            raise ValueError(f"oda must be none, sda, dda or cda, not {self.profile.oda!r}")
        oda_bits = {"none": 0x00, "sda": 0x40, "dda": 0x60, "cda": 0x61}[self.profile.oda]
        self.aip = bytes([self.profile.aip[0] | oda_bits]) + self.profile.aip[1:]
        self._recs = self._build_records()
        self.blocked = False
        #: data objects changed by PUT DATA scripts
        self.data_objects: dict[str, bytes] = {}
        self.atc = self.profile.atc
        self.powered = False
        self.reset()
        #: every C-APDU received, for tests that check what the terminal sent
        self.log: list[bytes] = []

    # -------------------------------------------------------------- power / ATR
    @staticmethod
    def atr() -> bytes:
        # TS=3B, T0=65 (TA1 absent, TB1 present, 5 historical bytes), TB1=00, historicals
        return bytes.fromhex("3B6500002063CB6600")

    def reset(self) -> bytes:
        self.powered = True
        self._selected = False
        self._gpo_done = False
        self._state = "idle"  # idle -> gpo -> arqc -> done
        self._sk: bytes | None = None
        self._arqc: bytes | None = None
        self._cvr = bytearray(b"\x03\x00\x00\x00")
        self._pending: bytes = b""
        return self.atr()

    def power_off(self) -> None:
        self.powered = False

    # -------------------------------------------------------------- dispatch
    def process(self, apdu: bytes) -> bytes:
        """Answer one C-APDU (never raises: malformed commands get an error status word)."""
        self.log.append(bytes(apdu))
        if len(apdu) < 4:
            return SW_WRONG_LENGTH
        cla, ins, p1, p2 = apdu[0], apdu[1], apdu[2], apdu[3]
        data, le = self._split(apdu)
        if data is None:
            return SW_WRONG_LENGTH
        if ins == 0xC0 and cla == 0x00:
            return self._get_response(le)
        self._pending = b""
        try:
            if cla == 0x00 and ins == 0xA4:
                resp, case4 = self._select(p1, p2, data), True
            elif cla == 0x00 and ins == 0x88:
                resp, case4 = self._internal_authenticate(data), True
            elif cla == 0x00 and ins == 0xB2:
                resp, case4 = self._read_record(p1, p2), False
            elif cla == 0x80 and ins == 0xA8:
                resp, case4 = self._gpo(data), True
            elif cla == 0x80 and ins == 0xAE:
                resp, case4 = self._generate_ac(p1, data), True
            elif cla == 0x80 and ins == 0xCA:
                resp, case4 = self._get_data(p1, p2), False
            elif (cla, ins) in ((0x84, 0x1E), (0x84, 0x18), (0x04, 0xDA), (0x84, 0xDA)):
                resp, case4 = self._script_command(apdu), False
            elif cla not in (0x00, 0x80):
                return SW_CLA
            else:
                return SW_INS
        except _Status as st:
            return st.sw
        return self._t0_wrap(resp, le, case4)

    @staticmethod
    def _split(apdu: bytes) -> tuple[bytes | None, int | None]:
        body = apdu[4:]
        if not body:
            return b"", None  # case 1
        if len(body) == 1:
            return b"", body[0]  # case 2: Le
        lc = body[0]
        if len(body) == 1 + lc:
            return body[1:], None  # case 3
        if len(body) == 2 + lc:
            return body[1 : 1 + lc], body[-1]  # case 4
        return None, None

    def _t0_wrap(self, resp: bytes, le: int | None, case4: bool) -> bytes:
        if not self.t0 or not resp:
            return resp + SW_OK
        if case4:
            self._pending = resp
            return bytes([0x61, len(resp) & 0xFF])
        want = 256 if le == 0 else le
        if le is None or want != len(resp):
            self._pending = resp
            return bytes([0x6C, len(resp) & 0xFF])
        return resp + SW_OK

    def _get_response(self, le: int | None) -> bytes:
        if not self._pending:
            return SW_CONDITIONS
        resp, self._pending = self._pending, b""
        if le not in (None, 0) and le < len(resp):
            self._pending = resp[le:]
            return resp[:le] + bytes([0x61, len(self._pending) & 0xFF])
        return resp + SW_OK

    # -------------------------------------------------------------- commands
    def _select(self, p1: int, p2: int, name: bytes) -> bytes:
        if p1 != 0x04:
            raise _Status(SW_P1P2)
        self._selected = False
        self._state = "idle"
        if name == (PPSE if self.contactless else PSE):
            entry = tl("61", tl("4F", self.profile.aid) + tl("50", self.profile.label.encode()) + tl("87", b"\x01"))
            return tl("6F", tl("84", name) + tl("A5", tl("BF0C", entry)))
        if name and self.profile.aid.startswith(name):  # partial-name selection allowed
            if self.blocked:
                raise _Status(SW_BLOCKED)
            self._selected = True
            prop = tl("50", self.profile.label.encode()) + tl("87", b"\x01") + tl("9F38", PDOL)
            prop += tl("5F2D", b"zhen") + tl("9F11", b"\x01")
            return tl("6F", tl("84", self.profile.aid) + tl("A5", prop))
        raise _Status(SW_NOT_FOUND)

    def _gpo(self, data: bytes) -> bytes:
        if not self._selected:
            raise _Status(SW_CONDITIONS)
        want = sum(n for _, n in parse_dol(PDOL))
        if len(data) < 2 or data[0] != 0x83 or data[1] != len(data) - 2 or data[1] != want:
            raise _Status(SW_WRONG_LENGTH)
        self.atc = (self.atc + 1) & 0xFFFF
        self._pdol_data = bytes(data[2:])
        self._gpo_done = True
        self._state = "gpo"
        if self.profile.oda == "none":
            afl = bytes.fromhex("08010200")  # SFI 1, records 1..2, none for offline data authentication
        else:  # SFI 1 records 1..2 signed; SFI 2 records 1..2 hold certificates
            afl = bytes.fromhex("08010202" "10010200")
        return tl("77", tl("82", self.aip) + tl("94", afl))

    def _build_records(self) -> dict[tuple[int, int], bytes]:
        p = self.profile
        rec1 = tl("57", p.track2_equivalent()) + tl("5F20", p.name.encode()) + tl("9F1F", b"0000000000")
        rec2 = (tl("5A", _bcd(p.pan)) + tl("5F24", bytes.fromhex(p.expiry)) + tl("5F25", bytes.fromhex(p.effective))
                + tl("5F34", bytes.fromhex(p.psn)) + tl("5F28", p.country) + tl("9F07", b"\xff\x00")
                + tl("9F08", p.app_version) + tl("8C", CDOL1) + tl("8D", CDOL2)
                + tl("8E", bytes(8) + bytes.fromhex("42031E031F00"))  # online PIN, signature, no CVM
                + tl("9F0D", bytes.fromhex("D860000000")) + tl("9F0E", bytes(5))
                + tl("9F0F", bytes.fromhex("D868009800")) + tl("9F63", bytes.fromhex("3031303230303030") + bytes(8)))
        recs = {(1, 1): tl("70", rec1), (1, 2): tl("70", rec2)}
        if p.oda != "none":
            from . import test_pki

            rec2 += tl("9F4A", b"\x82")  # the AIP is part of the signed static data
            recs[(1, 2)] = tl("70", rec2)
            static = rec1 + rec2 + self.aip  # record values of SFI 1..10 (without 70 L) + AIP
            cert, rem = test_pki.issuer_certificate(p.pan)
            issuer = (tl("8F", bytes([test_pki.TEST_CAPK_INDEX])) + tl("90", cert) + tl("92", rem)
                      + tl("9F32", test_pki.ISSUER_EXPONENT))
            if p.oda == "sda":
                signed = tl("93", test_pki.signed_static_data(static))
            else:
                icc_cert, icc_rem = test_pki.icc_certificate(p.pan, static)
                signed = (tl("9F46", icc_cert) + tl("9F48", icc_rem) + tl("9F47", test_pki.ICC_EXPONENT)
                          + tl("9F49", bytes.fromhex("9F3704")))
            # records stay under 255 bytes so short APDUs (and T=0) can carry them
            recs[(2, 1)] = tl("70", issuer)
            recs[(2, 2)] = tl("70", signed)
        if any(len(r) > 253 for r in recs.values()):
            raise ValueError("personalisation: a record exceeds 253 bytes (name or PAN too long)")
        return recs

    def _read_record(self, p1: int, p2: int) -> bytes:
        if not self._selected:
            raise _Status(SW_CONDITIONS)
        if p2 & 0x07 != 0x04:
            raise _Status(SW_P1P2)
        rec = self._recs.get((p2 >> 3, p1))
        if rec is None:
            raise _Status(SW_RECORD_NOT_FOUND)
        return rec

    def _script_command(self, apdu: bytes) -> bytes:
        """Issuer script command with a 4-byte MAC (EMV Book 2 §9.2, format 2): MAC over
        CLA INS P1 P2 Lc || ATC || ARQC || data under the SMI session key (R = ARQC)."""
        if self._arqc is None:
            raise _Status(SW_CONDITIONS)  # scripts only after an online request in this session
        lc = apdu[4] if len(apdu) > 4 else 0
        body = apdu[5 : 5 + lc]
        if lc < 4 or len(body) != lc:
            raise _Status(SW_WRONG_LENGTH)
        data, mac = body[:-4], body[-4:]
        sk = emv_crypto.session_key_r(self._mk_smi, self._arqc)
        want = emv_crypto.script_mac(sk, apdu[:5] + self.atc.to_bytes(2, "big") + self._arqc + data)
        if not hmac.compare_digest(mac, want):
            log.warning("script MAC rejected", extra=kv(ins=f"{apdu[1]:02X}"))
            raise _Status(SW_SM_WRONG)
        ins = apdu[1]
        if ins == 0x1E:
            self.blocked = True
        elif ins == 0x18:
            self.blocked = False
        else:  # PUT DATA: P1 P2 = tag
            self.data_objects[apdu[2:4].hex().upper()] = bytes(data)
        log.info("script command applied", extra=kv(ins=f"{ins:02X}"))
        return b""

    def _internal_authenticate(self, ddol_data: bytes) -> bytes:
        """DDA: sign (ICC dynamic number = ATC || 6 random bytes) + the terminal's DDOL data."""
        if self.profile.oda not in ("dda", "cda"):
            raise _Status(SW_INS)
        if not self._gpo_done:
            raise _Status(SW_CONDITIONS)
        if len(ddol_data) != 4:
            raise _Status(SW_WRONG_LENGTH)
        from . import test_pki

        idn = self.atc.to_bytes(2, "big") + os.urandom(6)
        return tl("80", test_pki.signed_dynamic_data(idn, ddol_data))

    def _get_data(self, p1: int, p2: int) -> bytes:
        tag = bytes([p1, p2])
        if tag == b"\x9f\x36":
            return tl("9F36", self.atc.to_bytes(2, "big"))
        if tag == b"\x9f\x17":
            return tl("9F17", b"\x03")
        raise _Status(SW_NOT_FOUND)

    def _iad(self) -> bytes:
        return bytes([0x07, self.profile.dki, self.profile.cvn]) + bytes(self._cvr) + b"\x01"

    def _cryptogram(self, cdol1_data: bytes) -> bytes:
        assert self._sk is not None
        data = cdol1_data + self.aip + self.atc.to_bytes(2, "big") + self._iad()
        return emv_crypto.application_cryptogram(self._sk, data)

    def _generate_ac(self, p1: int, data: bytes) -> bytes:
        ref = p1 & 0xC0
        if ref == 0xC0:
            raise _Status(SW_P1P2)
        if self._state == "gpo":
            return self._first_ac(ref, data, cda=bool(p1 & 0x10) and self.profile.oda == "cda")
        if self._state == "arqc":
            return self._second_ac(ref, data)
        raise _Status(SW_CONDITIONS)

    def _first_ac(self, ref: int, data: bytes, cda: bool = False) -> bytes:
        dol = parse_dol(CDOL1)
        if len(data) != sum(n for _, n in dol):
            raise _Status(SW_WRONG_LENGTH)
        values = _split_dol(dol, data)
        atc = self.atc.to_bytes(2, "big")
        self._sk = emv_crypto.session_key(self._icc_mk, atc, values["9F37"])
        # an online-only card: a TC request is answered with an ARQC, an AAC request with an AAC
        cid = 0x00 if ref == 0x00 else 0x80
        self._cvr[1] = 0xA0 if cid == 0x80 else 0x80  # 2nd GAC not requested + ARQC / AAC in 1st
        ac = self._cryptogram(data)
        if cid == 0x80:
            self._arqc, self._state = ac, "arqc"
        else:
            self._state = "done"
        log.debug("generate ac", extra=kv(step=1, cid=f"{cid:02X}", atc=self.atc, cda=cda))
        if cda and cid == 0x80:
            return self._cda_response(cid, ac, data, values["9F37"])
        return self._ac_response(cid, ac)

    def _cda_response(self, cid: int, ac: bytes, cdol1_data: bytes, un: bytes) -> bytes:
        """CDA (EMV Book 2 §6.6): 9F4B signs ICC dynamic number, CID, AC and the transaction data hash
        (PDOL data || CDOL1 data || the answer's other data objects) for the terminal's UN."""
        from . import test_pki

        others = tl("9F27", bytes([cid])) + tl("9F36", self.atc.to_bytes(2, "big")) + tl("9F10", self._iad())
        tdhc = hashlib.sha1(self._pdol_data + cdol1_data + others).digest()
        idn = self.atc.to_bytes(2, "big") + os.urandom(6)
        sdad = test_pki.signed_dynamic_data(idn, un, extra=bytes([cid]) + ac + tdhc)
        return tl("77", others + tl("9F4B", sdad))

    def _second_ac(self, ref: int, data: bytes) -> bytes:
        dol = parse_dol(CDOL2)
        if len(data) != sum(n for _, n in dol):
            raise _Status(SW_WRONG_LENGTH)
        values = _split_dol(dol, data)
        arc, iad91 = values["8A"], values["91"]
        assert self._arqc is not None and self._sk is not None
        authenticated = False
        if any(iad91):
            arpc, arc91 = iad91[:8], iad91[8:10]
            key = self._sk if self.profile.arpc_key == "session" else self._icc_mk
            expected = emv_crypto.arpc_method1(key, self._arqc, arc91)
            authenticated = hmac.compare_digest(arpc, expected) and arc91 == arc
            if not authenticated:
                self._cvr[2] |= 0x10  # issuer authentication failed
        approve = ref == 0x40 and authenticated and arc in APPROVED_ARCS
        cid = 0x40 if approve else 0x00
        self._cvr[1] = 0x60 if approve else 0x20 | (self._cvr[1] & 0x30)  # TC / AAC in 2nd GAC
        cdol1_data = b"".join(values[t] for t, _ in parse_dol(CDOL1))
        ac = self._cryptogram(cdol1_data)
        self._state = "done"
        log.debug("generate ac", extra=kv(step=2, cid=f"{cid:02X}", issuer_auth=authenticated))
        return self._ac_response(cid, ac)

    def _ac_response(self, cid: int, ac: bytes) -> bytes:
        return tl("77", tl("9F27", bytes([cid])) + tl("9F36", self.atc.to_bytes(2, "big")) + tl("9F26", ac)
                  + tl("9F10", self._iad()))

    @property
    def issuer_auth_failed(self) -> bool:
        return bool(self._cvr[2] & 0x10)


def _split_dol(dol: list[tuple[str, int]], data: bytes) -> dict[str, bytes]:
    out: dict[str, bytes] = {}
    pos = 0
    for tag, n in dol:
        out[tag] = data[pos : pos + n]
        pos += n
    return out


class _Status(Exception):
    def __init__(self, sw: bytes) -> None:
        super().__init__(sw.hex())
        self.sw = sw
