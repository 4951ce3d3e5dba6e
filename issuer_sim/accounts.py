"""Card accounts of the issuer simulator and the file (TOML or JSON) they are loaded from.

File layout (``docs/issuer.md`` has a full example)::

    [issuer]            # optional: institution id, keys under the LMK, default latency
    [[accounts]]        # one per card
    pan = "6212345678901234"; expiry = "3012"; status = "active"; balance = 100000
    daily_limit = 500000; psn = "01"; org = "CUP"
    pin = { method = "ibm", offset = "0000" }      # or { method = "pvv", pvki = "1", pvv = "1234" }
    [[faults]]          # see issuer_sim.faults

Amounts are in fen. ``status`` is one of :data:`STATUS_CODES` (the response code a non-active card gets).
"""

from __future__ import annotations

import functools
import hashlib
import json
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["account_id_for", "Account", "PinData", "IssuerConfig", "AccountsError", "STATUS_CODES", "load", "parse"]

#: account status -> response code (``active`` approves).
STATUS_CODES: dict[str, str] = {
    "active": "00",
    "blocked": "62",     # restricted card
    "lost": "41",        # lost card, capture
    "stolen": "43",      # stolen card, capture
    "dormant": "21",     # card not initialised / dormant
    "closed": "14",      # treated as an invalid card number
}


class AccountsError(ValueError):
    """A bad accounts file: names the account index and the field."""


@dataclass(frozen=True, slots=True)
class PinData:
    """PIN verification data as an issuer stores it: IBM 3624 offset or Visa PVV + PVKI."""

    method: str                       # "ibm" | "pvv"
    offset: str = ""                  # IBM: offset digits (length = checked PIN length)
    pvki: str = "1"                   # Visa: PVK index
    pvv: str = ""                     # Visa: 4-digit PIN verification value
    decimalisation: str = "0123456789012345"
    validation_data: str = ""         # IBM: empty -> 11 rightmost PAN digits before the check digit + "N"


@dataclass(slots=True)
class Account:
    pan: str
    expiry: str                       # YYMM
    status: str = "active"
    balance: int = 0                  # opening balance, fen
    daily_limit: int = 0              # 0 = no limit
    psn: str = "00"
    org: str = "CUP"
    pin: PinData | None = None
    name: str = ""
    scripts: tuple[bytes, ...] = ()   # issuer scripts (whole 71/72 TLVs) sent in field 55 on approval

    @property
    def account_id(self) -> str:
        """Stable id used in the ledger instead of the PAN (SHA-256 prefix of the PAN)."""
        return account_id_for(self.pan)


@functools.lru_cache(maxsize=4096)
def account_id_for(pan: str) -> str:
    """Stable ledger id of a card: ``A`` + 15 hex of SHA-256(PAN); the ledger never stores the PAN."""
    return "A" + hashlib.sha256(pan.encode()).hexdigest()[:15].upper()


@dataclass(slots=True)
class IssuerConfig:
    institution_id: str = "00000000002"
    keys: dict[str, str] = field(default_factory=dict)   # zpk / pvk / imk_ac under the LMK
    accounts: dict[str, Account] = field(default_factory=dict)
    faults: list[dict[str, Any]] = field(default_factory=list)
    latency: float = 0.0
    jitter: float = 0.0
    pin_tries: int = 3


def _pin(raw: Any, where: str) -> PinData | None:
    if raw is None:
        return None
    if not isinstance(raw, Mapping):
        raise AccountsError(f"{where}.pin must be a table")
    method = str(raw.get("method", "")).lower()
    if method == "ibm":
        offset = str(raw.get("offset", ""))
        if not (4 <= len(offset) <= 12 and offset.isdigit()):
            raise AccountsError(f"{where}.pin.offset must be 4-12 digits")
        return PinData("ibm", offset=offset,
                       decimalisation=str(raw.get("decimalisation", "0123456789012345")),
                       validation_data=str(raw.get("validation_data", "")))
    if method == "pvv":
        pvv, pvki = str(raw.get("pvv", "")), str(raw.get("pvki", "1"))
        if not (len(pvv) == 4 and pvv.isdigit()) or not (len(pvki) == 1 and pvki.isdigit()):
            raise AccountsError(f"{where}.pin: pvv must be 4 digits and pvki 1 digit")
        return PinData("pvv", pvki=pvki, pvv=pvv)
    raise AccountsError(f"{where}.pin.method must be 'ibm' or 'pvv', not {method!r}")


def _account(raw: Mapping[str, Any], i: int) -> Account:
    where = f"accounts[{i}]"
    pan = str(raw.get("pan", ""))
    if not (12 <= len(pan) <= 19 and pan.isdigit()):
        raise AccountsError(f"{where}.pan must be 12-19 digits")
    expiry = str(raw.get("expiry", ""))
    if not (len(expiry) == 4 and expiry.isdigit() and 1 <= int(expiry[2:]) <= 12):
        raise AccountsError(f"{where}.expiry must be YYMM")
    status = str(raw.get("status", "active")).lower()
    if status not in STATUS_CODES:
        raise AccountsError(f"{where}.status must be one of {sorted(STATUS_CODES)}")
    try:
        balance = int(raw.get("balance", 0))
        limit = int(raw.get("daily_limit", 0))
    except (TypeError, ValueError):
        raise AccountsError(f"{where}: balance and daily_limit are integers (fen)") from None
    psn = str(raw.get("psn", "00"))
    if not (psn.isdigit() and len(psn) <= 3):
        raise AccountsError(f"{where}.psn must be up to 3 digits")
    return Account(pan=pan, expiry=expiry, status=status, balance=balance, daily_limit=limit,
                   psn=psn.rjust(2, "0")[-2:], org=str(raw.get("org", "CUP")).upper()[:3],
                   pin=_pin(raw.get("pin"), where), name=str(raw.get("name", "")),
                   scripts=_scripts(raw.get("scripts", []), where))


def _scripts(raw: Any, where: str) -> tuple[bytes, ...]:
    out = []
    for j, hx in enumerate(raw or []):
        try:
            b = bytes.fromhex(str(hx))
        except ValueError:
            raise AccountsError(f"{where}.scripts[{j}] is not hex") from None
        if len(b) < 2 or b[0] not in (0x71, 0x72) or b[1] != len(b) - 2:
            raise AccountsError(f"{where}.scripts[{j}] must be one 71 or 72 TLV (short length)")
        out.append(b)
    return tuple(out)


def parse(doc: Mapping[str, Any]) -> IssuerConfig:
    """Build an :class:`IssuerConfig` from a decoded TOML/JSON document."""
    issuer = doc.get("issuer", {}) or {}
    cfg = IssuerConfig(
        institution_id=str(issuer.get("institution_id", "00000000002")),
        keys={str(k): str(v) for k, v in (issuer.get("keys", {}) or {}).items()},
        latency=float(issuer.get("latency", 0.0)),
        jitter=float(issuer.get("jitter", 0.0)),
        pin_tries=int(issuer.get("pin_tries", 3)),
    )
    raw_accounts: Iterable[Mapping[str, Any]] = doc.get("accounts", []) or []
    for i, raw in enumerate(raw_accounts):
        acct = _account(raw, i)
        if acct.pan in cfg.accounts:
            raise AccountsError(f"accounts[{i}].pan duplicates an earlier account")
        cfg.accounts[acct.pan] = acct
    faults = doc.get("faults", []) or []
    if not isinstance(faults, list):
        raise AccountsError("faults must be a list of tables")
    cfg.faults = [dict(f) for f in faults]
    return cfg


def load(path: str | Path) -> IssuerConfig:
    """Load ``.toml`` or ``.json`` (by suffix; anything else is tried as TOML)."""
    p = Path(path)
    data = p.read_bytes()
    try:
        doc = json.loads(data) if p.suffix.lower() == ".json" else tomllib.loads(data.decode())
    except (json.JSONDecodeError, tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise AccountsError(f"{p}: {exc}") from None
    return parse(doc)
