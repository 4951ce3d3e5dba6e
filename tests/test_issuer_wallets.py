"""issuer_sim.wallets: QR wallet pay / pending / query / cancel over real H2H TCP via IssuerLink."""

from __future__ import annotations

import asyncio

import pytest

from issuer_sim.accounts import AccountsError
from issuer_sim.wallets import parse_wallets, start_wallets, wallet_of
from switch import h2h
from switch.issuer_link import IssuerLink, IssuerTimeout

AUTO = "134567890100"        # WeChat-style 18-digit codes: 13 + 16 digits
PASSWORD = "134567890200"
DECLINE = "134567890300"
NEVER = "134567890400"
ALIPAY = "2812345600"        # Alipay-style codes start 25-30, 16-24 digits
_n = iter(range(1, 10**6))


def code(prefix: str, length: int = 18) -> str:
    return (prefix + f"{next(_n):010d}").ljust(length, "0")[:length]


def pay(payment_code: str, amount: int) -> dict[str, str]:
    return h2h.qr_pay_request(payment_code=payment_code, amount=amount, terminal_id="T0000001",
                              merchant_id="898310048990001", rrn=f"{next(_n):012d}")


@pytest.fixture
async def wallet():
    cfg = parse_wallets({
        "wallet": {"expire_after": 0.6},
        "wallet_users": [
            {"code_prefix": AUTO, "balance": 10_000},
            {"code_prefix": PASSWORD, "balance": 10_000, "confirm": "password", "confirm_after": 0.15},
            {"code_prefix": DECLINE, "balance": 10_000, "confirm": "decline", "confirm_after": 0.1},
            {"code_prefix": NEVER, "balance": 10_000, "confirm": "never"},
            {"code_prefix": ALIPAY, "balance": 50},
        ]})
    srv = await start_wallets(cfg)
    link = await IssuerLink("127.0.0.1", srv.port, name="wechat", timeout=2, reversal_retry=0.05).start(wait=2)
    yield srv, link
    await link.close()
    await srv.close(close_ledger=True)


def bal(srv, prefix):
    return srv.host.balance(srv.host.config.user_for(prefix))


@pytest.mark.parametrize(("c", "w"), [
    ("134567890123456789", "wechat"), ("281234567890123456", "alipay"), ("6212345678901234567", "unionpay"),
    ("1345678901234567", None), ("991234567890123456", None), ("13456789012345678X", None),
])
def test_wallet_by_prefix(c, w):
    assert wallet_of(c) == w


async def test_immediate_payment(wallet):
    srv, link = wallet
    resp = await link.request(pay(code(AUTO), 1_500))
    assert resp["39"] == "00" and len(resp["38"]) == 6 and resp["44"].startswith("WE")
    assert bal(srv, AUTO) == 8_500


async def test_pending_then_paid_by_query(wallet):
    srv, link = wallet
    order = pay(code(PASSWORD), 2_000)
    first = await link.request(order)
    assert first["39"] == "09"                                 # user is entering the password
    assert bal(srv, PASSWORD) == 10_000
    assert (await link.request(h2h.qr_query_request(order)))["39"] == "09"
    await asyncio.sleep(0.25)
    done = await link.request(h2h.qr_query_request(order))
    assert done["39"] == "00" and done["44"] == first["44"] and done["4"] == "000000002000"
    assert bal(srv, PASSWORD) == 8_000


async def test_user_declines(wallet):
    srv, link = wallet
    order = pay(code(DECLINE), 100)
    assert (await link.request(order))["39"] == "09"
    await asyncio.sleep(0.2)
    assert (await link.request(h2h.qr_query_request(order)))["39"] == "05"
    assert bal(srv, DECLINE) == 10_000


async def test_pending_order_expires_closed(wallet):
    srv, link = wallet
    order = pay(code(NEVER), 100)
    assert (await link.request(order))["39"] == "09"
    await asyncio.sleep(0.8)
    assert (await link.request(h2h.qr_query_request(order)))["39"] == "12"


async def test_cancel_pending_then_it_never_pays(wallet):
    srv, link = wallet
    order = pay(code(PASSWORD), 700)
    assert (await link.request(order))["39"] == "09"
    resp = await link.request(h2h.reversal_for(dict(order, **{"7": "0101000000"}), "98"))
    assert resp["t"] == "0430" and resp["39"] == "00"
    await asyncio.sleep(0.25)                                  # the confirm timer would have paid it
    assert (await link.request(h2h.qr_query_request(order)))["39"] == "12"
    assert bal(srv, PASSWORD) == 10_000


async def test_reverse_paid_order_refunds_once(wallet):
    srv, link = wallet
    order = pay(code(AUTO), 3_000)
    resp = await link.request(order)
    assert resp["39"] == "00" and bal(srv, AUTO) == 7_000
    upstream = dict(order, **{"11": resp["11"], "7": resp["7"]})
    for _ in range(2):
        assert (await link.request(h2h.reversal_for(upstream, "98")))["39"] == "00"
    assert bal(srv, AUTO) == 10_000
    assert [p.kind for p in srv.ledger.postings(srv.host.config.user_for(AUTO).account_id)] == ["debit", "reversal"]


async def test_timeout_becomes_upstream_cancel(wallet):
    srv, link = wallet
    srv.faults.add(action="drop_response", kind="sale", times=1)
    with pytest.raises(IssuerTimeout):
        await link.request(pay(code(AUTO), 400), timeout=0.2)
    for _ in range(200):
        if await link.pending_reversals() == 0:
            break
        await asyncio.sleep(0.01)
    assert await link.pending_reversals() == 0
    assert bal(srv, AUTO) == 10_000


@pytest.mark.parametrize(("payment_code", "amount", "rc"), [
    ("134567899999999999", 100, "14"),   # a WeChat-shaped code of no user
    ("9912345678901234", 100, "14"),     # not a wallet code
    (ALIPAY + "000001", 51, "51"),       # insufficient balance
])
async def test_pay_declines(wallet, payment_code, amount, rc):
    _, link = wallet
    assert (await link.request(pay(payment_code, amount)))["39"] == rc


async def test_code_is_single_use(wallet):
    _, link = wallet
    c = code(AUTO)
    assert (await link.request(pay(c, 1)))["39"] == "00"
    assert (await link.request(pay(c, 1)))["39"] == "54"


async def test_query_unknown_order_is_25(wallet):
    _, link = wallet
    assert (await link.request(h2h.qr_query_request(pay(code(AUTO), 1))))["39"] == "25"


def test_wallet_config_errors():
    with pytest.raises(AccountsError, match=r"wallet_users\[0\]\.confirm"):
        parse_wallets({"wallet_users": [{"code_prefix": "1345", "confirm": "maybe"}]})
    with pytest.raises(AccountsError, match=r"wallet_users\[0\]\.code_prefix"):
        parse_wallets({"wallet_users": [{"code_prefix": "ab"}]})
