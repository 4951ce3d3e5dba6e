"""End-to-end over loopback: HSM sim + issuer sim + switch + simulated terminals (switch.testbed)."""

from __future__ import annotations

import pytest

from switch.testbed import Stack


@pytest.fixture
async def stack(tmp_path):
    s = await Stack.start(tmp_path, terminals=2)
    try:
        yield s
    finally:
        await s.stop()


async def test_sign_on_delivers_keys_with_check_values(stack):
    term = await stack.terminal(0).connect()
    reply = await term.sign_on()
    assert reply.rc == "00"
    assert len(bytes.fromhex(reply.doc["62"])) == 40  # 003 layout
    assert reply.doc["60"][8:11] == "003"
    assert term.signed_on
    t = stack.registry.get("SIM00000", "898310048990001")
    assert t.mak_under_lmk and t.pik_under_lmk and t.signed_on


async def test_swipe_sale_with_pin_approved(stack):
    term = await stack.connected_terminal(0)
    card = stack.card()
    reply = await term.sale(card, 1234, entry="swipe", pin=card.pin)
    assert reply.rc == "00", reply.doc
    assert reply.mac_ok is True
    assert reply.doc["4"] == "000000001234"
    rec = await stack.journal.find_by_rrn("SIM00000", "898310048990001", reply.rrn)
    assert rec.state == "approved" and rec.amount == 1234


async def test_metrics_endpoint_counts_transactions(tmp_path):
    import asyncio

    s = await Stack.start(tmp_path, terminals=1, metrics=True)
    try:
        term = await s.connected_terminal(0)
        await term.sale(s.card(), 100, entry="contactless")
        await term.sale(s.card(), 100, pin="999999")
        reader, writer = await asyncio.open_connection("127.0.0.1", s.metrics_port)
        writer.write(b"GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n")
        text = (await asyncio.wait_for(reader.read(), 5)).decode()
        writer.close()
        assert 'posswitch_transactions_total{response_code="00",type="sale"} 1.0' in text
        assert 'posswitch_transactions_total{response_code="55",type="sale"} 1.0' in text
        assert 'posswitch_transactions_total{response_code="00",type="sign_on"} 1.0' in text
    finally:
        await s.stop()


def test_sale_void_settle_under_uvloop(tmp_path):
    """The same stack on uvloop (the loop `posswitch serve` and `posswitch demo` use)."""
    import uvloop

    from switch.sim_terminal import settlement_balanced

    async def scenario() -> None:
        s = await Stack.start(tmp_path, terminals=1)
        try:
            term = await s.connected_terminal(0)
            card = s.card()
            sale = await term.sale(card, 900, entry="chip", pin=card.pin)
            assert sale.rc == "00" and sale.mac_ok
            assert (await term.void(card, sale)).rc == "00"
            assert settlement_balanced(await term.settle()) is True
        finally:
            await s.stop()

    uvloop.run(scenario())
