"""Fault injection for the issuer simulator: latency, declines, dropped and late answers.

A rule is a table in the accounts file (``[[faults]]``) or a :class:`FaultRule` added at run time::

    [[faults]]
    amount_suffix = "13"      # match: amount (field 4) ends with these digits
    action = "decline"        # decline | drop | drop_response | delay
    code = "05"               # decline: the response code
    times = 1                 # optional: apply to the first N matching requests only

Match keys (all given ones must hold): ``pan``, ``amount``, ``amount_suffix``, ``kind``
(:class:`switch.h2h.TxnKind` value), ``mti``, ``terminal``. Actions:

* ``delay`` (alias ``late``, ``latency``): process and post normally, answer after ``delay`` s
  (+ uniform ``jitter``);
* ``decline``: answer ``code`` without processing;
* ``drop``: the request is lost: no processing, no answer;
* ``drop_response``: processed and posted, the answer is lost (the switch must reverse).
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from switch import h2h

__all__ = ["FaultRule", "Faults", "ACTIONS"]

ACTIONS = ("delay", "decline", "drop", "drop_response")
_ALIASES = {"late": "delay", "latency": "delay"}
_MATCH_KEYS = ("pan", "amount", "amount_suffix", "kind", "mti", "terminal")


@dataclass(slots=True)
class FaultRule:
    action: str
    pan: str | None = None
    amount: int | None = None
    amount_suffix: str | None = None
    kind: str | None = None
    mti: str | None = None
    terminal: str | None = None
    code: str = "05"
    delay: float = 0.0
    jitter: float = 0.0
    times: int | None = None
    hits: int = 0

    def __post_init__(self) -> None:
        self.action = _ALIASES.get(self.action, self.action)
        if self.action not in ACTIONS:
            raise ValueError(f"fault action must be one of {ACTIONS}, not {self.action!r}")
        if self.kind is not None:
            h2h.TxnKind(self.kind)  # raises ValueError for an unknown kind

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> FaultRule:
        unknown = set(raw) - set(_MATCH_KEYS) - {"action", "code", "delay", "jitter", "times"}
        if unknown:
            raise ValueError(f"unknown fault keys {sorted(unknown)}")
        args = dict(raw)
        if "amount" in args:
            args["amount"] = int(args["amount"])
        for k in ("pan", "amount_suffix", "kind", "mti", "terminal", "code"):
            if k in args:
                args[k] = str(args[k])
        return cls(**args)

    def matches(self, msg: Mapping[str, str], kind: h2h.TxnKind) -> bool:
        if self.times is not None and self.hits >= self.times:
            return False
        amount = msg.get("4", "")
        pan = msg.get("2") or msg.get("35", "").replace("D", "=").split("=", 1)[0]
        checks = (
            (self.pan, pan),
            (self.kind, kind.value),
            (self.mti, msg.get("t")),
            (self.terminal, msg.get("41", "").strip()),
        )
        if any(want is not None and want != got for want, got in checks):
            return False
        if self.amount is not None and (not amount.isdigit() or int(amount) != self.amount):
            return False
        return self.amount_suffix is None or (amount.isdigit() and amount.endswith(self.amount_suffix))

    def pause(self) -> float:
        return self.delay + (random.uniform(0, self.jitter) if self.jitter else 0.0)


class Faults:
    """An ordered rule list; the first matching rule applies (and counts a hit)."""

    def __init__(self, rules: list[FaultRule] | None = None) -> None:
        self.rules: list[FaultRule] = list(rules or [])

    @classmethod
    def from_config(cls, raw: list[Mapping[str, Any]]) -> Faults:
        rules = []
        for i, r in enumerate(raw):
            try:
                rules.append(FaultRule.from_dict(r))
            except (TypeError, ValueError) as exc:
                raise ValueError(f"faults[{i}]: {exc}") from None
        return cls(rules)

    def add(self, rule: FaultRule | None = None, **kw: Any) -> FaultRule:
        rule = rule or FaultRule(**kw)
        self.rules.append(rule)
        return rule

    def clear(self) -> None:
        self.rules.clear()

    def match(self, msg: Mapping[str, str], kind: h2h.TxnKind) -> FaultRule | None:
        for rule in self.rules:
            if rule.matches(msg, kind):
                rule.hits += 1
                return rule
        return None
