"""``posswitch issuer``: run the card-issuer simulator.

    posswitch issuer --listen 127.0.0.1:9100 --accounts accounts.toml [--hsm 127.0.0.1:9300]
                     [--wallet-listen 127.0.0.1:9101] [--ledger issuer-ledger.db] [--latency 0.05]
                     [--log-level INFO] [--json-logs]

Without ``--hsm`` PIN and chip (ARQC) transactions are answered 96: the simulator holds no keys.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys

from switch.logsafe import configure_logging, kv

from .accounts import AccountsError, load

log = logging.getLogger("posswitch.issuer")


def _hostport(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {value!r}")
    return host or "127.0.0.1", int(port)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="posswitch issuer", description="card issuer simulator (ISO 8583 H2H)")
    p.add_argument("--listen", type=_hostport, default=("127.0.0.1", 9100), metavar="HOST:PORT")
    p.add_argument("--accounts", required=True, metavar="FILE", help="accounts file (.toml or .json)")
    p.add_argument("--wallet-listen", type=_hostport, default=None, metavar="HOST:PORT",
                   help="also run the QR-wallet simulator ([[wallet_users]] of the accounts file) here")
    p.add_argument("--hsm", type=_hostport, default=None, metavar="HOST:PORT",
                   help="HSM simulator for PIN and ARQC checks")
    p.add_argument("--ledger", default="issuer-ledger.db", metavar="DB", help="SQLite ledger (':memory:' ok)")
    p.add_argument("--latency", type=float, default=None, help="fixed answer latency in seconds")
    p.add_argument("--jitter", type=float, default=None, help="extra uniform random latency in seconds")
    p.add_argument("--log-level", default="INFO")
    p.add_argument("--json-logs", action="store_true")
    return p


async def run(args: argparse.Namespace) -> int:
    from .server import start_issuer

    cfg = load(args.accounts)
    if args.latency is not None:
        cfg.latency = args.latency
    if args.jitter is not None:
        cfg.jitter = args.jitter
    hsm = None
    if args.hsm:
        from switch.hsm_client import HsmClient

        hsm = await HsmClient.connect(*args.hsm)
    server = await start_issuer(cfg, host=args.listen[0], port=args.listen[1], hsm=hsm, ledger=args.ledger)
    print(f"issuer listening on {server.address[0]}:{server.port}", flush=True)
    wallets = None
    if args.wallet_listen:
        from .wallets import load_wallets, start_wallets

        wallets = await start_wallets(load_wallets(args.accounts), host=args.wallet_listen[0],
                                      port=args.wallet_listen[1], ledger=server.ledger)
        print(f"wallets listening on {wallets.address[0]}:{wallets.port}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("issuer_stopping", extra=kv(port=server.port))
    if wallets is not None:
        await wallets.close()
    await server.close(close_ledger=True)
    if hsm is not None:
        await hsm.close()
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    configure_logging(args.log_level, json_lines=args.json_logs)
    try:
        import uvloop
    except ImportError:  # pragma: no cover
        uvloop = None
    try:
        if uvloop is not None:
            return uvloop.run(run(args))
        return asyncio.run(run(args))
    except (AccountsError, ValueError, OSError) as exc:
        print(f"posswitch issuer: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
