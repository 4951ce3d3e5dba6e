"""Log hygiene: PAN masking, secret redaction and structured (key=value / JSON) log lines.

Every component logs through :func:`configure_logging` and passes structured
fields with ``extra={"fields": {...}}`` or the :func:`kv` helper.  Values whose
key names a secret (PIN, PIN block, key, track, CVV) are replaced by
``[REDACTED]`` before formatting; a ``pan`` value is masked (first 6, last 4).
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time
from typing import Any

_SECRET_KEYS = re.compile(r"(^|_)(pin|pinblock|pin_block|key|clear_key|track|track2|track3|cvv|cvc|icvv)(_|$)", re.I)
_PAN_IN_TEXT = re.compile(r"(?<!\d)(\d{6})(\d{3,9})(\d{4})(?!\d)")


def mask_pan(pan: str | bytes | None) -> str:
    """First 6 and last 4 digits kept, the rest replaced by ``*``; short values are fully masked."""
    if pan is None:
        return ""
    if isinstance(pan, bytes | bytearray):
        pan = pan.decode("ascii", "replace")
    pan = pan.strip()
    if len(pan) < 13:
        return "*" * len(pan)
    return f"{pan[:6]}{'*' * (len(pan) - 10)}{pan[-4:]}"


def mask_pans_in_text(text: str) -> str:
    """Mask anything that looks like a 13-19 digit PAN inside free text."""
    return _PAN_IN_TEXT.sub(lambda m: m.group(1) + "*" * len(m.group(2)) + m.group(3), text)


#: identifiers that are long digit strings but never card numbers: logged as they are
_NOT_PAN_KEYS = frozenset(
    {"merchant_id", "mid", "terminal_id", "tid", "rrn", "stan", "batch", "acquirer_id", "institution_id"}
)


def safe_value(key: str, value: Any) -> Any:
    if value is None:
        return None
    lowered = key.lower()
    if lowered == "pan":
        return mask_pan(value)
    if _SECRET_KEYS.search(key):
        return "[REDACTED]"
    if lowered in _NOT_PAN_KEYS and isinstance(value, str) and value.isdigit() and len(value) <= 15:
        return value
    if isinstance(value, str):
        return mask_pans_in_text(value)
    return value


def safe_fields(fields: dict[str, Any]) -> dict[str, Any]:
    return {k: safe_value(k, v) for k, v in fields.items()}


def kv(**fields: Any) -> dict[str, Any]:
    """``log.info("event", extra=kv(stan=..., pan=...))``: structured, sanitised fields."""
    return {"fields": safe_fields(fields)}


class StructuredFormatter(logging.Formatter):
    """``ts level logger event k=v ...`` (or one JSON object per line with ``json_lines``)."""

    def __init__(self, json_lines: bool = False) -> None:
        super().__init__()
        self.json_lines = json_lines

    def format(self, record: logging.LogRecord) -> str:
        fields = safe_fields(getattr(record, "fields", {}) or {})
        event = mask_pans_in_text(record.getMessage())
        ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z"
        if self.json_lines:
            doc = {"ts": ts, "level": record.levelname.lower(), "logger": record.name, "event": event, **fields}
            if record.exc_info:
                doc["exc"] = mask_pans_in_text(self.formatException(record.exc_info))
            return json.dumps(doc, ensure_ascii=False, default=str)
        parts = [ts, record.levelname.lower(), record.name, event]
        parts += [f"{k}={_fmt(v)}" for k, v in fields.items()]
        line = " ".join(parts)
        if record.exc_info:
            line += "\n" + mask_pans_in_text(self.formatException(record.exc_info))
        return line


def _fmt(v: Any) -> str:
    s = str(v)
    return json.dumps(s, ensure_ascii=False) if (not s or any(c in s for c in ' "=')) else s


def configure_logging(level: str | int = "INFO", json_lines: bool = False, stream: Any = None) -> None:
    """Install the structured formatter on the root logger (idempotent)."""
    root = logging.getLogger()
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(StructuredFormatter(json_lines=json_lines))
    root.handlers[:] = [handler]
    root.setLevel(level if isinstance(level, int) else level.upper())
