"""Durable queue of pending upstream reversals (0420) in the journal database.

Implements the ``ReversalStore`` protocol of :mod:`switch.issuer_link` (``add``, ``pending``, ``ack``,
``count``), so a reversal queued before a crash is still retried after the restart.  It shares the
journal's writer thread (group commit: ``add`` returns after the COMMIT) and reader thread.

A 0420 must carry the PAN (field 2) upstream, and the database must never hold a clear PAN: field 2
is kept encrypted with AES-256-GCM under a key derived from the journal's ``pan_hash_key``
(HMAC-SHA256 with a purpose label, so the lookup-hash key and the encryption key differ), bound to the
row by the associated data, and erased as soon as the issuer acknowledges the reversal.  Track data,
PIN blocks (``switch.h2h.SENSITIVE_FIELDS``) are dropped before storing.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import time
from typing import Any

from Crypto.Cipher import AES

from switch.journal import Journal, JournalError
from switch.journal_sqlite import SqliteJournalStore, SqlOp
from switch.logsafe import mask_pan

#: never stored, whatever the caller passes (track 2/3, track 1, PIN block)
DROPPED_FIELDS = ("35", "36", "45", "52")
_PURPOSE = b"posswitch reversal-queue field-2 encryption v1"


def derive_key(master: bytes) -> bytes:
    return hmac.new(master, _PURPOSE, hashlib.sha256).digest()


class SqliteReversalStore:
    """Pending reversals in table ``reversal_queue`` of the journal database."""

    def __init__(self, journal: Journal) -> None:
        if not isinstance(journal.store, SqliteJournalStore):
            raise JournalError("reversal store: needs the SQLite journal store")
        self._store = journal.store
        self._key = derive_key(journal._key)

    # -- PAN protection ---------------------------------------------------------------------------------
    def _seal(self, pan: str, link: str, created: float) -> bytes:
        nonce = os.urandom(12)
        cipher = AES.new(self._key, AES.MODE_GCM, nonce=nonce)
        cipher.update(f"{link}|{created!r}".encode())
        ct, tag = cipher.encrypt_and_digest(pan.encode("ascii"))
        return nonce + ct + tag

    def _open(self, blob: bytes, link: str, created: float) -> str:
        nonce, ct, tag = blob[:12], blob[12:-16], blob[-16:]
        cipher = AES.new(self._key, AES.MODE_GCM, nonce=nonce)
        cipher.update(f"{link}|{created!r}".encode())
        try:
            return cipher.decrypt_and_verify(ct, tag).decode("ascii")
        except ValueError as exc:
            raise JournalError("reversal store: field 2 does not decrypt (wrong pan_hash_key?)") from exc

    # -- ReversalStore ----------------------------------------------------------------------------------
    async def add(self, link: str, msg: dict[str, str]) -> int:
        """Queue a reversal for ``link``; returns its id once it is committed."""
        body = {k: v for k, v in msg.items() if k not in DROPPED_FIELDS}
        pan = body.pop("2", None)
        created = time.time()
        sealed = self._seal(pan, link, created) if pan else None
        params = (link, json.dumps(body, sort_keys=True), sealed, mask_pan(pan) if pan else "",
                  body.get("37", ""), created)
        sql = ("INSERT INTO reversal_queue(link, message, pan_sealed, pan_masked, rrn, created_at)"
               " VALUES (?,?,?,?,?,?)")
        return await self._store.writer.run(SqlOp(sql, params, SqlOp.LASTROWID))  # type: ignore[no-any-return]

    async def pending(self, link: str) -> list[tuple[int, dict[str, str]]]:
        """Unacknowledged reversals of ``link``, oldest first, with field 2 restored."""
        sql = ("SELECT id, message, pan_sealed, created_at FROM reversal_queue"
               " WHERE link=? AND acked_at IS NULL ORDER BY id")
        rows = await self._store.reader.run(lambda c: c.execute(sql, (link,)).fetchall())
        out: list[tuple[int, dict[str, str]]] = []
        for row in rows:
            msg: dict[str, Any] = json.loads(row["message"])
            if row["pan_sealed"] is not None:
                msg["2"] = self._open(row["pan_sealed"], link, row["created_at"])
            out.append((int(row["id"]), msg))
        return out

    async def ack(self, item_id: int, response_code: str) -> None:
        """The issuer answered: keep the row for audit, erase the sealed PAN."""
        sql = ("UPDATE reversal_queue SET acked_at=?, response_code=?, pan_sealed=NULL"
               " WHERE id=? AND acked_at IS NULL")
        params = (time.time(), response_code, item_id)
        await self._store.writer.run(SqlOp(sql, params))

    async def count(self, link: str) -> int:
        sql = "SELECT COUNT(*) FROM reversal_queue WHERE link=? AND acked_at IS NULL"
        return await self._store.reader.run(lambda c: int(c.execute(sql, (link,)).fetchone()[0]))

    async def oldest(self, link: str) -> float | None:
        """When the oldest unacknowledged item of ``link`` was queued (Unix time), None if none."""
        sql = "SELECT MIN(created_at) FROM reversal_queue WHERE link=? AND acked_at IS NULL"
        return await self._store.reader.run(lambda c: c.execute(sql, (link,)).fetchone()[0])

    async def total_pending(self) -> int:
        """All links together (for the pending-reversals gauge)."""
        sql = "SELECT COUNT(*) FROM reversal_queue WHERE acked_at IS NULL"
        return await self._store.reader.run(lambda c: int(c.execute(sql).fetchone()[0]))
