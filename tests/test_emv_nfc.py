"""Contactless EMV over nfcpy's simulated RF (``udp:`` driver, loopback only): reader and card in software."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest
from pyemv import ac, kd
from pyemv import tlv as pyemv_tlv

from terminal_bridge.devices import CardReadError, EntryMode
from terminal_bridge.drivers.softcard import TEST_IMK_AC, SoftCard
from terminal_bridge.emv import EmvKernel

pytest.importorskip("nfc", reason="nfcpy (devices extra) is not installed")
from terminal_bridge.drivers.nfc_udp import NfcUdpCard, NfcUdpTransport  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore:.*TripleDES.*")
ARQC_DATA = ("9F02", "9F03", "9F1A", "95", "5F2A", "9A", "9C", "9F37", "82", "9F36", "9F10")


def _free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def tapped(request: pytest.FixtureRequest) -> Iterator[tuple[SoftCard, NfcUdpTransport]]:
    port = _free_udp_port()
    card = SoftCard(contactless=True)
    served = NfcUdpCard(card, port, fsci=getattr(request, "param", 8)).start()
    transport = NfcUdpTransport(port)
    try:
        yield card, transport
    finally:
        transport.close()
        served.stop()


def _run_sale(card: SoftCard, transport: NfcUdpTransport) -> None:
    k = EmvKernel(transport, contactless=True)
    txn = k.start(4321)
    f55 = k.first_generate_ac(txn)
    assert txn.card.entry_mode == EntryMode.CONTACTLESS and txn.card.pan == card.profile.pan
    d = pyemv_tlv.decode(f55, flatten=True)
    mk = kd.derive_icc_mk_a(TEST_IMK_AC, txn.card.pan, txn.card.psn)
    sk = kd.derive_common_sk(mk, d["9F36"] + b"\0\0" + d["9F37"])
    assert ac.generate_ac(sk, b"".join(d[t] for t in ARQC_DATA)) == d["9F26"]
    reply = pyemv_tlv.encode({"91": ac.generate_arpc_1(mk, d["9F26"], b"00") + b"00"})
    assert k.second_generate_ac(txn, "00", reply).approved


def test_contactless_sale_over_simulated_rf(tapped: tuple[SoftCard, NfcUdpTransport]) -> None:
    card, transport = tapped
    assert len(transport.atr()) == 4  # NFCID1
    _run_sale(card, transport)
    assert card.log[0][5:19] == b"2PAY.SYS.DDF01"


@pytest.mark.parametrize("tapped", [0], indirect=True, ids=["fsc16"])
def test_iso_dep_command_chaining(tapped: tuple[SoftCard, NfcUdpTransport]) -> None:
    """With FSC = 16 bytes the reader splits every longer C-APDU into chained I-blocks."""
    card, transport = tapped
    _run_sale(card, transport)
    assert max(len(a) for a in card.log) > 16  # GENERATE AC (~40 bytes) arrived whole


def test_no_card_in_field() -> None:
    with pytest.raises(CardReadError, match="no ISO-DEP card on udp 127.0.0.1"):
        NfcUdpTransport(_free_udp_port(), wait=0.5)
