"""Receipts: ESC/POS bytes (decoded by a small command parser), GB18030, PAN masking,
a network printer over a real local TCP listener, file printer and printer self-test."""

from __future__ import annotations

import datetime
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator

import pytest
import serial
from escpos.printer import Dummy

from terminal_bridge.devices import DeviceError, EntryMode
from terminal_bridge.receipt import EscPosReceiptPrinter, Receipt, lines_for, open_printer, render
from terminal_bridge.selftest import check_printer

PAN = "6212345678901232"
R = Receipt(merchant_name="上海测试商户有限公司", merchant_id="898310048990001", terminal_id="10000001", pan=PAN,
            entry_mode=EntryMode.CHIP, amount_fen=123456, rrn="261122000042", auth_code="A1B2C3", batch=7,
            trace=42, when=datetime.datetime(2026, 11, 22, 10, 30, 5), expiry="3012", aid="A000000333010101",
            app_label="UnionPay Debit", tc="2ED82513B0329966")


def decode_escpos(data: bytes) -> tuple[list[tuple], str]:
    """Split ESC/POS output into commands and GB18030 text; unknown commands fail the test."""
    cmds: list[tuple] = []
    text = bytearray()
    i = 0
    fixed = {b"\x1b@": 0, b"\x1c&": 0, b"\x1ba": 1, b"\x1bE": 1, b"\x1b!": 1, b"\x1d!": 1, b"\x1bt": 1,
             b"\x1bd": 1, b"\x1b-": 1, b"\x1bM": 1}
    while i < len(data):
        b = data[i]
        if b in (0x1B, 0x1C, 0x1D):
            op = data[i : i + 2]
            if op in fixed:
                n = fixed[op]
                cmds.append((op, data[i + 2 : i + 2 + n]))
                i += 2 + n
            elif op == b"\x1dV":
                m = data[i + 2]
                n = 2 if m in (65, 66) else 1
                cmds.append((op, data[i + 2 : i + 2 + n]))
                i += 2 + n
            elif op == b"\x1d(" and data[i + 2 : i + 3] == b"k":
                ln = int.from_bytes(data[i + 3 : i + 5], "little")
                cmds.append((b"\x1d(k", data[i + 5 : i + 5 + ln]))
                i += 5 + ln
            else:
                pytest.fail(f"unknown ESC/POS command {op.hex()} at offset {i}")
        else:
            text.append(b)
            i += 1
    return cmds, text.decode("gb18030")


def test_receipt_bytes_gb18030_and_masking() -> None:
    p = Dummy()
    render(p, R, "merchant")
    out = p.output
    cmds, text = decode_escpos(out)
    assert out.startswith(b"\x1b@\x1c&")  # init, Chinese mode
    assert cmds[-1][0] == b"\x1dV"  # cut
    for word in ("商户名称", "支付成功", "签购单", "上海测试商户有限公司"):
        assert word.encode("gb18030") in out, word
    assert "商户名称".encode("gb18030").hex() == "c9ccbba7c3fbb3c6"
    assert "支付成功".encode("gb18030").hex() == "d6a7b8b6b3c9b9a6"
    assert PAN.encode() not in out and b"621234******1232" in out
    for expected in ("898310048990001", "10000001", "CHIP", "261122000042", "A1B2C3", "000007", "000042",
                     "2026/11/22 10:30:05", "RMB 1234.56", "MERCHANT COPY", "30/12", "A000000333010101"):
        assert expected in text, expected
    assert "持卡人签名" in text
    assert (b"\x1b!", b"\x30") in cmds  # double width + height for the amount


def test_customer_copy_and_declined_refund() -> None:
    import dataclasses

    r = dataclasses.replace(R, txn_type="refund", result="declined", entry_mode="07")
    p = Dummy()
    render(p, r, "customer", chinese_mode=False, cut=False)
    cmds, text = decode_escpos(p.output)
    assert b"\x1c&" not in [c for c, _ in cmds] and b"\x1dV" not in [c for c, _ in cmds]
    assert "CARDHOLDER COPY" in text and "持卡人签名" not in text
    assert "交易失败 DECLINED" in text and "RMB -1234.56" in text and "退货 REFUND" in text and "CONTACTLESS" in text
    with pytest.raises(ValueError, match="unknown receipt copy"):
        lines_for(r, "bank")
    assert PAN not in repr(r)


class FakeNetworkPrinter:
    """A raw port-9100 printer: records bytes, answers DLE EOT 1 / DLE EOT 4 status queries."""

    def __init__(self, paper: int = 0x12) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.received = bytearray()
        self.paper = paper
        self.connections = 0
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            with conn:
                while chunk := conn.recv(4096):
                    self.received += chunk
                    if chunk.endswith(b"\x10\x04\x01"):
                        conn.sendall(b"\x12")  # online
                    elif chunk.endswith(b"\x10\x04\x04"):
                        conn.sendall(bytes([self.paper]))

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def net_printer() -> Iterator[FakeNetworkPrinter]:
    fp = FakeNetworkPrinter()
    yield fp
    fp.close()


def test_network_printer_over_tcp(net_printer: FakeNetworkPrinter) -> None:
    printer = EscPosReceiptPrinter(open_printer(f"tcp://127.0.0.1:{net_printer.port}"))
    printer.print_receipt(R)
    printer.close()
    expected = Dummy()
    render(expected, R, "merchant")
    render(expected, R, "customer")
    for _ in range(100):
        if len(net_printer.received) >= len(expected.output):
            break
        threading.Event().wait(0.02)
    assert bytes(net_printer.received) == expected.output
    assert PAN.encode() not in net_printer.received


def test_printer_selftest(net_printer: FakeNetworkPrinter) -> None:
    p = open_printer(f"tcp://127.0.0.1:{net_printer.port}")
    assert check_printer(p) == check_printer(p)  # repeatable
    res = check_printer(p)
    assert res.ok and res.detail == "online, paper ok"
    net_printer.paper = 0x72
    res = check_printer(p)
    assert not res.ok and res.detail == "out of paper"
    p.close()
    assert not check_printer(Dummy()).ok  # no status channel: reported, not raised


def test_file_printer_and_bad_urls(tmp_path) -> None:
    dev = tmp_path / "lp0"
    dev.touch()
    p = open_printer(f"file:{dev}")
    EscPosReceiptPrinter(p).print_receipt(R, copies=("customer",))
    p.close()
    assert "支付成功".encode("gb18030") in dev.read_bytes()
    with pytest.raises(DeviceError, match="scheme must be"):
        open_printer("lpt://1")
    free = socket.create_server(("127.0.0.1", 0))
    port = free.getsockname()[1]
    free.close()
    with pytest.raises(DeviceError, match=f"printer tcp://127.0.0.1:{port}"):
        open_printer(f"tcp://127.0.0.1:{port}", timeout=2)


@pytest.mark.skipif(shutil.which("socat") is None, reason="socat not installed (scripts/apt-packages.txt)")
def test_serial_printer_through_pty_pair(tmp_path) -> None:
    """python-escpos Serial into one end of a socat pty pair, the 'printer' reads the other end."""
    pos, prn = tmp_path / "ttyPOS", tmp_path / "ttyPRN"
    proc = subprocess.Popen(["socat", f"pty,raw,echo=0,link={pos}", f"pty,raw,echo=0,link={prn}"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(200):
            if pos.exists() and prn.exists():
                break
            time.sleep(0.02)
        reader = serial.Serial(str(prn), 9600, timeout=0.2)
        printer = open_printer(f"serial:{pos}?baudrate=9600")
        EscPosReceiptPrinter(printer).print_receipt(R, copies=("customer",))
        expected = Dummy()
        render(expected, R, "customer")
        got = bytearray()
        for _ in range(100):
            got += reader.read(4096)
            if len(got) >= len(expected.output):
                break
        printer.close()
        reader.close()
        assert bytes(got) == expected.output
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_native_qr_on_receipt() -> None:
    import dataclasses

    url = "https://pos.example.cn/r/261122000042?商户=898310048990001"
    p = Dummy()
    render(p, dataclasses.replace(R, qr_payload=url), "customer")
    cmds, _ = decode_escpos(p.output)
    stored = [d for c, d in cmds if c == b"\x1d(k" and d[:2] == b"\x31\x50"]  # cn=49 fn=80: store data
    assert len(stored) == 1 and stored[0][3:].decode("utf-8") == url
    assert any(c == b"\x1d(k" and d[:2] == b"\x31\x51" for c, d in cmds)  # fn=81: print


@pytest.mark.parametrize(("txn_type", "label", "amount"), [
    ("preauth_void", "预授权撤销 AUTH VOID", "RMB 1234.56"),
    ("completion_void", "预授权完成撤销 COMPLETE VOID", "RMB -1234.56"),
    ("completion", "预授权完成 AUTH COMPLETE", "RMB 1234.56"),
])
def test_pre_auth_family_names(txn_type: str, label: str, amount: str) -> None:
    import dataclasses

    text = "\n".join(t for _, t in lines_for(dataclasses.replace(R, txn_type=txn_type), "customer"))
    assert f"交易类型(TRANS TYPE): {label}" in text and amount in text
