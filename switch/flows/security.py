"""The switch's view of the HSM: MAC check/generation, PIN translation, working keys.

A thin adapter over ``switch.hsm_client.HsmClient`` so the flows name operations by what they
mean for a terminal (its MAK, its PIK, its TMK) and the HSM command details stay in one place.
The switch never holds a clear key: every key here is under the LMK.
"""

from __future__ import annotations

import time
from typing import Any

from _fastcore.fields import tdk_block, tdk_replace
from switch.hsm_client import PendingReply


class Security:
    def __init__(self, hsm: Any, metrics: Any = None) -> None:
        self.hsm = hsm
        self.metrics = metrics
        self._children: dict[str, Any] = {}

    def _observe(self, command: str, t0: float) -> None:
        m = self.metrics
        if m is not None:
            child = self._children.get(command)
            if child is None:  # label lookups are not free: one per command, cached
                child = self._children[command] = m.hsm_latency.labels(command)
            child.observe(time.perf_counter() - t0)

    def _timed(self, command: str, pending: Any) -> Any:
        m = self.metrics
        if m is None:  # nothing to observe: the client's own awaitable as it is
            return pending
        if type(pending) is PendingReply:  # the client's reply observes itself: no wrapper per command
            child = self._children.get(command)
            if child is None:
                child = self._children[command] = m.hsm_latency.labels(command)
            return pending.observe_with(child, time.perf_counter())
        return TimedReply(pending, command, time.perf_counter(), self)

    # Each ``*_submit`` sends its command at once and returns an awaitable (with ``discard()``):
    # commands submitted back to back share one write to the HSM and come back in one read.
    def verify_mac_submit(self, term: Any, data: bytes, mac: bytes) -> Any:
        return self._timed("verify_mac", self.hsm.verify_mac_submit(
            term.mak_under_lmk, data, mac, algorithm=term.mac_algorithm))

    def generate_mac_submit(self, term: Any, data: bytes) -> Any:
        return self._timed("generate_mac", self.hsm.generate_mac_submit(
            term.mak_under_lmk, data, algorithm=term.mac_algorithm))

    def translate_pin_submit(self, term: Any, zpk_under_lmk: str, pin_block: bytes, pan: str | None) -> Any:
        return self._timed("translate_pin", self.hsm.translate_pin_tpk_to_zpk_submit(
            term.pik_under_lmk, zpk_under_lmk, pin_block, pan or "0" * 13))

    async def decrypt_track(self, term: Any, value: str) -> str:
        """Undo the terminal's TDK encryption of a track field (60.3 004, 53.3 = 1; dialect §9.3)."""
        padded, start, block = tdk_block(value)
        t0 = time.perf_counter()
        try:
            clear = await self.hsm.decrypt_data(term.tdk_under_lmk, block, mode="ecb", key_type="TDK")
        finally:
            self._observe("decrypt_data", t0)
        return tdk_replace(padded, start, bytes(clear)).lstrip("F")

    async def working_keys(self, term: Any, mode: str) -> Any:
        t0 = time.perf_counter()
        try:
            return await self.hsm.generate_working_keys_for_terminal(term.tmk_under_lmk, mode=mode)
        finally:
            self._observe("working_keys", t0)


class TimedReply:
    """An HSM command in flight whose latency is observed when it is awaited (for an HSM object
    whose ``*_submit`` does not return a :class:`~switch.hsm_client.PendingReply`)."""

    __slots__ = ("_pending", "_command", "_t0", "_security")

    def __init__(self, pending: Any, command: str, t0: float, security: Security) -> None:
        self._pending = pending
        self._command = command
        self._t0 = t0
        self._security = security

    def __await__(self) -> Any:
        try:
            return (yield from self._pending.__await__())
        finally:
            self._security._observe(self._command, self._t0)

    def discard(self) -> None:
        self._pending.discard()
