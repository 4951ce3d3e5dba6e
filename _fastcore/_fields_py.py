"""The fast scan of ``check_numeric_fields``, pure twin (compiled twin: ``_fields.pyx``).

:func:`numeric_ok` only answers "is everything fine?": ``True`` when the MTI (if present) is 4
ASCII digits and every BCD field of the document holds only what its field allows.  ``False``
sends the caller (``_fastcore.fields.check_numeric_fields``) to its character walk, which names
the field and offset of the problem (or accepts a value this scan is too strict for, such as a
``str`` subclass in the compiled twin).  It never raises for odd values.
"""

from __future__ import annotations

from collections.abc import Mapping

__all__ = ["numeric_ok"]

_DIGITS = "0123456789"
_TRACK = "0123456789Dd"
_ENC_TRACK = "0123456789ABCDEFabcdef"


def numeric_ok(doc: Mapping[str, str], nibbles: frozenset[str], track_fields: frozenset[str],
               encrypted_tracks: bool) -> bool:
    """True when ``doc`` passes the numeric checks (see the module docstring)."""
    tracks = _ENC_TRACK if encrypted_tracks else _TRACK
    try:  # a valid value leaves nothing after one strip of its allowed characters
        mti = doc.get("t")
        if mti is not None and (len(mti) != 4 or mti.strip(_DIGITS)):
            return False
        for field, value in doc.items():
            if field in nibbles and value.strip(tracks if field in track_fields else _DIGITS):
                return False
    except (AttributeError, TypeError):
        return False
    return True
