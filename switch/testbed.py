"""The whole stack in one process on loopback: HSM simulator, issuer simulator, switch, terminals.

Used by ``posswitch demo`` and by the end-to-end tests (``tests/test_switch_*.py``), the way
asyncpg ships ``_testbase``.  Everything is real: TCP on 127.0.0.1 with ports chosen by the OS,
the payShield-style HSM simulator, the issuer simulator with its SQLite ledger, the switch's
SQLite journal and registry in a work directory, and :class:`~switch.sim_terminal.SimTerminal`
clients that sign on and MAC like a terminal.  Test keys only.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from _fastcore import crypto
from switch.flows.dispatch import Processor, Services
from switch.flows.security import Security
from switch.protocol import Limits
from switch.routing import Route, Router
from switch.server import SwitchServer
from switch.sim_terminal import TEST_IMK_AC, SimCard, SimTerminal

log = logging.getLogger("switch.testbed")

MERCHANT_ID = "898310048990001"
#: BIN of the default test issuer ("cup") and of a second one ("intl") with foreign cards
ISSUER_BINS = {"cup": ("621234",), "intl": ("4761",)}
#: QR wallet users of the test wallet simulator: payment-code prefix -> how the customer confirms
QR_USERS = {"134500000001": "auto", "134500000002": "password", "280000000003": "auto",
            "134500000004": "decline", "134500000005": "never"}
_qr_serial = iter(range(100000, 999999))


def qr_code(prefix: str) -> str:
    """A fresh (single-use) payment code of the test wallet user with ``prefix`` (WeChat 18 / Alipay 18 digits)."""
    return f"{prefix}{next(_qr_serial):06d}"


#: card index (per issuer) opened with a low balance, for "insufficient funds" (51) declines
LOW_BALANCE_CARD = 4
LOW_BALANCE = 5_000
#: test PIN verification key of the simulated issuers (never a real key)
TEST_PVK = bytes.fromhex("0123456789ABCDEFFEDCBA9876543210")


def test_tmk(i: int) -> bytes:
    """Deterministic double-length test TMK for terminal ``i`` (odd parity); never a real key."""
    return crypto.set_odd_parity(hashlib.sha256(f"posswitch test TMK {i}".encode()).digest()[:16])


def terminal_id(i: int) -> str:
    return f"SIM{i:05d}"


@dataclass
class Stack:
    """A running stack; build it with :meth:`start`, stop it with :meth:`stop`."""

    workdir: Path
    hsm_server: Any = None
    hsm_port: int = 0
    hsm: Any = None
    issuers: dict[str, Any] = field(default_factory=dict)  # name -> issuer_sim server handle
    issuer_ports: dict[str, int] = field(default_factory=dict)
    links: dict[str, Any] = field(default_factory=dict)
    registry: Any = None
    journal: Any = None
    router: Router = field(default_factory=Router)
    server: SwitchServer | None = None
    port: int = 0
    metrics: Any = None
    metrics_port: int | None = None
    cards: list[SimCard] = field(default_factory=list)
    terminals: list[SimTerminal] = field(default_factory=list)
    n_terminals: int = 0

    @classmethod
    async def start(cls, workdir: str | Path, *, terminals: int = 2, issuer_timeout: float = 3.0,
                    limits: Limits | None = None, metrics: bool = False, issuers: bool = True,
                    key_mode: str = "003", qr_wait: float = 2.0, pin_tries: int = 3) -> Stack:
        self = cls(Path(workdir))
        self.workdir.mkdir(parents=True, exist_ok=True)
        try:
            await self._start(terminals, issuer_timeout, limits, metrics, issuers, key_mode, qr_wait, pin_tries)
        except BaseException:
            await self.stop()
            raise
        return self

    async def _start(self, n_terminals: int, issuer_timeout: float, limits: Limits | None, metrics: bool,
                     issuers: bool, key_mode: str, qr_wait: float, pin_tries: int) -> None:
        from hsm_sim import lmk
        from hsm_sim.server import start_hsm
        from switch.hsm_client import HsmClient
        from switch.journal import Journal
        from switch.terminals import TerminalRegistry

        self.hsm_server, self.hsm_port = await start_hsm("127.0.0.1", 0)
        self.hsm = await HsmClient.connect("127.0.0.1", self.hsm_port, timeout=5.0)
        self.registry = TerminalRegistry.open(str(self.workdir / "registry.db"))
        if metrics:
            from switch.metrics import SwitchMetrics

            self.metrics = SwitchMetrics()
            self.metrics_port = await self.metrics.start("127.0.0.1", 0)
        self.journal = await Journal.open(str(self.workdir / "journal.db"), b"posswitch test pan hash key!",
                                          synchronous="NORMAL",
                                          on_commit=self.metrics.journal_commit_hook() if metrics else None)
        self.n_terminals = n_terminals
        for i in range(n_terminals):
            self.registry.add(terminal_id(i), MERCHANT_ID, lmk.encrypt_under_lmk(test_tmk(i), "TMK"),
                              key_mode=key_mode)
        if issuers:
            await self._start_issuers(issuer_timeout, pin_tries)
        services = Services(self.registry, self.journal, Security(self.hsm, self.metrics), self.router,
                            metrics=self.metrics, issuer_timeout=issuer_timeout, qr_wait=qr_wait, qr_poll=0.1)
        self.server = SwitchServer(Processor(services), limits, self.metrics)
        self.port = await self.server.start("127.0.0.1", 0)

    async def _start_issuers(self, issuer_timeout: float, pin_tries: int = 3) -> None:
        from hsm_sim import lmk
        from issuer_sim.accounts import parse
        from issuer_sim.server import start_issuer
        from switch.issuer_link import IssuerLink

        zpk = await self.hsm.generate_key("ZPK", scheme="U")
        keys = {"zpk": zpk.under_lmk, "pvk": lmk.encrypt_under_lmk(TEST_PVK, "PVK"),
                "imk_ac": lmk.encrypt_under_lmk(TEST_IMK_AC, "IMK-AC")}
        for name, bins in ISSUER_BINS.items():
            org = "CUP" if name == "cup" else "VIS"
            cards = []
            for n in range(1, 7):
                partial = f"{bins[0]}{n:0{15 - len(bins[0])}d}"
                cards.append(SimCard(pan=partial + _luhn(partial)))
            accounts = [{"pan": c.pan, "expiry": c.expiry, "psn": c.psn, "org": org,
                         "balance": LOW_BALANCE if k == LOW_BALANCE_CARD else 10_000_000,
                         "pin": {"method": "pvv", "pvki": "1", "pvv": _pvv(c.pan, c.pin)}}
                        for k, c in enumerate(cards)]
            cfg = parse({"issuer": {"keys": keys, "pin_tries": pin_tries}, "accounts": accounts})
            handle = await start_issuer(cfg, host="127.0.0.1", port=0, hsm=self.hsm,
                                        ledger=str(self.workdir / f"ledger-{name}.db"))
            self.issuers[name] = handle
            self.issuer_ports[name] = handle.port
            link = IssuerLink("127.0.0.1", handle.port, name=name, timeout=issuer_timeout,
                              reversal_retry=0.2, reversal_store=self.journal.reversal_store(),
                              metrics=self.metrics)
            await link.start(wait=5.0)
            self.links[name] = link
            self.router.add_route(Route(name, link, zpk.under_lmk, card_org=org))
            for b in bins:
                self.router.add_bin(b, name)
            self.cards.extend(cards)
        await self._start_wallets(issuer_timeout)

    async def _start_wallets(self, issuer_timeout: float) -> None:
        from issuer_sim.wallets import parse_wallets, start_wallets
        from switch.issuer_link import IssuerLink

        users = [{"code_prefix": prefix, "balance": 100_000_000, "confirm": confirm, "confirm_after": 0.2}
                 for prefix, confirm in QR_USERS.items()]
        handle = await start_wallets(parse_wallets({"wallet": {"expire_after": 5.0}, "wallet_users": users}),
                                     host="127.0.0.1", port=0, ledger=str(self.workdir / "ledger-wallets.db"))
        self.issuers["wallets"] = handle
        self.issuer_ports["wallets"] = handle.port
        link = IssuerLink("127.0.0.1", handle.port, name="wallets", timeout=issuer_timeout, reversal_retry=0.2,
                          reversal_store=self.journal.reversal_store(), metrics=self.metrics)
        await link.start(wait=5.0)
        self.links["wallets"] = link
        self.router.add_route(Route("wallets", link, None, card_org="CUP"))
        for prefix in ("10", "11", "12", "13", "14", "15", "25", "26", "27", "28", "29", "30"):
            self.router.add_qr_prefix(prefix, "wallets")

    def card(self, issuer: str = "cup", n: int = 0) -> SimCard:
        prefix = ISSUER_BINS[issuer][0]
        return [c for c in self.cards if c.pan.startswith(prefix)][n]

    def terminal(self, i: int = 0) -> SimTerminal:
        """A new (unconnected) simulated terminal for provisioned terminal ``i``."""
        term = SimTerminal("127.0.0.1", self.port, terminal_id(i), MERCHANT_ID, test_tmk(i))
        self.terminals.append(term)
        return term

    async def connected_terminal(self, i: int = 0, *, sign_on: bool = True) -> SimTerminal:
        term = await self.terminal(i).connect()
        if sign_on:
            reply = await term.sign_on()
            if not reply.approved:
                raise RuntimeError(f"sign-on of {terminal_id(i)} failed: 39={reply.rc}")
        return term

    async def stop(self) -> None:
        for t in self.terminals:
            await _quiet(t.close())
        if self.server is not None:
            await _quiet(self.server.stop(drain_timeout=5.0))
        for link in self.links.values():
            await _quiet(link.close())
        for handle in self.issuers.values():
            await _quiet(handle.close(close_ledger=True))
        if self.metrics is not None:
            await _quiet(self.metrics.stop())
        if self.hsm is not None:
            await _quiet(self.hsm.close())
        if self.hsm_server is not None:
            await _quiet(self.hsm_server.close())
        if self.journal is not None:
            await _quiet(self.journal.close())
        if self.registry is not None:
            await _quiet(self.registry.flush())
            self.registry.close()


async def _quiet(aw: Any) -> None:
    try:
        await asyncio.wait_for(aw, 5.0)
    except Exception as exc:  # shutdown must go on
        log.debug("stop step failed", extra={"fields": {"error": repr(exc)}})


def _pvv(pan: str, pin: str) -> str:
    """Issuer-side provisioning of a test card's PVV (reference twin: not a switch code path)."""
    from _fastcore import _crypto_py

    return _crypto_py.visa_pvv(TEST_PVK, pan, "1", pin)


def _luhn(partial: str) -> str:
    total = 0
    for i, ch in enumerate(reversed(partial)):
        d = int(ch)
        if i % 2 == 0:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return str((10 - total % 10) % 10)
