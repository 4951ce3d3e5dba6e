"""``posswitch terminals``: manage the merchant/terminal registry and print the daily merchant report.

The registry lives in the journal database (``[journal] path`` of ``--config``, or ``--db``).  Changes
made here while the switch runs are picked up by the switch (see ``TerminalRegistry.refresh_if_changed``).

    posswitch terminals --config C list [--merchant MID] [--json]
    posswitch terminals --config C merchants
    posswitch terminals --config C add-merchant MID [--name N] [--fee-profile P]
    posswitch terminals --config C add TID MID --tmk-lmk KEY [--key-mode 003] [--mac-algorithm pos-ecb]
    posswitch terminals --config C disable|enable TID MID
    posswitch terminals --config C disable-merchant|enable-merchant MID
    posswitch terminals --config C rotate-keys TID MID [--tmk-lmk NEW]
    posswitch terminals --config C import            # upsert [[merchants]] / [[terminals]] from the config
    posswitch terminals --config C report [--date YYYY-MM-DD] [--merchant MID] [--format text|csv]
    posswitch terminals --config C txns [--rrn R] [--pan PAN] [--terminal T] [--batch B] [--state S] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import datetime as dt
import json
import sys
from typing import Any

from switch.config import Config, ConfigError, FeeProfile, add_config_arguments, config_from_args
from switch.terminals import KEY_MODES, MAC_ALGORITHMS, RegistryError, TerminalStore


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="posswitch terminals", description="manage merchants and terminals")
    add_config_arguments(p)
    p.add_argument("--db", help="database path (overrides [journal] path)")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    ls = sub.add_parser("list", help="list terminals")
    ls.add_argument("--merchant")
    ls.add_argument("--json", action="store_true", help="one JSON object per line")
    sub.add_parser("merchants", help="list merchants")

    am = sub.add_parser("add-merchant", help="add a merchant")
    am.add_argument("merchant_id")
    am.add_argument("--name", default="")
    am.add_argument("--fee-profile", default="default")

    add = sub.add_parser("add", help="add a terminal")
    add.add_argument("terminal_id")
    add.add_argument("merchant_id")
    add.add_argument("--tmk-lmk", required=True, help="the terminal master key under the LMK (from the HSM)")
    add.add_argument("--key-mode", default="003", choices=KEY_MODES)
    add.add_argument("--mac-algorithm", default="pos-ecb", choices=MAC_ALGORITHMS)
    add.add_argument("--batch", type=int, default=1)

    for name, text in (("disable", "refuse transactions from a terminal"), ("enable", "re-enable a terminal")):
        c = sub.add_parser(name, help=text)
        c.add_argument("terminal_id")
        c.add_argument("merchant_id")
    for name in ("disable-merchant", "enable-merchant"):
        c = sub.add_parser(name, help=f"{name.split('-')[0]} every terminal of a merchant")
        c.add_argument("merchant_id")

    rk = sub.add_parser("rotate-keys", help="drop working keys; the terminal must sign on again")
    rk.add_argument("terminal_id")
    rk.add_argument("merchant_id")
    rk.add_argument("--tmk-lmk", help="also replace the TMK (under LMK)")

    sub.add_parser("import", help="upsert the merchants and terminals listed in the config")

    tx = sub.add_parser("txns", help="find journaled transactions (masked PAN only)")
    tx.add_argument("--rrn")
    tx.add_argument("--pan", help="card number, matched through the keyed hash (needs --config)")
    tx.add_argument("--terminal")
    tx.add_argument("--merchant")
    tx.add_argument("--batch", type=int)
    tx.add_argument("--state")
    tx.add_argument("--limit", type=int, default=50)
    tx.add_argument("--json", action="store_true", help="one JSON object per line")

    rep = sub.add_parser("report", help="daily merchant report: counts, amounts, fees, net")
    rep.add_argument("--date", help="business day YYYY-MM-DD (default: today in [settlement] utc_offset_hours)")
    rep.add_argument("--merchant")
    rep.add_argument("--format", choices=("text", "csv"), default="text")
    return p


def _db_path(args: argparse.Namespace, cfg: Config | None) -> str:
    if args.db:
        return args.db
    if cfg is not None:
        return cfg.journal.path
    raise ConfigError("", "--db", "give --db PATH or --config FILE")


def _terminal_row(t: Any) -> dict[str, Any]:
    d = dataclasses.asdict(t)
    # keys under LMK are not secrets in the clear sense, but there is no reason to print them
    for k in ("tmk_under_lmk", "pik_under_lmk", "mak_under_lmk", "tdk_under_lmk"):
        d[k] = (d[k][:5] + "…") if d[k] else None
    return d


def _report(args: argparse.Namespace, cfg: Config | None, path: str, store: TerminalStore) -> str:
    from switch.journal_sqlite import SqliteJournalStore
    from switch.settlement import build_report, business_day_bounds, format_report

    offset = cfg.settlement.utc_offset_hours if cfg else 8.0
    fees = dict(cfg.fees) if cfg else {"default": FeeProfile("default")}
    tz = dt.timezone(dt.timedelta(hours=offset))
    day = dt.date.fromisoformat(args.date) if args.date else dt.datetime.now(tz).date()
    profiles = {m.merchant_id: m.fee_profile for m in store.merchants()}

    async def rows() -> list[Any]:
        js = SqliteJournalStore(path)
        await js.start()
        try:
            start, end = business_day_bounds(day, offset)
            return await js.rows_between(start, end, args.merchant)
        finally:
            await js.close()

    return format_report(build_report(asyncio.run(rows()), day, fees, profiles), args.format)


def _txns(args: argparse.Namespace, cfg: Config | None, store: TerminalStore) -> str:
    from switch.journal import pan_hash
    from switch.journal_sqlite import JOURNAL_MIGRATIONS, migrate, row_to_record

    where, params = [], []
    if args.pan:
        if cfg is None:
            raise ConfigError("", "--pan", "needs --config (the PAN is found through the keyed hash)")
        where.append("pan_hash = ?")
        params.append(pan_hash(cfg.journal.pan_hash_key, args.pan))
    for column, value in (("rrn", args.rrn), ("terminal_id", args.terminal), ("merchant_id", args.merchant),
                          ("batch", args.batch), ("state", args.state)):
        if value is not None:
            where.append(f"{column} = ?")
            params.append(value)
    migrate(store.conn, "journal", JOURNAL_MIGRATIONS)  # an empty database answers with no rows
    sql = "SELECT * FROM txn" + (" WHERE " + " AND ".join(where) if where else "") + " ORDER BY id DESC LIMIT ?"
    rows = [row_to_record(r) for r in store.conn.execute(sql, (*params, max(1, args.limit)))]
    if args.json:
        return "".join(json.dumps(dataclasses.asdict(r), ensure_ascii=False) + "\n" for r in rows if r)
    lines = [f"{'id':>6} {'time (UTC)':<19} {'terminal':<8} {'type':<12} {'state':<9} {'amount':>12} "
             f"{'card':<19} {'stan':<6} {'batch':>6} {'rrn':<12} {'auth':<6} rc"]
    for r in rows:
        assert r is not None
        when = dt.datetime.fromtimestamp(r.created_at, dt.UTC).strftime("%Y-%m-%d %H:%M:%S")
        lines.append(f"{r.id:>6} {when:<19} {r.terminal_id:<8} {r.txn_type:<12} {r.state:<9} "
                     f"{r.amount / 100:>12.2f} {r.pan_masked:<19} {r.stan:<6} {r.batch:>6} {r.rrn:<12} "
                     f"{r.auth_code:<6} {r.response_code}")
    return "\n".join(lines) + "\n"


def run(args: argparse.Namespace) -> str:
    cfg = config_from_args(args) if args.config else None
    path = _db_path(args, cfg)
    store = TerminalStore(path)
    try:
        cmd = args.command
        if cmd == "list":
            terms = store.terminals(args.merchant)
            if args.json:
                return "".join(json.dumps(_terminal_row(t), ensure_ascii=False) + "\n" for t in terms)
            lines = [f"{'terminal':<8} {'merchant':<15} {'status':<8} {'m.status':<8} {'mode':<4} {'mac':<7} "
                     f"{'batch':>6} {'signed_on':<9} resign"]
            for t in terms:
                lines.append(f"{t.tid:<8} {t.mid:<15} {t.status:<8} {t.merchant_status:<8} {t.key_mode:<4} "
                             f"{t.mac_algorithm:<7} {t.batch:>6} {'yes' if t.signed_on else 'no':<9} "
                             f"{'yes' if t.resign_required else 'no'}")
            return "\n".join(lines) + "\n"
        if cmd == "merchants":
            return "".join(f"{m.merchant_id} {m.status:<8} {m.fee_profile:<10} {m.name}\n" for m in store.merchants())
        if cmd == "add-merchant":
            if cfg is not None and args.fee_profile not in cfg.fees:
                raise RegistryError(f"fee_profile: unknown fee profile {args.fee_profile!r}")
            store.add_merchant(args.merchant_id, args.name, args.fee_profile)
            return f"merchant {args.merchant_id} added\n"
        if cmd == "add":
            store.add_terminal(args.terminal_id, args.merchant_id, args.tmk_lmk, args.key_mode, args.mac_algorithm,
                               args.batch)
            return f"terminal {args.terminal_id} of {args.merchant_id} added\n"
        if cmd in ("disable", "enable"):
            store.set_status(args.terminal_id, args.merchant_id, "disabled" if cmd == "disable" else "active")
            return f"terminal {args.terminal_id} of {args.merchant_id} {cmd}d\n"
        if cmd in ("disable-merchant", "enable-merchant"):
            store.set_merchant_status(args.merchant_id, "disabled" if cmd == "disable-merchant" else "active")
            return f"merchant {args.merchant_id} {cmd.split('-')[0]}d\n"
        if cmd == "rotate-keys":
            store.rotate_keys(args.terminal_id, args.merchant_id, args.tmk_lmk)
            return f"terminal {args.terminal_id} of {args.merchant_id}: working keys dropped, must sign on again\n"
        if cmd == "import":
            if cfg is None:
                raise ConfigError("", "--config", "import needs --config FILE")
            store.load_from_config(cfg.merchants, cfg.terminals)
            return f"imported {len(cfg.merchants)} merchants, {len(cfg.terminals)} terminals\n"
        if cmd == "report":
            return _report(args, cfg, path, store)
        if cmd == "txns":
            return _txns(args, cfg, store)
        raise RegistryError(f"unknown command {cmd!r}")  # argparse prevents this
    finally:
        store.close()


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        sys.stdout.write(run(args))
    except (ConfigError, RegistryError) as exc:
        print(f"posswitch terminals: {exc}", file=sys.stderr)
        return 2
    except ValueError as exc:  # e.g. a bad --date
        print(f"posswitch terminals: {exc}", file=sys.stderr)
        return 2
    return 0
