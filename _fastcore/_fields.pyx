# cython: language_level=3
"""The fast scan of ``check_numeric_fields``, compiled twin (pure twin: ``_fastcore/_fields_py.py``,
same API and docs)."""

cdef extern from "Python.h":
    bint PyUnicode_IS_ASCII(object o)
    void* PyUnicode_DATA(object o)
    Py_ssize_t PyUnicode_GET_LENGTH(object o)

__all__ = ["numeric_ok"]


cdef inline bint _only(object s, bint sep_d, bint hex_ok):
    """``s`` (exactly a ``str``) holds only ASCII digits (+ ``D``/``d`` when ``sep_d``, + hex
    letters when ``hex_ok``)."""
    cdef const unsigned char* c
    cdef Py_ssize_t i, n
    cdef unsigned char ch
    if type(s) is not str or not PyUnicode_IS_ASCII(s):
        return False
    c = <const unsigned char*>PyUnicode_DATA(s)
    n = PyUnicode_GET_LENGTH(s)
    for i in range(n):
        ch = c[i]
        if 48 <= ch <= 57:
            continue
        if hex_ok and (65 <= ch <= 70 or 97 <= ch <= 102):
            continue
        if sep_d and (ch == 68 or ch == 100):
            continue
        return False
    return True


def numeric_ok(doc, frozenset nibbles, frozenset track_fields, bint encrypted_tracks):
    """True when ``doc`` passes the numeric checks (see the pure twin's docstring)."""
    if type(doc) is not dict:  # any other mapping: the pure scan
        from ._fields_py import numeric_ok as scan
        return scan(doc, nibbles, track_fields, encrypted_tracks)
    cdef dict d = <dict>doc
    mti = d.get("t")
    if mti is not None and not (type(mti) is str and PyUnicode_GET_LENGTH(mti) == 4 and _only(mti, False, False)):
        return False
    for field, value in d.items():
        if field in nibbles:
            if field in track_fields:
                if not _only(value, not encrypted_tracks, encrypted_tracks):
                    return False
            elif not _only(value, False, False):
                return False
    return True
