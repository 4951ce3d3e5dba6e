"""PIN pads: ISO 9564 format 0 under the PIK, PIK loaded from field 62 under the TMK; no clear PIN out."""

from __future__ import annotations

import logging

import pytest
from Crypto.Cipher import DES3
from psec import pinblock

from terminal_bridge.pinpad import ConsolePinPad, PinEntryError, ScriptedPinPad, check_value, iso0_clear_block

# pos-8583-dialect.md §9.2 (K62-1)
K62_TMK = bytes.fromhex("CA5D92598DCA48CE8A4C76361A9269E9")
K62_PIK_CT = bytes.fromhex("6701EAD6A9AD51E51AA406E2C27FCFA9")
K62_PIK = bytes.fromhex("807A23AD32B36D457AE91FDF927570EA")
K62_PIK_CV = bytes.fromhex("8D0A74B8")


@pytest.mark.parametrize(("pin", "pan", "block"), [
    ("1234", "4012345678909", "041274EDCBA9876F"),  # PB-1
    ("1234", "5544332211009966", "041277CDDEEFF669"),  # PB-2
    ("123456", "6212142000000000012", "06121456FFFFFFFE"),  # PB-6 clear
])
def test_iso0_known_answers_and_psec(pin: str, pan: str, block: str) -> None:
    assert iso0_clear_block(pin, pan).hex().upper() == block
    assert pinblock.encode_pinblock_iso_0(pin, pan).hex().upper() == block


async def test_pik_from_field62_and_encrypted_block() -> None:
    pad = ScriptedPinPad(["1234"], tmk=K62_TMK)
    pad.load_pik(K62_PIK_CT, K62_PIK_CV)
    block = await pad.get_pin_block("4012345678909")
    assert block is not None and len(block) == 8
    clear = DES3.new(K62_PIK, DES3.MODE_ECB).decrypt(block)
    assert pinblock.decode_pinblock_iso_0(clear, "4012345678909") == "1234"


async def test_pb6_vector() -> None:
    pad = ScriptedPinPad(["123456"], tmk=bytes.fromhex("159D86C7C1F779EA29F77A6858E0DA2A"))
    pad.load_pik(bytes.fromhex("75CAD854C2E59A5EEDD7CA7410C2C215"))
    assert (await pad.get_pin_block("6212142000000000012")).hex().upper() == "9CA4E8A0FA2C49B3"  # type: ignore[union-attr]


def test_wrong_check_value_refuses_the_key() -> None:
    pad = ScriptedPinPad(tmk=K62_TMK)
    with pytest.raises(PinEntryError, match="check value mismatch"):
        pad.load_pik(K62_PIK_CT, b"\x00\x00\x00\x00")
    assert not pad.has_pik
    assert check_value(K62_PIK) == K62_PIK_CV


async def test_errors_and_bypass(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    with pytest.raises(PinEntryError, match="sign on first"):
        await ScriptedPinPad(["1234"]).get_pin_block("4012345678909")
    pad = ScriptedPinPad(["98a7", "987", None, "987654"], pik=K62_PIK)
    for _ in range(2):
        with pytest.raises(PinEntryError, match="PIN must be 4 to 12 digits") as exc:
            await pad.get_pin_block("4012345678909")
        assert "987" not in str(exc.value)
    assert await pad.get_pin_block("4012345678909") is None  # bypass
    assert len(await pad.get_pin_block("4012345678909") or b"") == 8
    text = caplog.text + repr(pad)
    assert "987654" not in text and "4012345678909" not in text and K62_PIK.hex() not in text.lower()


async def test_console_pinpad_uses_prompt() -> None:
    prompts: list[str] = []
    pad = ConsolePinPad(pik=K62_PIK, prompt=lambda p: prompts.append(p) or "4321")
    block = await pad.get_pin_block("4012345678909", amount_fen=1234)
    clear = DES3.new(K62_PIK, DES3.MODE_ECB).decrypt(block or b"")
    assert pinblock.decode_pinblock_iso_0(clear, "4012345678909") == "4321"
    assert "12.34" in prompts[0] and "4012345678909" not in prompts[0]
