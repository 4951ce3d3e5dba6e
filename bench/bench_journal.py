"""Journal group commit: 200 concurrent durable approvals (insert + commit_approval, synchronous=FULL).

Baseline in the same run: the same store with ``max_batch = 1`` (one COMMIT, one fsync per write).
Prints the speed-up ratio; no threshold.
"""

from __future__ import annotations

import asyncio
import tempfile
from pathlib import Path

import pytest

from switch.journal import Journal
from switch.journal_sqlite import SqliteJournalStore

N = 200
KEY = b"k" * 32
RESULTS: dict[str, float] = {}


async def approvals(path: str, max_batch: int) -> int:
    store = SqliteJournalStore(path, group_commit_ms=1.0, synchronous="FULL")
    store.writer.max_batch = max_batch
    j = Journal(store=store, pan_hash_key=KEY)
    await j.start()
    try:
        async def one(i: int) -> None:
            txn_id = await j.record(dict(terminal_id="00000001", merchant_id="898310048140001", txn_type="sale",
                                         amount=100, stan=i, batch=1, pan="6212345678901234567", card_org="CUP"))
            await j.commit_approval(txn_id, j.next_rrn(), "000001")

        await asyncio.gather(*(one(i) for i in range(N)))
        return j.commit_count
    finally:
        await j.close()


@pytest.mark.parametrize("mode", ["commit_per_write", "group_commit"])
def test_concurrent_approvals(benchmark, mode: str) -> None:
    max_batch = 1 if mode == "commit_per_write" else 512
    with tempfile.TemporaryDirectory() as d:
        counter = iter(range(10**6))

        def run() -> int:
            return asyncio.run(approvals(str(Path(d) / f"b{next(counter)}.db"), max_batch))

        commits = benchmark.pedantic(run, rounds=5, iterations=1)
    RESULTS[mode] = benchmark.stats.stats.median
    benchmark.extra_info["commits_per_run"] = commits
    if len(RESULTS) == 2:
        ratio = RESULTS["commit_per_write"] / RESULTS["group_commit"]
        print(f"\njournal: {N} concurrent approvals, group commit is {ratio:.1f}x faster than a commit per write "
              f"({commits} commits instead of {2 * N})")
