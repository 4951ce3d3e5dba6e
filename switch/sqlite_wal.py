"""WAL checkpoints on a thread of their own, so the connection that writes rarely pays for one.

SQLite's automatic checkpoint runs inside the COMMIT that pushes the WAL past 1000 pages: that commit
copies every page back into the database file and fsyncs it, which takes milliseconds, and every write
queued behind it waits (it was the largest source of p99 latency in the load bench, both in the
switch's journal and in the issuer simulator's ledger).  :class:`WalCheckpointer` turns the automatic
checkpoint off on the writing connection and runs ``PRAGMA wal_checkpoint(PASSIVE)`` from a connection
of its own every ``interval`` seconds instead (20 ms: small checkpoints keep the tail lowest; a round
with nothing new written costs one ``stat``, and an idle database's rounds space out to 0.5 s).  A
passive checkpoint never blocks the writer: it copies what is committed so far while writes go on
(``sqlite3`` releases the GIL while it works).

The WAL starts again from its beginning at the first write after a checkpoint that caught up with
every frame.  A writer that never pauses leaves the background thread no such moment, so the writer
calls :meth:`WalCheckpointer.after_commit` after each COMMIT: once the WAL has grown past
``wal_limit`` bytes, the writer runs one passive checkpoint itself, between two transactions.  The
background thread has already copied nearly everything, so that costs the writer a few pages and one
fsync, and the WAL then starts over (``journal_size_limit`` truncates it back to ``wal_limit``).
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
import weakref

from switch.logsafe import kv
from switch.threadnames import name_os_thread

log = logging.getLogger("switch.sqlite_wal")


class WalCheckpointer:
    """Passive WAL checkpoints of the database at ``path`` every ``interval`` seconds, on a thread."""

    #: how many COMMITs pass between two looks at the WAL's size in :meth:`after_commit`
    CHECK_EVERY = 32
    #: the longest pause between two rounds of an idle database (the first write after it waits at most
    #: this long for its checkpoint; the writer's own :meth:`after_commit` bounds the WAL meanwhile)
    IDLE_PAUSE = 0.5

    def __init__(self, path: str, *, interval: float = 0.02, wal_limit: int = 4 << 20,
                 name: str = "wal-checkpoint", owner: object = None) -> None:
        self.path = path
        #: the object whose database this is: the thread ends by itself once it is garbage (never closed)
        self._owner = weakref.ref(owner) if owner is not None else None
        self.interval = interval
        self.wal_limit = wal_limit
        self.checkpoints = 0  # by the background thread
        self.rounds = 0  # the background thread's wake-ups
        self.writer_checkpoints = 0  # by the writer, in after_commit
        self._wal = path + "-wal"
        self._commits = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def writer_pragmas(self) -> tuple[str, ...]:
        """Settings of every writing connection: no automatic checkpoint, the WAL truncated on restart."""
        return ("wal_autocheckpoint=0", f"journal_size_limit={int(self.wal_limit)}")

    def prepare_writer(self, conn: sqlite3.Connection) -> None:
        """Apply :meth:`writer_pragmas` to a writing ``sqlite3`` connection."""
        for pragma in self.writer_pragmas():
            conn.execute(f"PRAGMA {pragma}")

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Stop the thread after one last passive checkpoint."""
        if not self._thread.is_alive():
            return
        self._stop.set()
        self._thread.join()

    def after_commit(self, conn: sqlite3.Connection) -> None:
        """Call on the writing connection after a COMMIT: lets the WAL start over under endless writes."""
        self._commits += 1
        if self._commits % self.CHECK_EVERY:
            return
        try:
            if os.path.getsize(self._wal) <= self.wal_limit:
                return
            conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
            self.writer_checkpoints += 1
        except (OSError, sqlite3.Error) as exc:
            log.warning("WAL checkpoint failed", extra=kv(db=os.path.basename(self.path), error=str(exc)))

    def _run(self) -> None:
        name_os_thread()
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=5.0)
        seen: tuple[int, int] | None = None  # the WAL's (size, mtime) at the last checkpoint
        pause = self.interval
        try:
            while True:
                stopping = self._stop.wait(pause)
                self.rounds += 1
                if self._owner is not None and self._owner() is None:
                    return  # its writer is gone without stop(): nothing more will be written
                try:
                    st = os.stat(self._wal)
                    if (st.st_size, st.st_mtime_ns) == seen and not stopping:
                        # nothing written since: an idle database costs one stat per round, and the rounds
                        # space out (up to IDLE_PAUSE s) until something is written again
                        pause = min(pause * 2, max(self.IDLE_PAUSE, self.interval))
                        continue
                    pause = self.interval
                    conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
                    seen = (st.st_size, st.st_mtime_ns)
                    self.checkpoints += 1
                except FileNotFoundError:
                    pass
                except sqlite3.Error as exc:  # e.g. busy: the next round tries again
                    log.warning("WAL checkpoint failed", extra=kv(db=os.path.basename(self.path), error=str(exc)))
                if stopping:
                    return
        finally:
            conn.close()
