"""``posswitch terminal``: scripted mode (a real subprocess against the testbed switch), the menu,
script parsing errors, and the self-test (printer, card reader, network, keys, pending reversal)."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import sys
import threading
from pathlib import Path

import pytest

from switch import testbed
from switch.testbed import MERCHANT_ID, Stack, terminal_id
from terminal_bridge.app import TerminalApp, TerminalConfig
from terminal_bridge.cli import interactive
from terminal_bridge.devices import DeviceError
from terminal_bridge.diagnostics import (
    check_keys,
    check_printer_of,
    check_reader_of,
    format_report,
    self_test,
)
from terminal_bridge.display import ConsoleDisplay
from terminal_bridge.drivers.softcard import SoftCard
from terminal_bridge.receipt import open_printer
from terminal_bridge.scripted import ScriptError, ScriptRunner, parse_script

pytestmark = pytest.mark.timeout(120)
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
async def stack(tmp_path: Path):
    s = await Stack.start(tmp_path / "stack", terminals=1)
    try:
        yield s
    finally:
        await s.stop()


def make_app(port: int, tmp_path: Path) -> TerminalApp:
    app = TerminalApp(TerminalConfig("127.0.0.1", port, terminal_id(0), MERCHANT_ID, testbed.test_tmk(0),
                                     connect_timeout=1.0, connect_retries=0, read_timeout=5.0),
                      state_path=tmp_path / "t.json")
    app.devices.display = ConsoleDisplay(out=open(os.devnull, "w"))  # noqa: SIM115
    return app


async def run_cli(*args: str, stdin: bytes | None = None) -> tuple[int, str, str]:
    env = {**os.environ, "POSSWITCH_TMK": testbed.test_tmk(0).hex()}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "switch.cli", "terminal", *args, cwd=ROOT, env=env,
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await proc.communicate(stdin)
    return proc.returncode or 0, out.decode(), err.decode()


async def test_script_mode_runs_every_operation(stack: Stack, tmp_path: Path) -> None:
    swipe_card, chip_card = stack.card("cup", 0), stack.card("cup", 1)
    script = tmp_path / "day.txt"
    script.write_text(f"""# a day at the counter
signon
sale 12.34 swipe=;{swipe_card.pan}={swipe_card.expiry}1010000000000? pin=123456
void $stan   # same batch, full amount, card not presented
sale 5.00 chip={chip_card.pan} pin=123456
refund 1.00 rrn=$rrn date=$date chip={chip_card.pan}
balance tap={chip_card.pan} pin=123456
preauth 30.00 chip={chip_card.pan} pin=123456
completion 25.00 trace=$stan
completion_void $stan
settle
""")
    state = tmp_path / "t.json"
    code, out, err = await run_cli("--switch", f"127.0.0.1:{stack.port}", "--terminal-id", terminal_id(0),
                                   "--merchant-id", MERCHANT_ID, "--state", str(state), "--script", str(script))
    lines = [json.loads(x) for x in out.splitlines() if x.startswith("{")]
    assert [x["op"] for x in lines] == ["sign_on", "sale", "void", "sale", "refund", "balance",
                                         "preauth", "completion", "completion_void", "settle"], (out, err)
    assert all(x["ok"] for x in lines) and code == 0, (out, err)
    assert lines[1]["amount"] == 1234 and lines[5]["balance"] > 0
    assert swipe_card.pan not in out + err and chip_card.pan not in out + err  # never a clear PAN on the console
    row = await stack.journal.find_by_trace(terminal_id(0), MERCHANT_ID, 1, lines[2]["stan"])
    assert row.txn_type == "void" and row.amount == 1234
    assert '"batch": 2' in state.read_text()  # settled: the state file moved to the next batch


async def test_script_and_usage_errors(stack: Stack, tmp_path: Path) -> None:
    with pytest.raises(ScriptError, match="line 2: unknown command 'sell'"):
        parse_script("signon\nsell 1.00\n")
    bad = tmp_path / "bad.txt"
    bad.write_text("sale 1.234 chip\n")
    base = ["--switch", f"127.0.0.1:{stack.port}", "--terminal-id", terminal_id(0), "--merchant-id", MERCHANT_ID]
    code, _, err = await run_cli(*base, "--script", str(bad))
    assert code == 2 and "line 1: amount '1.234'" in err
    code, _, err = await run_cli("--switch", "nohost", "--terminal-id", "T", "--merchant-id", "M", "--script", "-",
                                 stdin=b"")
    assert code == 2 and "HOST:PORT" in err


async def test_script_mode_network_down_exit_1(tmp_path: Path) -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    script = tmp_path / "s.txt"
    script.write_text("signon\n")
    code, out, _ = await run_cli("--switch", f"127.0.0.1:{port}", "--terminal-id", terminal_id(0), "--merchant-id",
                                 MERCHANT_ID, "--script", str(script), "--retries", "0", "--connect-timeout", "1")
    assert code == 1 and "网络异常，请重试" in json.loads(out.splitlines()[-1])["message"]


async def test_interactive_menu(stack: Stack, tmp_path: Path) -> None:
    app = make_app(stack.port, tmp_path)
    card = stack.card("cup", 0)
    answers = iter(["7", "1", "8.88", f";{card.pan}={card.expiry}1010000000000?", "9", "1", "abc", "0"])
    pins = iter(["123456"])
    printed: list[str] = []
    code = await interactive(ScriptRunner(app), lambda _p: next(answers, "0"), lambda _p: next(pins, ""), printed.append)
    assert code == 0
    results = [p for p in printed if p.startswith(("成功", "失败"))]
    assert results[0].startswith("成功 sign_on") and results[1].startswith("成功 sale rc=00")
    assert "无效选择 invalid choice" in printed and any(p.startswith("输入错误") for p in printed)
    assert app.state.records[0].amount == 888
    slip = next(p for p in printed if "持卡人存根" in p)  # the customer copy is shown on screen
    assert "RMB 8.88" in slip and card.pan not in slip and card.pan[-4:] in slip


class StatusPrinter:
    """A port-9100 printer answering DLE EOT 1 (online status) and DLE EOT 4 (paper sensor)."""

    def __init__(self, online: int = 0x12, paper: int = 0x12) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.online, self.paper = online, paper
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                while chunk := conn.recv(4096):
                    if chunk.endswith(b"\x10\x04\x01"):
                        conn.sendall(bytes([self.online]))
                    elif chunk.endswith(b"\x10\x04\x04"):
                        conn.sendall(bytes([self.paper]))


class BrokenReader:
    def transmit(self, apdu: bytes) -> bytes:
        raise DeviceError("card reader: no card in the slot")

    def atr(self) -> bytes:
        return b""

    def close(self) -> None:
        pass


async def test_self_test_names_what_is_wrong(stack: Stack, tmp_path: Path) -> None:
    printer = StatusPrinter()
    app = make_app(stack.port, tmp_path)
    app.devices.escpos = open_printer(f"tcp://127.0.0.1:{printer.port}")
    checks = await self_test(app)
    by = {c.device: c for c in checks}
    assert by["printer"].ok and by["network"].ok and by["card reader"].ok and by["reversal"].ok
    assert not by["keys"].ok and "未签到" in by["keys"].detail  # never signed on
    assert (await app.sign_on()).ok
    assert check_keys(app).ok
    assert "自检通过" in format_report(await self_test(app))

    printer.paper = 0x72  # paper end sensor
    res = check_printer_of(app)
    assert not res.ok and "打印机缺纸" in res.detail and "out of paper" in res.detail
    printer.paper, printer.online = 0x12, 0x1A  # bit 3: offline
    res = check_printer_of(app)
    assert not res.ok and "打印机脱机" in res.detail

    assert check_reader_of(app, SoftCard()).ok
    res = check_reader_of(app, BrokenReader())
    assert not res.ok and "读卡失败" in res.detail and "no card" in res.detail

    app.state.need_sign_on = True  # the host asked for a new sign-on (header digit 6 = 3)
    res = check_keys(app)
    assert not res.ok and "keys out of sync" in res.detail
    app.state.need_sign_on = False
    app.state.keys.mak_cv = "00000000"  # keys damaged / TMK changed
    res = check_keys(app)
    assert not res.ok and "MAK check value mismatch" in res.detail

    await stack.server.stop(drain_timeout=1.0)  # network down
    by = {c.device: c for c in await self_test(app)}
    assert not by["network"].ok and "网络异常" in by["network"].detail
    printer.sock.close()


async def test_diagnose_command_exit_status(stack: Stack, tmp_path: Path) -> None:
    printer = StatusPrinter(paper=0x72)
    base = ["--switch", f"127.0.0.1:{stack.port}", "--terminal-id", terminal_id(0), "--merchant-id", MERCHANT_ID,
            "--printer", f"tcp://127.0.0.1:{printer.port}", "--diagnose"]
    code, out, _ = await run_cli(*base)
    assert code == 1 and "FAIL printer" in out and "打印机缺纸" in out and "OK   network" in out
    printer.sock.close()


async def test_drive_demo_mix_settles_balanced(stack: Stack, tmp_path: Path) -> None:
    """The scripted-terminal API offered to ``posswitch demo``: a random mix, then a balanced settlement."""
    import random
    import time

    from switch.testbed import qr_code
    from terminal_bridge.scripted import drive_demo

    app = make_app(stack.port, tmp_path)
    seen: list[tuple[str, object]] = []
    cards = [stack.card("cup", n) for n in range(3)] + [stack.card("intl", 0)]
    settled = await drive_demo(app, cards, time.monotonic() + 2.0, random.Random(7),
                               qr_code=lambda: qr_code("134500000001"),
                               on_result=lambda kind, res: seen.append((kind, res)))
    kinds = {k for k, _ in seen}
    assert {"sign-on", "sale swipe+PIN", "sale chip", "sale tap", "settlement"} <= kinds, kinds
    assert all(r.rc != "NET" and r.mac_ok is None for _, r in seen)
    assert all(r.ok for k, r in seen if k.startswith("sale")), [(k, r.rc) for k, r in seen if not r.ok]
    assert settled.ok and settled.detail["balanced"] is True
    assert {r.rc for k, r in seen if k.startswith("decline")} <= {"15"}  # unknown BIN; no PIN lockouts
    assert all(r.ok for k, r in seen if k in ("void", "refund")), [(k, r.rc) for k, r in seen if not r.ok]
    wrong: list[tuple[str, object]] = []
    app2 = make_app(stack.port, tmp_path / "second")
    await drive_demo(app2, cards, time.monotonic() + 0.5, random.Random(1), wrong_pin_card=stack.card("cup", 5),
                     on_result=lambda kind, res: wrong.append((kind, res)))
    assert {r.rc for k, r in wrong if k.startswith("decline")} <= {"55", "75"}


async def test_diagnose_real_devices_does_not_wait_for_a_card(stack: Stack, tmp_path: Path) -> None:
    """With ``--devices real`` the reader check asks PC/SC for the reader, it never waits for a card."""
    code, out, _ = await run_cli("--switch", f"127.0.0.1:{stack.port}", "--terminal-id", terminal_id(0),
                                 "--merchant-id", MERCHANT_ID, "--devices", "real", "--reader", "NoSuchReader",
                                 "--card-wait", "600", "--diagnose")
    line = next(x for x in out.splitlines() if "card reader" in x)
    assert code == 1 and line.startswith("FAIL") and "读卡器未就绪" in line and "NoSuchReader" in line


async def test_menu_qr_sale_reads_the_scanner(stack: Stack, tmp_path: Path) -> None:
    """Real-device menu: choice 5 takes the code from the QR scanner (a pyserial loop:// port here)."""
    from switch.testbed import qr_code
    from terminal_bridge.qr import SerialQrScanner

    app = make_app(stack.port, tmp_path)
    app.devices.qr = scanner = SerialQrScanner("loop://")
    code = qr_code("134500000001")
    scanner.port.write(code.encode() + b"\r")
    answers = iter(["5", "3.00", "0"])
    printed: list[str] = []
    rc = await interactive(ScriptRunner(app), lambda _p: next(answers, "0"), lambda _p: "", printed.append,
                           software=False)
    assert rc == 0 and any(p.startswith("成功 sale rc=00") for p in printed), printed
    assert app.state.records[-1].qr_code == code and app.state.records[-1].amount == 300
    scanner.close()
