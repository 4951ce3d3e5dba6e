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


# -- CPU per operation (run as a script) ---------------------------------------------------------------------
# python bench/bench_journal.py [--sales N] [--concurrency C]: the switch's journal calls per sale
# (find_by_trace answered by the filter, next_rrn, record, commit_approval) at C concurrent sales, reporting
# the writer thread's CPU per write and the event-loop thread's CPU per sale (medians of several runs), then
# the latency of one awaited record() on an idle journal.  CPU, not wall time: the box may be shared.


def _thread_cpu_s(native_id: int) -> float:
    with open(f"/proc/self/task/{native_id}/schedstat") as f:
        return int(f.read().split()[0]) / 1e9


async def _cpu_run(path: str, sales: int, concurrency: int, synchronous: str) -> tuple[float, float, int]:
    import time

    j = Journal(path, KEY, group_commit_ms=1.0, synchronous=synchronous)
    await j.start()
    writer_tid = j.store.writer._thread.native_id
    per_worker = sales // concurrency

    async def worker(w: int, start: int) -> None:
        tid = f"{w:08d}"
        for stan in range(start, start + per_worker):
            if await j.find_by_trace(tid, "898310048140001", 1, stan, "02"):
                raise AssertionError("duplicate")
            rrn = j.next_rrn()
            txn_id = await j.record({
                "terminal_id": tid, "merchant_id": "898310048140001", "txn_type": "sale", "mti": "0200",
                "processing_code": "000000", "state": "sent", "amount": 1234, "currency": "156",
                "stan": f"{stan:06d}", "batch": 1, "rrn": rrn, "card_org": "CUP", "payment_method": "swipe",
                "entry_mode": "021", "issuer": "cup", "pan": "6212345678901234567"})
            await j.commit_approval(txn_id, rrn=rrn, auth_code="123456", response_code="00",
                                    upstream_ref=f"{stan:06d}|1122334455", card_org="CUP")

    try:
        await asyncio.gather(*(worker(w, 1) for w in range(concurrency)))  # warm-up
        ops0, w0, l0 = j.store.writer.op_count, _thread_cpu_s(writer_tid), time.thread_time()
        await asyncio.gather(*(worker(w, 1 + per_worker) for w in range(concurrency)))
        loop_s, writer_s = time.thread_time() - l0, _thread_cpu_s(writer_tid) - w0
        ops = j.store.writer.op_count - ops0
    finally:
        await j.close()
    return writer_s / ops, loop_s / (per_worker * concurrency), ops


async def _idle_latency(path: str, n: int) -> list[float]:
    import time

    j = Journal(path, KEY, group_commit_ms=1.0, synchronous="FULL")
    await j.start()
    out = []
    try:
        for i in range(n):
            await asyncio.sleep(0.003)  # the writer is idle again
            t0 = time.perf_counter()
            await j.record({"terminal_id": "00000001", "merchant_id": "898310048140001", "txn_type": "sale",
                            "stan": i, "batch": 1, "amount": 100})
            out.append(time.perf_counter() - t0)
    finally:
        await j.close()
    return out


def main() -> None:
    import argparse
    import statistics

    import switch.journal

    p = argparse.ArgumentParser()
    p.add_argument("--sales", type=int, default=4000)
    p.add_argument("--concurrency", type=int, default=200)
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--synchronous", default="FULL")
    p.add_argument("--loop", choices=("uvloop", "asyncio"), default="uvloop", help="the switch runs on uvloop")
    a = p.parse_args()
    if a.loop == "uvloop":
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    print(f"journal module: {switch.journal.__file__}")
    with tempfile.TemporaryDirectory(dir=".") as d:
        res = [asyncio.run(_cpu_run(str(Path(d) / f"c{i}.db"), a.sales, a.concurrency, a.synchronous))
               for i in range(a.runs)]
        wr = statistics.median(r[0] for r in res) * 1e6
        lp = statistics.median(r[1] for r in res) * 1e6
        print(f"{a.concurrency} concurrent sales, {a.loop}, synchronous={a.synchronous}: writer thread {wr:.1f} us CPU per "
              f"write, event loop {lp:.1f} us CPU per sale (find_by_trace + next_rrn + record + commit_approval); "
              f"runs: " + ", ".join(f"{r[0] * 1e6:.1f}/{r[1] * 1e6:.1f}" for r in res))
        lat = sorted(asyncio.run(_idle_latency(str(Path(d) / "l.db"), 300)))
        print(f"one awaited record() on an idle journal (FULL): p50 {lat[len(lat) // 2] * 1e3:.2f} ms, "
              f"p90 {lat[len(lat) * 9 // 10] * 1e3:.2f} ms")


if __name__ == "__main__":
    main()
