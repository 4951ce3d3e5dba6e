"""QR-wallet simulator (WeChat Pay / Alipay / UnionPay QuickPass style payment codes) over H2H.

Merchant-scans-customer payments with the states a real wallet has: paid at once, pending while
the user confirms (``USERPAYING``), declined by the user, closed after ``expire_after`` seconds.
Same framing and :mod:`switch.h2h` message shapes as the card issuer (``docs/issuer.md`` §5):

* **pay** 0200/000000, 22 = ``031``, 4, 37 (our order number), 41, 42, 48 = payment code.
  39 = ``00`` paid (38, 44 = wallet transaction id), ``09`` pending (44), ``14`` not a payment code of
  this wallet, ``54`` code already used, ``51`` insufficient balance.
* **query** 0200/531000 with 37 = the order number (and 41): ``00`` paid, ``09`` still pending,
  ``05`` user declined / payment failed, ``12`` closed (expired or cancelled), ``25`` unknown order.
* **cancel / reverse** 0400 or 0420 with 37 (and 90): a pending order is closed, a paid one is
  refunded to the user's balance (ledger reversal), exactly once; ``00``, or ``25`` for an unknown order.

Wallet users (``[[wallet_users]]`` in the accounts file): ``code_prefix`` (every code starting with it
is that user's), ``balance``, ``confirm`` = ``auto`` | ``password`` (pending, paid after
``confirm_after`` s) | ``decline`` (pending, then declined) | ``never`` (pending until it expires).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from switch import h2h
from switch.h2h import TxnKind
from switch.logsafe import kv

from .accounts import AccountsError, account_id_for
from .faults import Faults
from .host import Outcome
from .ledger import DEBIT, Ledger

__all__ = ["WalletUser", "WalletConfig", "WalletHost", "wallet_of", "parse_wallets", "load_wallets", "start_wallets",
           "QUERY_PROC", "PENDING"]

log = logging.getLogger("posswitch.wallets")

QUERY_PROC = "531000"
PENDING = "09"          # ISO 8583:1987 "request in progress"
CONFIRM_MODES = ("auto", "password", "decline", "never")


def wallet_of(code: str) -> str | None:
    """The wallet a merchant-scanned payment code belongs to (by length and prefix), else ``None``."""
    if not code.isdigit():
        return None
    n, p = len(code), int(code[:2]) if len(code) >= 2 else -1
    if n == 18 and 10 <= p <= 15:
        return "wechat"
    if 16 <= n <= 24 and 25 <= p <= 30:
        return "alipay"
    if n == 19 and p == 62:
        return "unionpay"
    return None


@dataclass(slots=True)
class WalletUser:
    code_prefix: str
    balance: int = 0
    confirm: str = "auto"
    confirm_after: float = 2.0
    name: str = ""

    @property
    def account_id(self) -> str:
        return account_id_for("W" + self.code_prefix)


@dataclass(slots=True)
class WalletConfig:
    users: list[WalletUser] = field(default_factory=list)
    expire_after: float = 45.0
    faults: list[dict[str, Any]] = field(default_factory=list)
    latency: float = 0.0

    def user_for(self, code: str) -> WalletUser | None:
        best = None
        for u in self.users:
            if code.startswith(u.code_prefix) and (best is None or len(u.code_prefix) > len(best.code_prefix)):
                best = u
        return best


def parse_wallets(doc: Mapping[str, Any]) -> WalletConfig:
    """``[wallet]`` (expire_after, latency) and ``[[wallet_users]]`` of an accounts document."""
    w = doc.get("wallet", {}) or {}
    cfg = WalletConfig(expire_after=float(w.get("expire_after", 45.0)), latency=float(w.get("latency", 0.0)),
                       faults=[dict(f) for f in (w.get("faults", []) or [])])
    for i, raw in enumerate(doc.get("wallet_users", []) or []):
        where = f"wallet_users[{i}]"
        prefix = str(raw.get("code_prefix", ""))
        if not (prefix.isdigit() and 4 <= len(prefix) <= 20):
            raise AccountsError(f"{where}.code_prefix must be 4-20 digits")
        confirm = str(raw.get("confirm", "auto"))
        if confirm not in CONFIRM_MODES:
            raise AccountsError(f"{where}.confirm must be one of {CONFIRM_MODES}")
        try:
            balance = int(raw.get("balance", 0))
            after = float(raw.get("confirm_after", 2.0))
        except (TypeError, ValueError):
            raise AccountsError(f"{where}: balance (fen) and confirm_after (s) are numbers") from None
        cfg.users.append(WalletUser(prefix, balance, confirm, after, str(raw.get("name", ""))))
    return cfg


@dataclass(slots=True)
class _Order:
    key: tuple[str, str]               # (41, 37)
    request: dict[str, str]            # the pay request as received (no sensitive fields in it)
    user: WalletUser
    amount: int
    txn_id: str
    state: str = "USERPAYING"          # USERPAYING | SUCCESS | PAYERROR | CLOSED | REFUND
    auth_code: str = ""
    code: str = "09"
    timers: list[asyncio.TimerHandle] = field(default_factory=list)


class WalletHost:
    """Pay / query / cancel logic; orders live in memory, money movements in the :class:`Ledger`."""

    def __init__(self, config: WalletConfig, ledger: Ledger, faults: Faults | None = None) -> None:
        self.config = config
        self.ledger = ledger
        self.faults = faults if faults is not None else Faults.from_config(config.faults)
        self.orders: dict[tuple[str, str], _Order] = {}
        self._used_codes: set[str] = set()
        self._ids = itertools.count(1)
        self._seed_ledger()

    def _seed_ledger(self) -> None:
        # the ledger's account table wants Account-like rows: reuse its INSERT OR IGNORE
        rows = [(u.account_id, f"wallet:{u.code_prefix[:4]}…", u.balance) for u in self.config.users]
        with self.ledger._tx():
            self.ledger._db.executemany(
                "INSERT OR IGNORE INTO accounts(account_id, pan_masked, balance) VALUES (?, ?, ?)", rows)

    def balance(self, user: WalletUser) -> int:
        return self.ledger.balance(user.account_id)

    async def handle(self, msg: dict[str, str]) -> Outcome:
        kind = h2h.classify(msg)
        rule = self.faults.match(msg, kind) if kind is not TxnKind.ECHO else None
        if rule is not None and rule.action == "drop":
            return Outcome(None)
        if rule is not None and rule.action == "decline":
            return Outcome(h2h.response_to(msg, rule.code), self.config.latency)
        resp = self.process(msg, kind)
        await self.ledger.committed()  # group commit: no answer from a state that is not yet durable
        if rule is not None and rule.action == "drop_response":
            return Outcome(None)
        delay = self.config.latency + (rule.pause() if rule is not None and rule.action == "delay" else 0.0)
        return Outcome(resp, delay)

    def process(self, msg: dict[str, str], kind: TxnKind | None = None) -> dict[str, str]:
        kind = kind or h2h.classify(msg)
        if kind is TxnKind.ECHO:
            return h2h.response_to(msg, "00")
        if kind is TxnKind.REVERSAL:
            return self._cancel(msg)
        if msg.get("t") == "0200" and msg.get("3") == QUERY_PROC:
            return self._query(msg)
        if kind is TxnKind.SALE:
            return self._pay(msg)
        return h2h.response_to(msg, "12")

    # ---------------------------------------------------------------- pay
    def _pay(self, msg: dict[str, str]) -> dict[str, str]:
        code = msg.get("48", "")
        key = (msg.get("41", ""), msg.get("37", ""))
        if key in self.orders:  # retransmission of the same order: current state, nothing new
            return self._answer(msg, self.orders[key])
        wallet = wallet_of(code)
        user = self.config.user_for(code) if wallet else None
        if user is None:
            return h2h.response_to(msg, "14")
        if code in self._used_codes:
            return h2h.response_to(msg, "54")
        amount = int(msg["4"]) if msg.get("4", "").isdigit() else 0
        if amount <= 0:
            return h2h.response_to(msg, "13")
        self._used_codes.add(code)
        request = {k: v for k, v in msg.items() if k != "48"}
        order = _Order(key, request, user, amount, f"{wallet[:2].upper()}{next(self._ids):020d}")
        self.orders[key] = order
        loop = asyncio.get_running_loop()
        if log.isEnabledFor(logging.INFO):
            log.info("wallet_pay", extra=kv(wallet=wallet, order=key[1], amount=amount, confirm=user.confirm))
        if user.confirm == "auto":
            self._settle(order)
        else:
            if user.confirm in ("password", "decline"):
                order.timers.append(loop.call_later(user.confirm_after, self._user_acted, order))
            order.timers.append(loop.call_later(self.config.expire_after, self._expire, order))
        return self._answer(msg, order)

    def _settle(self, order: _Order) -> None:
        if order.amount > self.ledger.available(order.user.account_id):
            order.state, order.code = "PAYERROR", "51"
            return
        order.auth_code = f"{next(self._ids) % 1000000:06d}"
        self.ledger.post(order.user.account_id, DEBIT, order.amount, msg=order.request, auth_code=order.auth_code)
        order.state, order.code = "SUCCESS", "00"

    def _user_acted(self, order: _Order) -> None:
        if order.state != "USERPAYING":
            return
        if order.user.confirm == "decline":
            order.state, order.code = "PAYERROR", "05"
        else:
            self._settle(order)
        log.info("wallet_user_acted", extra=kv(order=order.key[1], state=order.state))

    def _expire(self, order: _Order) -> None:
        if order.state == "USERPAYING":
            order.state, order.code = "CLOSED", "12"
            log.info("wallet_order_expired", extra=kv(order=order.key[1]))

    def _answer(self, msg: dict[str, str], order: _Order) -> dict[str, str]:
        extra = {"44": order.txn_id}
        if order.state == "SUCCESS":
            extra["38"] = order.auth_code
        resp = h2h.response_to(msg, order.code, **extra)
        if "4" not in resp:
            resp["4"] = f"{order.amount:012d}"
        return resp

    # ---------------------------------------------------------------- query / cancel
    def _query(self, msg: dict[str, str]) -> dict[str, str]:
        order = self.orders.get((msg.get("41", ""), msg.get("37", "")))
        if order is None:
            return h2h.response_to(msg, "25")
        return self._answer(msg, order)

    def _cancel(self, msg: dict[str, str]) -> dict[str, str]:
        order = self.orders.get((msg.get("41", ""), msg.get("37", "")))
        if order is None:
            return h2h.response_to(msg, "25")
        for t in order.timers:
            t.cancel()
        if order.state == "SUCCESS":
            self.ledger.reverse(order.key[0], order.request.get("11", ""), order.key[1], msg=msg)
            order.state = "REFUND"
        elif order.state == "USERPAYING":
            order.state = "CLOSED"
        order.code = "12"
        log.info("wallet_cancel", extra=kv(order=order.key[1], state=order.state))
        return h2h.response_to(msg, "00", **{"44": order.txn_id})

    def close(self) -> None:
        for order in self.orders.values():
            for t in order.timers:
                t.cancel()


def load_wallets(path: str | Path) -> WalletConfig:
    """``[wallet]`` / ``[[wallet_users]]`` from an accounts file (TOML or JSON, by suffix)."""
    p = Path(path)
    try:
        doc = json.loads(p.read_bytes()) if p.suffix.lower() == ".json" else tomllib.loads(p.read_text())
    except (json.JSONDecodeError, tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise AccountsError(f"{p}: {exc}") from None
    return parse_wallets(doc)


async def start_wallets(config: WalletConfig, *, host: str = "127.0.0.1", port: int = 0,
                        ledger: Ledger | str = ":memory:") -> Any:
    """Start a wallet simulator on this loop; returns an ``IssuerServer`` whose ``host`` is a WalletHost."""
    from .server import IssuerServer

    led = ledger if isinstance(ledger, Ledger) else Ledger(ledger)
    return await IssuerServer(WalletHost(config, led)).listen(host, port)
