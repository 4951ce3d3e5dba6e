"""``posswitch hsm``: run the HSM simulator, or provision keys ("form key").

    posswitch hsm --listen 127.0.0.1:1500 [--keys FILE] [--header-len 4]
    posswitch hsm form-key --type TMK --clear HEX [--scheme U] [--keys FILE --index 001]

``form-key`` is the console "form key" equivalent for tests and demos: it prints the key
under the test LMK and its check value (never the clear key) and, with ``--keys`` and
``--index``, stores it in the simulator's key database.
"""

from __future__ import annotations

import argparse
import asyncio
import sys

from switch.logsafe import configure_logging

from .keystore import KeyStore, KeyStoreError, StoredKey
from .lmk import DEFAULT_LMK, KEY_TYPES, Lmk, LmkError, encrypt_under_lmk, kcv, load_lmk, normalise_key_type


def _listen(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit():
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {value!r}")
    return host or "127.0.0.1", int(port)


def _serve_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="posswitch hsm",
        description="payShield-style HSM simulator (test keys only)",
        epilog="provisioning: posswitch hsm form-key --type TMK --clear HEX (see form-key --help); docs/hsm.md",
    )
    p.add_argument("--listen", type=_listen, default=("127.0.0.1", 1500), help="HOST:PORT (default 127.0.0.1:1500)")
    p.add_argument("--keys", help="key database file (JSON, written atomically)")
    p.add_argument("--header-len", type=int, default=4, help="message header length echoed back (default 4)")
    p.add_argument("--lmk", help="LMK file: 20 lines of 32 hex (default: the ThalesSim test LMK set)")
    p.add_argument("--log-level", default="INFO")
    p.add_argument("--json-logs", action="store_true", help="one JSON object per log line")
    p.add_argument("--no-uvloop", action="store_true", help="use the stock asyncio loop")
    return p


def _form_key_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="posswitch hsm form-key", description="encrypt a clear test key under the LMK")
    p.add_argument("--type", required=True, help=f"key type name ({', '.join(sorted(KEY_TYPES))}) or 3-hex code")
    p.add_argument("--clear", required=True, help="clear key, 16/32/48 hex (test keys only)")
    p.add_argument("--scheme", default="U", help="U/T (variant) or X/Y; single keys use the 16-hex form")
    p.add_argument("--keys", help="key database to store the key in (with --index)")
    p.add_argument("--index", help="3-character user-storage index (K + index addresses it)")
    p.add_argument("--label", default="", help="free text stored with the key")
    p.add_argument("--lmk", help="LMK file (as for the server); default: the test LMK set")
    return p


def form_key(argv: list[str]) -> int:
    args = _form_key_parser().parse_args(argv)
    try:
        lmk = load_lmk(args.lmk) if args.lmk else DEFAULT_LMK
        clear = bytes.fromhex(args.clear)
        key_type = normalise_key_type(args.type)
        under_lmk = encrypt_under_lmk(clear, key_type, args.scheme.upper(), lmk=lmk)
    except (ValueError, LmkError, OSError) as exc:
        print(f"posswitch hsm form-key: {exc}", file=sys.stderr)
        return 2
    check = kcv(clear)
    if args.keys or args.index:
        if not (args.keys and args.index):
            print("posswitch hsm form-key: --keys and --index go together", file=sys.stderr)
            return 2
        try:
            store = KeyStore(args.keys, lmk_check=lmk.check_value())
        except KeyStoreError as exc:
            print(f"posswitch hsm form-key: {exc}", file=sys.stderr)
            return 2
        store.put(args.index, StoredKey(under_lmk, key_type, check, args.label))
    print(f"key type {key_type}  under LMK {under_lmk}  KCV {check}")
    return 0


async def _serve(args: argparse.Namespace) -> None:
    from .server import HsmServer

    host, port = args.listen
    lmk: Lmk = load_lmk(args.lmk) if args.lmk else DEFAULT_LMK
    server = await HsmServer(host, port, header_len=args.header_len, keys=args.keys, lmk=lmk).start()
    print(f"hsm listening on {host}:{server.port}", flush=True)
    try:
        await server.serve_forever()
    finally:
        await server.close()


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "form-key":
        return form_key(argv[1:])
    args = _serve_parser().parse_args(argv)
    configure_logging(args.log_level, json_lines=args.json_logs)
    runner = asyncio.run
    if not args.no_uvloop:
        try:
            import uvloop

            runner = uvloop.run
        except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
            pass
    try:
        runner(_serve(args))
    except KeyboardInterrupt:
        pass
    except (KeyStoreError, LmkError, OSError) as exc:  # unreadable key database or LMK, port in use
        print(f"posswitch hsm: {exc}", file=sys.stderr)
        return 2
    return 0
