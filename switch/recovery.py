"""Crash recovery at start-up: settle every journal row a killed switch left without an outcome.

A row is journaled in state ``sent`` (or ``received``) *before* its request goes upstream, and is
moved to approved / declined / reversed when the answer comes back.  After ``kill -9`` the rows
still in :data:`switch.journal.IN_FLIGHT_STATES` are the transactions that were in flight: the
request may or may not have reached the issuer, the issuer may have approved it, and the terminal
never received an answer (its connection died with the process).  Nothing may stand for those, so
:func:`recover` queues an upstream reversal (0420, retried as 0421 until acknowledged) for each
through the issuer link's *durable* reversal store and then marks the row ``reversed`` with 39 =
``98``.  The issuer answers 00 when it undoes a posting and 25 when the original never arrived
or was declined; both end the reversal.  The order (queue first, then the state change) makes it
idempotent: a crash between the two leaves the row in flight, a second recovery queues another
0420 for it and the issuer's "already reversed" answer keeps the ledger right.

A reversal can overtake its original: the original left just before the crash and the issuer is
still authorising it when the restarted switch's 0420 arrives on a new connection; the issuer
answers 25 (not found) and posts the original afterwards.  So, ``second_pass`` seconds later,
:func:`recover` queues one more 0420 for every row it reversed (in a background task): an issuer
that already reversed the original answers 00 without posting anything, one that posted the late
original undoes it now.  Extra 0420s for one (41, 37) are harmless by design.

Call it once, after the issuer links are started and before the terminal listener accepts
connections (a row created by the running switch is in flight legitimately)::

    report = await recover(journal, {link.name: link for link in links}, acquirer_id=cfg.acquirer_id)
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from switch.flows.upstream import original_h2h
from switch.journal import IN_FLIGHT_STATES, REVERSED, Journal
from switch.logsafe import kv

log = logging.getLogger("switch.recovery")

#: 39 given to rows recovered after a crash (the terminal saw no answer: "issuer timeout")
RECOVERED_RC = "98"
#: seconds after recovery when a second 0420 goes out for every recovered row (see module doc)
SECOND_PASS_DELAY = 5.0

_background: set[asyncio.Task[None]] = set()  # keeps second-pass tasks referenced until they finish


@dataclass
class RecoveryReport:
    """What :func:`recover` did.  ``left`` rows stay in flight (no link for their issuer, no RRN)."""

    found: int = 0
    reversed: list[int] = field(default_factory=list)  # journal ids reversed upstream and marked
    left: list[int] = field(default_factory=list)  # journal ids that could not be recovered
    by_issuer: dict[str, int] = field(default_factory=dict)
    second_pass: asyncio.Task[None] | None = None  # the delayed re-reversal, when one was scheduled

    @property
    def clean(self) -> bool:
        return not self.left


def _links_by_name(links: Mapping[str, Any] | Iterable[Any]) -> dict[str, Any]:
    if isinstance(links, Mapping):
        return dict(links)
    return {link.name: link for link in links}


async def recover(journal: Journal, links: Mapping[str, Any] | Iterable[Any], *,
                  acquirer_id: str = "00000000", reason: str = RECOVERED_RC,
                  second_pass: float | None = SECOND_PASS_DELAY) -> RecoveryReport:
    """Reverse upstream and mark every journal row still ``received``/``sent``; returns a report.

    ``links`` maps issuer name (the journal's ``issuer`` column) to its :class:`~switch.issuer_link.IssuerLink`
    (or is an iterable of links, keyed by ``link.name``).  The links need not be up: the 0420s
    wait in the durable store until they are.  ``second_pass`` (seconds, None = off) schedules one
    more 0420 per reversed row, for originals the issuer was still processing (see module doc).
    """
    by_name = _links_by_name(links)
    report = RecoveryReport()
    again: list[tuple[Any, dict[str, str]]] = []
    rows = await journal.in_flight()
    report.found = len(rows)
    for row in rows:
        assert row.id is not None and row.state in IN_FLIGHT_STATES
        link = by_name.get(row.issuer)
        if link is None or not row.rrn:
            # no way to reach the issuer (route removed from the config) or never numbered: leave
            # it visible (posswitch reconcile reports it as "in flight in journal")
            log.error("recovery: in-flight row cannot be reversed",
                      extra=kv(id=row.id, tid=row.terminal_id, stan=row.stan, rrn=row.rrn, issuer=row.issuer,
                               why="no link for issuer" if link is None else "no rrn"))
            report.left.append(row.id)
            continue
        original = original_h2h(row, acquirer_id)
        await link.reverse(dict(original), reason=reason)
        again.append((link, original))
        await journal.update_state(row.id, REVERSED, response_code=reason)
        report.reversed.append(row.id)
        report.by_issuer[row.issuer] = report.by_issuer.get(row.issuer, 0) + 1
        log.info("recovery: in-flight row reversed",
                 extra=kv(id=row.id, tid=row.terminal_id, stan=row.stan, rrn=row.rrn, issuer=row.issuer,
                          txn_type=row.txn_type, amount=row.amount, was=row.state))
    log.info("recovery done", extra=kv(found=report.found, reversed=len(report.reversed), left=len(report.left),
                                        by_issuer=report.by_issuer))
    if again and second_pass is not None:
        task = asyncio.get_running_loop().create_task(_reverse_again(again, second_pass, reason))
        _background.add(task)
        task.add_done_callback(_background.discard)
        report.second_pass = task
    return report


async def _reverse_again(items: list[tuple[Any, dict[str, str]]], delay: float, reason: str) -> None:
    await asyncio.sleep(delay)
    queued = 0
    for link, original in items:
        try:
            await link.reverse(dict(original), reason=reason)
            queued += 1
        except Exception as exc:  # shutting down (journal or link closed): the first 0420 stands
            log.warning("recovery: second reversal not queued", extra=kv(rrn=original.get("37"), error=repr(exc)))
    log.info("recovery second pass", extra=kv(queued=queued, of=len(items)))
