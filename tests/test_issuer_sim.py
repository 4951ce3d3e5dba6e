"""issuer_sim over real loopback TCP, driven through switch.issuer_link.IssuerLink.

Approvals and every decline the account dictates, balance inquiry (field 54), pre-auth/completion
holds, refund credit, idempotent reversal and retransmission, with the ledger as the witness.
PIN and ARQC paths that need the HSM live in tests/test_issuer_hsm.py.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json

import pytest

from issuer_sim import accounts as accounts_mod
from issuer_sim.ledger import Ledger
from issuer_sim.server import start_issuer
from switch import h2h
from switch.issuer_link import IssuerLink

PAN_OK = "6212345678901234"
PAN_POOR = "6212345678900001"
PAN_LIMIT = "6212345678900002"
PAN_BLOCKED = "6212345678900003"
PAN_EXPIRED = "6212345678900004"
PAN_LOST = "6212345678900005"
PAN_UNKNOWN = "6299999999999999"
NEXT_YEAR = f"{(dt.date.today().year + 1) % 100:02d}12"


def config_doc() -> dict:
    return {
        "issuer": {"institution_id": "00000000002"},
        "accounts": [
            {"pan": PAN_OK, "expiry": NEXT_YEAR, "balance": 100_000, "daily_limit": 500_000, "psn": "01"},
            {"pan": PAN_POOR, "expiry": NEXT_YEAR, "balance": 500},
            {"pan": PAN_LIMIT, "expiry": NEXT_YEAR, "balance": 1_000_000, "daily_limit": 10_000},
            {"pan": PAN_BLOCKED, "expiry": NEXT_YEAR, "balance": 1_000, "status": "blocked"},
            {"pan": PAN_EXPIRED, "expiry": "2001", "balance": 1_000},
            {"pan": PAN_LOST, "expiry": NEXT_YEAR, "balance": 1_000, "status": "lost"},
        ],
    }


_rrn = iter(range(1, 10**6))


def req(kind: str, pan: str = PAN_OK, amount: int | None = 1000, **kw) -> dict[str, str]:
    args = dict(terminal_id="T0000001", merchant_id="898310048990001", rrn=f"{next(_rrn):012d}",
                amount=amount, pan=pan, expiry=None)
    args.update(kw)
    return h2h.financial_request(kind, **args)


@pytest.fixture
async def issuer():
    srv = await start_issuer(accounts_mod.parse(config_doc()))
    yield srv
    await srv.close(close_ledger=True)


@pytest.fixture
async def link(issuer):
    lk = await IssuerLink("127.0.0.1", issuer.port, name="cup", timeout=2.0, echo_interval=60).start(wait=2)
    yield lk
    await lk.close()


async def test_sale_approved_and_posted(issuer, link):
    resp = await link.request(req("sale", amount=12_345))
    assert resp["t"] == "0210" and resp["39"] == "00"
    assert len(resp["38"]) == 6 and resp["4"] == "000000012345"
    assert issuer.ledger.balance(PAN_OK) == 100_000 - 12_345
    (p,) = issuer.ledger.postings(PAN_OK)
    assert (p.kind, p.amount, p.stan, p.terminal_id.strip()) == ("debit", -12_345, resp["11"], "T0000001")


@pytest.mark.parametrize(("pan", "amount", "code"), [
    (PAN_POOR, 501, "51"),          # insufficient funds
    (PAN_LIMIT, 10_001, "61"),      # over the daily limit
    (PAN_UNKNOWN, 100, "14"),       # unknown card
    (PAN_BLOCKED, 100, "62"),       # blocked card: restricted
    (PAN_LOST, 100, "41"),          # lost card
    (PAN_EXPIRED, 100, "54"),       # expired card
    (PAN_OK, 0, "13"),              # invalid amount
])
async def test_declines(issuer, link, pan, amount, code):
    before = [p for p in issuer.ledger.postings()]
    resp = await link.request(req("sale", pan=pan, amount=amount))
    assert resp["39"] == code
    assert "38" not in resp
    assert issuer.ledger.postings() == before


async def test_daily_limit_counts_the_days_debits(issuer, link):
    assert (await link.request(req("sale", pan=PAN_LIMIT, amount=6_000)))["39"] == "00"
    assert (await link.request(req("sale", pan=PAN_LIMIT, amount=4_001)))["39"] == "61"
    assert (await link.request(req("sale", pan=PAN_LIMIT, amount=4_000)))["39"] == "00"


async def test_wrong_expiry_in_request_is_54(link):
    assert (await link.request(req("sale", expiry="2912" if NEXT_YEAR != "2912" else "2812")))["39"] == "54"
    assert (await link.request(req("sale", expiry=NEXT_YEAR)))["39"] == "00"


async def test_balance_inquiry_returns_field54(issuer, link):
    await link.request(req("sale", amount=2_500))
    resp = await link.request(req("balance", amount=None))
    assert resp["39"] == "00" and resp["t"] == "0210"
    assert h2h.parse_field54(resp["54"]) == 100_000 - 2_500
    assert resp["54"][7] == "C"


async def test_track2_only_request(link, issuer):
    resp = await link.request(req("sale", pan=None, track2=f"{PAN_OK}={NEXT_YEAR}1010000000000000"))
    assert resp["39"] == "00"
    assert issuer.ledger.balance(PAN_OK) == 99_000


async def test_refund_credits(issuer, link):
    sale = await link.request(req("sale", amount=3_000))
    assert sale["39"] == "00"
    refund = await link.request(req("refund", amount=1_000, auth_code=sale["38"]))
    assert refund["t"] == "0230" and refund["39"] == "00"
    assert issuer.ledger.balance(PAN_OK) == 100_000 - 3_000 + 1_000
    assert [p.kind for p in issuer.ledger.postings(PAN_OK)] == ["debit", "credit"]


async def test_preauth_hold_and_completion(issuer, link):
    pre = await link.request(req("preauth", amount=40_000))
    assert pre["t"] == "0110" and pre["39"] == "00"
    assert issuer.ledger.available(PAN_OK) == 60_000 and issuer.ledger.balance(PAN_OK) == 100_000
    # a sale above the available (not the ledger) balance is refused
    assert (await link.request(req("sale", amount=70_000)))["39"] == "51"
    comp = await link.request(req("completion", amount=35_000, auth_code=pre["38"]))
    assert comp["39"] == "00"
    assert issuer.ledger.held(PAN_OK) == 0
    assert issuer.ledger.balance(PAN_OK) == 65_000


async def test_preauth_void_releases_hold(issuer, link):
    pre = await link.request(req("preauth", amount=1_000))
    void = await link.request(req("preauth_void", amount=1_000, auth_code=pre["38"]))
    assert void["39"] == "00" and issuer.ledger.held(PAN_OK) == 0
    again = await link.request(req("preauth_void", amount=1_000, auth_code=pre["38"]))
    assert again["39"] == "25"


async def test_reversal_is_idempotent(issuer, link):
    sale_req = req("sale", amount=7_777)
    resp = await link.request(sale_req)
    assert resp["39"] == "00" and issuer.ledger.balance(PAN_OK) == 92_223
    upstream = dict(sale_req, **{"11": resp["11"], "7": resp["7"]})
    for _ in range(3):  # the same reversal three times: restored exactly once, acknowledged each time
        rev = await link.request(h2h.reversal_for(upstream, "98"))
        assert rev["t"] == "0430" and rev["39"] == "00"
    assert issuer.ledger.balance(PAN_OK) == 100_000
    kinds = [(p.kind, p.amount) for p in issuer.ledger.postings(PAN_OK)]
    assert kinds == [("debit", -7_777), ("reversal", 7_777)]


async def test_reversal_of_unknown_original_is_25(issuer, link):
    ghost = req("sale", amount=5)
    ghost.update({"11": "123456", "7": "0101000000"})
    resp = await link.request(h2h.reversal_for(ghost, "98"))
    assert resp["39"] == "25"
    assert issuer.ledger.postings() == []


async def test_reversal_rebuilt_from_journal_matches_on_41_and_37(issuer, link):
    sale_req = req("sale", amount=900)
    assert (await link.request(sale_req))["39"] == "00"
    journal_copy = {k: sale_req[k] for k in ("t", "2", "3", "4", "37", "41", "42", "49")}
    await link.reverse(journal_copy, "98")  # no 11 / 7 known: queued, sent by the link
    for _ in range(200):
        if await link.pending_reversals() == 0:
            break
        await asyncio.sleep(0.01)
    assert await link.pending_reversals() == 0
    assert issuer.ledger.balance(PAN_OK) == 100_000


async def test_retransmission_replays_without_double_posting(issuer, link):
    msg = req("sale", amount=1_111)
    msg["11"] = "000777"
    first = await issuer.host.process(dict(msg))
    second = await issuer.host.process(dict(msg))
    assert first["39"] == second["39"] == "00" and first["38"] == second["38"]
    assert second["2"] == PAN_OK
    assert issuer.ledger.balance(PAN_OK) == 100_000 - 1_111


async def test_echo(link):
    resp = await link._exchange(h2h.echo_request("000000"), 2)
    assert resp["t"] == "0810" and resp["39"] == "00" and resp["70"] == "301"


async def test_ledger_never_stores_pan(tmp_path):
    db = tmp_path / "ledger.db"
    srv = await start_issuer(accounts_mod.parse(config_doc()), ledger=db)
    lk = await IssuerLink("127.0.0.1", srv.port, timeout=2).start(wait=2)
    try:
        assert (await lk.request(req("sale", amount=10, pin_block=None)))["39"] == "00"
    finally:
        await lk.close()
        await srv.close(close_ledger=True)
    raw = db.read_bytes() + (tmp_path / "ledger.db-wal").read_bytes() if (tmp_path / "ledger.db-wal").exists() \
        else db.read_bytes()
    assert PAN_OK.encode() not in raw
    led = Ledger(db)  # persisted: a restart sees the same balance
    assert led.balance(PAN_OK) == 100_000 - 10
    led.close()


def test_accounts_file_toml_and_json(tmp_path):
    toml = tmp_path / "a.toml"
    toml.write_text(f'''
[issuer]
institution_id = "00000000009"
keys = {{ zpk = "U0123", pvk = "U4567" }}

[[accounts]]
pan = "{PAN_OK}"
expiry = "{NEXT_YEAR}"
balance = 100
pin = {{ method = "pvv", pvki = "1", pvv = "1234" }}

[[faults]]
amount_suffix = "13"
action = "decline"
code = "05"
''')
    cfg = accounts_mod.load(toml)
    assert cfg.accounts[PAN_OK].pin.pvv == "1234" and cfg.keys["zpk"] == "U0123"
    assert cfg.faults[0]["action"] == "decline"
    js = tmp_path / "a.json"
    js.write_text(json.dumps(config_doc()))
    assert len(accounts_mod.load(js).accounts) == 6


@pytest.mark.parametrize(("patch", "message"), [
    ({"pan": "12AB"}, r"accounts\[0\]\.pan"),
    ({"expiry": "2913"}, r"accounts\[0\]\.expiry"),
    ({"status": "zombie"}, r"accounts\[0\]\.status"),
    ({"pin": {"method": "ibm", "offset": "12"}}, r"accounts\[0\]\.pin\.offset"),
])
def test_accounts_errors_name_the_field(patch, message):
    doc = {"accounts": [dict(pan=PAN_OK, expiry=NEXT_YEAR, **{})]}
    doc["accounts"][0].update(patch)
    with pytest.raises(accounts_mod.AccountsError, match=message):
        accounts_mod.parse(doc)


async def test_bad_input_closes_only_that_connection(issuer, link):
    # a broken length prefix: that connection is closed ...
    r1, w1 = await asyncio.open_connection("127.0.0.1", issuer.port)
    w1.write(b"\x00\x00garbage")
    assert await asyncio.wait_for(r1.read(), 5) == b""
    # ... an undecodable body keeps the connection and is answered 30
    r2, w2 = await asyncio.open_connection("127.0.0.1", issuer.port)
    body = b"0200" + b"Z" * 16
    w2.write(len(body).to_bytes(2, "big") + body)
    size = int.from_bytes(await asyncio.wait_for(r2.readexactly(2), 5), "big")
    answer = h2h.decode(await r2.readexactly(size))
    assert answer == {"t": "0210", "39": "30"}
    w2.close()
    # everyone else is still served
    assert (await link.request(req("sale", amount=1)))["39"] == "00"


async def test_internal_error_answers_96(issuer, link):
    def boom(*a, **k):
        raise RuntimeError("disk full")
    issuer.ledger.post = boom
    resp = await link.request(req("sale", amount=5))
    assert resp["39"] == "96"


async def test_group_commit_one_commit_per_batch_durable_before_answer(tmp_path):
    """Sales authorised in the same loop turn share one COMMIT, and each is committed (visible to
    another connection) by the time its answer exists."""
    from issuer_sim.host import IssuerHost

    db = tmp_path / "ledger.db"
    host = IssuerHost(accounts_mod.parse(config_doc()), Ledger(db))
    await host.ledger.committed()  # the account rows written at start
    statements: list[str] = []
    host.ledger._db.set_trace_callback(statements.append)
    answers = await asyncio.gather(*(host.process(req("sale", amount=100, stan=f"{900 + i:06d}"))
                                     for i in range(5)))
    assert [a["39"] for a in answers] == ["00"] * 5
    assert statements.count("COMMIT") == 1 and statements.count("BEGIN IMMEDIATE") == 1
    other = Ledger(db)
    try:
        assert other.balance(PAN_OK) == 100_000 - 500 and len(other.postings(PAN_OK)) == 5
    finally:
        other.close()
        host.ledger.close()


async def test_failed_group_commit_fails_the_batch():
    """A COMMIT that fails rolls the whole batch back and fails every request waiting on it."""
    from issuer_sim.host import IssuerHost

    host = IssuerHost(accounts_mod.parse(config_doc()), Ledger())
    await host.ledger.committed()
    real = host.ledger._db

    class FailingCommit:
        in_transaction = property(lambda self: real.in_transaction)

        def execute(self, sql, *args):
            if sql == "COMMIT":
                raise __import__("sqlite3").OperationalError("disk I/O error")
            return real.execute(sql, *args)

    host.ledger._db = FailingCommit()  # type: ignore[assignment]
    results = await asyncio.gather(*(host.process(req("sale", amount=100, stan=f"{800 + i:06d}"))
                                     for i in range(3)), return_exceptions=True)
    assert all(isinstance(r, Exception) for r in results)
    host.ledger._db = real
    assert host.ledger.balance(PAN_OK) == 100_000 and host.ledger.postings() == []
    host.ledger.close()


async def test_batch_of_an_ended_loop_is_committed_by_the_next_wait(tmp_path):
    """A batch opened under a loop that ended before its commit turn is committed by the next
    ``committed()`` (a ledger that outlives its loop never keeps writes uncommitted)."""
    led = Ledger(tmp_path / "ledger.db")
    gone = asyncio.new_event_loop()
    try:
        led._open_batch(gone)  # as if that loop wrote and stopped before its commit callback ran
        led._db.execute("INSERT INTO accounts(account_id, pan_masked, balance) VALUES ('AX', 'x', 7)")
        await led.committed()
        other = Ledger(tmp_path / "ledger.db")
        assert other.balance("AX") == 7
        other.close()
    finally:
        gone.close()
        led.close()


async def test_copy_arriving_while_the_first_is_in_progress_gets_its_answer():
    """A retransmitted copy that arrives while the original is still being authorised (here: waiting
    for its group commit) waits for that answer: one posting, the same answer."""
    from issuer_sim.host import IssuerHost

    host = IssuerHost(accounts_mod.parse(config_doc()), Ledger())
    await host.ledger.committed()
    msg = req("sale", amount=250, stan="000777")
    first, copy = await asyncio.gather(host.process(dict(msg)), host.process(dict(msg)))
    assert first["39"] == copy["39"] == "00" and first["38"] == copy["38"]
    assert len(host.ledger.postings(PAN_OK)) == 1 and not host._in_progress
    host.ledger.close()
