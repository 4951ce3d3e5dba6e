"""``posswitch terminal`` device tools: diagnose, print-test, say (PC/SC ones live in test_emv_pcsc.py)."""

from __future__ import annotations

import shutil
import socket
import threading

import pytest

from switch.cli import main as posswitch


class _StatusPrinter:
    """Port-9100 listener answering DLE EOT queries; records what it received."""

    def __init__(self, paper: int) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.paper = paper
        self.data = bytearray()
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                while chunk := conn.recv(4096):
                    self.data += chunk
                    if chunk.endswith(b"\x10\x04\x01"):
                        conn.sendall(b"\x12")
                    elif chunk.endswith(b"\x10\x04\x04"):
                        conn.sendall(bytes([self.paper]))


def test_diagnose_printer_and_serial(capsys: pytest.CaptureFixture[str]) -> None:
    ok = _StatusPrinter(0x12)
    assert posswitch(["terminal", "diagnose", "--printer", f"tcp://127.0.0.1:{ok.port}", "--serial", "loop://"]) == 0
    out = capsys.readouterr().out
    assert "OK   printer: online, paper ok" in out and "OK   serial device: loop://" in out
    empty = _StatusPrinter(0x72)
    assert posswitch(["terminal", "diagnose", "--printer", f"tcp://127.0.0.1:{empty.port}"]) == 1
    assert "FAIL printer: out of paper" in capsys.readouterr().out
    ok.sock.close()
    empty.sock.close()


def test_diagnose_needs_something(capsys: pytest.CaptureFixture[str]) -> None:
    assert posswitch(["terminal", "diagnose"]) == 2
    assert "nothing to check" in capsys.readouterr().err


def test_print_test_slip(capsys: pytest.CaptureFixture[str]) -> None:
    p = _StatusPrinter(0x12)
    assert posswitch(["terminal", "print-test", f"tcp://127.0.0.1:{p.port}"]) == 0
    assert "test slip printed" in capsys.readouterr().out
    for _ in range(100):
        if b"\x1dV" in p.data and p.data.count(b"\x1dV") == 2:
            break
        threading.Event().wait(0.02)
    assert "测试商户".encode("gb18030") in p.data and b"6212345678901232" not in p.data
    p.sock.close()
    assert posswitch(["terminal", "print-test", "lpt://x"]) == 1
    assert "scheme must be" in capsys.readouterr().err


@pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng not installed")
def test_say_renders_wav(tmp_path, capsys: pytest.CaptureFixture[str]) -> None:
    assert posswitch(["terminal", "say", "approved", "--cache", str(tmp_path)]) == 0
    path = capsys.readouterr().out.strip()
    assert path.startswith(str(tmp_path)) and path.endswith(".wav")
