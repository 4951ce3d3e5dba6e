"""The card issuer's authorisation logic: one H2H request in, one response (or none) out.

Checks, in order (first failure answers): retransmission (replays the stored answer), transaction
kind (12), card known (14), card status (62/41/43/21/14), expiry (54), ARQC (05, via the HSM's
``KQ``), PIN (55 wrong, 75 tries exceeded; via the HSM's ``EA``/``EC``), amount (13), daily limit
(61), funds (51). Approvals post to the :class:`~issuer_sim.ledger.Ledger`; the HSM does every
cryptographic check, so no clear PIN or key exists here. See ``docs/issuer.md``.
"""

from __future__ import annotations

import asyncio
import datetime as _dt
import itertools
import logging
import random
import time
from collections.abc import Mapping
from typing import Any, Protocol

from switch import h2h
from switch.h2h import TxnKind
from switch.logsafe import kv

from .accounts import STATUS_CODES, Account, IssuerConfig
from .faults import FaultRule, Faults
from .ledger import CREDIT, DEBIT, HOLD, Ledger

__all__ = ["IssuerHost", "IssuerHsm", "ARQC_DATA_TAGS", "Outcome"]

log = logging.getLogger("posswitch.issuer")

#: Tag values concatenated (in this order, values only) into the data the ARQC is computed over.
ARQC_DATA_TAGS = ("9F02", "9F03", "9F1A", "95", "5F2A", "9A", "9C", "9F37", "82", "9F36", "9F10")


class IssuerHsm(Protocol):
    """What the issuer needs from ``switch.hsm_client.HsmClient``."""

    async def verify_pin_ibm_zpk(self, zpk: str, pvk: str, pin_block: bytes, pan: str, offset: str,
                                 dec_table: str = ..., *, pin_validation_data: str | None = ...,
                                 check_length: int = ...) -> bool: ...

    async def verify_pin_pvv_zpk(self, zpk: str, pvk_pair: str, pin_block: bytes, pan: str,
                                 pvki: str | int, pvv: str) -> bool: ...

    async def verify_arqc(self, imk_ac: str, pan: str, psn: str, atc: bytes, arqc: bytes, data: bytes,
                          arc: bytes = ..., *, un: bytes = ...) -> bytes | None: ...


class Outcome:
    """The response (or ``None`` = send nothing) and how long to wait before sending it."""

    __slots__ = ("response", "delay")

    def __init__(self, response: dict[str, str] | None, delay: float = 0.0) -> None:
        self.response = response
        self.delay = delay


class _NoWaiter:
    """Marks a request in progress that no copy waits for yet (no future made until one does)."""

    __slots__ = ()


_NO_WAITER = _NoWaiter()


class _Decline(Exception):
    def __init__(self, code: str, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason
        self.fields: dict[str, str] = {}


def _pan_of(msg: Mapping[str, str]) -> str:
    if msg.get("2"):
        return msg["2"]
    return msg.get("35", "").replace("D", "=").split("=", 1)[0]


def _expiry_of(msg: Mapping[str, str]) -> str | None:
    if msg.get("14"):
        return msg["14"]
    t2 = msg.get("35", "").replace("D", "=")
    if "=" in t2:
        exp = t2.split("=", 1)[1][:4]
        return exp if len(exp) == 4 else None
    return None


class IssuerHost:
    """Stateless apart from the ledger and fault rules; safe to share between connections."""

    def __init__(self, config: IssuerConfig, ledger: Ledger, hsm: IssuerHsm | None = None,
                 faults: Faults | None = None) -> None:
        self.config = config
        self.ledger = ledger
        self.hsm = hsm
        self.faults = faults if faults is not None else Faults.from_config(config.faults)
        self._auth = itertools.count(1)
        #: requests being authorised now, by their retransmission key: a copy arriving meanwhile waits for
        #: the first one's answer instead of being authorised (and debited) a second time
        self._in_progress: dict[tuple[str, str, str, str], asyncio.Future[dict[str, str]] | _NoWaiter] = {}
        ledger.ensure_accounts(list(config.accounts.values()))

    # ---------------------------------------------------------------- entry point
    async def handle(self, msg: dict[str, str]) -> Outcome:
        kind = h2h.classify(msg)
        rule = self.faults.match(msg, kind) if kind is not TxnKind.ECHO else None
        base_delay = self.config.latency + (self.config.jitter and _jitter(self.config.jitter))
        if rule is not None:
            log.info("fault", extra=kv(action=rule.action, mti=msg.get("t"), stan=msg.get("11"),
                                       pan=_pan_of(msg)))
            if rule.action == "drop":
                return Outcome(None)
            if rule.action == "decline":
                return Outcome(h2h.response_to(msg, rule.code), base_delay)
        resp = await self.process(msg, kind)
        if rule is not None and rule.action == "drop_response":
            return Outcome(None)
        delay = base_delay + (rule.pause() if isinstance(rule, FaultRule) and rule.action == "delay" else 0.0)
        return Outcome(resp, delay)

    async def process(self, msg: dict[str, str], kind: TxnKind | None = None) -> dict[str, str]:
        """Authorise ``msg`` and return the response (no faults applied)."""
        kind = kind or h2h.classify(msg)
        if kind is TxnKind.ECHO:
            return h2h.response_to(msg, "00")
        # advices are repeated (0221) with fresh STANs: deduplicate them on 41 + 37 alone
        key = dict(msg, t="0220", **{"11": ""}) if h2h.is_advice(msg) else msg
        ident = (key.get("t", ""), key.get("41", ""), key.get("11", ""), key.get("37", ""))
        first = self._in_progress.get(ident)
        if first is not None:
            if first is _NO_WAITER:  # the first copy made no future: nobody was waiting until now
                first = self._in_progress[ident] = asyncio.get_running_loop().create_future()
            stored = dict(await asyncio.shield(first))
        else:
            stored = self.ledger.stored_response(key)
        if stored is not None:
            if log.isEnabledFor(logging.INFO):
                log.info("retransmission", extra=kv(mti=msg.get("t"), stan=msg.get("11"), rc=stored.get("39")))
            stored.update({k: msg[k] for k in ("t", "11", "7") if k in msg})
            stored["t"] = h2h.response_mti(msg["t"])
            await self.ledger.committed()  # the stored answer may still be in the open batch
            return stored
        self._in_progress[ident] = _NO_WAITER  # a copy arriving meanwhile makes the future it waits on
        try:
            resp = await self._answer(msg, kind)
            self.ledger.store_response(key, resp)
            await self.ledger.committed()  # group commit: durable before anyone sees the answer
        except BaseException as exc:
            done = self._in_progress[ident]
            if done is not _NO_WAITER:
                done.set_exception(exc)
                done.exception()  # retrieved: a copy waiting on it re-raises, nobody else must
            raise
        else:
            done = self._in_progress[ident]
            if done is not _NO_WAITER:
                done.set_result(resp)
        finally:
            del self._in_progress[ident]
        return resp

    async def _answer(self, msg: dict[str, str], kind: TxnKind) -> dict[str, str]:
        if kind is TxnKind.REVERSAL:
            return self._reverse(msg)
        try:
            return await self._authorise(msg, kind)
        except _Decline as d:
            if log.isEnabledFor(logging.INFO):
                log.info("declined", extra=kv(kind=kind.value, rc=d.code, reason=d.reason, stan=msg.get("11"),
                                              pan=_pan_of(msg), amount=msg.get("4")))
            return h2h.response_to(msg, d.code, **d.fields)

    # ---------------------------------------------------------------- reversal
    def _reverse(self, msg: dict[str, str]) -> dict[str, str]:
        try:
            orig = h2h.parse_field90(msg.get("90", ""))
            stan = orig["stan"]
        except h2h.H2HError:
            stan = msg.get("11", "")
        code, pid = self.ledger.reverse(msg.get("41", ""), stan, msg.get("37", ""), msg=msg)
        if log.isEnabledFor(logging.INFO):
            log.info("reversal", extra=kv(rc=code, orig_stan=stan, rrn=msg.get("37"), posting=pid,
                                          reason=msg.get("39")))
        resp = h2h.response_to(msg, code)
        return resp

    # ---------------------------------------------------------------- authorisation
    async def _authorise(self, msg: dict[str, str], kind: TxnKind) -> dict[str, str]:
        if kind in (TxnKind.UNKNOWN, TxnKind.QUERY):
            raise _Decline("12", f"unsupported MTI {msg.get('t')} / processing code {msg.get('3')}")
        if msg.get("49", "156") != "156":
            raise _Decline("A1", "currency")
        pan = _pan_of(msg)
        acct = self.config.accounts.get(pan)
        if acct is None:
            raise _Decline("14", "unknown card")
        if acct.status != "active":
            raise _Decline(STATUS_CODES[acct.status], f"card {acct.status}")
        now_yymm = _this_month()
        exp = _expiry_of(msg)
        if acct.expiry < now_yymm or (exp is not None and exp != acct.expiry):
            raise _Decline("54", "expired or wrong expiry")
        extra: dict[str, str] = {"63": acct.org}
        chip: dict[str, Any] = {}
        if "55" in msg and kind is not TxnKind.REFUND:
            chip = await self._check_arqc(msg, acct)
        try:
            return await self._decide(msg, kind, acct, extra, chip)
        except _Decline as d:
            # the ARQC was good: the card still authenticates the decline (tag 91 with ARC = 39)
            if chip:
                arpc = await self._arpc(chip, d.code.encode())
                if arpc is not None:
                    d.fields["55"] = h2h.tags_to_field55({"91": arpc + d.code.encode()})
            d.fields["63"] = acct.org
            raise

    async def _decide(self, msg: dict[str, str], kind: TxnKind, acct: Account, extra: dict[str, str],
                      chip: dict[str, Any]) -> dict[str, str]:
        if msg.get("52"):
            await self._check_pin(msg, acct)
        amount = int(msg["4"]) if msg.get("4", "").isdigit() else 0
        aid = acct.account_id
        if kind is TxnKind.BALANCE:
            extra["54"] = h2h.field54_balance(self.ledger.available(aid))
            return self._approve(msg, extra, chip, acct)
        if amount <= 0:
            raise _Decline("13", "amount must be > 0")
        auth = f"{next(self._auth) % 1000000:06d}"
        if kind in (TxnKind.SALE, TxnKind.PREAUTH, TxnKind.COMPLETION):
            if acct.daily_limit and self.ledger.daily_spent(aid) + amount > acct.daily_limit:
                raise _Decline("61", "daily limit")
            available = self.ledger.available(aid)
            if kind is TxnKind.COMPLETION:
                available += self._hold_for(aid, msg.get("38"))
            if amount > available:
                raise _Decline("51", "insufficient funds")
            if kind is TxnKind.PREAUTH:
                self.ledger.post(aid, HOLD, amount, msg=msg, auth_code=auth)
            else:
                self.ledger.post(aid, DEBIT, amount, msg=msg, auth_code=auth,
                                 release_auth=msg.get("38") if kind is TxnKind.COMPLETION else None)
        elif kind is TxnKind.COMPLETION_ADVICE:  # advices are force-posted
            self.ledger.post(aid, DEBIT, amount, msg=msg, auth_code=msg.get("38") or auth,
                             release_auth=msg.get("38"))
        elif kind in (TxnKind.REFUND, TxnKind.VOID):
            self.ledger.post(aid, CREDIT, amount, msg=msg, auth_code=auth)
        elif kind is TxnKind.PREAUTH_VOID:
            if not self.ledger.release(aid, msg.get("38", ""), msg=msg):
                raise _Decline("25", "no open pre-authorisation with that code")
        extra["38"] = msg.get("38") if kind is TxnKind.COMPLETION_ADVICE and msg.get("38") else auth
        return self._approve(msg, extra, chip, acct)

    def _hold_for(self, account_id: str, auth_code: str | None) -> int:
        if not auth_code:
            return 0
        for p in self.ledger.postings(account_id):
            if p.kind == HOLD and p.auth_code == auth_code and p.reversed_by is None:
                return p.amount
        return 0

    def _approve(self, msg: dict[str, str], extra: dict[str, Any], chip: dict[str, Any],
                 acct: Account) -> dict[str, str]:
        resp = h2h.response_to(msg, "00", **{k: v for k, v in extra.items() if v})
        if chip:  # tag 91 = ARPC || ARC (= 39), then the account's issuer scripts (71/72)
            icc = h2h.tlv_encode({"91": chip["arpc"] + b"00"}) + b"".join(acct.scripts)
            resp["55"] = icc.hex().upper()
        if log.isEnabledFor(logging.INFO):
            log.info("approved", extra=kv(kind=h2h.classify(msg).value, stan=msg.get("11"), pan=_pan_of(msg),
                                          amount=msg.get("4"), auth=resp.get("38")))
        return resp

    async def _arpc(self, chip: dict[str, Any], arc: bytes) -> bytes | None:
        """ARPC for another ARC (a decline after a good ARQC); ``None`` if the HSM cannot."""
        try:
            return await self.hsm.verify_arqc(*chip["args"], arc, un=chip["un"])  # type: ignore[union-attr]
        except Exception as exc:
            log.warning("hsm_error", extra=kv(command="KQ", error=str(exc)))
            return None

    async def _check_arqc(self, msg: dict[str, str], acct: Account) -> dict[str, Any]:
        """Verify the ARQC in field 55 with the HSM (KQ, ARC 00); returns what an ARPC needs, or {}
        when field 55 carries no ARQC."""
        try:
            tags = h2h.field55_tags(msg["55"])
        except h2h.H2HError as exc:
            raise _Decline("30", str(exc)) from None
        if "9F26" not in tags:
            return {}
        missing = [t for t in ("9F36", "9F37") if t not in tags]
        if missing:
            raise _Decline("30", f"field 55 lacks {', '.join(missing)}")
        if self.hsm is None or "imk_ac" not in self.config.keys:
            raise _Decline("96", "no HSM / IMK-AC configured for ARQC verification")
        data = b"".join(tags[t] for t in ARQC_DATA_TAGS if t in tags)
        psn = msg.get("23", "")[-2:] or (tags["5F34"].hex() if "5F34" in tags else acct.psn)
        args = (self.config.keys["imk_ac"], _pan_of(msg), psn, tags["9F36"], tags["9F26"], data)
        try:
            arpc = await self.hsm.verify_arqc(*args, b"00", un=tags["9F37"])
        except Exception as exc:  # HsmError, HsmTimeout, HsmUnavailable
            log.warning("hsm_error", extra=kv(command="KQ", error=str(exc)))
            raise _Decline("96", "HSM error") from None
        if arpc is None:
            raise _Decline("05", "ARQC verification failed")
        return {"args": args, "un": tags["9F37"], "arpc": arpc}

    async def _check_pin(self, msg: dict[str, str], acct: Account) -> None:
        aid = acct.account_id
        tries = self.config.pin_tries  # 0 = no limit
        if tries and self.ledger.pin_fails(aid) >= tries:
            raise _Decline("75", "PIN tries exceeded")
        if acct.pin is None:
            raise _Decline("55", "no PIN verification data on file")
        if self.hsm is None or "zpk" not in self.config.keys or "pvk" not in self.config.keys:
            raise _Decline("96", "no HSM / ZPK / PVK configured for PIN verification")
        try:
            block = bytes.fromhex(msg["52"])
        except ValueError:
            raise _Decline("30", "field 52 is not hex") from None
        pan, keys = _pan_of(msg), self.config.keys
        try:
            if acct.pin.method == "ibm":
                ok = await self.hsm.verify_pin_ibm_zpk(
                    keys["zpk"], keys["pvk"], block, pan, acct.pin.offset, acct.pin.decimalisation,
                    pin_validation_data=acct.pin.validation_data or None, check_length=len(acct.pin.offset))
            else:
                ok = await self.hsm.verify_pin_pvv_zpk(keys["zpk"], keys["pvk"], block, pan,
                                                       acct.pin.pvki, acct.pin.pvv)
        except Exception as exc:
            code = getattr(exc, "code", "")
            log.warning("hsm_error", extra=kv(command="EA/EC", error=str(exc)))
            if code in ("20", "23", "24"):  # PIN block invalid / format / length: a wrong PIN
                ok = False
            else:
                raise _Decline("96", "HSM error") from None
        fails = self.ledger.record_pin_result(aid, ok)
        if not ok:
            raise _Decline("75" if tries and fails >= tries else "55", "wrong PIN")


_month_cache: list = [0.0, ""]  # [monotonic time until which the cached YYMM holds, YYMM]


def _this_month() -> str:
    """Today's YYMM (local date, for the expiry check), recomputed at most once a second."""
    now = time.monotonic()
    if now >= _month_cache[0]:
        _month_cache[0], _month_cache[1] = now + 1.0, _dt.date.today().strftime("%y%m")
    return _month_cache[1]  # type: ignore[no-any-return]


def _jitter(j: float) -> float:
    return random.uniform(0, j)
