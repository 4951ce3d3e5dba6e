"""``posswitch serve --config FILE``: run the switch (terminal listener, issuer links, metrics).

Start-up order: logging, HSM connection (checked with a diagnostics call), terminal registry and
journal (one SQLite file, ``[journal] path``), metrics endpoint, one issuer link per card issuer,
the BIN router, then the terminal listener.  SIGINT/SIGTERM start a graceful shutdown: stop
accepting, drain in-flight transactions (``--drain`` seconds), close links and the journal.
uvloop is used unless ``SWITCH_NO_UVLOOP`` is set.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import os
import signal
import sys
from typing import Any

from switch.logsafe import configure_logging, kv

log = logging.getLogger("switch.serve")


def build_parser() -> argparse.ArgumentParser:
    from switch.config import add_config_arguments

    p = argparse.ArgumentParser(prog="posswitch serve", description="Run the payment switch.")
    add_config_arguments(p)
    p.add_argument("--drain", type=float, default=10.0, help="seconds to drain in-flight work on shutdown")
    return p


async def run(cfg: Any, stop: asyncio.Event, drain: float = 10.0) -> None:
    """Run the switch described by ``cfg`` until ``stop`` is set."""
    from switch.flows.dispatch import Processor, Services
    from switch.flows.security import Security
    from switch.hsm_client import HsmClient
    from switch.journal import Journal
    from switch.protocol import Limits
    from switch.routing import Route, Router
    from switch.server import SwitchServer
    from switch.terminals import TerminalRegistry

    hsm = await HsmClient.connect(cfg.hsm.host, cfg.hsm.port, header_len=cfg.hsm.header_len,
                                  timeout=cfg.hsm.timeout)
    log.info("hsm connected", extra=kv(host=cfg.hsm.host, port=cfg.hsm.port, lmk=await hsm.diagnostics()))
    registry = TerminalRegistry.open(cfg.journal.path)
    registry.store.load_from_config(cfg.merchants, cfg.terminals)
    registry.reload()
    metrics = None
    if cfg.metrics.enabled:
        from switch.metrics import SwitchMetrics

        metrics = SwitchMetrics()
        mport = await metrics.start(cfg.metrics.host, cfg.metrics.port)
        log.info("metrics", extra=kv(url=f"http://{cfg.metrics.host}:{mport}/metrics"))
    journal = await Journal.open(cfg.journal.path, cfg.journal.pan_hash_key,
                                 group_commit_ms=cfg.journal.group_commit_ms, synchronous=cfg.journal.synchronous,
                                 on_commit=metrics.journal_commit_hook() if metrics is not None else None)
    if metrics is not None:  # /health: the journal's writer must be alive, the HSM link up
        metrics.set_health_check("journal", journal.is_healthy)
        metrics.set_health_check("hsm", lambda: hsm.is_up)
    router = Router()
    links = []
    from switch.issuer_link import IssuerLink

    for name, icfg in cfg.issuers.items():  # card issuers and QR wallets alike
        link = IssuerLink(icfg.host, icfg.port, name=name, timeout=icfg.timeout, echo_interval=icfg.echo_interval,
                          reversal_store=journal.reversal_store(), metrics=metrics)
        await link.start()
        links.append(link)
        router.add_route(Route(name, link, icfg.zpk_under_lmk or None))
    for prefix, name in cfg.routes.bins:
        if name in router.routes:
            router.add_bin(prefix, name)
    for prefix, name in cfg.routes.qr:
        if name in router.routes:
            router.add_qr_prefix(prefix, name)
    if cfg.routes.default in router.routes:
        router.default = cfg.routes.default
    # crash recovery: rows a previous process left in flight (kill -9) are reversed upstream through
    # the durable reversal store before any terminal is served
    from switch.recovery import recover

    report = await recover(journal, links, acquirer_id=cfg.acquirer_id)
    log.info("recovery", extra=kv(found=report.found, reversed=len(report.reversed), left=len(report.left)))
    services = Services(registry, journal, Security(hsm, metrics), router, metrics=metrics,
                        acquirer_id=cfg.acquirer_id)
    limits = Limits(cfg.listener.max_frame, cfg.listener.max_in_flight, cfg.listener.idle_timeout,
                    cfg.listener.max_total_in_flight,
                    frame_timeout=cfg.listener.frame_timeout, max_connections=cfg.listener.max_connections)
    server = SwitchServer(Processor(services), limits, metrics)
    await server.start(cfg.listener.host, cfg.listener.port)
    # Everything allocated so far lives as long as the process: keep the cyclic GC off it, and
    # run young-generation collections less often (the hot path allocates short-lived dicts only).
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 20, 20)
    # The journal writer and reader are threads: each SQLite call gives the GIL up and must get it back
    # from the event loop, which CPython makes wait up to the switch interval (5 ms by default).
    sys.setswitchinterval(cfg.journal.gil_switch_interval_ms / 1000.0)

    async def refresh_registry() -> None:  # pick up `posswitch terminals ...` changes (disable, rotate keys)
        while True:
            await asyncio.sleep(5.0)
            try:
                registry.refresh_if_changed()
            except Exception as exc:
                log.warning("registry refresh failed", extra=kv(error=str(exc)))

    refresher = asyncio.get_running_loop().create_task(refresh_registry())
    try:
        await stop.wait()
    finally:
        refresher.cancel()
        log.info("shutting down", extra=kv(in_flight=len(server.tasks)))
        await server.stop(drain_timeout=drain)
        for link in links:
            await link.close()
        if metrics is not None:
            await metrics.stop()
        await journal.close()
        await registry.flush()
        registry.close()
        await hsm.close()


def main(argv: list[str] | None = None) -> int:
    from switch.config import ConfigError, config_from_args

    args = build_parser().parse_args(argv)
    try:
        cfg = config_from_args(args)
    except ConfigError as exc:
        print(str(exc), file=sys.stderr)
        return 2
    configure_logging(cfg.logging.level, json_lines=cfg.logging.json)
    if not os.environ.get("SWITCH_NO_UVLOOP"):
        try:
            import uvloop

            uvloop.install()
        except ImportError:
            pass

    async def _main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await run(cfg, stop, args.drain)

    try:
        asyncio.run(_main())
    except (OSError, ConnectionError) as exc:
        log.error("cannot start", extra=kv(error=str(exc)))
        return 1
    return 0
