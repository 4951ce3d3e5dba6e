"""Exceptions shared by both twins of every ``_fastcore`` module.

The ISO 8583 codec raises pyiso8583's own ``iso8583.EncodeError`` /
``iso8583.DecodeError`` (so it is a drop-in replacement); everything else
raises the classes below.
"""

from __future__ import annotations


class FastcoreError(ValueError):
    """Base class of the core's own errors."""


class FramingError(FastcoreError):
    """A frame on the POS link is malformed (length, TPDU or header)."""

    def __init__(self, msg: str, offset: int | None = None) -> None:
        super().__init__(msg if offset is None else f"{msg}: offset {offset}")
        self.offset = offset


class TLVError(FastcoreError):
    """BER-TLV data is malformed; names the tag (if known) and the offset."""

    def __init__(self, msg: str, tag: str | None = None, offset: int | None = None) -> None:
        parts = [msg]
        if tag is not None:
            parts.append(f"tag {tag}")
        if offset is not None:
            parts.append(f"offset {offset}")
        super().__init__(": ".join(parts))
        self.tag = tag
        self.offset = offset


class CryptoError(FastcoreError):
    """Bad key, PIN, PIN block or MAC input."""
