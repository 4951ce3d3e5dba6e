"""The software card against the HSM simulator's ``KQ`` over loopback TCP: the issuer's real path.

The HSM verifies the card's ARQC from field 55 (IMK-AC test key under the LMK) and
returns the ARPC; the card must accept it in the 2nd GENERATE AC.  A tampered
ARQC is refused by the HSM.
"""

from __future__ import annotations

import datetime

import pytest

from terminal_bridge import emv_tlv
from terminal_bridge.apdu import DirectTransport
from terminal_bridge.drivers.softcard import TEST_IMK_AC, SoftCard
from terminal_bridge.emv import EmvKernel

hsm_server = pytest.importorskip("hsm_sim.server", reason="hsm_sim not available")
from hsm_sim.lmk import encrypt_under_lmk  # noqa: E402
from switch.hsm_client import HsmClient  # noqa: E402

ARQC_DATA = ("9F02", "9F03", "9F1A", "95", "5F2A", "9A", "9C", "9F37", "82", "9F36", "9F10")


async def test_card_arqc_verified_by_hsm_kq(tmp_path) -> None:
    server, port = await hsm_server.start_hsm("127.0.0.1", 0, keys=tmp_path / "keys.json")
    try:
        async with await HsmClient.connect("127.0.0.1", port) as hsm:
            imk = encrypt_under_lmk(TEST_IMK_AC, "MK-AC")
            for pan, psn, rc in (("6212345678901232", "01", "00"), ("6217001234567890128", "03", "00")):
                card = SoftCard(pan=pan, psn=psn)
                k = EmvKernel(DirectTransport(card), clock=lambda: datetime.datetime(2026, 11, 22, 12, 0))
                txn = k.start(2599)
                d = emv_tlv.decode(k.first_generate_ac(txn, pin_entered=True))
                data = b"".join(d[t] for t in ARQC_DATA)
                arpc = await hsm.verify_arqc(imk, pan, psn, d["9F36"], d["9F26"], data, rc.encode(), un=d["9F37"])
                assert arpc is not None and len(arpc) == 8
                done = k.second_generate_ac(txn, rc, emv_tlv.encode({"91": arpc + rc.encode()}))
                assert done.approved and done.issuer_authenticated

            # tampered amount: the HSM refuses the ARQC
            card = SoftCard()
            k = EmvKernel(DirectTransport(card))
            txn = k.start(100)
            d = emv_tlv.decode(k.first_generate_ac(txn))
            d["9F02"] = bytes.fromhex("000000000001")
            bad = await hsm.verify_arqc(imk, card.profile.pan, card.profile.psn, d["9F36"], d["9F26"],
                                        b"".join(d[t] for t in ARQC_DATA), b"00", un=d["9F37"])
            assert bad is None
    finally:
        await server.close()
