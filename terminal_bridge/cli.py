"""``posswitch terminal``: a POS terminal for a person (menu) or for scripts, demos and tests.

::

    posswitch terminal --switch 127.0.0.1:5000 --terminal-id SIM00000 --merchant-id 898310048990001 \\
        --tmk HEX [--state FILE] [--devices software|real] [--script FILE | --diagnose]

The TMK may also come from the environment (``POSSWITCH_TMK``) so it does not show in the process
list.  ``--devices software`` (default) uses the headless devices (console display, scripted PIN
entry, in-memory or ``--printer`` ESC/POS printer, software EMV card with ``--card-pan``);
``--devices real`` uses PC/SC readers, an evdev magstripe reader, the console PIN pad and the
``--printer`` URL.  The device bring-up tools of the devices engineer stay available as
``posswitch terminal diagnose|read-card|softcard|print-test|say`` (see docs/terminal.md).  Exit status: 0 all operations approved, 1 something declined or failed,
2 usage error.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import getpass
import os
import sys
import time
from collections.abc import Callable
from typing import Any

from switch.logsafe import configure_logging, mask_pan

from .app import Devices, TerminalApp, TerminalConfig, software_devices
from .diagnostics import format_report, self_test
from .receipt import lines_for
from .scripted import Command, ScriptError, ScriptRunner, parse_amount, parse_script

MENU = ("1 消费 sale   2 余额 balance   3 撤销 void   4 退货 refund   5 扫码 QR sale\n"
        "6 结算 settle   7 签到 sign on   8 自检 self-test   0 退出 quit")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="posswitch terminal", description="run a POS terminal against the switch")
    p.add_argument("--switch", required=True, metavar="HOST:PORT", help="the switch's terminal listener")
    p.add_argument("--terminal-id", required=True, help="field 41 (8 characters)")
    p.add_argument("--merchant-id", required=True, help="field 42 (15 characters)")
    p.add_argument("--tmk", help="terminal master key, hex (default: $POSSWITCH_TMK)")
    p.add_argument("--state", help="state file (keys under the TMK, batch, reversal); default: none (memory)")
    p.add_argument("--devices", choices=("software", "real"), default="software")
    p.add_argument("--script", help="run the commands of FILE ('-' = stdin) and exit")
    p.add_argument("--diagnose", action="store_true", help="run the self-test and exit")
    p.add_argument("--printer", default="dummy:", help="receipt printer URL (tcp://host:9100, file:, serial:, dummy:)")
    p.add_argument("--card-pan", default="6212345678901232", help="PAN of the software chip card")
    p.add_argument("--reader", default="", help="PC/SC contact reader name (substring), real devices")
    p.add_argument("--contactless-reader", default=None, help="PC/SC contactless reader name, real devices")
    p.add_argument("--magstripe", default=None, help="evdev device of the magstripe reader, real devices")
    p.add_argument("--qr-scanner", default=None, help="QR scanner: serial URL (/dev/ttyACM0, loop://) or "
                   "evdev:/dev/input/eventN, real devices")
    p.add_argument("--card-wait", type=float, default=30.0, help="seconds to wait for a card, real devices")
    p.add_argument("--voice", action="store_true", help="voice prompts (espeak-ng; played with aplay on real devices)")
    p.add_argument("--voice-cache", default=".voice-cache", help="rendered prompts (a recorded KEY.wav there wins)")
    p.add_argument("--key-mode", choices=("001", "003", "004"), default="003")
    p.add_argument("--mac", choices=("pos-ecb", "x9.19", "x9.9"), default="pos-ecb")
    p.add_argument("--merchant-name", default="POSSWITCH TEST MERCHANT")
    p.add_argument("--connect-timeout", type=float, default=5.0)
    p.add_argument("--read-timeout", type=float, default=30.0)
    p.add_argument("--retries", type=int, default=2, help="connect retries (a sent request is never re-sent)")
    p.add_argument("--log-level", default="WARNING")
    return p


def _real_devices(args: argparse.Namespace, tmk: bytes) -> Devices:
    from .apdu import wait_for_card
    from .display import ConsoleDisplay
    from .pinpad import ConsolePinPad
    from .receipt import EscPosReceiptPrinter, open_printer

    escpos = open_printer(args.printer)
    magstripe = None
    if args.magstripe:
        from .magstripe import EvdevMagstripeReader

        magstripe = EvdevMagstripeReader(args.magstripe)
    contactless = None
    if args.contactless_reader is not None:
        def contactless() -> Any:  # blocks (in a worker thread) until a card is in the field
            return wait_for_card(args.contactless_reader, args.card_wait)
    qr = None
    if args.qr_scanner:
        from .qr import EvdevQrScanner, SerialQrScanner

        qr = (EvdevQrScanner(args.qr_scanner[6:]) if args.qr_scanner.startswith("evdev:")
              else SerialQrScanner(args.qr_scanner))
    return Devices(display=ConsoleDisplay(), pinpad=ConsolePinPad(tmk=tmk), printer=EscPosReceiptPrinter(escpos), qr=qr,
                   escpos=escpos, magstripe=magstripe, chip=lambda: wait_for_card(args.reader, args.card_wait),
                   contactless=contactless, kind="real", reader_name=args.reader)


def make_app(args: argparse.Namespace, tmk: bytes) -> TerminalApp:
    host, _, port = args.switch.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"--switch {args.switch!r}: expected HOST:PORT")
    cfg = TerminalConfig(host, int(port), args.terminal_id, args.merchant_id, tmk, merchant_name=args.merchant_name,
                         key_mode=args.key_mode, mac_algorithm=args.mac, connect_timeout=args.connect_timeout,
                         read_timeout=args.read_timeout, connect_retries=args.retries)
    devices = (_real_devices(args, tmk) if args.devices == "real"
               else software_devices(tmk, printer_url=args.printer))
    if args.voice:
        from .voice import CommandPlayer, EspeakVoice, NullPlayer

        devices.voice = EspeakVoice(args.voice_cache, player=CommandPlayer() if args.devices == "real" else NullPlayer())
    return TerminalApp(cfg, state_path=args.state, devices=devices)


async def interactive(runner: ScriptRunner, ask: Callable[[str], str], secret: Callable[[str], str],
                      out: Callable[[str], None], *, software: bool = True) -> int:
    """The merchant's menu; each choice becomes one script command run by ``runner``."""
    failures = 0
    while True:
        out(MENU)
        choice = (await asyncio.to_thread(ask, "> ")).strip()
        if choice in ("0", "q", "quit", ""):
            return 1 if failures else 0
        words: list[str] = []
        try:
            if choice in ("1", "5"):
                words = ["sale", await asyncio.to_thread(ask, "金额 amount (yuan): ")]
            elif choice == "2":
                words = ["balance"]
            elif choice == "3":
                words = ["void", await asyncio.to_thread(ask, "原凭证号 original trace: ")]
            elif choice == "4":
                words = ["refund", await asyncio.to_thread(ask, "金额 amount (yuan): "),
                         "rrn=" + await asyncio.to_thread(ask, "原参考号 original RRN: "),
                         "date=" + await asyncio.to_thread(ask, "原交易日期 original date MMDD: ")]
            elif choice == "6":
                words = ["settle"]
            elif choice == "7":
                words = ["signon"]
            elif choice == "8":
                words = ["diagnose"]
            else:
                out("无效选择 invalid choice")
                continue
            if words[0] in ("sale", "refund"):
                parse_amount(words[1], 0)
            if choice == "5":
                scanner = runner.app.devices.qr
                if not software and scanner is not None:  # the customer shows the code to the scanner
                    runner.app.show("请出示付款码", "show your payment code")
                    code = await scanner.read_code()
                else:
                    code = await asyncio.to_thread(ask, "请扫码 scan payment code: ")
                words.append("qr=" + code.strip())
            elif words[0] in ("sale", "balance", "void", "refund"):
                words += await _card_words(ask, secret, software, words[0])
            cmd = Command(0, words[0], [w for w in words[1:] if "=" not in w and w not in ("chip", "tap")],
                          dict(w.split("=", 1) for w in words[1:] if "=" in w),
                          {w for w in words[1:] if w in ("chip", "tap", "fallback")})
            res = await runner.run_one(cmd)
        except (ScriptError, ValueError) as exc:
            out(f"输入错误 {exc}")
            continue
        failures += 0 if res.ok else 1
        if res.receipt is not None and software:  # the slip the printer got, for the person at the screen
            out("\n".join(text for _style, text in lines_for(res.receipt, "customer")))
        out(res.message if res.operation == "diagnose" else
            f"{'成功' if res.ok else '失败'} {res.operation} rc={res.rc} {res.message}"
            + (f" trace={res.stan}" if res.stan else "") + (f" rrn={res.rrn}" if res.rrn else ""))


async def _card_words(ask: Callable[[str], str], secret: Callable[[str], str], software: bool, op: str) -> list[str]:
    if not software:
        return []  # the real readers and PIN pad prompt by themselves
    text = (await asyncio.to_thread(ask, "刷卡/插卡/挥卡: swipe text (;PAN=...?), 'chip [PAN]', 'tap [PAN]'"
                                    + (" or empty (no card)" if op == "void" else "") + ": ")).strip()
    words: list[str] = []
    if text.startswith(("%", ";")):
        words.append("swipe=" + text)
    elif text.startswith(("chip", "tap")):
        kind, _, pan = text.partition(" ")
        words.append(f"{kind}={pan.strip()}" if pan.strip() else kind)
    elif text and op != "void":
        raise ValueError(f"card input {text[:10]!r}... not understood")
    if op == "void":
        return words
    pin = await asyncio.to_thread(secret, "请输入密码 PIN (empty: none): ")
    if pin:
        words.append("pin=" + pin)
    return words



# ---------------------------------------------------------------------------- device bring-up tools
# (written by the devices engineer; kept as `posswitch terminal diagnose|read-card|softcard|print-test|say`)

TOOLS = ("diagnose", "read-card", "softcard", "print-test", "say")


def _tools_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="posswitch terminal", description="device bring-up and diagnostics")
    p.add_argument("--log-level", default="WARNING")
    sub = p.add_subparsers(dest="cmd", required=True)

    d = sub.add_parser("diagnose", help="self-test the devices")
    d.add_argument("--printer", help="tcp://host:9100, file:/dev/usb/lp0, serial:/dev/ttyS0?baudrate=9600")
    d.add_argument("--reader", help="substring of the PC/SC reader name")
    d.add_argument("--magstripe", help="/dev/input/event* of a keyboard-wedge reader")
    d.add_argument("--serial", action="append", default=[], help="serial URL of a display or scanner")
    d.add_argument("--voice", action="store_true", help="check espeak-ng and a player")

    r = sub.add_parser("read-card", help="read a chip card up to the ARQC")
    r.add_argument("--reader", default="", help="substring of the PC/SC reader name")
    r.add_argument("--contactless", action="store_true")
    r.add_argument("--amount", default="0.01", help="amount in yuan")

    s = sub.add_parser("softcard", help="insert the software EMV card into vpcd")
    s.add_argument("--port", type=int, default=35963, help="vpcd port (35963 reader 0, 35964 reader 1)")
    s.add_argument("--pan", default="6212345678901232")
    s.add_argument("--psn", default="01")
    s.add_argument("--expiry", default="301231", help="YYMMDD")
    s.add_argument("--t0", action="store_true", help="answer like a T=0 card (61xx / 6Cxx)")
    s.add_argument("--contactless", action="store_true", help="answer PPSE instead of PSE")
    s.add_argument("--seconds", type=float, default=0, help="stop after this long (0 = until Ctrl-C)")

    t = sub.add_parser("print-test", help="print a test slip")
    t.add_argument("printer", help="printer URL")

    v = sub.add_parser("say", help="render a voice prompt")
    v.add_argument("prompt", help="prompt key (approved, declined, ...) or text")
    v.add_argument("--cache", default=".voice-cache")
    v.add_argument("--play", action="store_true", help="play with aplay")
    return p


def _diagnose(a: argparse.Namespace) -> int:
    from . import selftest

    results = []
    if a.printer:
        from .devices import DeviceError
        from .receipt import open_printer

        try:
            printer = open_printer(a.printer, timeout=5)
            results.append(selftest.check_printer(printer))
            printer.close()
        except DeviceError as exc:
            results.append(selftest.SelfTestResult("printer", False, str(exc)))
    if a.reader is not None:
        results.append(selftest.check_card_reader(a.reader))
    if a.magstripe:
        results.append(selftest.check_input_device(a.magstripe))
    for url in a.serial:
        results.append(selftest.check_serial(url))
    if a.voice:
        results.append(selftest.check_voice())
    if not results:
        print("nothing to check: pass --printer/--reader/--magstripe/--serial/--voice", file=sys.stderr)
        return 2
    for res in results:
        print(f"{'OK  ' if res.ok else 'FAIL'} {res.device}: {res.detail}")
    return 0 if all(r.ok for r in results) else 1


def _read_card(a: argparse.Namespace) -> int:
    from decimal import Decimal

    from .apdu import PcscTransport
    from .devices import CardReadError
    from .emv import EmvKernel

    fen = int(Decimal(a.amount) * 100)
    try:
        transport = PcscTransport(a.reader)
    except CardReadError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    try:
        k = EmvKernel(transport, contactless=a.contactless)
        txn = k.start(fen)
        f55 = k.first_generate_ac(txn)
        c = txn.card
        print(f"reader:      {transport.reader_name}")
        print(f"application: {c.aid} {c.app_label}")
        print(f"PAN:         {mask_pan(c.pan)}  PSN {c.psn}  expiry {c.expiry[:2]}/{c.expiry[2:]}")
        print(f"entry mode:  {c.entry_mode.value} ({c.entry_mode.name.lower()})")
        from . import emv_tlv

        tags = emv_tlv.decode(f55)
        print(f"field 55:    {len(f55)} bytes, tags {' '.join(f'{t}({len(v)})' for t, v in tags.items())}")
        done = k.second_generate_ac(txn, None, None)  # no host: close the card with an AAC
        print(f"closed:      CID {done.cid:02X} (AAC, not sent to any host)")
        return 0
    except CardReadError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    finally:
        transport.close()


def _softcard(a: argparse.Namespace) -> int:
    from .drivers.softcard import CardProfile, SoftCard
    from .drivers.vpcd import VpcdCard

    card = SoftCard(CardProfile(pan=a.pan, psn=a.psn, expiry=a.expiry), t0=a.t0, contactless=a.contactless)
    try:
        vpcd = VpcdCard(card, "127.0.0.1", a.port).start()
    except ConnectionError as exc:
        print(f"error: {exc} (is pcscd running with the vpcd driver?)", file=sys.stderr)
        return 1
    print(f"software card {mask_pan(a.pan)} inserted via vpcd 127.0.0.1:{a.port}; Ctrl-C removes it")
    try:
        end = time.monotonic() + a.seconds if a.seconds else None
        while end is None or time.monotonic() < end:
            time.sleep(0.1)
    except KeyboardInterrupt:
        pass
    finally:
        vpcd.stop()
    print(f"removed after {vpcd.apdus} APDUs, ATC {card.atc}")
    return 0


def _print_test(a: argparse.Namespace) -> int:
    from .devices import DeviceError, EntryMode
    from .receipt import EscPosReceiptPrinter, Receipt, open_printer

    r = Receipt(merchant_name="posswitch 测试商户", merchant_id="898310048990001", terminal_id="TEST0001",
                pan="6212345678901232", entry_mode=EntryMode.CHIP, amount_fen=1, rrn="000000000000",
                auth_code="TEST01", batch=1, trace=1, when=datetime.datetime.now(), txn_type="sale")
    try:
        p = open_printer(a.printer)
        EscPosReceiptPrinter(p).print_receipt(r)
        p.close()
    except DeviceError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print("test slip printed (merchant + customer copies)")
    return 0


def _say(a: argparse.Namespace) -> int:
    from .devices import DeviceError
    from .voice import CommandPlayer, EspeakVoice, NullPlayer

    v = EspeakVoice(a.cache, player=CommandPlayer() if a.play else NullPlayer())
    try:
        v.say(a.prompt)
        print(v.prompt_path(a.prompt))
    except DeviceError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


def tools_main(argv: list[str]) -> int:
    a = _tools_parser().parse_args(argv)
    configure_logging(a.log_level)
    return {"diagnose": _diagnose, "read-card": _read_card, "softcard": _softcard, "print-test": _print_test,
            "say": _say}[a.cmd](a)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in TOOLS:
        return tools_main(argv)
    args = build_parser().parse_args(argv)
    configure_logging(args.log_level)
    tmk_hex = args.tmk or os.environ.get("POSSWITCH_TMK", "")
    try:
        tmk = bytes.fromhex(tmk_hex)
        if len(tmk) not in (8, 16, 24):
            raise ValueError
    except ValueError:
        print("posswitch terminal: --tmk (or $POSSWITCH_TMK) must be 16, 32 or 48 hex digits", file=sys.stderr)
        return 2
    try:
        app = make_app(args, tmk)
    except Exception as exc:  # noqa: BLE001 - bad URL, unreadable state file, device missing
        print(f"posswitch terminal: {exc}", file=sys.stderr)
        return 2
    try:
        return _run(args, app)
    finally:
        app.close()


def _run(args: argparse.Namespace, app: TerminalApp) -> int:
    runner = ScriptRunner(app, card_pan=args.card_pan, out=print)
    if args.diagnose:
        checks = asyncio.run(self_test(app))
        print(format_report(checks))
        return 0 if all(c.ok for c in checks) else 1
    if args.script:
        try:
            text = sys.stdin.read() if args.script == "-" else open(args.script, encoding="utf-8").read()
            commands = parse_script(text)
        except (OSError, ScriptError) as exc:
            print(f"posswitch terminal: {exc}", file=sys.stderr)
            return 2
        try:
            results = asyncio.run(runner.run(commands))
        except ScriptError as exc:
            print(f"posswitch terminal: {exc}", file=sys.stderr)
            return 2
        return 0 if all(r.ok for r in results) else 1
    runner.out = None
    return asyncio.run(interactive(runner, input, getpass.getpass, print, software=args.devices == "software"))


if __name__ == "__main__":
    sys.exit(main())
