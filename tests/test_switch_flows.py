"""End-to-end transaction flows over loopback TCP: HSM sim + issuer sim + switch + sim terminals.

Each test drives real frames through the switch (``switch.testbed.Stack``) and checks the
terminal's reply, the switch's journal and, where money moves, the issuer simulator's ledger.
"""

from __future__ import annotations

import asyncio

import pytest

from switch.sim_terminal import SimCard, settlement_balanced
from switch.testbed import MERCHANT_ID, Stack

TID = "SIM00000"


@pytest.fixture
async def stack(tmp_path):
    s = await Stack.start(tmp_path, terminals=3, issuer_timeout=0.5)
    try:
        yield s
    finally:
        await s.stop()


async def _row(stack, rrn, tid=TID):
    return await stack.journal.find_by_rrn(tid, MERCHANT_ID, rrn)


def _ledger(stack, issuer="cup"):
    return stack.issuers[issuer].ledger


async def _wait_for(pred, timeout=5.0):
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while loop.time() < end:
        if pred():
            return True
        await asyncio.sleep(0.02)
    return pred()


# ---------------------------------------------------------------- sign-on and management

@pytest.mark.parametrize(("mode", "f62_len"), [("001", 24), ("003", 40), ("004", 60)])
async def test_sign_on_layouts(stack, mode, f62_len):
    term = await stack.terminal(0).connect()
    reply = await term.sign_on(mode)
    assert reply.rc == "00"
    assert len(bytes.fromhex(reply.doc["62"])) == f62_len
    assert reply.doc["60"] == f"00{1:06d}{mode}"
    assert len(reply.doc["12"]) == 6 and len(reply.doc["13"]) == 4
    t = stack.registry.get(TID, MERCHANT_ID)
    assert (t.tdk_under_lmk is not None) == (mode == "004")
    # keys work: a MACed sale with PIN goes through
    card = stack.card()
    sale = await term.sale(card, 100, pin=card.pin)
    assert sale.rc == "00" and sale.mac_ok


async def test_echo_and_sign_off(stack):
    term = await stack.connected_terminal(0)
    assert (await term.echo()).rc == "00"
    assert (await term.sign_off()).rc == "00"
    assert not stack.registry.get(TID, MERCHANT_ID).signed_on
    reply = await term.sale(stack.card(), 100, entry="contactless")
    assert reply.rc == "A0" and reply.processing_request == "3"
    await term.sign_on()
    assert (await term.sale(stack.card(), 100, entry="contactless")).rc == "00"


async def test_fresh_keys_each_sign_on(stack):
    term = await stack.terminal(0).connect()
    a = await term.sign_on()
    b = await term.sign_on()
    assert a.doc["62"] != b.doc["62"]
    card = stack.card()
    assert (await term.sale(card, 100, pin=card.pin)).rc == "00"


async def test_resign_required_sets_header_digit(stack):
    term = await stack.connected_terminal(0)
    stack.registry.require_resign(TID, MERCHANT_ID)
    reply = await term.sale(stack.card(), 100, entry="contactless")
    assert reply.processing_request == "3"
    await term.sign_on()
    reply = await term.sale(stack.card(), 100, entry="contactless")
    assert reply.processing_request == "0"


async def test_unknown_terminal_97_and_disabled_merchant_03(stack):
    from switch.sim_terminal import SimTerminal
    from switch.testbed import test_tmk

    stranger = await SimTerminal("127.0.0.1", stack.port, "NOPE0001", MERCHANT_ID, test_tmk(0)).connect()
    stack.terminals.append(stranger)
    assert (await stranger.sign_on()).rc == "97"
    other_mid = await SimTerminal("127.0.0.1", stack.port, TID, "000000000000000", test_tmk(0)).connect()
    stack.terminals.append(other_mid)
    assert (await other_mid.sign_on()).rc == "97"
    stack.registry.store.set_merchant_status(MERCHANT_ID, "disabled")
    stack.registry.reload()
    term = await stack.terminal(1).connect()
    assert (await term.sign_on()).rc == "03"
    stack.registry.store.set_merchant_status(MERCHANT_ID, "active")
    stack.registry.store.set_status("SIM00002", MERCHANT_ID, "disabled")
    stack.registry.reload()
    term2 = await stack.terminal(2).connect()
    assert (await term2.sign_on()).rc == "97"


# ---------------------------------------------------------------- MAC

async def test_bad_mac_gets_a0_and_nothing_is_forwarded(stack):
    term = await stack.connected_terminal(0)
    card = stack.card()
    before = len(_ledger(stack).postings())
    doc = term._base("0200", "000000", "22")
    doc.update({"4": "000000000777", "25": "00", "49": "156", "35": card.track2, "22": "022"})
    body = bytearray(term.encode(doc, mac=True))
    body[-1] ^= 0x01  # corrupt the MAC
    reply = await term.send(doc, raw_body=bytes(body))
    assert reply.rc == "A0" and reply.processing_request == "3"
    assert "64" not in reply.doc
    assert len(_ledger(stack).postings()) == before
    # the same request with the right MAC works
    body_ok = term.encode(doc, mac=True)
    assert (await term.send(doc, raw_body=body_ok)).rc == "00"


async def test_tampered_field_fails_mac(stack):
    term = await stack.connected_terminal(0)
    card = stack.card()
    doc = term._base("0200", "000000", "22")
    doc.update({"4": "000000000100", "25": "00", "49": "156", "35": card.track2, "22": "022"})
    body = term.encode(doc, mac=True)
    tampered = body.replace(bytes.fromhex("000000000100"), bytes.fromhex("000000009900"))
    assert tampered != body
    assert (await term.send(doc, raw_body=tampered)).rc == "A0"


async def test_maced_request_before_sign_on_asks_for_sign_on(stack):
    term = await stack.terminal(0).connect()
    term._mak = bytes(8)  # a terminal that believes it has keys
    term._pik = bytes(16)
    stack.registry.get(TID, MERCHANT_ID).mak_under_lmk = None
    reply = await term.sale(stack.card(), 100, entry="contactless")
    assert reply.rc == "A0" and reply.processing_request == "3"


@pytest.mark.parametrize("algorithm", ["x9.9", "x9.19"])
async def test_other_mac_profiles(tmp_path, algorithm):
    s = await Stack.start(tmp_path, terminals=1)
    try:
        from hsm_sim import lmk
        from switch.testbed import terminal_id, test_tmk

        s.registry.add(terminal_id(0), MERCHANT_ID, lmk.encrypt_under_lmk(test_tmk(0), "TMK"),
                       mac_algorithm=algorithm)
        term = s.terminal(0)
        term.mac_algorithm = algorithm
        await term.connect()
        await term.sign_on()
        reply = await term.sale(s.card(), 321, entry="contactless")
        assert reply.rc == "00" and reply.mac_ok
    finally:
        await s.stop()


# ---------------------------------------------------------------- sales and balance

@pytest.mark.parametrize(("entry", "with_pin"), [("swipe", True), ("swipe", False), ("chip", True),
                                                 ("chip", False), ("contactless", False), ("keyed", True)])
async def test_sale_entry_modes(stack, entry, with_pin):
    term = await stack.connected_terminal(0)
    card = stack.card("cup", 1)
    before = _ledger(stack).balance(card.pan)
    reply = await term.sale(card, 2500, entry=entry, pin=card.pin if with_pin else None)
    assert reply.rc == "00", reply.doc
    assert reply.mac_ok is True
    assert len(reply.rrn) == 12 and reply.doc.get("38")
    assert reply.doc["63"].startswith("CUP")
    assert _ledger(stack).balance(card.pan) == before - 2500
    row = await _row(stack, reply.rrn)
    assert row.state == "approved" and row.amount == 2500 and row.pan_masked.startswith(card.pan[:6])
    assert card.pan not in repr(row)
    if entry in ("chip", "contactless"):
        assert "55" in reply.doc and "91" in reply.doc["55"]  # issuer authentication data


async def test_wrong_pin_55_and_insufficient_funds_51(stack):
    term = await stack.connected_terminal(0)
    card = stack.card("cup", 2)
    assert (await term.sale(card, 100, pin="999999")).rc == "55"
    low = stack.card("cup", 4)
    reply = await term.sale(low, 9_000_000, entry="chip")
    assert reply.rc == "51"
    assert (await _row(stack, reply.rrn)).state == "declined"


async def test_balance_inquiry_returns_field_54(stack):
    term = await stack.connected_terminal(0)
    card = stack.card("cup", 3)
    reply = await term.balance(card, pin=card.pin)
    assert reply.rc == "00"
    f54 = reply.doc["54"]
    assert f54[7] == "C" and int(f54[8:20]) == _ledger(stack).available(card.pan)


async def test_foreign_card_routes_to_second_issuer(stack):
    term = await stack.connected_terminal(0)
    card = stack.card("intl", 0)
    reply = await term.sale(card, 400, entry="contactless")
    assert reply.rc == "00" and reply.doc["63"].startswith("VIS")
    assert (await _row(stack, reply.rrn)).issuer == "intl"


async def test_unknown_bin_gets_15(stack):
    term = await stack.connected_terminal(0)
    reply = await term.sale(SimCard(pan="9999990000000001"), 100, entry="keyed")
    assert reply.rc == "15"


async def test_zero_amount_13(stack):
    term = await stack.connected_terminal(0)
    assert (await term.sale(stack.card(), 0, entry="contactless")).rc == "13"


async def test_longest_bin_prefix_wins(stack):
    from switch.routing import Route

    r = stack.router
    r.add_route(Route("other", stack.links["intl"], None))
    r.add_bin("62", "other")
    assert r.lookup("6212340000000001").name == "cup"
    assert r.lookup("6299990000000001").name == "other"
    assert r.lookup("5100000000000001") is None
    r.default = "intl"
    assert r.lookup("5100000000000001").name == "intl"


# ---------------------------------------------------------------- issuer failures

async def test_issuer_timeout_98_and_reversal_delivered(stack):
    term = await stack.connected_terminal(0)
    card = stack.card("cup", 1)
    before = _ledger(stack).balance(card.pan)
    stack.issuers["cup"].faults.add(action="drop_response", amount=4321, times=1)
    reply = await term.sale(card, 4321, entry="contactless")
    assert reply.rc == "98"
    row = await _row(stack, reply.rrn)
    assert row.state == "reversed" and row.response_code == "98"
    # the issuer posted the sale, then the 0420 undid it
    assert await _wait_for(lambda: _ledger(stack).balance(card.pan) == before)
    for _ in range(250):  # the 0430 arrives just after the issuer posted the reversal
        if await stack.links["cup"].pending_reversals() == 0:
            break
        await asyncio.sleep(0.02)
    assert await stack.links["cup"].pending_reversals() == 0


async def test_issuer_down_gets_92_and_others_unaffected(stack):
    term = await stack.connected_terminal(0)
    await stack.issuers["cup"].close()
    assert await _wait_for(lambda: not stack.links["cup"].is_up)
    reply = await term.sale(stack.card("cup", 0), 100, entry="contactless")
    assert reply.rc in ("91", "92")
    # the other issuer still works
    assert (await term.sale(stack.card("intl", 0), 100, entry="contactless")).rc == "00"


# ---------------------------------------------------------------- void

async def test_void_full_amount_same_batch(stack):
    term = await stack.connected_terminal(0)
    card = stack.card("cup", 1)
    before = _ledger(stack).balance(card.pan)
    sale = await term.sale(card, 1500, entry="chip", pin=card.pin)
    assert sale.rc == "00"
    void = await term.void(card, sale)
    assert void.rc == "00" and void.mac_ok
    assert (await _row(stack, sale.rrn)).state == "voided"
    assert _ledger(stack).balance(card.pan) == before
    # a second void of the same sale is refused
    assert (await term.void(card, sale)).rc == "12"


async def test_void_wrong_amount_64_and_unknown_25(stack):
    term = await stack.connected_terminal(0)
    card = stack.card("cup", 1)
    sale = await term.sale(card, 1500, entry="contactless")
    assert (await term.void(card, sale, amount=1400)).rc == "64"
    fake = await term.sale(card, 10, entry="contactless")
    fake.doc["37"] = "999999999999"
    fake.request["11"] = "999999"
    assert (await term.void(card, fake)).rc == "25"


async def test_void_other_terminal_not_found(stack):
    t0 = await stack.connected_terminal(0)
    t1 = await stack.connected_terminal(1)
    card = stack.card("cup", 1)
    sale = await t0.sale(card, 1500, entry="contactless")
    assert (await t1.void(card, sale)).rc == "25"


# ---------------------------------------------------------------- refund

async def test_partial_refunds_never_above_original(stack):
    term = await stack.connected_terminal(0)
    card = stack.card("cup", 2)
    before = _ledger(stack).balance(card.pan)
    sale = await term.sale(card, 1000, entry="contactless")
    assert (await term.refund(card, sale, 400)).rc == "00"
    assert (await term.refund(card, sale, 500)).rc == "00"
    assert (await term.refund(card, sale, 200)).rc == "61"  # 400 + 500 + 200 > 1000
    assert (await term.refund(card, sale, 100)).rc == "00"
    assert (await _row(stack, sale.rrn)).state == "refunded"
    assert (await term.refund(card, sale, 1)).rc in ("61", "12")
    assert _ledger(stack).balance(card.pan) == before


async def test_refund_unknown_original_25(stack):
    term = await stack.connected_terminal(0)
    card = stack.card("cup", 2)
    sale = await term.sale(card, 1000, entry="contactless")
    sale.doc["37"] = "000000999999"
    sale.request["11"] = "999998"
    assert (await term.refund(card, sale, 10)).rc == "25"


# ---------------------------------------------------------------- reversal

async def test_reversal_of_approved_sale_is_idempotent(stack):
    term = await stack.connected_terminal(0)
    card = stack.card("cup", 3)
    before = _ledger(stack).balance(card.pan)
    sale = await term.sale(card, 2222, entry="swipe", pin=card.pin)
    assert sale.rc == "00"
    rev = await term.reversal(sale, "98")
    assert rev.rc == "00" and rev.mac_ok
    assert (await _row(stack, sale.rrn)).state == "reversed"
    assert await _wait_for(lambda: _ledger(stack).balance(card.pan) == before)
    again = await term.reversal(sale, "98")
    assert again.rc == "00"
    assert _ledger(stack).balance(card.pan) == before


async def test_reversal_of_declined_sale_and_of_unknown(stack):
    term = await stack.connected_terminal(0)
    card = stack.card("cup", 2)
    declined = await term.sale(card, 100, pin="999999")
    assert declined.rc == "55"
    assert (await term.reversal(declined, "06")).rc == "00"
    assert (await _row(stack, declined.rrn)).state == "reversed"
    ghost = dict(declined.request)
    ghost["11"] = "888888"
    assert (await term.reversal(ghost, "98")).rc == "25"


# ---------------------------------------------------------------- pre-auth

async def test_preauth_and_completion(stack):
    term = await stack.connected_terminal(0)
    card = stack.card("cup", 1)
    pa = await term.preauth(card, 5000, entry="chip", pin=card.pin)
    assert pa.rc == "00"
    assert (await term.completion(card, pa, 6000)).rc == "64"  # above the pre-authorized amount
    comp = await term.completion(card, pa, 4500)
    assert comp.rc == "00" and comp.mac_ok
    row = await _row(stack, comp.rrn)
    assert row.txn_type == "completion" and row.amount == 4500
    again = await term.completion(card, pa, 500)  # a pre-auth is completed once: no second charge
    assert again.rc == "12"
    completions = [r for r in await stack.journal.rows_between(0, 2**31, None) if r.txn_type == "completion"]
    assert [(r.state, r.amount) for r in completions if r.approved_at] == [("approved", 4500)]


# ---------------------------------------------------------------- settlement and batch upload

async def test_settlement_balanced_then_not_balanced(stack):
    term = await stack.connected_terminal(0)
    c1, c2 = stack.card("cup", 1), stack.card("intl", 1)
    s1 = await term.sale(c1, 1000, entry="contactless")
    await term.sale(c2, 700, entry="contactless")
    await term.void(c1, s1)
    s3 = await term.sale(c1, 300, entry="contactless")
    await term.refund(c1, s3, 100)
    reply = await term.settle()
    assert reply.rc == "00", reply.doc
    assert settlement_balanced(reply) is True
    assert reply.doc["48"][:30] == term.field48_totals()[:30]
    # lie about the totals: not balanced
    bad = "000000099999001" + "000000000000000" + "0" + term.field48_totals()[31:]
    reply = await term.settle(bad)
    assert reply.rc == "00" and settlement_balanced(reply) is False
    assert reply.doc["48"][30] == "2" and reply.doc["48"][61] == "1"
    assert (await term.end_batch(2)).rc == "00"


async def test_settlement_moves_batch_and_sign_on_hands_it_out(stack):
    term = await stack.connected_terminal(0)
    await term.sale(stack.card(), 100, entry="contactless")
    await term.settle()
    await term.end_batch()
    assert stack.registry.get(TID, MERCHANT_ID).batch == 2
    again = await term.sign_on()
    assert again.doc["60"][2:8] == "000002"


async def test_batch_upload_record_acknowledged(stack):
    term = await stack.connected_terminal(0)
    doc = term._base("0320", None, "00", "201")
    doc["48"] = "01" + "00" + "000001" + "6212340000000010".rjust(20, "0") + "000000000100"
    assert (await term.send(doc)).rc == "00"


async def test_retransmitted_stan_is_duplicate_94(stack):
    term = await stack.connected_terminal(0)
    card = stack.card("cup", 1)
    before = _ledger(stack).balance(card.pan)
    first = await term.sale(card, 700, entry="contactless")
    assert first.rc == "00"
    again = await term.send(dict(first.request), mac=True)
    assert again.rc == "94"
    assert _ledger(stack).balance(card.pan) == before - 700


# ---------------------------------------------------------------- QR payments

async def test_qr_sale_paid_at_once_and_after_confirmation(stack):
    from switch.testbed import qr_code

    term = await stack.connected_terminal(0)
    reply = await term.qr_sale(qr_code("134500000001"), 1200)
    assert reply.rc == "00" and reply.mac_ok
    row = await _row(stack, reply.rrn)
    assert row.payment_method == "qr" and row.qr_order_no and row.state == "approved"
    # the customer confirms with a password: the switch polls until paid
    reply = await term.qr_sale(qr_code("134500000002"), 800)
    assert reply.rc == "00"
    # Alipay-style code
    assert (await term.qr_sale(qr_code("280000000003"), 500)).rc == "00"


async def test_qr_declined_never_confirmed_and_unknown(stack):
    from switch.testbed import qr_code

    term = await stack.connected_terminal(0)
    assert (await term.qr_sale(qr_code("134500000004"), 100)).rc == "05"
    never = await term.qr_sale(qr_code("134500000005"), 100)
    assert never.rc == "98"  # gave up after qr_wait, order cancelled upstream
    assert (await _row(stack, never.rrn)).state == "reversed"
    assert (await term.qr_sale("990000000000000001", 100)).rc == "15"  # no wallet for this prefix


async def test_qr_void_cancels_the_paid_order(stack):
    from switch.testbed import qr_code

    term = await stack.connected_terminal(0)
    code = qr_code("134500000001")
    sale = await term.qr_sale(code, 1500)
    assert sale.rc == "00"
    void = await term.qr_void(sale)
    assert void.rc == "00" and void.mac_ok
    assert (await _row(stack, sale.rrn)).state == "voided"
    settle = await term.settle()
    assert settlement_balanced(settle) is True


async def test_reversal_while_sale_still_waits_for_the_issuer(stack):
    term = await stack.connected_terminal(0)
    card = stack.card("cup", 3)
    before = _ledger(stack).balance(card.pan)
    stack.issuers["cup"].faults.add(action="delay", delay=0.3, amount=3131, times=1)
    sale = asyncio.create_task(term.sale(card, 3131, entry="contactless"))
    for _ in range(250):
        if stack.server.tasks:
            break
        await asyncio.sleep(0.01)
    req = next(iter(term._pending))  # (MTI, STAN) of the sale in flight
    rev = await term.reversal({**_last_request(term, req[1])}, "98")
    assert rev.rc == "00"
    late = await sale  # the approval came after the reversal: the switch reverses it upstream
    assert late.rc == "98"
    assert await _wait_for(lambda: _ledger(stack).balance(card.pan) == before)
    rows = await stack.journal.rows_between(0, 1e12)
    assert [r.state for r in rows if r.amount == 3131] == ["reversed"]


def _last_request(term, stan):
    return {"t": "0200", "3": "000000", "4": "000000003131", "11": stan, "22": "072", "25": "00", "49": "156",
            "41": term.tid, "42": term.mid, "60": f"22{term.batch:06d}0006"}


async def test_partial_approval_10_is_journaled_as_approved(stack):
    term = await stack.connected_terminal(0)
    stack.issuers["cup"].faults.add(action="decline", code="10", amount=1010, times=1)
    reply = await term.sale(stack.card("cup", 1), 1010, entry="contactless")
    assert reply.rc == "10"
    row = await _row(stack, reply.rrn)
    assert row.state == "approved" and row.response_code == "10"


async def test_hsm_down_gives_96_and_nothing_forwarded(stack):
    term = await stack.connected_terminal(0)
    card = stack.card("cup", 1)
    before = len(_ledger(stack).postings())
    await stack.hsm_server.close()
    await stack.hsm.close()
    reply = await term.sale(card, 100, entry="contactless")
    assert reply.rc == "96"
    assert len(_ledger(stack).postings()) == before
    stack.hsm_server = None


async def test_garbage_pin_block_gets_99(stack):
    term = await stack.connected_terminal(0)
    card = stack.card("cup", 1)
    doc = term._base("0200", "000000", "22")
    doc.update({"4": "000000000100", "25": "00", "49": "156", "35": card.track2, "22": "021", "26": "12",
                "52": "0123456789ABCDEF", "53": "2600000000000000"})
    assert (await term.send(doc, mac=True)).rc == "99"


async def test_refund_is_stored_and_forwarded_when_the_issuer_is_silent(stack):
    term = await stack.connected_terminal(0)
    card = stack.card("cup", 2)
    before = _ledger(stack).balance(card.pan)
    sale = await term.sale(card, 1000, entry="contactless")
    stack.issuers["cup"].faults.add(action="drop_response", amount=400, times=1)
    refund = await term.refund(card, sale, 400)
    assert refund.rc == "00" and refund.mac_ok
    assert (await _row(stack, refund.rrn)).state == "approved"
    # the first 0220 was posted (its answer lost); the 0221 repeat is deduplicated: credited once
    assert await _wait_for(lambda: _ledger(stack).balance(card.pan) == before - 600)
    for _ in range(250):
        if await stack.links["cup"].pending_reversals() == 0:
            break
        await asyncio.sleep(0.02)
    assert await stack.links["cup"].pending_reversals() == 0
    assert _ledger(stack).balance(card.pan) == before - 600


async def test_two_copies_in_flight_debit_once(stack):
    term = await stack.connected_terminal(0)
    card = stack.card("cup", 2)
    before = _ledger(stack).balance(card.pan)
    doc = term._base("0200", "000000", "22")
    doc.update({"4": "000000000666", "25": "00", "49": "156", "2": card.pan, "22": "072"})
    body = term.encode(doc, mac=True)
    frame = wire_frame(term, body)
    term._writer.write(frame + frame)  # a duplicated frame: both copies arrive together
    reply = await term.send(doc, raw_body=body)  # a third copy, answered like the others
    await asyncio.sleep(0.3)
    assert reply.rc in ("00", "94")
    assert _ledger(stack).balance(card.pan) == before - 666


def wire_frame(term, body):
    from switch.flows import wire

    return wire.frame_bytes(term.tpdu, term.header, body)


async def test_tdk_encrypted_track_is_decrypted_before_forwarding(stack):
    term = await stack.terminal(0).connect()
    assert (await term.sign_on("004")).rc == "00"
    term.encrypt_tracks = True
    card = stack.card("cup", 1)
    before = _ledger(stack).balance(card.pan)
    reply = await term.sale(card, 808, entry="swipe", pin=card.pin)
    assert reply.request["35"] != card.track2 and reply.request["53"][2] == "1"
    assert reply.rc == "00" and reply.mac_ok
    assert _ledger(stack).balance(card.pan) == before - 808
    # without a TDK (003 sign-on) an encrypted track cannot be read
    await term.sign_on("003")
    term._tdk = bytes.fromhex("0123456789ABCDEFFEDCBA9876543210")
    assert (await term.sale(card, 808, entry="swipe")).rc == "30"


async def test_script_advice_acknowledged(stack):
    term = await stack.connected_terminal(0)
    card = stack.card("cup", 1)
    doc = term._base("0620", "000000", "00", "951")
    doc.update({"2": card.pan, "4": "000000000100", "22": "051", "49": "156", "55": "DF310500000000"})
    reply = await term.send(doc, mac=True)
    assert reply.rc == "00" and reply.mac_ok


async def test_preauth_void_releases_the_hold(stack):
    term = await stack.connected_terminal(0)
    card = stack.card("cup", 3)
    avail = _ledger(stack).available(card.pan)
    pa = await term.preauth(card, 7000, entry="chip", pin=card.pin)
    assert pa.rc == "00"
    assert _ledger(stack).available(card.pan) == avail - 7000
    pv = await term.preauth_void(card, pa)
    assert pv.rc == "00" and pv.mac_ok
    assert (await _row(stack, pa.rrn)).state == "voided"
    assert _ledger(stack).available(card.pan) == avail
    assert (await term.completion(card, pa, 100)).rc == "12"  # a voided pre-auth cannot complete


async def test_completion_void(stack):
    term = await stack.connected_terminal(0)
    card = stack.card("cup", 3)
    balance = _ledger(stack).balance(card.pan)
    pa = await term.preauth(card, 5000, entry="chip", pin=card.pin)
    comp = await term.completion(card, pa, 4000)
    assert comp.rc == "00"
    assert _ledger(stack).balance(card.pan) == balance - 4000
    cv = await term.completion_void(card, comp)
    assert cv.rc == "00" and cv.mac_ok
    assert (await _row(stack, comp.rrn)).state == "voided"
    assert _ledger(stack).balance(card.pan) == balance
    settle = await term.settle()
    assert settlement_balanced(settle) is True


async def test_reversal_of_a_void_restores_the_sale(stack):
    term = await stack.connected_terminal(0)
    card = stack.card("cup", 2)
    before = _ledger(stack).balance(card.pan)
    sale = await term.sale(card, 1200, entry="contactless")
    void = await term.void(card, sale)
    assert void.rc == "00"
    assert _ledger(stack).balance(card.pan) == before
    rev = await term.reversal(void, "98")
    assert rev.rc == "00"
    assert (await _row(stack, void.rrn)).state == "reversed"
    assert (await _row(stack, sale.rrn)).state == "approved"
    assert await _wait_for(lambda: _ledger(stack).balance(card.pan) == before - 1200)


async def test_void_of_a_refunded_sale_is_refused(stack):
    term = await stack.connected_terminal(0)
    card = stack.card("cup", 2)
    sale = await term.sale(card, 900, entry="contactless")
    assert (await term.refund(card, sale, 300)).rc == "00"
    assert (await term.void(card, sale)).rc == "12"  # a full void would credit 900 on top of 300


async def test_approval_for_a_vanished_terminal_is_reversed(stack):
    from switch.flows import wire

    term = await stack.connected_terminal(0)
    card = stack.card("cup", 3)
    before = _ledger(stack).balance(card.pan)
    stack.issuers["cup"].faults.add(action="delay", delay=0.3, amount=2468, times=1)
    doc = term._base("0200", "000000", "22")
    doc.update({"4": "000000002468", "25": "00", "49": "156", "2": card.pan, "22": "072"})
    body = term.encode(doc, mac=True)
    reader, writer = await asyncio.open_connection("127.0.0.1", stack.port)
    writer.write(wire.frame_bytes(term.tpdu, term.header, body))
    await writer.drain()
    for _ in range(250):  # the switch holds the request, the issuer answers 0.3 s later
        if stack.server.tasks:
            break
        await asyncio.sleep(0.01)
    writer.close()  # the terminal goes away before the approval arrives
    assert await _wait_for(lambda: not stack.server.tasks)
    rows = [r for r in await stack.journal.rows_between(0, 1e12) if r.amount == 2468]
    assert [r.state for r in rows] == ["reversed"]
    assert await _wait_for(lambda: _ledger(stack).balance(card.pan) == before)


async def test_qr_sale_reversal_is_acknowledged_by_the_wallet(stack):
    from switch.testbed import qr_code

    term = await stack.connected_terminal(0)
    sale = await term.qr_sale(qr_code("134500000001"), 2100)
    assert sale.rc == "00"
    rev = await term.reversal(sale, "98")
    assert rev.rc == "00"
    assert (await _row(stack, sale.rrn)).state == "reversed"
    for _ in range(250):
        if await stack.links["wallets"].pending_reversals() == 0:
            break
        await asyncio.sleep(0.02)
    assert await stack.links["wallets"].pending_reversals() == 0
    kinds = [p.kind for p in stack.issuers["wallets"].ledger.postings() if p.rrn == sale.rrn]
    assert "reversal" in kinds, kinds  # the wallet refunded the paid order
