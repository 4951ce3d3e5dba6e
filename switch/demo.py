"""``posswitch demo``: the whole system on loopback with live traffic, then a settlement.

Starts the HSM simulator, two issuer simulators (domestic CUP cards and foreign cards), the switch
(journal and registry in a temporary directory, Prometheus metrics on a free port) and K terminals:
``--app-terminals`` of them (default 1) run the real terminal application (``terminal_bridge``, with
software EMV cards and receipts), the others the simple simulator ``switch.sim_terminal``.  Each terminal signs on and drives a realistic mix (swipe, chip and tap sales with and
without PIN, QR sales (some confirmed by password after a poll), balance inquiries, voids, partial
refunds, pre-auth + completion, wrong-PIN, no-funds and unknown-card declines) until
the time is up, then settles its batch (0500) and closes it (0320).  A live summary line is printed
every second.  Stops by itself after ``--seconds`` (default 20) or on Ctrl-C.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import io
import logging
import os
import random
import signal
import sys
import tempfile
import time
from typing import Any

from _fastcore.fields import MAX_SETTLEMENT_COUNT
from switch.logsafe import configure_logging


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="posswitch demo", description="Run HSM + issuers + switch + terminals.")
    p.add_argument("--seconds", type=float, default=20.0, help="how long to drive traffic (default 20)")
    p.add_argument("--terminals", type=int, default=4, help="number of simulated terminals (default 4)")
    p.add_argument("--app-terminals", type=int, default=1,
                   help="how many of them run the full terminal application (terminal_bridge: software EMV "
                        "cards, receipts, reversal rules) instead of the simple simulator (default 1)")
    p.add_argument("--seed", type=int, default=None, help="random seed for a reproducible mix")
    p.add_argument("--log-level", default="WARNING", help="log level of the components (default WARNING)")
    return p


class Stats:
    def __init__(self) -> None:
        self.by_kind: collections.Counter[str] = collections.Counter()
        self.by_rc: collections.Counter[str] = collections.Counter()
        self.total = 0
        self.errors = 0
        self.mac_failures = 0
        self.app_displays: list[Any] = []  # ConsoleDisplay of each terminal application

    def add(self, kind: str, reply: Any) -> None:
        self.total += 1
        self.by_kind[kind] += 1
        self.by_rc[reply.rc] += 1
        if reply.mac_ok is False:
            self.mac_failures += 1


async def _drive(stack: Any, i: int, deadline: float, stats: Stats, rng: random.Random,
                 stop: asyncio.Event) -> Any:
    from switch.sim_terminal import SimCard
    from switch.testbed import qr_code

    term = await stack.connected_terminal(i)
    cards = [stack.card("cup", n) for n in range(4)] + [stack.card("intl", n) for n in range(2)]
    unknown = SimCard(pan="9999990000000001")
    low = stack.card("cup", 4)  # opened with a low balance: large sales get 51
    sales: list[tuple[Any, Any]] = []
    while time.monotonic() < deadline and not stop.is_set():
        r = rng.random()
        card = rng.choice(cards)
        amount = rng.randrange(100, 50_000)
        try:
            if r < 0.22:
                reply = await term.sale(card, amount, entry="swipe", pin=card.pin)
                kind = "sale swipe+PIN"
            elif r < 0.40:
                reply = await term.sale(card, amount, entry="chip", pin=card.pin if rng.random() < 0.5 else None)
                kind = "sale chip"
            elif r < 0.58:
                reply = await term.sale(card, min(amount, 100_000), entry="contactless")
                kind = "sale tap"
            elif r < 0.63:
                reply = await term.balance(card, entry="swipe", pin=card.pin)
                kind = "balance"
            elif r < 0.68:
                reply = await term.qr_sale(qr_code(rng.choice(("134500000001", "134500000002", "280000000003"))),
                                           amount)
                kind = "sale QR"
            elif r < 0.74 and sales:
                c, orig = sales.pop(rng.randrange(len(sales)))
                reply = await term.void(c, orig)
                kind = "void"
            elif r < 0.82 and sales:
                c, orig = sales.pop(rng.randrange(len(sales)))  # refunded sales are not voided later
                reply = await term.refund(c, orig, max(1, int(orig.request["4"]) // 3))
                kind = "refund"
            elif r < 0.90:
                reply = await term.sale(card, amount, entry="swipe", pin="999999")
                kind = "decline wrong PIN"
            elif r < 0.92:
                reply = await term.sale(low, 20_000 + amount, entry="chip")
                kind = "decline no funds"
            elif r < 0.96:
                reply = await term.sale(unknown, amount, entry="keyed")
                kind = "decline unknown BIN"
            else:
                reply = await term.preauth(card, amount, entry="chip", pin=card.pin)
                kind = "preauth"
                if reply.approved:
                    stats.add(kind, reply)
                    reply = await term.completion(card, reply, amount)
                    kind = "completion"
        except Exception:
            stats.errors += 1
            await asyncio.sleep(0.05)
            continue
        stats.add(kind, reply)
        if reply.processing_request == "3":  # the host asks for a new sign-on (new keys)
            await term.sign_on()
        if kind.startswith("sale") and kind != "sale QR" and reply.approved:
            sales.append((card, reply))
        if len(term.approvals) >= _BATCH_FULL:  # field 48 counts in 3 digits: settle a full batch, go on
            await _settle_full_batch(term, stats)
            sales.clear()  # a settled sale is refunded, not voided; keep the mix simple
    return term


#: approvals in a simulated terminal's open batch at which the demo settles it mid-run (field 48 counts
#: debits and credits in 3 digits; the terminal application does the same by itself)
_BATCH_FULL = MAX_SETTLEMENT_COUNT


async def _settle_full_batch(term: Any, stats: Stats) -> None:
    from switch.sim_terminal import settlement_balanced

    try:
        reply = await term.settle()
        if not settlement_balanced(reply):
            print(f"  {term.tid}  batch {term.batch} full: 0510 39={reply.rc}  NOT balanced")
        await term.end_batch()
    except Exception:
        stats.errors += 1
        return
    stats.add("settlement (batch full)", reply)


async def _drive_app(stack: Any, i: int, deadline: float, stats: Stats, rng: random.Random,
                     stop: asyncio.Event) -> Any:
    """A terminal running the real terminal application (``terminal_bridge``); it settles by itself."""
    from switch.testbed import MERCHANT_ID, qr_code, terminal_id, test_tmk
    from terminal_bridge.app import TerminalApp, TerminalConfig, software_devices
    from terminal_bridge.display import ConsoleDisplay
    from terminal_bridge.scripted import drive_demo

    display = ConsoleDisplay(out=io.StringIO())  # shown in the live summary line instead of stdout
    stats.app_displays.append(display)
    tmk = test_tmk(i)
    app = TerminalApp(TerminalConfig("127.0.0.1", stack.port, terminal_id(i), MERCHANT_ID, tmk), state_path=None,
                      devices=software_devices(tmk, display=display))
    cards = [stack.card("cup", n) for n in range(4)] + [stack.card("intl", n) for n in range(2)]

    def on_result(kind: str, res: Any) -> None:
        if kind not in ("sign-on", "settlement"):
            stats.add(f"{kind} (app)", res)

    settled = await drive_demo(app, cards, deadline, rng, qr_code=lambda: qr_code("134500000001"), stop=stop,
                               on_result=on_result)
    return ("app", terminal_id(i), settled)


def _line(stats: Stats, t0: float) -> str:
    el = max(time.monotonic() - t0, 1e-6)
    top = " ".join(f"{rc}:{n}" for rc, n in sorted(stats.by_rc.items()))
    line = f"  {el:5.1f}s  {stats.total:6d} txns  {stats.total / el:7.1f}/s  codes {top}"
    for d in stats.app_displays:
        d.out.seek(0)
        d.out.truncate()  # keep only what the display shows now
        line += "   app display: " + " / ".join(d.lines)
    return line


async def demo(seconds: float, n_terminals: int, seed: int | None, n_app: int = 0) -> int:
    from switch.sim_terminal import settlement_balanced
    from switch.testbed import Stack

    rng = random.Random(seed)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(sig, stop.set)
        except (NotImplementedError, RuntimeError):
            pass
    with tempfile.TemporaryDirectory(prefix="posswitch-demo-") as work:
        print("posswitch demo: starting HSM simulator, issuer simulators, switch and terminals ...")
        # pin_tries=0: wrong PINs are declined with 55 without locking the demo's few cards (75)
        stack = await Stack.start(work, terminals=n_terminals, metrics=True, issuer_timeout=5.0, pin_tries=0)
        try:
            import _fastcore

            print(f"  switch   127.0.0.1:{stack.port}  (core: {_fastcore.IMPLEMENTATION}, "
                  f"loop: {type(loop).__module__.split('.')[0]})")
            print(f"  hsm      127.0.0.1:{stack.hsm_port}")
            for name, port in stack.issuer_ports.items():
                print(f"  issuer   127.0.0.1:{port}  ({name})")
            print(f"  metrics  http://127.0.0.1:{stack.metrics_port}/metrics   health: /health")
            print(f"  {n_terminals} terminals ({n_app} running the terminal application), {seconds:.0f} s of traffic "
                  "(Ctrl-C stops early)")
            stats = Stats()
            t0 = time.monotonic()
            deadline = t0 + seconds
            drivers = [loop.create_task((_drive_app if i < n_app else _drive)(
                stack, i, deadline, stats, random.Random(rng.random()), stop)) for i in range(n_terminals)]
            while not all(d.done() for d in drivers):
                await asyncio.wait(drivers, timeout=1.0)
                print(_line(stats, t0), flush=True)
            terms = []
            for d in drivers:
                if d.exception() is not None:
                    print(f"  terminal failed: {d.exception()!r}")
                else:
                    terms.append(d.result())
            print("traffic done; settling batches ...")
            balanced = 0
            for term in terms:
                if isinstance(term, tuple):  # a terminal application: it settled (and uploaded) itself
                    _, tid, settled = term
                    ok = bool(getattr(settled, "detail", {}).get("balanced"))
                    balanced += ok
                    print(f"  {tid}  0510 39={settled.rc}  {'balanced' if ok else 'NOT balanced'}  (terminal app)")
                    continue
                reply = await term.settle()
                ok = settlement_balanced(reply)
                balanced += bool(ok)
                await term.end_batch()
                print(f"  {term.tid.strip()}  0510 39={reply.rc}  {'balanced' if ok else 'NOT balanced'}")
            print("summary:")
            for kind, n in sorted(stats.by_kind.items()):
                print(f"  {kind:<20} {n:6d}")
            print(_line(stats, t0).strip())
            print(f"  terminal MAC failures: {stats.mac_failures}, client errors: {stats.errors}, "
                  f"batches balanced: {balanced}/{len(terms)}")
            journal_rows = stack.journal.commit_count
            print(f"  journal commits: {journal_rows}")
        finally:
            await stack.stop()
    print("posswitch demo: stopped cleanly")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.terminals < 1 or args.seconds <= 0:
        print("posswitch demo: --terminals must be >= 1 and --seconds > 0", file=sys.stderr)
        return 2
    configure_logging(args.log_level)
    logging.getLogger("posswitch.issuer").setLevel(max(logging.getLogger().level, logging.ERROR))
    if not os.environ.get("SWITCH_NO_UVLOOP"):
        try:
            import uvloop

            uvloop.install()
        except ImportError:
            pass
    try:
        return asyncio.run(demo(args.seconds, args.terminals, args.seed, min(args.app_terminals, args.terminals)))
    except KeyboardInterrupt:
        print("posswitch demo: interrupted")
        return 130
