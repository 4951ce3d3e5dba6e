"""The HSM client's per-command fast paths give what the general forms give.

``PendingReply`` checks the reply code and observes its own latency (``Security`` no longer wraps
each command in a ``TimedReply``); these tests hold it to the general ``_split_reply`` path and to the
wrapper it replaced, against the real simulator and against raw replies.
"""

from __future__ import annotations

import asyncio
import os
import string

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hsm_sim.lmk import encrypt_under_lmk
from hsm_sim.server import start_hsm
from switch import hsm_client
from switch.flows.security import Security, TimedReply
from switch.hsm_client import (
    MAC_ALGORITHMS,
    HsmClient,
    HsmError,
    PendingReply,
    _is_ok,
    _key_type_code,
    _mac_ascii,
    _split_reply,
)
from switch.metrics import SwitchMetrics


def _split_reply_general(command: str, reply: bytes) -> tuple[str, bytes]:
    """The reply check as it was written before the reply-code cache."""
    if reply[:1] != command[:1].encode("latin-1") or reply[1:2] != chr(ord(command[1]) + 1).encode("latin-1"):
        raise HsmError("PR", command, f"unexpected reply code {reply[:2].decode('latin-1')!r}")
    return reply[2:4].decode("latin-1"), reply[4:]


def _outcome(fn, *args):
    try:
        return ("ok", fn(*args))
    except HsmError as exc:
        return ("error", exc.code, exc.command, str(exc))


_COMMANDS = st.text(alphabet=string.ascii_uppercase + string.digits, min_size=2, max_size=2)


@given(_COMMANDS, st.binary(max_size=12), st.sampled_from([b"", b"M9", b"CB", b"M7", b"B3", b"A1"]))
def test_split_reply_equals_the_general_check(command: str, tail: bytes, prefix: bytes) -> None:
    reply = prefix + tail
    assert _outcome(_split_reply, command, reply) == _outcome(_split_reply_general, command, reply)


def _resolved(reply: bytes) -> asyncio.Future[bytes]:
    fut = asyncio.get_running_loop().create_future()
    fut.set_result(reply)
    return fut


async def _await_outcome(awaitable):
    try:
        return ("ok", await awaitable)
    except HsmError as exc:
        return ("error", exc.code, exc.command, str(exc))


@pytest.mark.parametrize("reply", [b"M900", b"M901", b"M910", b"M8", b"M", b"", b"N900", b"M9000000"])
async def test_pending_reply_equals_split_reply_then_ok_check(reply: bytes) -> None:
    ok = ("00", "01")

    def general():
        err, fields = _split_reply_general("M8", reply)
        if err not in ok:
            raise HsmError(err, "M8")
        return _is_ok(err, fields)

    expected = _outcome(general)
    assert await _await_outcome(PendingReply(_resolved(reply), "M8", ok, _is_ok)) == expected
    observer = _Counter()
    timed = PendingReply(_resolved(reply), "M8", ok, _is_ok).observe_with(observer, 0.0)
    assert await _await_outcome(timed) == expected
    assert observer.seen == 1  # observed whether it succeeded or not


class _Counter:
    def __init__(self) -> None:
        self.seen = 0

    def observe(self, amount: float) -> None:
        assert amount > 0
        self.seen += 1


class _Term:
    mak_under_lmk = encrypt_under_lmk(os.urandom(8), "TAK")
    pik_under_lmk = encrypt_under_lmk(os.urandom(16), "TPK")
    mac_algorithm = "pos-ecb"


async def test_security_observes_through_the_reply_as_the_wrapper_did() -> None:
    """Same results and the same latency observations with and without the TimedReply wrapper."""
    server, port = await start_hsm("127.0.0.1", 0)
    zpk = encrypt_under_lmk(os.urandom(16), "ZPK")
    try:
        async with await HsmClient.connect("127.0.0.1", port) as c:
            fast, wrapped = SwitchMetrics(), SwitchMetrics()
            sec_fast, sec_wrapped = Security(c, fast), Security(c, wrapped)
            # the wrapper as Security used it for every command
            sec_wrapped._timed = lambda command, pending: TimedReply(  # type: ignore[method-assign]
                pending, command, 0.0, sec_wrapped)
            data = os.urandom(64)
            outs = []
            for sec in (sec_fast, sec_wrapped):
                mac = await sec.generate_mac_submit(_Term, data)
                good = await sec.verify_mac_submit(_Term, data, bytes(mac))
                bad = await sec.verify_mac_submit(_Term, data + b"x", bytes(mac))
                block = await _await_outcome(sec.translate_pin_submit(_Term, zpk, b"\x12" * 8, "6212345678901234567"))
                err = await _await_outcome(sec.translate_pin_submit(_Term, "U" + "0" * 32, b"\x12" * 8, None))
                sec.verify_mac_submit(_Term, data, bytes(mac)).discard()  # never awaited: not observed
                outs.append((bytes(mac), good, bad, err, block))
            assert outs[0] == outs[1]
            assert outs[0][1] is True and outs[0][2] is False and outs[0][3][0] == "error"

            def counts(m):
                return {k[0]: sum(ch.counts) for k, ch in m.hsm_latency._children.items()}

            assert counts(fast) == counts(wrapped) == {"generate_mac": 1, "verify_mac": 2, "translate_pin": 2}
    finally:
        await server.close()


async def test_security_without_metrics_returns_the_client_reply() -> None:
    fut = _resolved(b"M700ABCDEFGH")

    class Hsm:
        def generate_mac_submit(self, tak, data, algorithm):
            return PendingReply(fut, "M6", ("00",), _mac_ascii)

    pending = Security(Hsm()).generate_mac_submit(_Term, b"x")
    assert type(pending) is PendingReply
    assert await pending == b"ABCDEFGH"


def _mac_body_general(mode: str, tak: str, data: bytes, algorithm: str, padding: str | None, key_type: str) -> bytes:
    """M6/M8 fields as they were built per command before the prefix cache."""
    try:
        alg, default_pad = MAC_ALGORITHMS[algorithm.lower()]
    except KeyError:
        raise ValueError(f"unknown MAC algorithm {algorithm!r}; one of {sorted(MAC_ALGORITHMS)}") from None
    pad = default_pad if padding is None else padding
    return f"{mode}0{alg}{pad}{_key_type_code(key_type)}{tak}{len(data):04X}".encode() + data


def _body_outcome(fn, *args):
    try:
        return ("ok", fn(*args))
    except ValueError as exc:
        return ("error", str(exc))


@given(
    st.sampled_from(["0", "1", "2", "3"]),
    st.sampled_from(["0123456789ABCDEF", "U" + "AB" * 16, "T" + "CD" * 24]),
    st.binary(max_size=600),
    st.sampled_from([*MAC_ALGORITHMS, "POS-ECB", "X9.19", "nope"]),
    st.sampled_from([None, "0", "1", "2"]),
    st.sampled_from(["TAK", "MAK", "ZAK", "tak", "003", "BAD-TYPE"]),
)
def test_mac_body_equals_the_general_form(mode, tak, data, algorithm, padding, key_type) -> None:
    client = HsmClient("127.0.0.1", 1)
    expected = _body_outcome(_mac_body_general, mode, tak, data, algorithm, padding, key_type)
    assert _body_outcome(client._mac_body, mode, tak, data, algorithm, padding, key_type) == expected
    assert _body_outcome(client._mac_body, mode, tak, data, algorithm, padding, key_type) == expected  # cached


def test_mac_prefix_cache_stays_bounded(monkeypatch) -> None:
    monkeypatch.setattr(hsm_client, "_MAC_PREFIXES_MAX", 8)
    hsm_client._MAC_PREFIXES.clear()
    client = HsmClient("127.0.0.1", 1)
    for i in range(50):
        tak = f"{i:016X}"
        assert client._mac_body("0", tak, b"abc", "pos-ecb", None, "TAK") == _mac_body_general(
            "0", tak, b"abc", "pos-ecb", None, "TAK")
        assert len(hsm_client._MAC_PREFIXES) <= 8
