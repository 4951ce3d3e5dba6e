"""Per-request context shared by the flows, response codes and reply builders.

One :class:`Context` per terminal request (jPOS style): the decoded request, the terminal
record, the MAC input and the reply being built.  Flows are plain async functions
``async def flow(ctx: Context) -> None`` that fill ``ctx.reply``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from switch.flows.wire import pan_of

if TYPE_CHECKING:
    from switch.flows.dispatch import Services


class RC:
    """Field 39 values the switch returns (pos-8583-dialect.md §10)."""

    APPROVED = "00"
    INVALID_MERCHANT = "03"
    PARTIAL = "10"
    DO_NOT_HONOUR = "05"
    INVALID_TXN = "12"
    INVALID_AMOUNT = "13"
    INVALID_CARD = "14"
    NO_SUCH_ISSUER = "15"
    ORIGINAL_NOT_FOUND = "25"
    FORMAT_ERROR = "30"
    INSUFFICIENT_FUNDS = "51"
    EXPIRED = "54"
    WRONG_PIN = "55"
    OVER_LIMIT = "61"
    AMOUNT_MISMATCH = "64"
    ISSUER_UNAVAILABLE = "91"
    ISSUER_LINK_DOWN = "92"
    DUPLICATE = "94"
    SYSTEM_ERROR = "96"
    UNKNOWN_TERMINAL = "97"
    ISSUER_TIMEOUT = "98"
    PIN_FORMAT = "99"
    MAC_ERROR = "A0"


#: header digit 6 values the host sets in replies
PR_NONE = 0
PR_SIGN_ON_AGAIN = 3

#: request fields echoed in every reply when present (§6)
ECHO_FIELDS = ("2", "3", "4", "11", "14", "22", "25", "41", "42", "49", "60")


_clock: list[Any] = [-1, ("000000", "0101")]

#: request MTI -> reply MTI (request + 10), formatted once per MTI
_REPLY_MTI: dict[str, str] = {}


def _local_time() -> tuple[str, str]:
    """(hhmmss, MMDD) of the host's local time, formatted once per second."""
    now = int(time.time())
    if now != _clock[0]:
        t = time.localtime(now)
        _clock[0], _clock[1] = now, (time.strftime("%H%M%S", t), time.strftime("%m%d", t))
    return _clock[1]  # type: ignore[no-any-return]


@dataclass(slots=True)
class Context:
    req: dict[str, str]
    body: bytes
    services: Services
    terminal: Any = None
    reply: dict[str, str] = field(default_factory=dict)
    processing_request: int = PR_NONE
    mac_reply: bool = False
    txn_type: str = "unknown"
    started: float = field(default_factory=time.perf_counter)
    #: (ZPK under LMK, field 52, PAN, pending CA) sent to the HSM together with the MAC check
    pin_prefetch: Any = None
    #: journal writes the reply must wait for (an approval's commit, overlapped with the reply MAC)
    before_reply: list[Any] | None = None

    @property
    def mti(self) -> str:
        return self.req["t"]

    def start_reply(self, rc: str, extra: tuple[str, ...] = ()) -> dict[str, str]:
        """Reply skeleton: MTI + 10, echoed fields, date/time, acquirer ID and field 39."""
        req = self.req
        mti = req["t"]
        reply_mti = _REPLY_MTI.get(mti)
        if reply_mti is None:
            reply_mti = f"{int(mti) + 10:04d}"
            if len(_REPLY_MTI) < 64:
                _REPLY_MTI[mti] = reply_mti
        reply = {"t": reply_mti}
        get = req.get
        for f in ECHO_FIELDS + extra:
            v = get(f)
            if v is not None:
                reply[f] = v
        if "2" not in reply and "35" in req:
            pan = pan_of(req)
            if pan:
                reply["2"] = pan
        reply["12"], reply["13"] = _local_time()
        reply["32"] = self.services.acquirer_id
        reply["39"] = rc
        self.reply = reply
        return reply

    def fail(self, rc: str) -> None:
        self.start_reply(rc)
