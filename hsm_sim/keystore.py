"""The simulator's key database ("user storage"): LMK-encrypted keys at 3-character indexes.

Host commands may name a stored key as ``K`` + index (``K001``, or with a scheme prefix
``UK001``) wherever a key field is expected.  Keys are kept only in their LMK-encrypted
form; the file is JSON, rewritten atomically on every change (temp file in the same
directory + ``fsync`` + ``os.replace`` + directory ``fsync``), so a crash leaves either
the old or the new database, never a torn one.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

FORMAT_VERSION = 1


@dataclass(frozen=True)
class StoredKey:
    key: str  # key field under the LMK ("U" + 32 hex, 16 hex, "T" + 48 hex)
    key_type: str  # 3-hex key type code
    kcv: str  # 6-hex check value (safe to show)
    label: str = ""


class KeyStoreError(ValueError):
    pass


def _check_index(index: str) -> str:
    index = index.upper()
    if len(index) != 3 or not index.isalnum():
        raise KeyStoreError(f"key index must be 3 alphanumeric characters, got {index!r}")
    return index


class KeyStore:
    """In-memory map index -> :class:`StoredKey`, persisted to ``path`` (if given)."""

    def __init__(self, path: str | os.PathLike[str] | None = None, lmk_check: str = "") -> None:
        self.path = Path(path) if path is not None else None
        self.lmk_check = lmk_check
        self._keys: dict[str, StoredKey] = {}
        if self.path is not None and self.path.exists():
            self.load()

    def __len__(self) -> int:
        return len(self._keys)

    def __contains__(self, index: str) -> bool:
        return index.upper() in self._keys

    def get(self, index: str) -> StoredKey | None:
        return self._keys.get(index.upper())

    def items(self) -> list[tuple[str, StoredKey]]:
        return sorted(self._keys.items())

    def put(self, index: str, key: StoredKey) -> None:
        self._keys[_check_index(index)] = key
        self.save()

    def delete(self, index: str) -> bool:
        found = self._keys.pop(index.upper(), None) is not None
        if found:
            self.save()
        return found

    # -- persistence --------------------------------------------------------------------------
    def load(self) -> None:
        assert self.path is not None
        try:
            doc = json.loads(self.path.read_text("utf-8"))
        except (OSError, ValueError) as exc:
            raise KeyStoreError(f"cannot read key database {self.path}: {exc}") from exc
        if doc.get("version") != FORMAT_VERSION:
            raise KeyStoreError(f"key database {self.path}: unsupported version {doc.get('version')!r}")
        if self.lmk_check and doc.get("lmk_check") and doc["lmk_check"] != self.lmk_check:
            raise KeyStoreError(f"key database {self.path} was written under another LMK ({doc['lmk_check']})")
        self._keys = {_check_index(i): StoredKey(**v) for i, v in doc.get("keys", {}).items()}

    def save(self) -> None:
        """Write the database atomically (no-op for an in-memory store)."""
        if self.path is None:
            return
        doc = {
            "version": FORMAT_VERSION,
            "lmk_check": self.lmk_check,
            "keys": {i: asdict(k) for i, k in sorted(self._keys.items())},
        }
        data = json.dumps(doc, indent=1, sort_keys=True).encode("utf-8")
        directory = self.path.parent
        directory.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=".tmp", dir=directory)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass
            raise
        dir_fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
