"""``posswitch serve`` from a TOML config (in-process run with real HSM/issuer sims) and the CLI
entry points ``posswitch serve`` / ``posswitch demo`` as subprocesses."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
from pathlib import Path

from _fastcore import crypto
from switch.sim_terminal import SimCard, SimTerminal

ROOT = Path(__file__).resolve().parents[1]
PVK = bytes.fromhex("0123456789ABCDEFFEDCBA9876543210")


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.asynccontextmanager
async def _environment(tmp_path):
    """HSM, card issuer and wallet simulators in this loop plus a switch config file pointing at them."""
    from hsm_sim import lmk
    from hsm_sim.server import start_hsm
    from issuer_sim.accounts import parse
    from issuer_sim.server import start_issuer
    from issuer_sim.wallets import parse_wallets, start_wallets
    from switch.hsm_client import HsmClient
    from switch.testbed import TEST_IMK_AC, _pvv

    hsm_server, hsm_port = await start_hsm("127.0.0.1", 0)
    hsm = await HsmClient.connect("127.0.0.1", hsm_port)
    zpk = lmk.encrypt_under_lmk(crypto.set_odd_parity(bytes(range(1, 17))), "ZPK")
    card = SimCard(pan="6212345678901234")
    issuer = await start_issuer(parse({
        "issuer": {"keys": {"zpk": zpk, "pvk": lmk.encrypt_under_lmk(PVK, "PVK"),
                            "imk_ac": lmk.encrypt_under_lmk(TEST_IMK_AC, "IMK-AC")}},
        "accounts": [{"pan": card.pan, "expiry": card.expiry, "balance": 100000, "psn": card.psn,
                      "pin": {"method": "pvv", "pvki": "1", "pvv": _pvv(card.pan, card.pin)}}],
    }), hsm=hsm)
    wallets = await start_wallets(parse_wallets({"wallet_users": [{"code_prefix": "134500000001", "balance": 10000}]}))
    tmk = crypto.set_odd_parity(bytes(range(16, 32)))
    port = _free_port()
    cfg_path = tmp_path / "switch.toml"
    cfg_path.write_text(f"""
acquirer_id = "48020000"
[listener]
port = {port}
[hsm]
port = {hsm_port}
[issuers.cup]
port = {issuer.port}
zpk_under_lmk = "{zpk}"
[issuers.wallets]
port = {wallets.port}
kind = "wallet"
[routes]
default = "cup"
[routes.bins]
"62" = "cup"
[routes.qr]
"13" = "wallets"
[journal]
path = "{tmp_path / 'switch.db'}"
pan_hash_key = "000102030405060708090A0B0C0D0E0F101112131415161718191A1B1C1D1E1F"
[metrics]
enabled = false
[logging]
level = "INFO"
[[merchants]]
merchant_id = "898310048140001"
[[terminals]]
terminal_id = "00000001"
merchant_id = "898310048140001"
tmk_under_lmk = "{lmk.encrypt_under_lmk(tmk, 'TMK')}"
""")
    term = SimTerminal("127.0.0.1", port, "00000001", "898310048140001", tmk)
    try:
        yield cfg_path, term, card
    finally:
        await term.close()
        await issuer.close(close_ledger=True)
        await wallets.close(close_ledger=True)
        await hsm.close()
        await hsm_server.close()


async def _connect(term: SimTerminal) -> None:
    for _ in range(600):  # up to 30 s: a cold interpreter on a loaded 2-core box starts slowly
        try:
            await term.connect()
            return
        except OSError:
            await asyncio.sleep(0.05)
    raise AssertionError("the switch did not start listening")


async def test_serve_runs_from_config(tmp_path):
    from switch.config import load_config
    from switch.serve import run

    async with _environment(tmp_path) as (cfg_path, term, card):
        stop = asyncio.Event()
        task = asyncio.create_task(run(load_config(cfg_path), stop, drain=2.0))
        try:
            await _connect(term)
            assert (await term.sign_on()).rc == "00"
            reply = await term.sale(card, 1000, entry="swipe", pin=card.pin)
            assert reply.rc == "00" and reply.mac_ok
            # no BIN matches: the default route takes it and the issuer does not know the card
            assert (await term.sale(SimCard(pan="5100000000000008"), 10, entry="keyed")).rc == "14"
            assert (await term.qr_sale("134500000001123456", 700)).rc == "00"
        finally:
            stop.set()
            await asyncio.wait_for(task, 10)


async def test_serve_health_reports_journal_and_hsm(tmp_path):
    import json
    import urllib.request

    from switch.config import load_config
    from switch.serve import run

    async with _environment(tmp_path) as (cfg_path, term, card):
        mport = _free_port()
        cfg = load_config(cfg_path, ["metrics.enabled=true", f"metrics.port={mport}"])
        stop = asyncio.Event()
        task = asyncio.create_task(run(cfg, stop, drain=2.0))
        try:
            await _connect(term)

            def fetch(path: str) -> tuple[int, bytes]:
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{mport}{path}", timeout=5) as r:
                        return r.status, r.read()
                except urllib.error.HTTPError as e:
                    return e.code, e.read()

            status, body = await asyncio.to_thread(fetch, "/health")
            doc = json.loads(body)
            assert status == 200 and doc["checks"]["journal"] is True and doc["checks"]["hsm"] is True, doc
            assert (await term.sign_on()).rc == "00"
            _, text = await asyncio.to_thread(fetch, "/metrics")
            assert b'posswitch_transactions_total{response_code="00",type="sign_on"} 1.0' in text
        finally:
            stop.set()
            await asyncio.wait_for(task, 10)


async def test_serve_process_stops_cleanly_on_sigterm(tmp_path):
    async with _environment(tmp_path) as (cfg_path, term, card):
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "switch.cli", "serve", "--config", str(cfg_path), cwd=ROOT,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        try:
            await _connect(term)
            assert (await term.sign_on()).rc == "00"
            assert (await term.sale(card, 500, entry="contactless")).rc == "00"
        finally:
            proc.send_signal(signal.SIGTERM)
            _, err = await asyncio.wait_for(proc.communicate(), 20)
        log = err.decode()
        assert proc.returncode == 0, log[-2000:]
        assert "listening" in log and "shutting down" in log and "stopped" in log
        assert card.pan not in log  # PANs are masked in the switch's logs


def _run_cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    return subprocess.run([sys.executable, "-m", "switch.cli", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout)


def test_serve_bad_config_names_the_key(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('[listener]\nport = "x"\n')
    proc = _run_cli("serve", "--config", str(bad))
    assert proc.returncode == 2
    assert "[listener]" in proc.stderr and "port" in proc.stderr


def test_demo_runs_and_stops_by_itself():
    proc = _run_cli("demo", "--seconds", "2", "--terminals", "2", "--seed", "7")
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = proc.stdout
    assert "metrics  http://127.0.0.1:" in out
    assert "batches balanced: 2/2" in out
    assert "terminal MAC failures: 0" in out
    assert "stopped cleanly" in out
