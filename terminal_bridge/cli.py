"""``posswitch terminal``: device bring-up and diagnostics for the terminal bridge.

Subcommands (the terminal application itself - sign-on, sales - is not part of this
module yet):

* ``diagnose``   self-test the configured devices (printer, card reader, magstripe,
  serial display/scanner, voice); exit 1 if any check fails;
* ``read-card``  run the EMV flow on a PC/SC reader up to the ARQC, print the masked
  card data and the field 55 tag list, then close the card with an AAC;
* ``softcard``   insert the software EMV card into vpcd (pcscd) until interrupted;
* ``print-test`` print a test slip (merchant + customer copies) to a printer URL;
* ``say``        render (and play, with ``--play``) a voice prompt.
"""

from __future__ import annotations

import argparse
import datetime
import sys
import time

from switch.logsafe import configure_logging, mask_pan


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="posswitch terminal", description=__doc__.split("\n\n")[0])
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


def main(argv: list[str] | None = None) -> int:
    a = _parser().parse_args(argv)
    configure_logging(a.log_level)
    return {"diagnose": _diagnose, "read-card": _read_card, "softcard": _softcard, "print-test": _print_test,
            "say": _say}[a.cmd](a)


if __name__ == "__main__":
    sys.exit(main())
