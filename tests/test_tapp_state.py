"""Terminal state file: round trip, secrets at rest, damage detection, crash safety (SIGKILL mid-write)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from terminal_bridge.state import (
    BatchRecord,
    PendingReversal,
    StateError,
    StateStore,
    StoredKeys,
    TerminalState,
)

TMK = bytes.fromhex("CA5D92598DCA48CE8A4C76361A9269E9")
PAN = "6212340000000019"
# K62-1 (pos-8583-dialect.md §9.2): the ciphertexts are what the state keeps; the clear MAK must not appear
K62 = StoredKeys("003", "6701EAD6A9AD51E51AA406E2C27FCFA9", "8D0A74B8", "B651F9E9BACE9AE1", "AB7153CA")
CLEAR_MAK = "5BB5C72CD00B7338"
CLEAR_PIK = "807A23AD32B36D457AE91FDF927570EA"


def _state() -> TerminalState:
    st = TerminalState("TERM0001", "898310048990001", batch=7, next_stan=42, keys=K62, signed_on=True)
    st.records.append(BatchRecord("sale", 1234, "000041", 7, "632600000001", "000001", "1122", "051", "CUP",
                                  pan=PAN, expiry="3012", tc_field55="9F2608" + "00" * 8))
    st.pending_reversal = PendingReversal({"t": "0200", "2": PAN, "3": "000000", "4": "000000001234",
                                           "11": "000042", "35": PAN + "D3012101", "52": "00" * 8}, "98", True)
    return st


def test_round_trip_and_secrets_at_rest(tmp_path: Path) -> None:
    store = StateStore(tmp_path / "t.json", TMK)
    store.save(_state())
    raw = (tmp_path / "t.json").read_text()
    assert PAN not in raw  # PANs sealed
    assert CLEAR_MAK not in raw.upper() and CLEAR_PIK not in raw.upper()
    assert K62.mak in raw  # the key is kept only as its ciphertext under the TMK
    assert "D3012101" not in raw and '"35"' not in raw and '"52"' not in raw  # no track data, no PIN block
    st = StateStore(tmp_path / "t.json", TMK).load("TERM0001", "898310048990001")
    assert (st.batch, st.next_stan, st.keys, st.signed_on) == (7, 42, K62, True)
    assert st.records[0].pan == PAN and st.records[0].amount == 1234
    assert st.pending_reversal is not None and st.pending_reversal.request["2"] == PAN
    assert "35" not in st.pending_reversal.request and "52" not in st.pending_reversal.request
    assert os.stat(tmp_path / "t.json").st_mode & 0o077 == 0


def test_missing_file_gives_fresh_state_and_stan_wraps(tmp_path: Path) -> None:
    st = StateStore(tmp_path / "none.json", TMK).load("T1", "M1")
    assert (st.batch, st.next_stan, st.keys, st.pending_reversal) == (1, 1, None, None)
    st.next_stan = 999999
    assert st.take_stan() == "999999" and st.take_stan() == "000001"


def test_damage_is_refused_with_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "t.json"
    store = StateStore(path, TMK)
    store.save(_state())
    doc = json.loads(path.read_text())
    doc["body"]["batch"] = 8  # one changed value
    path.write_text(json.dumps(doc))
    with pytest.raises(StateError, match="checksum mismatch"):
        store.load("TERM0001", "898310048990001")
    path.write_text('{"sha256": "x", "body": ')
    with pytest.raises(StateError, match="not JSON"):
        store.load("TERM0001", "898310048990001")


def test_wrong_terminal_or_tmk_refused(tmp_path: Path) -> None:
    path = tmp_path / "t.json"
    StateStore(path, TMK).save(_state())
    with pytest.raises(StateError, match="belongs to terminal"):
        StateStore(path, TMK).load("OTHER001", "898310048990001")
    with pytest.raises(StateError, match="wrong TMK"):
        StateStore(path, bytes(16)).load("TERM0001", "898310048990001")


def test_corrupt_temp_file_is_ignored(tmp_path: Path) -> None:
    path = tmp_path / "t.json"
    store = StateStore(path, TMK)
    store.save(_state())
    store.tmp_path.write_bytes(b"\x00garbage from a write cut short")
    st = store.load("TERM0001", "898310048990001")
    assert st.next_stan == 42 and not store.tmp_path.exists()


_WRITER = """
import sys
from terminal_bridge.state import StateStore, TerminalState, BatchRecord
store = StateStore(sys.argv[1], bytes.fromhex(sys.argv[2]))
st = TerminalState("TERM0001", "898310048990001")
n = 0
while True:
    n += 1
    st.next_stan = n
    st.records.append(BatchRecord("sale", n, f"{n % 1000000:06d}", 1, "", "", "1122", "021", "CUP", pan="6212340000000019"))
    store.save(st)
    if n == 3:
        print("ready", flush=True)
"""


def test_sigkill_mid_write_leaves_a_consistent_state(tmp_path: Path) -> None:
    """A writer saving as fast as it can is killed with SIGKILL: the file is always a whole version."""
    path = tmp_path / "t.json"
    for _ in range(3):
        proc = subprocess.Popen([sys.executable, "-c", _WRITER, str(path), TMK.hex()], stdout=subprocess.PIPE,
                                cwd=Path(__file__).resolve().parents[1])
        assert proc.stdout is not None and proc.stdout.readline().strip() == b"ready"
        time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        st = StateStore(path, TMK).load("TERM0001", "898310048990001")
        assert st.next_stan >= 3
        assert len(st.records) == st.next_stan  # one record per saved version: never half a write
        assert [r.amount for r in st.records] == list(range(1, st.next_stan + 1))

_digits = st.builds(lambda rest: "62" + rest, st.text("0123456789", min_size=14, max_size=17))  # PANs, 16-19
_record = st.builds(BatchRecord, kind=st.sampled_from(["sale", "void", "refund", "qr_sale"]),
                    amount=st.integers(1, 10**12 - 1), stan=st.text("0123456789", min_size=6, max_size=6),
                    batch=st.integers(1, 999999), rrn=st.text("0123456789", min_size=12, max_size=12),
                    auth_code=st.text(min_size=0, max_size=6), date=st.just("1122"), entry=st.just("051"),
                    card_org=st.sampled_from(["CUP", "VIS", ""]), pan=_digits | st.just(""),
                    voided=st.booleans(), qr_code=st.text("0123456789", max_size=18))


@settings(max_examples=40, deadline=None)
@given(records=st.lists(_record, max_size=5), stan=st.integers(1, 999999), pan=_digits,
       reason=st.sampled_from(["98", "A0", "06"]), note=st.text(max_size=20))
def test_any_state_round_trips(tmp_path_factory: pytest.TempPathFactory, records, stan, pan, reason, note) -> None:
    path = tmp_path_factory.mktemp("prop") / "t.json"
    state = TerminalState("TERM0001", "898310048990001", next_stan=stan, records=records, last_mac_error=note,
                          pending_reversal=PendingReversal({"t": "0200", "2": pan, "11": "000001"}, reason, True))
    StateStore(path, TMK).save(state)
    assert pan not in path.read_text() or pan in "".join(r.stan + r.rrn + r.qr_code for r in records) + note
    assert StateStore(path, TMK).load("TERM0001", "898310048990001") == state


def test_one_process_per_state_file(tmp_path: Path) -> None:
    first, second = StateStore(tmp_path / "t.json", TMK), StateStore(tmp_path / "t.json", TMK)
    first.lock()
    with pytest.raises(StateError, match="in use by another terminal process"):
        second.lock()
    first.unlock()
    second.lock()  # free again
    second.unlock()
