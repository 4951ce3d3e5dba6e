"""QR scanners and display (segno -> zxing-cpp round trip), pole display bytes, voice wav."""

from __future__ import annotations

import io
import shutil
import wave

import pytest
import serial

from terminal_bridge.devices import DeviceError
from terminal_bridge.display import ConsoleDisplay, SerialPoleDisplay
from terminal_bridge.magstripe import text_to_keycodes
from terminal_bridge.qr import (
    QrCodeError,
    SegnoQrDisplay,
    SerialQrScanner,
    WedgeQrScanner,
    classify_payment_code,
)
from terminal_bridge.selftest import check_input_device, check_serial, check_voice
from terminal_bridge.voice import PROMPTS, EspeakVoice, NullPlayer

PAYLOAD = "https://qr.95516.com/00010000/01234567890123456789?merchant=商户测试&amt=12.34"


def test_qr_png_roundtrip_with_zxing(tmp_path) -> None:
    zxingcpp = pytest.importorskip("zxingcpp", reason="zxing-cpp (devices extra) not installed")
    from PIL import Image

    out = io.StringIO()
    disp = SegnoQrDisplay(out=out, png_path=tmp_path / "qr.png")
    disp.show_qr(PAYLOAD, caption="请扫码支付 Scan to pay")
    text = out.getvalue()
    assert text.startswith("请扫码支付") and any(c in text for c in "█▀▄")
    results = zxingcpp.read_barcodes(Image.open(tmp_path / "qr.png"))
    assert [r.text for r in results] == [PAYLOAD]
    assert disp.last_payload == PAYLOAD
    with pytest.raises(QrCodeError, match="empty QR payload"):
        disp.show_qr("")


@pytest.mark.parametrize(("code", "wallet"), [
    ("134567890123456789", "wechat"), ("284412345678901234", "alipay"), ("6212345678901234567", "unionpay"),
])
def test_payment_code_classification(code: str, wallet: str) -> None:
    assert classify_payment_code(code) == wallet


@pytest.mark.parametrize(("code", "msg"), [
    ("99456789012345678", "unknown payment code: 17 digits, prefix 99"),
    ("13456789012345678X", "must be digits"),
])
def test_payment_code_rejected(code: str, msg: str) -> None:
    with pytest.raises(QrCodeError, match=msg):
        classify_payment_code(code)


async def test_wedge_scanner_keys_and_lines() -> None:
    s = WedgeQrScanner()
    s.feed_keys(text_to_keycodes("134567890123456789\r"))
    s.feed("  284412345678901234 \n")
    s.feed("   ")
    assert await s.read_code() == "134567890123456789"
    assert await s.read_code() == "284412345678901234"
    with pytest.raises(QrCodeError, match="empty scan"):
        await s.read_code()


async def test_serial_scanner_over_loop() -> None:
    port = serial.serial_for_url("loop://", timeout=0.1)
    scanner = SerialQrScanner("loop://", port=port)
    port.write(b"\r\n6212345678901234567\r\n134567890123456789\r")
    assert await scanner.read_code() == "6212345678901234567"
    assert await scanner.read_code() == "134567890123456789"
    with pytest.raises(QrCodeError, match="no code scanned in time"):
        await scanner.read_code(timeout=0.3)
    port.write(b"2844123456789012")  # no terminator yet: still waiting
    with pytest.raises(QrCodeError, match="no code scanned in time"):
        await scanner.read_code(timeout=0.3)
    port.write(b"34\n")
    assert await scanner.read_code(timeout=5) == "284412345678901234"
    scanner.close()
    with pytest.raises(DeviceError, match="QR scanner /dev/nonexistent-tty"):
        SerialQrScanner("/dev/nonexistent-tty")


def test_pole_display_bytes() -> None:
    port = serial.serial_for_url("loop://", timeout=0.1)
    d = SerialPoleDisplay(port=port, width=20)
    d.show("TOTAL 12.34", "支付成功 THANK YOU")
    d.clear()
    data = port.read(200)
    assert data.startswith(b"\x1b\x40\x0c\x1bQA" + b"TOTAL 12.34".ljust(20) + b"\r\x1bQB")
    lower = "支付成功 THANK YOU".encode("gb18030")
    assert lower[:20].ljust(20) in data and data.endswith(b"\r\x0c")
    # a double-byte character is never split at the edge: 11 ideographs = 22 bytes -> 10 fit
    d.show("一二三四五六七八九十壹")
    assert port.read(200) == b"\x0c\x1bQA" + "一二三四五六七八九十".encode("gb18030") + b"\r"
    with pytest.raises(ValueError, match="two lines"):
        d.show("a", "b", "c")


def test_console_display() -> None:
    out = io.StringIO()
    d = ConsoleDisplay(out, width=8)
    d.show("请插卡 INSERT CARD", "12.34")
    assert d.lines == ["请插卡 INSE", "12.34"] and "| 12.34" in out.getvalue()


@pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng not installed (scripts/apt-packages.txt)")
def test_voice_wav(tmp_path) -> None:
    player = NullPlayer()
    v = EspeakVoice(tmp_path, player=player)
    wav_path = v.render("支付成功")
    with wave.open(str(wav_path)) as w:
        assert w.getnchannels() == 1 and w.getsampwidth() == 2 and w.getframerate() == 22050
        duration = w.getnframes() / w.getframerate()
    assert 0.3 < duration < 10
    mtime = wav_path.stat().st_mtime_ns
    assert v.render("支付成功") == wav_path and wav_path.stat().st_mtime_ns == mtime  # cached
    v.say("approved")
    assert player.played == [wav_path]  # the "approved" prompt is 支付成功
    assert PROMPTS["approved"] == "支付成功"
    assert check_voice().ok


def test_recorded_prompt_overrides_tts(tmp_path) -> None:
    rec = tmp_path / "declined.wav"
    with wave.open(str(rec), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(8000)
        w.writeframes(b"\x00\x00" * 800)
    player = NullPlayer()
    EspeakVoice(tmp_path, player=player).say("declined")
    assert player.played == [rec]


def test_selftest_primitives(tmp_path) -> None:
    assert check_serial("loop://").ok
    bad = check_serial("/dev/nonexistent-tty")
    assert not bad.ok and "nonexistent" in bad.detail
    assert not check_input_device(str(tmp_path / "event9")).ok


def test_evdev_scanner_missing_device(tmp_path) -> None:
    pytest.importorskip("evdev", reason="evdev (devices extra) not installed")
    from terminal_bridge.qr import EvdevQrScanner

    with pytest.raises(QrCodeError, match=r"QR scanner .*event7: No such file or directory"):
        EvdevQrScanner(str(tmp_path / "event7"))
