"""PIN pads: take the PIN, hand out only the ISO 9564 format 0 PIN block encrypted under the PIK.

A PIN pad plays the PED: it holds the terminal master key (TMK, injected out of
band) and the working PIN key (PIK) loaded from the sign-on reply (field 62,
PIK encrypted under the TMK, checked against its check value).  The clear PIN
and the clear keys never leave the object and are never logged or printed
(``repr`` hides them).

* :class:`ScriptedPinPad`: PINs from a queue (tests, scripted terminals);
  ``None`` in the queue means the cardholder pressed "bypass".
* :class:`ConsolePinPad`: ``getpass``-style entry on the controlling terminal.
"""

from __future__ import annotations

import asyncio
import getpass
import logging
from collections.abc import Callable, Iterable

from _fastcore import crypto
from switch.logsafe import kv

from .devices import DeviceError

log = logging.getLogger(__name__)


class PinEntryError(DeviceError):
    """The PIN or the key material is not acceptable (never includes the PIN itself)."""


def _check_key(key: bytes) -> bytes:
    if len(key) not in (8, 16, 24):
        raise PinEntryError(f"key length {len(key)} is not 8, 16 or 24 bytes")
    return key


def check_value(key: bytes, length: int = 4) -> bytes:
    """Key check value: the key encrypting 8 zero bytes, first ``length`` bytes."""
    return crypto.tdes_ecb_encrypt(_check_key(key), bytes(8))[:length]


def iso0_clear_block(pin: str, pan: str) -> bytes:
    """ISO 9564-1 format 0: (0 | len | PIN | F..) XOR (0000 | rightmost 12 PAN digits excl. check digit)."""
    if not pin.isdigit() or not 4 <= len(pin) <= 12:
        raise PinEntryError("PIN must be 4 to 12 digits")
    if not pan.isdigit() or len(pan) < 13:
        raise PinEntryError("PAN must be at least 13 digits for a format 0 PIN block")
    return crypto.pin_block_encode(pin, pan, crypto.PIN_ISO0)


class _KeyHolder:
    """TMK + PIK storage shared by the PIN pads."""

    def __init__(self, tmk: bytes | None = None, pik: bytes | None = None) -> None:
        self.__tmk = tmk
        self.__pik = pik

    def load_pik(self, pik_under_tmk: bytes, kcv: bytes | None = None) -> None:
        """Decrypt the PIK from the 0810 field 62 with the TMK, verify its check value, keep it."""
        if self.__tmk is None:
            raise PinEntryError("no terminal master key injected")
        pik = crypto.tdes_ecb_decrypt(_check_key(self.__tmk), pik_under_tmk)
        if kcv is not None and check_value(pik, len(kcv)) != kcv:
            raise PinEntryError("PIK check value mismatch: key not loaded")
        self.__pik = pik
        log.info("pin key loaded", extra=kv(kcv=check_value(pik).hex().upper()))

    @property
    def has_pik(self) -> bool:
        return self.__pik is not None

    def _encrypt(self, pin: str, pan: str) -> bytes:
        if self.__pik is None:
            raise PinEntryError("no working PIN key: sign on first")
        return crypto.tdes_ecb_encrypt(_check_key(self.__pik), iso0_clear_block(pin, pan))

    def __repr__(self) -> str:
        return f"{type(self).__name__}(pik_loaded={self.has_pik})"


class ScriptedPinPad(_KeyHolder):
    """PINs come from a script; ``get_pin_block`` returns the encrypted block only."""

    def __init__(self, pins: Iterable[str | None] = (), *, tmk: bytes | None = None, pik: bytes | None = None) -> None:
        super().__init__(tmk, pik)
        self._queue: asyncio.Queue[str | None] = asyncio.Queue()
        for p in pins:
            self._queue.put_nowait(p)

    def enter(self, pin: str | None) -> None:
        """The cardholder types ``pin`` (``None``: bypass)."""
        self._queue.put_nowait(pin)

    async def get_pin_block(self, pan: str, *, amount_fen: int | None = None) -> bytes | None:
        pin = await self._queue.get()
        if pin is None:
            log.info("pin bypassed")
            return None
        block = self._encrypt(pin, pan)
        del pin
        log.info("pin entered", extra=kv(pan=pan))
        return block


class ConsolePinPad(_KeyHolder):
    """Reads the PIN without echo from the console (``getpass``), in a worker thread."""

    def __init__(self, *, tmk: bytes | None = None, pik: bytes | None = None,
                 prompt: Callable[[str], str] = getpass.getpass) -> None:
        super().__init__(tmk, pik)
        self._prompt = prompt

    async def get_pin_block(self, pan: str, *, amount_fen: int | None = None) -> bytes | None:
        text = "请输入密码 Enter PIN" + (f" (CNY {amount_fen / 100:.2f})" if amount_fen is not None else "") + ": "
        pin = await asyncio.to_thread(self._prompt, text)
        if not pin:
            return None
        try:
            return self._encrypt(pin.strip(), pan)
        finally:
            del pin
