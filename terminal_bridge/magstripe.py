"""Magstripe (keyboard-wedge) reader: track parser, key-code decoder and readers.

A USB magstripe reader in keyboard mode "types" one swipe::

    %B<PAN>^<NAME>^<YYMM><SSS><discretionary>?  ;<PAN>=<YYMM><SSS><discretionary>?  +<track 3>?  CR

A track the reader could not decode is sent as ``E`` between its sentinels
(``%E?``).  Some readers append the track's LRC character after the end sentinel;
:func:`parse_swipe` verifies it (ISO/IEC 7811: XOR of the 6-bit (track 1) or 4-bit
(tracks 2/3) character values from start to end sentinel).

Readers:

* :class:`KeycodeDecoder` turns Linux key events (``EV_KEY`` code/value, US
  layout) into text, so the evdev path and the tests share one decoder;
* :class:`EvdevMagstripeReader` grabs a ``/dev/input/event*`` device (needs the
  optional ``evdev`` package and read access to the device);
* :class:`FeedMagstripeReader` is fed strings (or key-code sequences) by tests or
  by a scripted terminal.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Iterable

from switch.logsafe import kv

from .devices import CardReadError, DeviceError, SwipeData, Track1, Track2

log = logging.getLogger(__name__)

_T1 = re.compile(r"B(?P<pan>\d{1,19})\^(?P<name>[^^]{2,26})\^(?P<exp>\d{4})(?P<sc>\d{3})(?P<disc>[^?]*)")
_T2 = re.compile(r"(?P<pan>\d{1,19})=(?P<exp>\d{4})(?P<sc>\d{3})(?P<disc>\d*)")
_T3 = re.compile(r"[0-9=]{1,104}")
_SENTINELS = {"%": 1, ";": 2, "+": 3}


def luhn_ok(pan: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(pan)):
        d = ord(ch) - 48
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def track_lrc(track: int, text: str) -> str:
    """LRC character of one track given ``start sentinel + data + end sentinel`` as typed."""
    if track == 1:
        lrc = 0
        for ch in text:
            lrc ^= (ord(ch) - 0x20) & 0x3F
        return chr(lrc + 0x20)
    lrc = 0
    # tracks 2 and 3 are both ``;``-started on the stripe; wedges type track 3 as ``+``
    for ch in (";" + text[1:]) if text[:1] == "+" else text:
        lrc ^= (ord(ch) - 0x30) & 0x0F
    return chr(lrc + 0x30)


def parse_swipe(text: str, *, lrc: bool | None = None, check_luhn: bool = True) -> SwipeData:
    """Parse one swipe as typed by a wedge reader.

    ``lrc``: ``True`` the reader sends an LRC after every end sentinel; ``False``
    it never does; ``None`` (default) accept and verify one when present.
    Raises :class:`CardReadError` naming the track and offset of the problem.
    """
    text = text.rstrip("\r\n")
    tracks: dict[int, str] = {}
    starts: dict[int, int] = {}
    failed: list[int] = []
    pos = 0
    n = len(text)
    while pos < n:
        ch = text[pos]
        if ch in " \t\r\n":
            pos += 1
            continue
        track = _SENTINELS.get(ch)
        if track is None:
            raise CardReadError(f"unexpected character {ch!r}, expected a start sentinel % ; +", offset=pos)
        if track in tracks or track in failed:
            raise CardReadError("track sent twice", track=track, offset=pos)
        end = text.find("?", pos + 1)
        if end < 0:
            raise CardReadError("no end sentinel '?'", track=track, offset=pos)
        body = text[pos + 1 : end]
        after = end + 1
        has_lrc = lrc is True or (lrc is None and after < n and text[after] not in "%;+\r\n \t")
        if has_lrc:
            if after >= n:
                raise CardReadError("LRC character missing", track=track, offset=after)
            want = track_lrc(track, text[pos : end + 1])
            if text[after] != want:
                raise CardReadError(f"bad LRC {text[after]!r} (computed {want!r})", track=track, offset=after)
            after += 1
        if body == "E":
            failed.append(track)
        else:
            tracks[track] = body
            starts[track] = pos
        pos = after
    if not tracks and not failed:
        raise CardReadError("empty swipe")
    try:
        t1 = _parse_t1(tracks[1], check_luhn) if 1 in tracks else None
        t2 = _parse_t2(tracks[2], check_luhn) if 2 in tracks else None
        t3 = None
        if 3 in tracks:
            if not _T3.fullmatch(tracks[3]):
                raise CardReadError("track 3 is not digits and '='", track=3,
                                    offset=_bad_offset(tracks[3], "0123456789="))
            t3 = tracks[3]
    except CardReadError as exc:  # offsets inside a track -> offsets in the swipe text
        if exc.track is None or exc.offset is None:
            raise
        msg = str(exc).split(": track ")[0]
        raise CardReadError(msg, track=exc.track, offset=starts[exc.track] + exc.offset) from None
    if t1 is None and t2 is None:
        raise CardReadError(f"no usable track 1 or 2 (failed: {failed or 'none'})", track=2)
    if t1 and t2 and t1.pan != t2.pan:
        raise CardReadError("track 1 and track 2 PANs differ", track=1)
    return SwipeData(t1, t2, t3, tuple(failed))


def _bad_offset(body: str, allowed: str) -> int:
    for i, c in enumerate(body):
        if c not in allowed:
            return i + 1
    return len(body) + 1


def _check_pan(pan: str, track: int, check_luhn: bool) -> None:
    if len(pan) < 13:
        raise CardReadError(f"PAN too short ({len(pan)} digits)", track=track, offset=1)
    if check_luhn and not luhn_ok(pan):
        raise CardReadError("PAN fails the Luhn check", track=track, offset=1)


def _parse_t1(body: str, check_luhn: bool) -> Track1:
    m = _T1.fullmatch(body)
    if not m:
        if not body.startswith("B"):
            raise CardReadError("format code is not 'B'", track=1, offset=1)
        raise CardReadError("expected B<PAN>^<NAME>^<YYMM><SSS>...", track=1, offset=_t1_bad_offset(body))
    _check_pan(m["pan"], 1, check_luhn)
    _check_expiry(m["exp"], 1, m.start("exp") + 1)
    return Track1(m["pan"], m["name"].strip(), m["exp"], m["sc"], m["disc"], body)


def _t1_bad_offset(body: str) -> int:
    i = 1
    while i < len(body) and body[i].isdigit():
        i += 1
    return i + 1


def _parse_t2(body: str, check_luhn: bool) -> Track2:
    m = _T2.fullmatch(body)
    if not m:
        raise CardReadError("expected <PAN>=<YYMM><SSS><digits>", track=2, offset=_bad_offset(body, "0123456789=")
                            if any(c not in "0123456789=" for c in body) else 1)
    _check_pan(m["pan"], 2, check_luhn)
    _check_expiry(m["exp"], 2, m.start("exp") + 1)
    return Track2(m["pan"], m["exp"], m["sc"], m["disc"], body)


def _check_expiry(exp: str, track: int, offset: int) -> None:
    if not 1 <= int(exp[2:]) <= 12:
        raise CardReadError(f"expiry month {exp[2:]} out of range", track=track, offset=offset)


# --------------------------------------------------------------------------- key codes

# linux/input-event-codes.h, US layout: code -> (plain, shifted)
_KEYMAP: dict[int, tuple[str, str]] = {
    2: ("1", "!"), 3: ("2", "@"), 4: ("3", "#"), 5: ("4", "$"), 6: ("5", "%"), 7: ("6", "^"), 8: ("7", "&"),
    9: ("8", "*"), 10: ("9", "("), 11: ("0", ")"), 12: ("-", "_"), 13: ("=", "+"), 57: (" ", " "),
    39: (";", ":"), 40: ("'", '"'), 51: (",", "<"), 52: (".", ">"), 53: ("/", "?"), 26: ("[", "{"),
    27: ("]", "}"), 43: ("\\", "|"), 41: ("`", "~"), 28: ("\n", "\n"), 96: ("\n", "\n"),
}
for _code, _ch in zip(
    [30, 48, 46, 32, 18, 33, 34, 35, 23, 36, 37, 38, 50, 49, 24, 25, 16, 19, 31, 20, 22, 47, 17, 45, 21, 44],
    "abcdefghijklmnopqrstuvwxyz",
    strict=True,
):
    _KEYMAP[_code] = (_ch, _ch.upper())
KEY_LEFTSHIFT, KEY_RIGHTSHIFT, KEY_ENTER = 42, 54, 28
_CODE_OF = {v[0]: (k, False) for k, v in _KEYMAP.items()} | {
    v[1]: (k, True) for k, v in _KEYMAP.items() if v[1] != v[0]}


class KeycodeDecoder:
    """Feed ``(code, value)`` key events (value 1 = down, 0 = up, 2 = repeat); get text lines."""

    def __init__(self) -> None:
        self._shift = False
        self._buf: list[str] = []

    def feed(self, code: int, value: int) -> str | None:
        """Returns a complete line (without the newline) when Enter is pressed, else ``None``."""
        if code in (KEY_LEFTSHIFT, KEY_RIGHTSHIFT):
            self._shift = value != 0
            return None
        if value != 1:
            return None
        chars = _KEYMAP.get(code)
        if chars is None:
            return None
        ch = chars[1] if self._shift else chars[0]
        if ch == "\n":
            line, self._buf = "".join(self._buf), []
            return line
        self._buf.append(ch)
        return None


def text_to_keycodes(text: str) -> list[tuple[int, int]]:
    """The key events a US-layout wedge reader would produce for ``text`` (test helper and simulator)."""
    events: list[tuple[int, int]] = []
    for ch in text:
        code, shifted = _CODE_OF["\n" if ch == "\r" else ch]
        if shifted:
            events.append((KEY_LEFTSHIFT, 1))
        events += [(code, 1), (code, 0)]
        if shifted:
            events.append((KEY_LEFTSHIFT, 0))
    return events


# --------------------------------------------------------------------------- readers


class FeedMagstripeReader:
    """Software reader: swipes are pushed as text (``feed``) or key events (``feed_keys``)."""

    def __init__(self, *, lrc: bool | None = None, check_luhn: bool = True) -> None:
        self._lines: asyncio.Queue[str] = asyncio.Queue()
        self._decoder = KeycodeDecoder()
        self.lrc = lrc
        self.check_luhn = check_luhn

    def feed(self, swipe_text: str) -> None:
        self._lines.put_nowait(swipe_text.rstrip("\r\n"))

    def feed_keys(self, events: Iterable[tuple[int, int]]) -> None:
        for code, value in events:
            line = self._decoder.feed(code, value)
            if line is not None:
                self._lines.put_nowait(line)

    async def read_swipe(self) -> SwipeData:
        text = await self._lines.get()
        return _parse_logged(text, self.lrc, self.check_luhn)


class EvdevLines:
    """Enter-terminated lines typed by a keyboard-wedge device (magstripe reader, QR scanner) on
    ``/dev/input/event*``; the device is grabbed so its keystrokes reach only us."""

    def __init__(self, device_path: str, *, what: str = "input device", grab: bool = True,
                 error: type[DeviceError] = DeviceError) -> None:
        try:
            import evdev  # devices extra; needs read access to /dev/input (root or the input group)
        except ImportError as exc:
            raise error(f"{what} {device_path}: the evdev package is not installed") from exc
        try:
            self._dev = evdev.InputDevice(device_path)
        except OSError as exc:
            raise error(f"{what} {device_path}: {exc.strerror}") from exc
        self._ev_key = evdev.ecodes.EV_KEY
        if grab:
            self._dev.grab()
        self._decoder = KeycodeDecoder()
        self._events = self._dev.async_read_loop()
        self.path, self.what, self.error = device_path, what, error

    async def read_line(self) -> str:
        async for event in self._events:
            if event.type != self._ev_key:
                continue
            line = self._decoder.feed(event.code, event.value)
            if line is not None and line.strip():
                return line
        raise self.error(f"{self.what} {self.path} closed")

    def close(self) -> None:
        try:
            self._dev.ungrab()
        except OSError:
            pass
        self._dev.close()


class EvdevMagstripeReader:
    """A keyboard-wedge magstripe reader on ``/dev/input/event*``."""

    def __init__(self, device_path: str, *, lrc: bool | None = None, check_luhn: bool = True,
                 grab: bool = True) -> None:
        self._lines = EvdevLines(device_path, what="magstripe reader", grab=grab, error=CardReadError)
        self.lrc = lrc
        self.check_luhn = check_luhn
        self.path = device_path

    async def read_swipe(self) -> SwipeData:
        return _parse_logged(await self._lines.read_line(), self.lrc, self.check_luhn)

    def close(self) -> None:
        self._lines.close()


def _parse_logged(text: str, lrc: bool | None, check_luhn: bool) -> SwipeData:
    try:
        swipe = parse_swipe(text, lrc=lrc, check_luhn=check_luhn)
    except CardReadError as exc:
        log.warning("swipe rejected", extra=kv(reason=str(exc), track_no=exc.track, offset=exc.offset))
        raise
    log.info("swipe read", extra=kv(pan=swipe.pan, failed_tracks=list(swipe.failed_tracks)))
    return swipe
