"""Scripted terminal: run a list of commands on a :class:`~terminal_bridge.app.TerminalApp`.

Used by ``posswitch terminal --script FILE``, by ``posswitch demo`` and by tests.  One command per
line, ``#`` starts a comment; amounts are in yuan (``12.34``)::

    signon
    sale 12.34 swipe=;6212340000000019=30121010000000000? pin=123456
    sale 5.00 chip pin=123456          # the software chip card (PAN from --card-pan or chip=PAN)
    sale 7.00 tap=4761000000000019      # contactless software card with that PAN
    sale 3.00 qr=134500000001123456     # scanned payment code
    balance swipe=... pin=123456
    void $stan                          # $stan / $rrn / $date: of the last approved transaction
    refund 1.00 rrn=$rrn date=$date chip
    preauth 50.00 chip pin=123456
    completion 45.00 trace=$stan         # or rrn=... auth=... date=MMDD with a card
    completion_void $stan
    preauth_void TRACE
    settle
    echo
    diagnose

A swipe of a chip card (service code 2xx) is refused unless ``fallback`` is on the line.
:func:`run_script` returns the :class:`~terminal_bridge.app.Result` of every command.
:func:`open_terminal` is the one-call API for the demo.
"""

from __future__ import annotations

import asyncio
import json
import random
import shlex
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

from .app import Insert, Result, Scan, Swipe, Tap, TerminalApp, TerminalConfig
from .diagnostics import format_report, self_test
from .drivers.softcard import CardProfile, SoftCard

#: a Luhn-valid card whose BIN no issuer owns (the switch answers 15)
UNKNOWN_BIN_SWIPE = ";9999990000000006=30121010000000000?"
COMMANDS = ("signon", "signoff", "sale", "balance", "void", "refund", "preauth", "preauth_void", "completion", "completion_void",
            "settle", "echo", "diagnose", "reversal")


class ScriptError(ValueError):
    """A script line cannot be understood (names the line number and the word)."""


@dataclass
class Command:
    line: int
    op: str
    args: list[str] = field(default_factory=list)
    options: dict[str, str] = field(default_factory=dict)
    flags: set[str] = field(default_factory=set)


def parse_amount(text: str, line: int) -> int:
    try:
        value = Decimal(text)
    except InvalidOperation:
        raise ScriptError(f"line {line}: amount {text!r} is not a number (yuan, e.g. 12.34)") from None
    fen = value * 100
    if fen != fen.to_integral_value() or fen <= 0 or fen >= 10**12:
        raise ScriptError(f"line {line}: amount {text!r} must be positive with at most 2 decimals")
    return int(fen)


def parse_script(text: str) -> list[Command]:
    out = []
    for n, raw in enumerate(text.splitlines(), 1):
        line = "" if raw.lstrip().startswith("#") else _strip_comment(raw)
        if not line:
            continue
        try:
            words = shlex.split(line, comments=False)
        except ValueError as exc:
            raise ScriptError(f"line {n}: {exc}") from None
        op = words[0].lower()
        if op not in COMMANDS:
            raise ScriptError(f"line {n}: unknown command {words[0]!r} (one of {', '.join(COMMANDS)})")
        cmd = Command(n, op)
        for w in words[1:]:
            if "=" in w:
                k, v = w.split("=", 1)
                cmd.options[k.lower()] = v
            elif w.lower() in ("chip", "tap", "fallback"):
                cmd.flags.add(w.lower())
            else:
                cmd.args.append(w)
        out.append(cmd)
    return out


def _strip_comment(raw: str) -> str:
    """Cut a ``#`` comment that is preceded by whitespace (track data never contains one)."""
    idx = raw.find(" #")
    return (raw if idx < 0 else raw[:idx]).strip()


class ScriptRunner:
    """Runs commands on one app; keeps one software card per PAN (its ATC counts on)."""

    def __init__(self, app: TerminalApp, *, card_pan: str = "6212345678901232",
                 out: Callable[[str], None] | None = None) -> None:
        self.app = app
        self.card_pan = card_pan
        self.out = out
        self.last: Result | None = None
        self._cards: dict[tuple[str, bool], SoftCard] = {}

    def soft_card(self, pan: str, contactless: bool = False) -> SoftCard:
        key = (pan, contactless)
        if key not in self._cards:
            self._cards[key] = SoftCard(CardProfile(pan=pan), contactless=contactless)
        return self._cards[key]

    def _subst(self, value: str) -> str:
        last = self.last
        if last is None:
            return value
        date = last.receipt.when.strftime("%m%d") if last.receipt is not None else ""
        return (value.replace("$stan", last.stan).replace("$rrn", last.rrn).replace("$date", date)
                .replace("$auth", last.auth_code.strip()))

    def _card(self, cmd: Command) -> Any:
        o = cmd.options
        if "swipe" in o:
            return Swipe(o["swipe"], fallback="fallback" in cmd.flags)
        if "qr" in o:
            return Scan(o["qr"])
        if "chip" in o or "chip" in cmd.flags:
            return Insert(self.soft_card(o.get("chip") or self.card_pan))
        if "tap" in o or "tap" in cmd.flags:
            return Tap(self.soft_card(o.get("tap") or self.card_pan, contactless=True))
        return None

    async def run_one(self, cmd: Command) -> Result:
        app, o = self.app, {k: self._subst(v) for k, v in cmd.options.items()}
        cmd = Command(cmd.line, cmd.op, [self._subst(a) for a in cmd.args], o, cmd.flags)
        pin = o.get("pin")
        if cmd.op == "signon":
            res = await app.sign_on()
        elif cmd.op == "signoff":
            res = await app.sign_off()
        elif cmd.op == "sale":
            res = await app.sale(parse_amount(self._arg(cmd, 0), cmd.line), card=self._card(cmd), pin=pin)
        elif cmd.op == "balance":
            res = await app.balance(card=self._card(cmd), pin=pin)
        elif cmd.op == "void":
            res = await app.void(self._arg(cmd, 0), card=self._card(cmd), pin=pin)
        elif cmd.op == "refund":
            if "rrn" not in o or "date" not in o:
                raise ScriptError(f"line {cmd.line}: refund needs rrn=... and date=MMDD")
            res = await app.refund(parse_amount(self._arg(cmd, 0), cmd.line), o["rrn"], o["date"],
                                   card=self._card(cmd), pin=pin, orig_trace=o.get("trace"))
        elif cmd.op == "preauth":
            res = await app.preauth(parse_amount(self._arg(cmd, 0), cmd.line), card=self._card(cmd), pin=pin)
        elif cmd.op == "preauth_void":
            res = await app.preauth_void(self._arg(cmd, 0), card=self._card(cmd), pin=pin)
        elif cmd.op == "completion":
            res = await app.completion(parse_amount(self._arg(cmd, 0), cmd.line), o.get("trace"),
                                       card=self._card(cmd), pin=pin, rrn=o.get("rrn", ""),
                                       auth_code=o.get("auth", ""), orig_date=o.get("date", ""))
        elif cmd.op == "completion_void":
            res = await app.completion_void(self._arg(cmd, 0), card=self._card(cmd), pin=pin)
        elif cmd.op == "settle":
            res = await app.settle()
        elif cmd.op == "echo":
            res = await app.echo()
        elif cmd.op == "reversal":
            res = await app.send_pending_reversal() or Result("reversal", True, "", "no pending reversal")
        else:  # diagnose
            checks = await self_test(app)
            res = Result("diagnose", all(c.ok for c in checks), "", format_report(checks),
                         detail={"checks": [(c.device, c.ok, c.detail) for c in checks]})
        if res.ok and res.rrn:
            self.last = res
        if self.out is not None:
            self.out(result_json(res))
        return res

    @staticmethod
    def _arg(cmd: Command, i: int) -> str:
        if len(cmd.args) <= i:
            what = "a trace" if cmd.op.endswith("void") else "an amount"
            raise ScriptError(f"line {cmd.line}: {cmd.op} needs {what}")
        return cmd.args[i]

    async def run(self, commands: list[Command]) -> list[Result]:
        return [await self.run_one(c) for c in commands]


def result_json(res: Result) -> str:
    doc: dict[str, Any] = {"op": res.operation, "ok": res.ok, "rc": res.rc, "message": res.message}
    for k in ("amount", "stan", "rrn", "auth_code", "balance", "reversal"):
        v = getattr(res, k)
        if v not in ("", None, 0):
            doc[k] = v
    if res.reversal:
        doc["reversal_sent"] = res.reversal_sent
    if res.detail:
        doc["detail"] = {k: v for k, v in res.detail.items() if k != "checks"} or None
        if "checks" in res.detail:
            doc["checks"] = [{"device": d, "ok": ok, "detail": t} for d, ok, t in res.detail["checks"]]
    return json.dumps(doc, ensure_ascii=False)


async def run_script(app: TerminalApp, text: str, **kw: Any) -> list[Result]:
    return await ScriptRunner(app, **kw).run(parse_script(text))


async def drive_demo(app: TerminalApp, cards: list[Any], deadline: float, rng: random.Random, *,
                     qr_code: Callable[[], str] | None = None, stop: asyncio.Event | None = None,
                     on_result: Callable[[str, Result], None] | None = None,
                     wrong_pin_card: Any = None) -> Result:
    """Drive one terminal with a realistic mix until ``time.monotonic() >= deadline``, then settle.

    ``cards``: objects with ``.pan``, ``.expiry`` (YYMM) and ``.pin`` (e.g. ``switch.testbed`` cards);
    swipe sales use them as magstripe-only cards, chip and tap sales as software EMV cards with the same
    PAN.  Declines: wrong PINs on ``wrong_pin_card`` only (keep it out of ``cards``: the issuer locks a
    card after three wrong PINs), else a card of an unknown BIN (15).  ``on_result(kind, result)`` sees every operation; the return value is the settlement result
    (``result.detail["balanced"]``).  ``Result.rc`` / ``.approved`` / ``.mac_ok`` match what the demo's
    statistics read from ``switch.sim_terminal.Reply``.
    """
    runner = ScriptRunner(app)

    def report(kind: str, res: Result) -> None:
        if on_result is not None:
            on_result(kind, res)

    report("sign-on", await app.sign_on())
    sales: list[tuple[Any, Result]] = []
    while time.monotonic() < deadline and not (stop is not None and stop.is_set()):
        r = rng.random()
        card = rng.choice(cards)
        amount = rng.randrange(100, 50_000)
        swipe = Swipe(f";{card.pan}={card.expiry}1010000000000?")
        if r < 0.25:
            kind, res = "sale swipe+PIN", await app.sale(amount, card=swipe, pin=card.pin)
        elif r < 0.45:
            kind = "sale chip"
            res = await app.sale(amount, card=Insert(runner.soft_card(card.pan)), pin=card.pin)
        elif r < 0.62:
            kind, res = "sale tap", await app.sale(amount, card=Tap(runner.soft_card(card.pan, contactless=True)))
        elif r < 0.70:
            kind, res = "balance", await app.balance(card=swipe, pin=card.pin)
        elif r < 0.76 and qr_code is not None:
            kind, res = "sale QR", await app.sale(amount, card=Scan(qr_code()))
        elif r < 0.84 and sales:
            c, orig = sales.pop(rng.randrange(len(sales)))
            kind, res = "void", await app.void(orig.stan)
        elif r < 0.92 and sales:
            c, orig = sales.pop(rng.randrange(len(sales)))  # a refunded sale is no longer voidable
            date = orig.receipt.when.strftime("%m%d") if orig.receipt is not None else time.strftime("%m%d")
            kind = "refund"
            res = await app.refund(max(1, orig.amount // 3), orig.rrn, date,
                                   card=Swipe(f";{c.pan}={c.expiry}1010000000000?"))
        elif wrong_pin_card is not None:  # a card of its own: three wrong PINs lock a card at the issuer
            w = wrong_pin_card
            kind = "decline wrong PIN"
            res = await app.sale(amount, card=Swipe(f";{w.pan}={w.expiry}1010000000000?"), pin="999999")
        else:
            kind, res = "decline unknown BIN", await app.sale(amount, card=Swipe(UNKNOWN_BIN_SWIPE), pin=card.pin)
        report(kind, res)
        if kind.startswith("sale") and kind != "sale QR" and res.ok:
            sales.append((card, res))
        if res.rc == "NET":
            await asyncio.sleep(0.05)
    settled = await app.settle()
    report("settlement", settled)
    return settled


def open_terminal(host: str, port: int, terminal_id: str, merchant_id: str, tmk: bytes, *,
                  state_path: str | Path | None = None, **config: Any) -> TerminalApp:
    """A software-device :class:`TerminalApp` (for ``posswitch demo``): ``await app.sign_on()``,
    ``await app.sale(1234, card=Swipe(...) | Insert(SoftCard(...)) | Tap(...) | Scan(code), pin=...)``."""
    return TerminalApp(TerminalConfig(host, port, terminal_id, merchant_id, tmk, **config), state_path=state_path)


__all__ = ["COMMANDS", "Command", "ScriptError", "ScriptRunner", "drive_demo", "open_terminal", "parse_amount", "parse_script",
           "result_json", "run_script"]
