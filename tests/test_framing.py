"""_fastcore.framing over both twins: envelope parse/build, TPDU/header helpers, stream splitting."""

from __future__ import annotations

from pathlib import Path
from types import ModuleType

import pytest
from hypothesis import given
from hypothesis import strategies as st

from _fastcore import framing as selector
from _fastcore.errors import FramingError

MAC1 = bytes.fromhex((Path(__file__).parent / "vectors" / "mac1_frame.hex").read_text().strip())


def test_selector_exports_the_twin_api() -> None:
    assert selector.IMPLEMENTATION in ("c", "py")
    for name in selector.__all__:
        assert hasattr(selector, name), name


def test_parse_mac1(framing_impl: ModuleType) -> None:
    tpdu, header, body = framing_impl.parse_frame(MAC1)
    assert tpdu.hex() == "6000030000"
    assert header.hex() == "603210320072"
    assert body[:2] == b"\x02\x00" and len(body) == 116
    assert framing_impl.build_frame(body, tpdu, header) == MAC1
    assert framing_impl.split_payload(MAC1[2:]) == (tpdu, header, body)


def test_host_link_mode_has_no_tpdu_or_header(framing_impl: ModuleType) -> None:
    frame = framing_impl.build_frame(b"0800ABC")
    assert frame == b"\x00\x070800ABC"
    assert framing_impl.parse_frame(frame, 0, 0) == (b"", b"", b"0800ABC")


def test_parse_errors_name_the_offset(framing_impl: ModuleType) -> None:
    with pytest.raises(FramingError, match="does not match") as ei:
        framing_impl.parse_frame(MAC1[:-1])
    assert ei.value.offset == 0
    bad = bytearray(MAC1)
    bad[2] = 0x61
    with pytest.raises(FramingError, match="TPDU id 0x61") as ei:
        framing_impl.parse_frame(bytes(bad))
    assert ei.value.offset == 2
    with pytest.raises(FramingError, match="too short"):
        framing_impl.parse_frame(framing_impl.build_frame(MAC1[2:13]))
    with pytest.raises(FramingError):
        framing_impl.parse_frame(b"\x00")
    with pytest.raises(FramingError):
        framing_impl.build_frame(b"")
    with pytest.raises(FramingError):
        framing_impl.build_frame(b"x" * 65536)


def test_tpdu_swap_and_addresses(framing_impl: ModuleType) -> None:
    # reference §1: request 60 05 25 00 00 -> reply 60 00 00 05 25
    assert framing_impl.swap_tpdu(bytes.fromhex("6005250000")).hex() == "6000000525"
    assert framing_impl.make_tpdu(0x0003).hex() == "6000030000"
    assert framing_impl.tpdu_addresses(bytes.fromhex("6005810718")) == (0x0581, 0x0718)
    with pytest.raises(FramingError):
        framing_impl.swap_tpdu(b"\x60\x00")
    with pytest.raises(FramingError):
        framing_impl.swap_tpdu(bytes.fromhex("7000030000"))


def test_header_helpers(framing_impl: ModuleType) -> None:
    header = bytes.fromhex("603100311001")
    assert framing_impl.header_digits(header) == "603100311001"
    assert framing_impl.get_request_digit(header) == "0"
    resign = framing_impl.set_request_digit(header, "3")
    assert resign.hex() == "603103311001"
    assert framing_impl.get_request_digit(resign) == "3"
    assert framing_impl.set_request_digit(header, 11).hex() == "60310b311001"
    assert framing_impl.make_header("60", "31", "0", "0", "311903").hex() == "603100311903"
    with pytest.raises(ValueError):
        framing_impl.set_request_digit(header, 16)
    with pytest.raises(FramingError):
        framing_impl.get_request_digit(b"\x60\x31")
    with pytest.raises(ValueError):
        framing_impl.make_header("6", "31")


def test_splitter_basic(framing_impl: ModuleType) -> None:
    sp = framing_impl.FrameSplitter()
    assert sp.feed(MAC1[:1]) == []
    assert sp.feed(MAC1[1:50]) == []
    assert sp.buffered == 50
    assert sp.feed(MAC1[50:] + MAC1 + MAC1[:3]) == [MAC1[2:], MAC1[2:]]
    assert sp.buffered == 3 and sp.offset == 2 * len(MAC1)
    assert sp.feed(bytearray(MAC1[3:])) == [MAC1[2:]]
    assert sp.feed(memoryview(MAC1)) == [MAC1[2:]]
    assert sp.feed(b"") == []


def test_splitter_rejects_zero_and_oversize(framing_impl: ModuleType) -> None:
    sp = framing_impl.FrameSplitter(max_frame=200)
    with pytest.raises(FramingError, match="zero frame length") as ei:
        sp.feed(MAC1 + b"\x00\x00" + MAC1)
    assert ei.value.offset == len(MAC1)
    assert ei.value.frames == [MAC1[2:]]
    with pytest.raises(FramingError, match="zero frame length"):  # stays broken
        sp.feed(MAC1)

    sp = framing_impl.FrameSplitter(max_frame=200)
    sp.feed(MAC1[:7])
    with pytest.raises(FramingError, match="exceeds maximum 200") as ei:
        sp.feed(MAC1[7:] + b"\x01\x00")
    assert ei.value.offset == len(MAC1)

    sp = framing_impl.FrameSplitter(min_frame=21)
    with pytest.raises(FramingError, match="below minimum 21") as ei:
        sp.feed(b"\x00\x05hello")
    assert ei.value.offset == 0
    with pytest.raises(ValueError):
        framing_impl.FrameSplitter(max_frame=70000)


payloads = st.lists(st.binary(min_size=1, max_size=300), min_size=0, max_size=12)


@given(payloads=payloads, cuts=st.lists(st.integers(min_value=0, max_value=4000), max_size=20),
       as_bytearray=st.booleans())
def test_any_chunking_yields_the_same_frames(framing_impl: ModuleType, payloads: list[bytes],
                                             cuts: list[int], as_bytearray: bool) -> None:
    stream = b"".join(len(p).to_bytes(2, "big") + p for p in payloads)
    points = sorted({c % (len(stream) + 1) for c in cuts} | {0, len(stream)})
    sp = framing_impl.FrameSplitter(max_frame=300)
    got: list[bytes] = []
    for a, b in zip(points, points[1:], strict=False):
        chunk = stream[a:b]
        got.extend(sp.feed(bytearray(chunk) if as_bytearray else chunk))
    assert got == payloads
    assert sp.buffered == 0 and sp.offset == len(stream)


@given(stream=st.binary(max_size=600), cut=st.integers(min_value=0, max_value=600))
def test_garbage_only_raises_framing_error(framing_impl: ModuleType, stream: bytes, cut: int) -> None:
    sp = framing_impl.FrameSplitter(max_frame=100, min_frame=3)
    try:
        sp.feed(stream[:cut])
        sp.feed(stream[cut:])
    except FramingError as exc:
        assert exc.offset is not None and 0 <= exc.offset <= len(stream) - 2
        assert isinstance(exc.frames, list)


def test_twins_agree_on_the_same_stream(framing_impl: ModuleType) -> None:
    from _fastcore import _framing_py as pure

    stream = (MAC1 * 3)[:-10]
    assert framing_impl.FrameSplitter().feed(stream) == pure.FrameSplitter().feed(stream)


@given(stream=st.binary(max_size=400), cuts=st.lists(st.integers(0, 400), max_size=6),
       max_frame=st.integers(1, 300), min_frame=st.integers(1, 30))
def test_twins_agree_on_frames_and_errors(framing_impl: ModuleType, stream: bytes, cuts: list[int],
                                          max_frame: int, min_frame: int) -> None:
    from _fastcore import _framing_py as pure

    min_frame = min(min_frame, max_frame)

    def run(mod: ModuleType) -> tuple[list[bytes], tuple[str, int | None, list[bytes]] | None, int, int]:
        sp = mod.FrameSplitter(max_frame=max_frame, min_frame=min_frame)
        got: list[bytes] = []
        points = sorted({c % (len(stream) + 1) for c in cuts} | {0, len(stream)})
        try:
            for a, b in zip(points, points[1:], strict=False):
                got.extend(sp.feed(stream[a:b]))
        except FramingError as exc:
            return got, (str(exc), exc.offset, exc.frames), sp.offset, sp.buffered
        return got, None, sp.offset, sp.buffered

    assert run(framing_impl) == run(pure)
