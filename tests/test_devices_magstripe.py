"""Magstripe: wedge text and key-code parsing, LRC, failed tracks, clear errors."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from terminal_bridge.devices import CardReadError
from terminal_bridge.magstripe import (
    FeedMagstripeReader,
    KeycodeDecoder,
    luhn_ok,
    parse_swipe,
    text_to_keycodes,
    track_lrc,
)

PAN = "6212345678901232"
T1 = f"%B{PAN}^ZHANG/SAN^28121011234567?"
T2 = f";{PAN}=28121011234567?"
T3 = ";996212345678901232=1561560000000000000003000000000000=000000000000000000?".replace(";", "+", 1)


def test_three_tracks() -> None:
    s = parse_swipe(T1 + T2 + T3 + "\r")
    assert s.pan == PAN
    assert s.track1 is not None and s.track1.name == "ZHANG/SAN" and s.track1.expiry == "2812"
    assert s.track2 is not None and s.track2.raw == f"{PAN}=28121011234567"
    assert s.track2.service_code == "101" and not s.track2.chip_card
    assert s.track3 == T3[1:-1]
    assert s.failed_tracks == ()


def test_track2_only_and_failed_tracks() -> None:
    s = parse_swipe("%E?" + f";{PAN}=30122201?" + "+E?\r\n")
    assert s.track1 is None and s.track3 is None
    assert s.failed_tracks == (1, 3)
    assert s.track2 is not None and s.track2.chip_card  # service code 2xx: chip card, swipe = fallback


def test_all_failed_is_an_error() -> None:
    with pytest.raises(CardReadError, match="no usable track 1 or 2"):
        parse_swipe("%E?;E?+E?")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (f";{PAN}28121011234567?", r"expected <PAN>=<YYMM><SSS><digits>: track 2"),
        (f";{PAN}=2812101A234567?", r"track 2: offset 25"),
        (T1 + f";{PAN}=2812101A234567?", rf"track 2: offset {len(T1) + 25}"),
        (f";{PAN}=28121011234567?+99=A?", r"track 3 is not digits and '=': track 3: offset 37"),
        (f";{PAN}=28131011234567?", r"expiry month 13 out of range: track 2"),
        (f";{PAN}=2812101", r"no end sentinel '\?': track 2: offset 0"),
        (f"%A{PAN}^X^2812101?", r"format code is not 'B': track 1"),
        (f"%B{PAN}^ZHANG/SAN2812101?", r"track 1"),
        ("X;1?", r"unexpected character 'X'.*offset 0"),
        (";6212345678901234=28121011234567?", r"Luhn check: track 2"),
        (";123456789012=2812101?", r"PAN too short \(12 digits\): track 2"),
        (T2 + T2, r"track sent twice: track 2"),
        ("", "empty swipe"),
        (f"%B{PAN}^ZHANG/SAN^28121011234567?;6212345678901240=28121011234567?", "PANs differ"),
    ],
)
def test_bad_format_names_track_and_offset(text: str, message: str) -> None:
    with pytest.raises(CardReadError, match=message):
        parse_swipe(text)


def test_luhn_optional() -> None:
    assert parse_swipe(";6212345678901234=28121011234567?", check_luhn=False).pan == "6212345678901234"
    assert luhn_ok("4012345678909") and luhn_ok(PAN) and not luhn_ok("6212345678901234")


def test_lrc_known_values() -> None:
    # track 2: ';'=0xB, '1'=0x1, '?'=0xF -> 0x5 -> '5';  track 1: '%'=0x05 'A'=0x21 '?'=0x1F -> 0x3B -> '['
    assert track_lrc(2, ";1?") == "5"
    assert track_lrc(1, "%A?") == "["
    assert track_lrc(3, "+1?") == track_lrc(2, ";1?")


def test_good_lrc_accepted_bad_lrc_rejected() -> None:
    good = T2 + track_lrc(2, T2)
    assert parse_swipe(good, lrc=True).pan == PAN
    assert parse_swipe(T1 + track_lrc(1, T1) + good).pan == PAN  # auto-detected
    bad_char = "0" if track_lrc(2, T2) != "0" else "1"
    with pytest.raises(CardReadError, match=r"bad LRC '.' \(computed '.'\): track 2: offset 33"):
        parse_swipe(T2 + bad_char, lrc=True)
    with pytest.raises(CardReadError, match="LRC character missing"):
        parse_swipe(T2, lrc=True)


@given(pan_body=st.text("0123456789", min_size=12, max_size=18), exp_m=st.integers(1, 12),
       disc=st.text("0123456789", max_size=8), corrupt=st.integers(0, 15))
def test_lrc_property(pan_body: str, exp_m: int, disc: str, corrupt: int) -> None:
    pan = next(pan_body + d for d in "0123456789" if luhn_ok(pan_body + d))
    t2 = f";{pan}=28{exp_m:02d}101{disc}?"
    lrc = track_lrc(2, t2)
    s = parse_swipe(t2 + lrc, lrc=True)
    assert s.pan == pan and s.track2 is not None and s.track2.expiry == f"28{exp_m:02d}"
    other = chr(0x30 + ((ord(lrc) - 0x30 + 1 + corrupt % 15) % 16))
    with pytest.raises(CardReadError, match="bad LRC"):
        parse_swipe(t2 + other, lrc=True)


def test_keycode_decoder_roundtrip() -> None:
    text = T1 + T2 + "\r"
    events = text_to_keycodes(text)
    assert (42, 1) in events  # shift for % ^ ?
    dec = KeycodeDecoder()
    lines = [line for code, value in events if (line := dec.feed(code, value)) is not None]
    assert lines == [T1 + T2]


async def test_feed_reader_keys_and_text() -> None:
    r = FeedMagstripeReader()
    r.feed_keys(text_to_keycodes(T2 + "\r"))
    r.feed(T1 + "\r\n")
    assert (await r.read_swipe()).pan == PAN
    assert (await r.read_swipe()).track1 is not None


def test_no_track_data_in_repr() -> None:
    s = parse_swipe(T1 + T2)
    for obj in (s, s.track1, s.track2):
        assert PAN not in repr(obj) and "ZHANG" not in repr(obj)


@given(st.text(alphabet="%;+?^=EB0123456789 /ABZ\r\n", max_size=120) | st.text(max_size=60))
def test_property_any_text_parses_or_raises_card_read_error(text: str) -> None:
    try:
        s = parse_swipe(text, check_luhn=False)
    except CardReadError as exc:
        assert str(exc)
    else:
        assert s.pan.isdigit() and 13 <= len(s.pan) <= 19


def test_keymap_matches_linux_key_codes() -> None:
    """Our US-layout table against evdev's own ecodes (the kernel's input-event-codes.h)."""
    ecodes = pytest.importorskip("evdev.ecodes", reason="evdev (devices extra) not installed")
    from terminal_bridge import magstripe

    names = {"-": "MINUS", "=": "EQUAL", ";": "SEMICOLON", "'": "APOSTROPHE", ",": "COMMA", ".": "DOT",
             "/": "SLASH", "[": "LEFTBRACE", "]": "RIGHTBRACE", "\\": "BACKSLASH", "`": "GRAVE", " ": "SPACE"}
    for code, (plain, _) in magstripe._KEYMAP.items():
        if plain == "\n":
            assert code in (ecodes.KEY_ENTER, ecodes.KEY_KPENTER)
            continue
        name = names.get(plain, plain.upper())
        assert getattr(ecodes, f"KEY_{name}") == code, plain
    assert magstripe.KEY_LEFTSHIFT == ecodes.KEY_LEFTSHIFT and magstripe.KEY_RIGHTSHIFT == ecodes.KEY_RIGHTSHIFT


def test_evdev_reader_missing_device(tmp_path) -> None:
    pytest.importorskip("evdev", reason="evdev (devices extra) not installed")
    from terminal_bridge.magstripe import EvdevMagstripeReader

    with pytest.raises(CardReadError, match=r"magstripe reader .*event9: No such file or directory"):
        EvdevMagstripeReader(str(tmp_path / "event9"))
