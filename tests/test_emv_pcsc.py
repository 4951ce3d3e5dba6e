"""The EMV flow through the real PC/SC stack: pyscard -> pcscd -> vpcd -> the software card.

Starts ``pcscd -f`` itself (and stops it) unless one with the vpcd readers is
already running; skipped with the reason when pcscd, vpcd or pyscard is missing.
The software card connects to vpcd on 127.0.0.1 only.
"""

from __future__ import annotations

import datetime
import fcntl
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator

import pytest
from pyemv import ac, kd
from pyemv import tlv as pyemv_tlv

from terminal_bridge.apdu import PcscTransport, list_readers
from terminal_bridge.devices import CardReadError, EntryMode
from terminal_bridge.drivers.softcard import TEST_IMK_AC, SoftCard
from terminal_bridge.drivers.vpcd import VpcdCard
from terminal_bridge.emv import EmvKernel
from terminal_bridge.selftest import check_card_reader

pytestmark = pytest.mark.filterwarnings("ignore:.*TripleDES.*")
pytest.importorskip("smartcard", reason="pyscard is not installed (devices extra)")

CONTACT, CONTACTLESS = "Virtual PCD 00 00", "Virtual PCD 00 01"
VPCD_DRIVER = "/usr/lib/pcsc/drivers/serial/libifdvpcd.so"


def _vpcd_readers() -> bool:
    return CONTACT in list_readers()


@pytest.fixture(scope="module")
def vpcd_lock() -> Iterator[None]:
    """vpcd serves one card per port and there is one pcscd per machine: serialise test sessions."""
    with open(os.path.join(tempfile.gettempdir(), "posswitch-vpcd.lock"), "w") as fh:
        deadline = time.monotonic() + 120
        while True:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    pytest.skip("another test session holds the vpcd readers")
                time.sleep(0.2)
        yield


@pytest.fixture(scope="module")
def pcscd(vpcd_lock: None) -> Iterator[None]:
    if _vpcd_readers():
        yield  # someone else's pcscd with vpcd: use it, leave it running
        return
    exe = shutil.which("pcscd") or ("/usr/sbin/pcscd" if os.path.exists("/usr/sbin/pcscd") else None)
    if exe is None:
        pytest.skip("pcscd is not installed (Debian pcscd, see scripts/apt-packages.txt)")
    if not os.path.exists(VPCD_DRIVER) and not os.path.exists(VPCD_DRIVER + ".0.8"):
        pytest.skip("vpcd is not installed (Debian vsmartcard-vpcd)")
    proc = subprocess.Popen([exe, "-f"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 15
        while not _vpcd_readers():
            if proc.poll() is not None:
                pytest.skip(f"pcscd exited with {proc.returncode} (another instance or no /run/pcscd?)")
            if time.monotonic() > deadline:
                pytest.fail("pcscd started but the vpcd readers did not appear")
            time.sleep(0.1)
        yield
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _connect(reader: str) -> PcscTransport:
    deadline = time.monotonic() + 10
    while True:
        try:
            return PcscTransport(reader)
        except CardReadError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


@pytest.fixture
def inserted(pcscd: None, request: pytest.FixtureRequest) -> Iterator[tuple[SoftCard, PcscTransport]]:
    contactless = getattr(request, "param", False)
    card = SoftCard(t0=not contactless, contactless=contactless)
    vpcd = VpcdCard(card, "127.0.0.1", 35964 if contactless else 35963).start()
    transport = _connect(CONTACTLESS if contactless else CONTACT)
    try:
        yield card, transport
    finally:
        transport.close()
        vpcd.stop()


def _verify_and_answer(f55: bytes, pan: str, psn: str) -> bytes:
    d = pyemv_tlv.decode(f55, flatten=True)
    mk = kd.derive_icc_mk_a(TEST_IMK_AC, pan, psn)
    sk = kd.derive_common_sk(mk, d["9F36"] + b"\0\0" + d["9F37"])
    data = b"".join(d[t] for t in ("9F02", "9F03", "9F1A", "95", "5F2A", "9A", "9C", "9F37", "82", "9F36", "9F10"))
    arqc = ac.generate_ac(sk, data)
    assert arqc == d["9F26"]
    return pyemv_tlv.encode({"91": ac.generate_arpc_1(mk, arqc, b"00") + b"00"})


def test_reader_selftest(pcscd: None) -> None:
    assert check_card_reader("Virtual PCD").ok
    assert not check_card_reader("No Such Reader").ok


def test_contact_t0_sale_through_pcscd(inserted: tuple[SoftCard, PcscTransport]) -> None:
    card, transport = inserted
    assert transport.atr() == SoftCard.atr()
    k = EmvKernel(transport, clock=lambda: datetime.datetime(2026, 11, 22, 9, 0))
    txn = k.start(8888)
    assert txn.card.pan == "6212345678901232" and txn.card.psn == "01" and txn.card.entry_mode == EntryMode.CHIP
    f55 = k.first_generate_ac(txn, pin_entered=True)
    done = k.second_generate_ac(txn, "00", _verify_and_answer(f55, txn.card.pan, txn.card.psn))
    assert done.approved and done.cid == 0x40
    assert any(a[1] == 0xC0 for a in card.log)  # the card ran in T=0 mode: GET RESPONSE went through pcscd


@pytest.mark.parametrize("inserted", [True], indirect=True, ids=["contactless"])
def test_contactless_reader_through_pcscd(inserted: tuple[SoftCard, PcscTransport]) -> None:
    card, transport = inserted
    k = EmvKernel(transport, contactless=True)
    txn = k.start(100)
    f55 = k.first_generate_ac(txn)
    assert txn.card.entry_mode == EntryMode.CONTACTLESS
    assert k.second_generate_ac(txn, "00", _verify_and_answer(f55, txn.card.pan, txn.card.psn)).approved
    assert card.log[0][5:19] == b"2PAY.SYS.DDF01"


def test_cli_read_card(inserted: tuple[SoftCard, PcscTransport], capsys: pytest.CaptureFixture[str]) -> None:
    from switch.cli import main as posswitch

    _, transport = inserted
    transport.close()  # the CLI opens its own connection
    assert posswitch(["terminal", "read-card", "--reader", CONTACT, "--amount", "12.34"]) == 0
    out = capsys.readouterr().out
    assert "621234******1232" in out and "6212345678901232" not in out
    assert "A000000333010101 UnionPay Debit" in out and "9F26(8)" in out and "CID 00" in out


def test_cli_softcard(pcscd: None, capsys: pytest.CaptureFixture[str]) -> None:
    import threading

    from switch.cli import main as posswitch

    rc: list[int] = []
    t = threading.Thread(target=lambda: rc.append(posswitch(
        ["terminal", "softcard", "--port", "35964", "--pan", "6212340000000000006", "--psn", "02",
         "--contactless", "--seconds", "3"])))
    t.start()
    try:
        transport = _connect(CONTACTLESS)
        txn = EmvKernel(transport, contactless=True).start(1)
        assert txn.card.pan == "6212340000000000006" and txn.card.psn == "02"
        transport.close()
    finally:
        t.join(timeout=10)
    assert rc == [0]
    assert "6212340000000000006" not in capsys.readouterr().out


def test_wait_for_card_and_removal(pcscd: None) -> None:
    import threading

    from terminal_bridge.apdu import wait_for_card, wait_for_removal

    with pytest.raises(CardReadError, match="no card inserted within 0.3 s"):
        wait_for_card(CONTACT, timeout=0.3)
    card = SoftCard()
    vpcd = VpcdCard(card, "127.0.0.1", 35963)
    timer = threading.Timer(0.5, vpcd.start)
    timer.start()
    try:
        transport = wait_for_card(CONTACT, timeout=10)
        assert EmvKernel(transport).start(1).card.pan == card.profile.pan
        transport.close()
        assert not wait_for_removal(CONTACT, timeout=0.3)  # still inserted
    finally:
        timer.join()
        vpcd.stop()
    assert wait_for_removal(CONTACT, timeout=10)
    with pytest.raises(CardReadError, match="no reader matching 'Nope'"):
        wait_for_card("Nope", timeout=0.1)
