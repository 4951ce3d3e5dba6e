"""Persistent terminal state: keys (under the TMK), batch and trace numbers, pending reversal, batch records.

A POS terminal must survive a power cut at any instant without losing its pending reversal or
the batch it still has to settle.  :class:`StateStore` writes the whole state as one JSON
document, atomically: temp file in the same directory, ``fsync``, ``os.replace``, ``fsync`` of
the directory.  A crash leaves either the old or the new file, never a mix; a leftover temp file
is ignored (and removed) on the next load.  The document carries a SHA-256 of its body so a
damaged file is refused with a clear error instead of being half-used.

Secrets: the working keys are stored exactly as the host sent them in field 62, i.e. encrypted
under the terminal master key, with their check values (a real PIN pad would keep them in its
tamper-resistant memory; this software terminal keeps them in the state file under the TMK).
PANs of batch records and of the pending reversal are sealed with AES-GCM under a storage key
derived from the TMK.  Track data, PIN blocks and clear keys are never written.
"""

from __future__ import annotations

import dataclasses
import fcntl
import hashlib
import hmac
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from Crypto.Cipher import AES

STATE_VERSION = 1
#: request fields never kept in a stored reversal (tracks, PIN data, security info, MAC)
REVERSAL_DROP = ("26", "35", "36", "37", "52", "53", "64")


class StateError(Exception):
    """The state file cannot be used (names the file and what is wrong)."""


def storage_key(tmk: bytes) -> bytes:
    """AES-128 key for sealing PANs at rest, derived from the TMK (never stored)."""
    return hmac.new(tmk, b"posswitch terminal state v1", hashlib.sha256).digest()[:16]


def seal(key: bytes, text: str) -> str:
    nonce = os.urandom(12)
    ct, tag = AES.new(key, AES.MODE_GCM, nonce=nonce).encrypt_and_digest(text.encode())
    return (nonce + ct + tag).hex()


def unseal(key: bytes, blob: str, what: str = "sealed value") -> str:
    raw = bytes.fromhex(blob)
    nonce, ct, tag = raw[:12], raw[12:-16], raw[-16:]
    try:
        return AES.new(key, AES.MODE_GCM, nonce=nonce).decrypt_and_verify(ct, tag).decode()
    except ValueError:
        raise StateError(f"{what}: cannot be unsealed (wrong TMK or damaged state file)") from None


@dataclass
class StoredKeys:
    """Working keys as received in field 62: ciphertexts under the TMK + 4-byte check values (hex)."""

    mode: str
    pik: str
    pik_cv: str
    mak: str
    mak_cv: str
    tdk: str | None = None
    tdk_cv: str | None = None


@dataclass
class BatchRecord:
    """One approved transaction of the open batch (for settlement totals, voids and batch upload)."""

    kind: str  # sale / void / refund / qr_sale / preauth / completion
    amount: int
    stan: str
    batch: int
    rrn: str
    auth_code: str
    date: str  # MMDD (local)
    entry: str  # field 22
    card_org: str  # 63.1, CUP = domestic
    pan: str = field(default="", repr=False)  # clear in memory only; sealed on disk
    expiry: str = ""
    orig_stan: str = ""  # void / refund: trace of the original
    voided: bool = False
    tc_field55: str = ""  # chip: TC-upload tag set (hex), for the 0320 IC upload
    qr_code: str = ""

    @property
    def domestic(self) -> bool:
        return self.card_org.strip().upper() in ("", "CUP")

    @property
    def chip(self) -> bool:
        return self.entry[:2] in ("05", "07")


@dataclass
class PendingReversal:
    """A 0400 waiting to go out: the original request (sensitive fields removed) and the reason (39)."""

    request: dict[str, str] = field(repr=False)
    reason: str = "98"
    sent: bool = False  # the original reached the wire (else nothing needs reversing)


@dataclass
class TerminalState:
    terminal_id: str
    merchant_id: str
    batch: int = 1
    next_stan: int = 1
    keys: StoredKeys | None = None
    signed_on: bool = False
    need_sign_on: bool = False  # host asked (header digit 6 = 3) or MAC trouble
    last_mac_error: str = ""  # why we think the keys are out of sync, if we do
    pending_reversal: PendingReversal | None = None
    records: list[BatchRecord] = field(default_factory=list)

    def take_stan(self) -> str:
        """Next trace number (000001..999999, wraps); the caller saves the state before sending."""
        stan = self.next_stan
        self.next_stan = stan % 999999 + 1
        return f"{stan:06d}"


class StateStore:
    """Loads and atomically saves one :class:`TerminalState` JSON file."""

    def __init__(self, path: str | os.PathLike[str], tmk: bytes) -> None:
        self.path = Path(path)
        self.tmp_path = self.path.with_name(self.path.name + ".tmp")
        self.lock_path = self.path.with_name(self.path.name + ".lock")
        self._key = storage_key(tmk)
        self._lock_fd: int | None = None

    # ------------------------------------------------------------------ one process per state file
    def lock(self) -> None:
        """Take the state file for this process (``FILE.lock``, ``flock``); a second terminal process on
        the same file is refused.  The kernel releases the lock when the process dies."""
        if self._lock_fd is not None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise StateError(f"state file {self.path} is in use by another terminal process") from None
        self._lock_fd = fd

    def unlock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # closing the descriptor drops the flock
            self._lock_fd = None

    # ------------------------------------------------------------------ load
    def load(self, terminal_id: str, merchant_id: str) -> TerminalState:
        """The stored state, or a fresh one when there is no file yet."""
        if self.tmp_path.exists():  # a write that never reached its rename: the old file is authoritative
            self.tmp_path.unlink()
        if not self.path.exists():
            return TerminalState(terminal_id, merchant_id)
        try:
            doc = json.loads(self.path.read_bytes())
        except (ValueError, UnicodeDecodeError) as exc:
            raise StateError(f"state file {self.path}: not JSON ({exc})") from None
        if not isinstance(doc, dict) or "body" not in doc or "sha256" not in doc:
            raise StateError(f"state file {self.path}: missing body/sha256")
        body = doc["body"]
        digest = hashlib.sha256(_canonical(body)).hexdigest()
        if not hmac.compare_digest(digest, str(doc["sha256"])):
            raise StateError(f"state file {self.path}: checksum mismatch (file damaged)")
        if body.get("version") != STATE_VERSION:
            raise StateError(f"state file {self.path}: version {body.get('version')!r}, expected {STATE_VERSION}")
        st = self._from_body(body)
        if (st.terminal_id, st.merchant_id) != (terminal_id, merchant_id):
            raise StateError(f"state file {self.path} belongs to terminal {st.terminal_id}/{st.merchant_id}, "
                             f"not {terminal_id}/{merchant_id}")
        return st

    def _from_body(self, body: dict[str, Any]) -> TerminalState:
        try:
            keys = StoredKeys(**body["keys"]) if body.get("keys") else None
            rev = None
            if body.get("pending_reversal"):
                r = body["pending_reversal"]
                req = dict(r["request"])
                if "2" in req:
                    req["2"] = unseal(self._key, req["2"], "pending reversal field 2")
                rev = PendingReversal(req, r["reason"], r.get("sent", True))
            records = []
            for i, r in enumerate(body.get("records", [])):
                r = dict(r)
                r["pan"] = unseal(self._key, r["pan"], f"batch record {i} PAN") if r.get("pan") else ""
                records.append(BatchRecord(**r))
            return TerminalState(
                terminal_id=body["terminal_id"], merchant_id=body["merchant_id"], batch=int(body["batch"]),
                next_stan=int(body["next_stan"]), keys=keys, signed_on=bool(body["signed_on"]),
                need_sign_on=bool(body.get("need_sign_on")), last_mac_error=body.get("last_mac_error", ""),
                pending_reversal=rev, records=records)
        except (KeyError, TypeError, ValueError) as exc:
            raise StateError(f"state file {self.path}: bad content ({exc!r})") from None

    # ------------------------------------------------------------------ save
    def _to_body(self, st: TerminalState) -> dict[str, Any]:
        rev = None
        if st.pending_reversal is not None:
            req = {k: v for k, v in st.pending_reversal.request.items() if k not in REVERSAL_DROP}
            if "2" in req:
                req["2"] = seal(self._key, req["2"])
            rev = {"request": req, "reason": st.pending_reversal.reason, "sent": st.pending_reversal.sent}
        records = []
        for r in st.records:
            d = dataclasses.asdict(r)
            d["pan"] = seal(self._key, r.pan) if r.pan else ""
            records.append(d)
        return {
            "version": STATE_VERSION, "terminal_id": st.terminal_id, "merchant_id": st.merchant_id,
            "batch": st.batch, "next_stan": st.next_stan,
            "keys": dataclasses.asdict(st.keys) if st.keys else None, "signed_on": st.signed_on,
            "need_sign_on": st.need_sign_on, "last_mac_error": st.last_mac_error,
            "pending_reversal": rev, "records": records,
        }

    def save(self, st: TerminalState) -> None:
        """Write ``st`` atomically (temp file + fsync + rename + directory fsync)."""
        body = self._to_body(st)
        data = json.dumps({"sha256": hashlib.sha256(_canonical(body)).hexdigest(), "body": body},
                          ensure_ascii=False, indent=1).encode()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.tmp_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            view = memoryview(data)
            while view:
                n = os.write(fd, view)
                view = view[n:]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(self.tmp_path, self.path)
        dir_fd = os.open(self.path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def _canonical(body: Any) -> bytes:
    return json.dumps(body, sort_keys=True, ensure_ascii=False, separators=(",", ":")).encode()


__all__ = ["BatchRecord", "PendingReversal", "REVERSAL_DROP", "StateError", "StateStore", "StoredKeys",
           "TerminalState", "seal", "storage_key", "unseal"]
