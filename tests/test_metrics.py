"""Metrics: scrape the real HTTP endpoint and parse the exposition; /health follows its checks."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from switch.journal import Journal
from switch.metrics import SwitchMetrics


async def http_get(port: int, target: str, method: str = "GET") -> tuple[int, dict[str, str], bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"{method} {target} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    await writer.drain()
    data = await reader.read()
    writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:])
    return int(lines[0].split()[1]), headers, body


def samples(body: bytes) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(body.decode()):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


async def test_scrape_parses_and_reflects_updates(tmp_path: Path) -> None:
    m = SwitchMetrics()
    port = await m.start("127.0.0.1", 0)
    try:
        m.observe_transaction("sale", "00", 0.042)
        m.observe_transaction("sale", "00", 0.3)
        m.observe_transaction("sale", "51", 0.2)
        m.issuer_latency.labels("cup").observe(0.02)
        m.hsm_latency.labels("A0").observe(0.0004)
        m.in_flight.set(3)
        m.connected_terminals.inc()
        m.issuer_link_up.labels("cup").set(1)
        m.pending_reversals.set(2)
        j = await Journal.open(str(tmp_path / "j.db"), b"k" * 32)
        m.watch_journal(j)
        await asyncio.gather(*(j.record(dict(terminal_id="00000001", merchant_id="898310048140001",
                                             txn_type="sale", amount=1)) for _ in range(10)))
        await j.close()
        status, headers, body = await http_get(port, "/metrics")
    finally:
        await m.stop()
    assert status == 200 and headers["Content-Type"].startswith("text/plain")
    s = samples(body)
    assert s[("posswitch_transactions_total", (("response_code", "00"), ("type", "sale")))] == 2
    assert s[("posswitch_transactions_total", (("response_code", "51"), ("type", "sale")))] == 1
    assert s[("posswitch_transaction_seconds_count", (("type", "sale"),))] == 3
    assert s[("posswitch_transaction_seconds_bucket", (("le", "0.05"), ("type", "sale")))] == 1
    assert s[("posswitch_issuer_seconds_count", (("issuer", "cup"),))] == 1
    assert s[("posswitch_hsm_seconds_count", (("command", "A0"),))] == 1
    assert s[("posswitch_in_flight", ())] == 3
    assert s[("posswitch_connected_terminals", ())] == 1
    assert s[("posswitch_issuer_link_up", (("issuer", "cup"),))] == 1
    assert s[("posswitch_pending_reversals", ())] == 2
    assert s[("posswitch_journal_commit_writes_sum", ())] == 10
    assert 1 <= s[("posswitch_journal_commit_seconds_count", ())] <= 10
    # no per-terminal or per-card labels anywhere
    label_names = {k for (_, labels) in s for k, _ in labels}
    assert label_names <= {"type", "response_code", "issuer", "command", "reason", "le"}
    assert b"python_gc" not in body  # dedicated registry


async def test_health_reflects_checks_and_unknown_paths() -> None:
    m = SwitchMetrics()
    state = {"hsm": True}

    async def issuer_ok() -> bool:
        return True

    def broken() -> bool:
        raise RuntimeError("boom")

    m.set_health_check("hsm", lambda: state["hsm"])
    m.set_health_check("issuer", issuer_ok)
    port = await m.start("127.0.0.1", 0)
    try:
        status, _, body = await http_get(port, "/health")
        assert status == 200 and json.loads(body) == {"status": "ok", "checks": {"hsm": True, "issuer": True}}
        state["hsm"] = False
        status, _, body = await http_get(port, "/health")
        assert status == 503 and json.loads(body)["checks"]["hsm"] is False
        state["hsm"] = True
        m.set_health_check("journal", broken)
        status, _, body = await http_get(port, "/health")
        assert status == 503 and json.loads(body)["checks"]["journal"] is False
        assert (await http_get(port, "/nope"))[0] == 404
        assert (await http_get(port, "/metrics", method="POST"))[0] == 405
        status, headers, body = await http_get(port, "/metrics", method="HEAD")
        assert status == 200 and body == b"" and int(headers["Content-Length"]) > 0
        # garbage does not stop the server
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"\x00\x01garbage\r\n\r\n")
        assert (await reader.read()).startswith(b"HTTP/1.1 400")
        writer.close()
        assert (await http_get(port, "/metrics"))[0] == 200
    finally:
        await m.stop()


async def test_journal_health_follows_the_writer(tmp_path: Path) -> None:
    m = SwitchMetrics()
    j = await Journal.open(str(tmp_path / "h.db"), b"k" * 32)
    m.watch_journal(j)
    port = await m.start("127.0.0.1", 0)
    try:
        status, _, body = await http_get(port, "/health")
        assert status == 200 and json.loads(body)["checks"] == {"journal": True}
        await j.close()
        status, _, body = await http_get(port, "/health")
        assert status == 503 and json.loads(body)["checks"] == {"journal": False}
    finally:
        await m.stop()


async def test_store_and_forward_depth_and_age_cover_every_link(tmp_path: Path) -> None:
    """posswitch_pending_reversals sums the links' queues; ..._oldest_age_seconds is the oldest item's age."""
    from switch.issuer_link import IssuerLink

    m = SwitchMetrics()
    port = await m.start("127.0.0.1", 0)
    j = await Journal.open(str(tmp_path / "j.db"), b"k" * 32)
    # links that never connect (port 9 is closed): their reversals wait in the store
    a = IssuerLink("127.0.0.1", 9, name="cup", metrics=m, reversal_store=j.reversal_store())
    b = IssuerLink("127.0.0.1", 9, name="visa", metrics=m)

    def original(rrn: str) -> dict[str, str]:
        return {"t": "0200", "2": "6212341234567890", "3": "000000", "4": "000000000100", "11": "000001",
                "37": rrn, "41": "00000001", "42": "898310048140001", "49": "156"}

    async def scrape() -> tuple[float, float]:
        s = samples((await http_get(port, "/metrics"))[2])
        return s[("posswitch_pending_reversals", ())], s[("posswitch_pending_reversals_oldest_age_seconds", ())]

    try:
        assert await scrape() == (0, 0)
        first = await a.reverse(original("000000000001"))
        await asyncio.sleep(0.2)
        second = await b.reverse(original("000000000002"))
        depth, age = await scrape()
        assert depth == 2 and age >= 0.2
        await a.reversals.ack(first, "00")  # the oldest is acknowledged: the age is now the younger one's
        await a._report_pending()
        depth, younger = await scrape()
        assert depth == 1 and younger < age
        await b.reversals.ack(second, "00")
        await b._report_pending()
        assert await scrape() == (0, 0)
    finally:
        await j.close()
        await m.stop()


async def test_a_queue_left_by_a_previous_process_shows_at_start(tmp_path: Path) -> None:
    from switch.issuer_link import IssuerLink

    j = await Journal.open(str(tmp_path / "j.db"), b"k" * 32)
    store = j.reversal_store()
    await store.add("cup", {"t": "0420", "11": "000001", "37": "000000000001", "41": "00000001"})
    await asyncio.sleep(0.1)
    m = SwitchMetrics()
    port = await m.start("127.0.0.1", 0)
    link = IssuerLink("127.0.0.1", 9, name="cup", metrics=m, reversal_store=store)  # the issuer is down
    try:
        await link.start()
        for _ in range(100):
            s = samples((await http_get(port, "/metrics"))[2])
            if s[("posswitch_pending_reversals", ())] == 1:
                break
            await asyncio.sleep(0.02)
        assert s[("posswitch_pending_reversals", ())] == 1
        assert s[("posswitch_pending_reversals_oldest_age_seconds", ())] >= 0.1
    finally:
        await link.close()
        await j.close()
        await m.stop()


async def test_journal_wal_size_is_read_at_scrape_time(tmp_path: Path) -> None:
    import os

    m = SwitchMetrics()
    j = await Journal.open(str(tmp_path / "w.db"), b"k" * 32)
    m.watch_journal(j)
    try:
        await asyncio.gather(*(j.record(dict(terminal_id="00000001", merchant_id="898310048140001",
                                             txn_type="sale", amount=1)) for _ in range(50)))
        wal = os.path.getsize(str(tmp_path / "w.db-wal"))
        assert wal > 0
        assert samples(m.exposition())[("posswitch_journal_wal_bytes", ())] == wal
    finally:
        await j.close()
    assert samples(m.exposition())[("posswitch_journal_wal_bytes", ())] == 0  # closed: the WAL is gone
