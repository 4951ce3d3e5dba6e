# cython: language_level=3, annotation_typing=False
"""ISO 8583 codec, compiled twin (pure twin: ``_fastcore/_iso8583_py.py``, same API).

Each spec dict is compiled once into a C table of ``FieldC`` structs (encoding kind,
length kind, widths, pads, BCD/text digit tables) and cached.  The cache is keyed
by the spec object (a strong reference, so ``id`` reuse is impossible) and checked
on every call against CPython's dict version tags: the spec dict's tag on each
call, and the tag of each field dict the message touches.  Any in-place edit of
the spec or of a field dict changes a tag and the table is recompiled.
``invalidate(spec)`` drops a table explicitly; non-dict specs are never cached.

The fast path handles the common case (``str`` values, hex/BCD binary fields,
ASCII/latin-1/any codec text, ``b``/``bcd``/text length prefixes).  Whenever it
meets anything else, or any error, it gives up without side effects that the
reference would not also make, and the call is re-run by the pure twin, which
produces pyiso8583's exact result or exception.
"""

from cpython.bytearray cimport PyByteArray_FromStringAndSize
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.dict cimport PyDict_SetItem
from cpython.object cimport PyObject
from cpython.ref cimport Py_XDECREF, Py_XINCREF
from libc.stdint cimport uint16_t, uint64_t
from libc.stdlib cimport free, malloc, realloc
from libc.string cimport memcpy, memset

import codecs
import gc

from iso8583.decoder import DecodeError
from iso8583.encoder import EncodeError

from _fastcore import _iso8583_py as _ref
from _fastcore._iso8583_py import FieldNotInSpecDecodeError, FieldNotInSpecEncodeError

__all__ = [
    "Codec",
    "DecodeError",
    "EncodeError",
    "FieldNotInSpecDecodeError",
    "FieldNotInSpecEncodeError",
    "decode",
    "encode",
    "invalidate",
]


cdef extern from *:
    """
    #if PY_VERSION_HEX < 0x030E0000
    #define FC_HAVE_DICT_VERSION 1
    #if defined(__GNUC__)
    #pragma GCC diagnostic push
    #pragma GCC diagnostic ignored "-Wdeprecated-declarations"
    #endif
    static inline unsigned long long fc_dict_version(PyObject *d) {
        return (unsigned long long)((PyDictObject *)d)->ma_version_tag;
    }
    #if defined(__GNUC__)
    #pragma GCC diagnostic pop
    #endif
    #else
    /* No dict version tags: every check fails, so every call recompiles (correct, slow). */
    #define FC_HAVE_DICT_VERSION 0
    static unsigned long long fc_version_counter = 0;
    static inline unsigned long long fc_dict_version(PyObject *d) { (void)d; return ++fc_version_counter; }
    #endif
    """
    unsigned long long fc_dict_version(object d)
    unsigned long long fc_dict_version_p "fc_dict_version"(PyObject* d) noexcept
    int FC_HAVE_DICT_VERSION


cdef extern from "Python.h":
    bint PyUnicode_IS_ASCII(object o)
    int PyUnicode_KIND(object o)
    void* PyUnicode_DATA(object o)
    Py_ssize_t PyUnicode_GET_LENGTH(object o)
    int PyUnicode_1BYTE_KIND
    str PyUnicode_New(Py_ssize_t size, Py_UCS4 maxchar)
    object PyUnicode_DecodeLatin1(const char* s, Py_ssize_t size, const char* errors)
    object PyUnicode_Decode(const char* s, Py_ssize_t size, const char* encoding, const char* errors)
    object PyUnicode_AsEncodedString(object u, const char* encoding, const char* errors)


cdef extern from *:
    """
    static inline int fc_clz64(unsigned long long x) { return __builtin_clzll(x); }

    /* Building result dicts without PyDict_SetItem's lookup (CPython 3.11 only: the layout of
       its dict keys objects is copied below; other versions take PyDict_SetItem).  The decoder
       appends keys it knows to be new (one per field) to dicts it has just created and not yet
       shown to anyone, so the version tag needs no bump.  fc_dict_direct is switched on at
       import only after a self-check against PyDict_SetItem-built dicts (_check_direct). */
    static int fc_dict_direct = 0;
    #if PY_VERSION_HEX >= 0x030B0000 && PY_VERSION_HEX < 0x030C0000 && !defined(PYPY_VERSION)
    #define FC_DICT_LAYOUT 1
    typedef struct {
        Py_ssize_t dk_refcnt;
        uint8_t dk_log2_size;
        uint8_t dk_log2_index_bytes;
        uint8_t dk_kind;
        uint32_t dk_version;
        Py_ssize_t dk_usable;
        Py_ssize_t dk_nentries;
        char dk_indices[];
    } fc_keys;
    typedef struct { PyObject *me_key; PyObject *me_value; } fc_uentry;
    typedef struct { Py_hash_t me_hash; PyObject *me_key; PyObject *me_value; } fc_gentry;
    typedef struct {
        PyObject_HEAD
        Py_ssize_t ma_used;
        uint64_t ma_version_tag;
        fc_keys *ma_keys;
        void *ma_values;
    } fc_dictobj;
    #define FC_ENTRIES(k) ((fc_uentry *)(&((int8_t *)((k)->dk_indices))[(size_t)1 << (k)->dk_log2_index_bytes]))
    #else
    #define FC_DICT_LAYOUT 0
    #endif

    /* d[key] = value for an exact str key (hash cached) not yet in the fresh dict d.
       value_gc = 0 when the caller knows value is not a GC object (str, bytes). */
    static inline int fc_dict_append_x(PyObject *d, PyObject *key, PyObject *value, int value_gc) {
    #if FC_DICT_LAYOUT
        fc_dictobj *mp = (fc_dictobj *)d;
        fc_keys *k = mp->ma_keys;
        /* a combined table (general keys: what _PyDict_NewPresized makes; or str keys) */
        if (fc_dict_direct && mp->ma_values == NULL && k->dk_kind <= 1 && k->dk_usable > 0
                && k->dk_log2_index_bytes == k->dk_log2_size) {  /* one-byte indices */
            Py_hash_t h = ((PyASCIIObject *)key)->hash;
            size_t mask = ((size_t)1 << k->dk_log2_size) - 1;
            size_t i = (size_t)h & mask, perturb = (size_t)h;
            int8_t *ix = (int8_t *)k->dk_indices;
            fc_uentry *ep;
            if (h != -1) {
                while (ix[i] != -1) {
                    perturb >>= 5;
                    i = (i * 5 + perturb + 1) & mask;
                }
                ix[i] = (int8_t)k->dk_nentries;
                Py_INCREF(key);
                Py_INCREF(value);
                if (k->dk_kind == 0) {
                    fc_gentry *gp = (fc_gentry *)FC_ENTRIES(k) + k->dk_nentries;
                    gp->me_hash = h;
                    gp->me_key = key;
                    gp->me_value = value;
                } else {
                    ep = FC_ENTRIES(k) + k->dk_nentries;
                    ep->me_key = key;
                    ep->me_value = value;
                }
                k->dk_usable--;
                k->dk_nentries++;
                k->dk_version = 0;
                mp->ma_used++;
                if (value_gc && PyObject_IS_GC(value) && !PyObject_GC_IsTracked(d))
                    PyObject_GC_Track(d);  /* what PyDict_SetItem's MAINTAIN_TRACKING does */
                return 0;
            }
        }
    #endif
        return PyDict_SetItem(d, key, value);
    }
    #define fc_dict_append(d, key, value) fc_dict_append_x((d), (key), (value), 1)
    #define fc_dict_append_str(d, key, value) fc_dict_append_x((d), (key), (value), 0)

    /* s[:n] is 7-bit (word-at-a-time, overlapping loads for the tail) */
    static inline int fc_is_ascii(const char *s, Py_ssize_t n) {
        uint64_t acc = 0, w;
        uint32_t a, b;
        Py_ssize_t i;
        if (n >= 8) {
            for (i = 0; i + 8 <= n; i += 8) {
                memcpy(&w, s + i, 8);
                acc |= w;
            }
            memcpy(&w, s + n - 8, 8);
            acc |= w;
        } else if (n >= 4) {
            memcpy(&a, s, 4);
            memcpy(&b, s + n - 4, 4);
            acc = a | b;
        } else if (n > 0) {
            acc = (unsigned char)s[0] | (unsigned char)s[n >> 1] | (unsigned char)s[n - 1];
        }
        return (acc & 0x8080808080808080ULL) == 0;
    }

    /* {"len": ln, "data": data}: a copy of the template {"len": None, "data": None} (CPython
       clones its keys table in one go) with the two values swapped in. */
    static inline PyObject *fc_enc_entry(PyObject *tmpl, PyObject *klen, PyObject *kdata,
                                         PyObject *ln, PyObject *data) {
        PyObject *d;
    #if FC_DICT_LAYOUT
        if (fc_dict_direct) {
            d = PyDict_Copy(tmpl);
            if (d == NULL)
                return NULL;
            fc_dictobj *mp = (fc_dictobj *)d;
            fc_keys *k = mp->ma_keys;
            fc_uentry *ep;
            if (mp->ma_values == NULL && k->dk_kind == 1 && k->dk_nentries == 2 && mp->ma_used == 2) {
                ep = FC_ENTRIES(k);
                if (ep[0].me_value == Py_None && ep[1].me_value == Py_None) {
                    Py_INCREF(ln);
                    Py_INCREF(data);
                    ep[0].me_value = ln;
                    ep[1].me_value = data;
                    Py_DECREF(Py_None);
                    Py_DECREF(Py_None);
                    return d;
                }
            }
            Py_DECREF(d);
        }
    #endif
        d = PyDict_New();
        if (d == NULL)
            return NULL;
        if (PyDict_SetItem(d, klen, ln) < 0 || PyDict_SetItem(d, kdata, data) < 0) {
            Py_DECREF(d);
            return NULL;
        }
        return d;
    }

    /* bytes -> upper-case hex text, 16 bytes per step with SSE2 (baseline on x86-64),
       the rest through a 256-entry table of two-character pairs. */
    #if defined(__SSE2__)
    #include <emmintrin.h>
    #endif
    static inline void fc_hex_upper(const unsigned char *s, Py_ssize_t n, char *d,
                                    const uint16_t *pairs) {
        Py_ssize_t i = 0;
    #if defined(__SSE2__)
        const __m128i m0f = _mm_set1_epi8(0x0f), n9 = _mm_set1_epi8(9);
        const __m128i c0 = _mm_set1_epi8('0'), c7 = _mm_set1_epi8('A' - '0' - 10);
        for (; i + 16 <= n; i += 16) {
            __m128i v = _mm_loadu_si128((const __m128i *)(s + i));
            __m128i hi = _mm_and_si128(_mm_srli_epi16(v, 4), m0f);
            __m128i lo = _mm_and_si128(v, m0f);
            hi = _mm_add_epi8(_mm_add_epi8(hi, c0), _mm_and_si128(_mm_cmpgt_epi8(hi, n9), c7));
            lo = _mm_add_epi8(_mm_add_epi8(lo, c0), _mm_and_si128(_mm_cmpgt_epi8(lo, n9), c7));
            _mm_storeu_si128((__m128i *)(d + 2 * i), _mm_unpacklo_epi8(hi, lo));
            _mm_storeu_si128((__m128i *)(d + 2 * i + 16), _mm_unpackhi_epi8(hi, lo));
        }
        if (i + 8 <= n) {  /* bitmaps, PIN blocks, MACs: 8 bytes */
            __m128i v = _mm_loadl_epi64((const __m128i *)(s + i));
            __m128i hi = _mm_and_si128(_mm_srli_epi16(v, 4), m0f);
            __m128i lo = _mm_and_si128(v, m0f);
            hi = _mm_add_epi8(_mm_add_epi8(hi, c0), _mm_and_si128(_mm_cmpgt_epi8(hi, n9), c7));
            lo = _mm_add_epi8(_mm_add_epi8(lo, c0), _mm_and_si128(_mm_cmpgt_epi8(lo, n9), c7));
            _mm_storeu_si128((__m128i *)(d + 2 * i), _mm_unpacklo_epi8(hi, lo));
            i += 8;
        }
    #endif
        for (; i < n; i++)
            memcpy(d + 2 * i, &pairs[s[i]], 2);
    }
    """
    int fc_clz64(unsigned long long x)
    int fc_dict_append(object d, PyObject* key, object value) except -1
    int fc_dict_append_str(object d, PyObject* key, object value) except -1
    bint fc_is_ascii(const char* s, Py_ssize_t n) noexcept
    object fc_enc_entry(object tmpl, object klen, object kdata, object ln, object data)
    int fc_dict_direct
    void fc_hex_upper(const unsigned char* s, Py_ssize_t n, char* d, const uint16_t* pairs) noexcept
    dict _PyDict_NewPresized(Py_ssize_t minused)


# Slots of the field table: 1..192 fields (1 = secondary/tertiary bitmap), then h, t, p.
cdef enum:
    NSLOTS = 196
    H = 193
    T = 194
    P = 195

# data kinds
cdef enum:
    DK_BIN = 1
    DK_ASCII = 2
    DK_LATIN1 = 3
    DK_CODEC = 4

# length-prefix kinds
cdef enum:
    LK_FIXED = 0
    LK_BIN = 1
    LK_BCD = 2
    LK_TEXT = 3

cdef enum:
    MAX_FAST_LEN = 1 << 30


cdef struct FieldC:
    bint present        # the spec has this key
    bint fast           # compiled for the fast path (else the reference handles messages using it)
    int dkind
    int lkind
    int len_type
    Py_ssize_t max_len
    bint nibbles
    int lpad            # hex value of left_pad[:1], -1 none, -2 not a hex digit
    int rpad
    Py_UCS4 lpad_ch     # the pad character itself (decode compares the upper-case hex text)
    Py_UCS4 rpad_ch
    PyObject* fdict     # the field's spec dict (kept alive by the table)
    unsigned long long version
    PyObject* encname   # bytes: codec name for DK_CODEC
    PyObject* codec_dec # the codec's decode/encode functions (text encodings only), or NULL
    PyObject* codec_enc
    unsigned char digit_byte[10]
    signed char digit_of[256]


cdef signed char HEXVAL[256]
cdef char HEXUP[512]
cdef signed char BCDHI[256]     # byte -> value of a BCD byte (0..99) or -1
cdef uint16_t HEX16[256]        # byte -> its two upper-case hex digits, as stored in memory
cdef short HEXPAIR[65536]       # (first char << 8 | second char) -> byte value, or -1

cdef int _i
memset(HEXVAL, -1, sizeof(HEXVAL))
for _i in range(10):
    HEXVAL[48 + _i] = _i
for _i in range(6):
    HEXVAL[65 + _i] = 10 + _i
    HEXVAL[97 + _i] = 10 + _i
for _i in range(256):
    HEXUP[2 * _i] = b"0123456789ABCDEF"[_i >> 4]
    HEXUP[2 * _i + 1] = b"0123456789ABCDEF"[_i & 15]
    BCDHI[_i] = (_i >> 4) * 10 + (_i & 15) if (_i >> 4) < 10 and (_i & 15) < 10 else -1
    memcpy(&HEX16[_i], &HEXUP[2 * _i], 2)


cdef void _init_hexpair():
    cdef int a, b
    for a in range(256):
        for b in range(256):
            if HEXVAL[a] >= 0 and HEXVAL[b] >= 0:
                HEXPAIR[(a << 8) | b] = <short>((HEXVAL[a] << 4) | HEXVAL[b])
            else:
                HEXPAIR[(a << 8) | b] = -1


_init_hexpair()

# slot -> key string
cdef list _KEY_LIST = [None] * NSLOTS
for _i in range(1, 193):
    _KEY_LIST[_i] = str(_i)
_KEY_LIST[H] = "h"
_KEY_LIST[T] = "t"
_KEY_LIST[P] = "p"
cdef PyObject* KEYS[NSLOTS]
for _i in range(NSLOTS):
    KEYS[_i] = <PyObject*>_KEY_LIST[_i]


cdef str _LEN = "len"
cdef str _DATA = "data"
cdef bytes _EMPTY = b""
cdef dict _ENTRY_TEMPLATE = {_LEN: None, _DATA: None}
for _k in _KEY_LIST[1:] + [_LEN, _DATA]:
    hash(_k)  # the direct dict append reads the cached hash


cdef bint _check_direct():
    """Dicts built by fc_dict_append/fc_enc_entry behave exactly like PyDict_SetItem-built ones."""
    cdef int i, slot
    cdef dict d, ref
    cdef object v
    for n in (0, 3, 20, 21, 30, 150):
        d = _PyDict_NewPresized(20)
        ref = {}
        for i in range(n):
            slot = 1 + (i * 7) % (NSLOTS - 1)  # every slot once, out of order
            v = [i] if i % 5 == 0 else str(i)  # GC-tracked values too
            fc_dict_append(d, KEYS[slot], v)
            ref[<object>KEYS[slot]] = v
        if d != ref or list(d.items()) != list(ref.items()) or len(d) != len(ref):
            return False
        if n >= 5 and not gc.is_tracked(d):
            return False
        for k in ref:
            if d.get(k) is not ref[k] or k not in d:
                return False
        d["x"] = 1
        d.pop(<object>KEYS[8], None)
        ref["x"] = 1
        ref.pop(<object>KEYS[8], None)
        if d != ref or list(d) != list(ref) or dict(d) != ref or d.copy() != ref:
            return False
    e = fc_enc_entry(_ENTRY_TEMPLATE, _LEN, _DATA, b"12", b"ab")
    if e != {"len": b"12", "data": b"ab"} or list(e) != ["len", "data"] or e["data"] != b"ab":
        return False
    if _ENTRY_TEMPLATE != {"len": None, "data": None}:
        return False
    return True


fc_dict_direct = 1
fc_dict_direct = 1 if _check_direct() else 0
#: True when decode builds its dicts directly (CPython 3.11 layout, self-checked at import).
DIRECT_DICTS = bool(fc_dict_direct)


cdef class _Table:
    """A spec compiled for the fast path."""

    cdef FieldC f[NSLOTS]
    cdef object spec
    cdef unsigned long long version
    cdef list keep
    cdef bint header



cdef inline bint _fresh(FieldC* fc) noexcept:
    """The field's spec dict is unchanged since the table was compiled."""
    return fc_dict_version_p(fc.fdict) == fc.version


cdef object _text_kind(object enc, FieldC* fc, list keep):
    """Set ``fc.dkind`` (and ``encname``) for a text ``data_enc``."""
    try:
        info = codecs.lookup(enc)
        name = info.name
    except Exception:
        info = name = None
    if name == "ascii":
        fc.dkind = DK_ASCII
    elif name == "iso8859-1":
        fc.dkind = DK_LATIN1
    else:
        try:
            b = enc.encode("ascii")
        except Exception:
            return False
        if b"\0" in b:
            return False
        keep.append(b)
        fc.encname = <PyObject*>b
        fc.dkind = DK_CODEC
        # bytes.decode/str.encode call exactly these for a text encoding; others go by name
        if info is not None and getattr(info, "_is_text_encoding", True):
            keep.append(info)
            fc.codec_dec = <PyObject*>info.decode
            fc.codec_enc = <PyObject*>info.encode
    return True


cdef bint _digits_of(object enc, FieldC* fc):
    """A text length encoding where every digit is one byte of its own (ascii, cp500, utf-8...)."""
    cdef int d
    memset(fc.digit_of, -1, 256)
    try:
        enc_digits = [str(d).encode(enc) for d in range(10)]
        if any(type(x) is not bytes or len(x) != 1 for x in enc_digits):
            return False
        if len(set(enc_digits)) != 10:
            return False
        if b"".join(enc_digits).decode(enc) != "0123456789":
            return False
        if any(x.decode(enc) != str(d) for d, x in enumerate(enc_digits)):
            return False
    except Exception:
        return False
    for d in range(10):
        fc.digit_byte[d] = enc_digits[d][0]
        fc.digit_of[enc_digits[d][0]] = d
    return True


cdef int _pad_of(object fs, str key, FieldC* fc, bint left) except -3:
    """Return the pad's nibble (-1 none, -2 not hex) and record its character; -3: not compilable."""
    pad = fs.get(key, "")
    if type(pad) is not str:
        raise TypeError
    pad = pad[:1]
    if len(pad) == 0:
        return -1
    if left:
        fc.lpad_ch = ord(pad)
    else:
        fc.rpad_ch = ord(pad)
    if ord(pad) < 128 and HEXVAL[ord(pad)] >= 0:
        return HEXVAL[ord(pad)]
    return -2


cdef void _compile_field(_Table t, int slot, object fs):
    cdef FieldC* fc = &t.f[slot]
    memset(fc, 0, sizeof(FieldC))
    fc.present = True
    fc.lpad = -1
    fc.rpad = -1
    if type(fs) is not dict:
        return
    t.keep.append(fs)
    fc.fdict = <PyObject*>fs
    fc.version = fc_dict_version(fs)
    enc = fs.get("data_enc")
    if type(enc) is not str:
        return
    if enc == "b":
        fc.dkind = DK_BIN
    elif not _text_kind(enc, fc, t.keep):
        return
    if slot == T or slot == P or slot == 1:  # MTI and bitmaps read nothing but data_enc
        fc.fast = True
        return
    len_type = fs.get("len_type")
    max_len = fs.get("max_len")
    if type(len_type) is not int or type(max_len) is not int:
        return
    if not (0 <= len_type <= 8) or not (0 <= max_len < MAX_FAST_LEN):
        return
    fc.len_type = len_type
    fc.max_len = max_len
    len_count = fs.get("len_count", "bytes")
    if type(len_count) is not str:
        return
    fc.nibbles = len_count == "nibbles"
    try:
        fc.lpad = _pad_of(fs, "left_pad", fc, True)
        fc.rpad = _pad_of(fs, "right_pad", fc, False)
    except TypeError:
        if fc.nibbles and fc.dkind == DK_BIN:
            return
        fc.lpad = fc.rpad = -1
    if len_type == 0:
        fc.lkind = LK_FIXED
    else:
        len_enc = fs.get("len_enc")
        if type(len_enc) is not str:
            return
        if len_enc == "b":
            fc.lkind = LK_BIN
        elif len_enc == "bcd":
            if len_type > 8:
                return
            fc.lkind = LK_BCD
        elif _digits_of(len_enc, fc):
            fc.lkind = LK_TEXT
        else:
            return
    fc.fast = True


cdef _Table _compile(dict spec):
    cdef _Table t = _Table.__new__(_Table)
    cdef int slot
    t.spec = spec
    t.keep = []
    t.version = fc_dict_version(spec)
    memset(t.f, 0, sizeof(t.f))
    for slot in range(1, NSLOTS):
        fs = spec.get(<object>KEYS[slot])
        if fs is not None or <object>KEYS[slot] in spec:
            _compile_field(t, slot, fs)
    t.header = False
    if t.f[H].present and t.f[H].fast:
        t.header = t.f[H].max_len > 0
    elif t.f[H].present:
        t.f[H].fast = False  # unusual header spec: the reference handles every message
    return t


cdef _Table _last = None
cdef dict _tables = {}


cdef _Table _table_for(object spec):
    """The compiled table of ``spec``, or None when the spec cannot be compiled (not a dict)."""
    global _last
    cdef _Table t = _last
    if t is not None and t.spec is spec and fc_dict_version(spec) == t.version:
        return t
    if type(spec) is not dict:
        return None
    key = id(spec)
    t = _tables.get(key)
    if t is None or t.spec is not spec or fc_dict_version(spec) != t.version:
        t = _compile(spec)
        if len(_tables) >= 64:
            _tables.clear()
        _tables[key] = t
    _last = t
    return t


cdef _Table _refreshed(_Table t):
    """After a fast-path miss: a recompiled table if some field dict was edited, else None."""
    global _last
    cdef int slot
    if not FC_HAVE_DICT_VERSION:
        return None
    for slot in range(1, NSLOTS):
        if t.f[slot].fdict != NULL and not _fresh(&t.f[slot]):
            t = _compile(<dict>t.spec)
            _tables[id(t.spec)] = t
            _last = t
            return t
    return None


def invalidate(spec=None):
    """Drop the compiled table of ``spec`` (or of every spec).  Never needed for dict edits."""
    global _last
    _last = None
    if spec is None:
        _tables.clear()
    else:
        _tables.pop(id(spec), None)


# --------------------------------------------------------------------------- helpers

cdef struct Buf:
    char* p
    Py_ssize_t n
    Py_ssize_t cap
    char local[1024]


cdef inline int buf_init(Buf* b) noexcept:
    b.p = b.local
    b.n = 0
    b.cap = 1024
    return 0


cdef inline void buf_free(Buf* b) noexcept:
    if b.p != b.local:
        free(b.p)


cdef inline int buf_reserve(Buf* b, Py_ssize_t extra) except -1:
    if b.n + extra <= b.cap:
        return 0
    return buf_grow(b, b.n + extra)


cdef int buf_grow(Buf* b, Py_ssize_t need) except -1:
    cdef char* q
    cdef Py_ssize_t cap = b.cap * 2
    while cap < need:
        cap *= 2
    if b.p == b.local:
        q = <char*>malloc(cap)
        if q == NULL:
            raise MemoryError()
        memcpy(q, b.p, b.n)
    else:
        q = <char*>realloc(b.p, cap)
        if q == NULL:
            raise MemoryError()
    b.p = q
    b.cap = cap
    return 0


cdef inline str _hex_upper(const unsigned char* s, Py_ssize_t n):
    cdef str out = PyUnicode_New(2 * n, 127)
    fc_hex_upper(s, n, <char*>PyUnicode_DATA(out), HEX16)
    return out


cdef inline str _hex_upper_from(const unsigned char* s, Py_ssize_t n, int skip_first, int skip_last):
    """Upper-case hex of ``s[:n]`` without its first and/or last nibble."""
    cdef Py_ssize_t total = 2 * n - skip_first - skip_last
    cdef str out = PyUnicode_New(total, 127)
    cdef char* d = <char*>PyUnicode_DATA(out)
    if skip_first:  # the low nibble of the first byte, then whole bytes
        d[0] = HEXUP[2 * s[0] + 1]
        fc_hex_upper(s + 1, n - 1 - skip_last, d + 1, HEX16)
        if skip_last:
            d[total - 1] = HEXUP[2 * s[n - 1]]
    else:  # whole bytes, then the high nibble of the last byte
        fc_hex_upper(s, n - skip_last, d, HEX16)
        if skip_last:
            d[total - 1] = HEXUP[2 * s[n - 1]]
    return out


cdef inline str _ascii_str(const char* s, Py_ssize_t n):
    cdef str out = PyUnicode_New(n, 127)
    memcpy(PyUnicode_DATA(out), s, n)
    return out


cdef object _decode_text(FieldC* fc, const char* s, Py_ssize_t n):
    """Text field bytes -> str, or None when the reference must decide."""
    if fc.dkind == DK_ASCII:
        if not fc_is_ascii(s, n):
            return None
        return _ascii_str(s, n)
    if fc.dkind == DK_LATIN1:
        return PyUnicode_DecodeLatin1(s, n, NULL)
    return _decode_codec(fc, s, n)


cdef object _decode_codec(FieldC* fc, const char* s, Py_ssize_t n):
    cdef object r
    try:
        if fc.codec_dec != NULL:
            r = (<object>fc.codec_dec)(PyBytes_FromStringAndSize(s, n))
            if type(r) is tuple and len(<tuple>r) == 2 and type((<tuple>r)[0]) is str:
                return (<tuple>r)[0]
            return None
        return PyUnicode_Decode(s, n, PyBytes_AS_STRING(<object>fc.encname), NULL)
    except Exception:
        return None


cdef inline bytes _b(const char* s, Py_ssize_t n):
    return PyBytes_FromStringAndSize(s, n)


cdef inline object _enc_entry(bytes ln, bytes data):
    """A ``{"len": ln, "data": data}`` entry of ``doc_enc``."""
    return fc_enc_entry(_ENTRY_TEMPLATE, _LEN, _DATA, ln, data)


# --------------------------------------------------------------------------- decode

cdef inline str _read_bitmap(FieldC* fc, const char* s, Py_ssize_t n, Py_ssize_t* ppos,
                             uint64_t* bits):
    """Parse one bitmap at ``ppos[0]`` (advanced); returns its text or None (reference decides)."""
    cdef Py_ssize_t i, w, pos = ppos[0]
    cdef uint64_t v = 0
    cdef int h
    cdef str decoded
    if fc.dkind == DK_BIN:
        if pos + 8 > n:
            return None
        for i in range(8):
            v = (v << 8) | <unsigned char>s[pos + i]
        bits[0] = v
        ppos[0] = pos + 8
        return _hex_upper(<const unsigned char*>s + pos, 8)
    if pos + 16 > n:
        return None
    decoded = _decode_text(fc, s + pos, 16)
    if decoded is None or PyUnicode_GET_LENGTH(decoded) != 16 or not PyUnicode_IS_ASCII(decoded):
        return None
    for i in range(16):
        h = HEXVAL[(<unsigned char*>PyUnicode_DATA(decoded))[i]]
        if h < 0:
            return None
        v = (v << 4) | h
    bits[0] = v
    ppos[0] = pos + 16
    return decoded


cdef Py_ssize_t _decode_one(_Table t, int slot, const char* s, Py_ssize_t n, Py_ssize_t pos,
                            dict doc_dec, dict doc_enc) except -2:
    """Decode field ``slot`` at ``pos``; returns the new position, or -1 (reference decides)."""
    cdef FieldC* fc = &t.f[slot]
    cdef Py_ssize_t lt, i, nb, L = 0
    cdef uint64_t v
    cdef int b, d
    cdef object value
    cdef const unsigned char* u
    if not fc.fast or not _fresh(fc):
        return -1
    lt = fc.len_type
    if pos + lt > n:
        return -1
    u = <const unsigned char*>s + pos
    if lt == 0:
        L = fc.max_len
    else:
        if fc.lkind == LK_BIN:
            v = 0
            for i in range(lt):
                v = (v << 8) | u[i]
            if v > <uint64_t>fc.max_len:
                return -1
            L = <Py_ssize_t>v
        elif fc.lkind == LK_BCD:
            v = 0
            for i in range(lt):
                b = BCDHI[u[i]]
                if b < 0:
                    return -1
                v = v * 100 + b
            if v > <uint64_t>fc.max_len:
                return -1
            L = <Py_ssize_t>v
        else:
            v = 0
            for i in range(lt):
                d = fc.digit_of[u[i]]
                if d < 0:
                    return -1
                v = v * 10 + d
            if v > <uint64_t>fc.max_len:
                return -1
            L = <Py_ssize_t>v
    pos += lt
    nb = (L + 1) >> 1 if fc.nibbles else L
    if pos + nb > n:
        return -1
    if L == 0:
        value = ""
    elif fc.dkind == DK_BIN:
        if fc.nibbles and (L & 1):
            # the reference: strip left_pad[:1] if the text starts with it, else right_pad[:1]
            if fc.lpad != -1 and <Py_UCS4>(HEXUP[2 * u[lt]]) == fc.lpad_ch:
                value = _hex_upper_from(<const unsigned char*>s + pos, nb, 1, 0)
            elif fc.rpad != -1 and <Py_UCS4>(HEXUP[2 * u[lt + nb - 1] + 1]) == fc.rpad_ch:
                value = _hex_upper_from(<const unsigned char*>s + pos, nb, 0, 1)
            else:
                return -1
        else:
            value = _hex_upper(<const unsigned char*>s + pos, nb)
    elif fc.dkind == DK_ASCII and fc_is_ascii(s + pos, nb):
        value = _ascii_str(s + pos, nb)
    else:
        value = _decode_text(fc, s + pos, nb)
        if value is None:
            return -1
    fc_dict_append_str(doc_dec, KEYS[slot], value)
    if doc_enc is not None:
        fc_dict_append(doc_enc, KEYS[slot], _enc_entry(_b(s + pos - lt, lt) if lt else _EMPTY,
                                                       _b(s + pos, nb) if L else _EMPTY))
    return pos + nb


cdef object _fast_decode(_Table t, object data, bint want_enc):
    """(doc_dec, doc_enc) or doc_dec; None when the reference must decide."""
    cdef bytes raw = data if type(data) is bytes else bytes(data)
    cdef const char* s = PyBytes_AS_STRING(raw)
    cdef Py_ssize_t n = PyBytes_GET_SIZE(raw)
    cdef Py_ssize_t pos = 0, w
    # presized: a typical message (up to ~20 fields) is built without a resize
    cdef dict doc_dec = _PyDict_NewPresized(20)
    cdef dict doc_enc = _PyDict_NewPresized(20) if want_enc else None
    cdef FieldC* fc
    cdef uint64_t bm[3]
    cdef str text, text2
    cdef int slot, i
    bm[0] = bm[1] = bm[2] = 0
    if not t.f[H].present or not t.f[H].fast:
        return None
    if t.header:
        pos = _decode_one(t, H, s, n, pos, doc_dec, doc_enc)
        if pos < 0:
            return None
    # MTI
    fc = &t.f[T]
    if not fc.present or not fc.fast or not _fresh(fc):
        return None
    if fc.dkind == DK_BIN:
        if pos + 2 > n:
            return None
        text = _hex_upper(<const unsigned char*>s + pos, 2)
        w = 2
    else:
        if pos + 4 > n:
            return None
        text = _decode_text(fc, s + pos, 4)
        if text is None:
            return None
        w = 4
    fc_dict_append_str(doc_dec, KEYS[T], text)
    if want_enc:
        fc_dict_append(doc_enc, KEYS[T], _enc_entry(_EMPTY, _b(s + pos, w)))
    pos += w
    # bitmaps
    fc = &t.f[P]
    if not fc.present or not fc.fast or not _fresh(fc):
        return None
    w = pos
    text = _read_bitmap(fc, s, n, &pos, &bm[0])
    if text is None:
        return None
    fc_dict_append_str(doc_dec, KEYS[P], text)
    if want_enc:
        fc_dict_append(doc_enc, KEYS[P], _enc_entry(_EMPTY, _b(s + w, pos - w)))
    if bm[0] >> 63:
        fc = &t.f[1]
        if not fc.present or not fc.fast or not _fresh(fc):
            return None
        w = pos
        text = _read_bitmap(fc, s, n, &pos, &bm[1])
        if text is None:
            return None
        if bm[1] >> 63:
            text2 = _read_bitmap(fc, s, n, &pos, &bm[2])
            if text2 is None:
                return None
            text = text + text2
        fc_dict_append_str(doc_dec, KEYS[1], text)
        if want_enc:
            fc_dict_append(doc_enc, KEYS[1], _enc_entry(_EMPTY, _b(s + w, pos - w)))
    bm[0] &= ~(<uint64_t>1 << 63)
    bm[1] &= ~(<uint64_t>1 << 63)
    for i in range(3):
        while bm[i]:
            # highest set bit = lowest field number
            w = 63 - fc_clz64(bm[i])
            slot = 64 * i + (64 - w)
            bm[i] &= ~(<uint64_t>1 << w)
            if not t.f[slot].present:
                return None
            pos = _decode_one(t, slot, s, n, pos, doc_dec, doc_enc)
            if pos < 0:
                return None
    if pos != n:
        return None
    if want_enc:
        return doc_dec, doc_enc
    return doc_dec


def decode(data, spec):
    """Parse one message per ``spec``; returns ``(doc_dec, doc_enc)`` like ``iso8583.decode``."""
    cdef _Table t
    cdef object r
    if type(data) is bytes or type(data) is bytearray:
        t = _table_for(spec)
        if t is not None:
            r = _fast_decode(t, data, True)
            if r is not None:
                return r
            t = _refreshed(t)
            if t is not None:
                r = _fast_decode(t, data, True)
                if r is not None:
                    return r
    return _ref.decode(data, spec)


# --------------------------------------------------------------------------- encode

cdef Py_ssize_t _put_binary(FieldC* fc, Buf* b, object value) except -2:
    """Hex text -> bytes appended to ``b``; returns the counted length or -1 (reference decides)."""
    cdef Py_ssize_t m, i, nb
    cdef const unsigned char* c
    cdef int hi, lo, pre = -1, post = -1, bad = 0, x
    cdef Py_ssize_t k, pairs
    cdef char* out
    if type(value) is not str or not PyUnicode_IS_ASCII(value):
        return -1
    m = PyUnicode_GET_LENGTH(value)
    c = <const unsigned char*>PyUnicode_DATA(value)
    if m & 1:
        if not fc.nibbles:
            return -1
        if fc.lpad >= 0:
            pre = fc.lpad
        elif fc.lpad == -1 and fc.rpad >= 0:
            post = fc.rpad
        else:
            return -1
    nb = (m + 1) >> 1
    buf_reserve(b, nb)
    out = b.p + b.n
    i = 0
    if pre >= 0:
        lo = HEXVAL[c[0]]
        if lo < 0:
            return -1
        out[0] = <char>((pre << 4) | lo)
        out += 1
        c += 1
        i = 1
    pairs = (m - i) >> 1
    for k in range(pairs):
        x = HEXPAIR[(c[2 * k] << 8) | c[2 * k + 1]]
        bad |= x
        out[k] = <char>x
    if bad < 0:
        return -1
    c += 2 * pairs
    out += pairs
    if post >= 0:
        hi = HEXVAL[c[0]]
        if hi < 0:
            return -1
        out[0] = <char>((hi << 4) | post)
    b.n += nb
    return m if fc.nibbles else nb


cdef Py_ssize_t _put_text(FieldC* fc, Buf* b, object value) except -2:
    """Text -> encoded bytes appended to ``b``; returns the counted length or -1."""
    cdef Py_ssize_t m
    cdef object enc
    if type(value) is not str:
        return -1
    if fc.dkind == DK_ASCII:
        if not PyUnicode_IS_ASCII(value):
            return -1
        m = PyUnicode_GET_LENGTH(value)
        buf_reserve(b, m)
        memcpy(b.p + b.n, PyUnicode_DATA(value), m)
    elif fc.dkind == DK_LATIN1:
        if PyUnicode_KIND(value) != PyUnicode_1BYTE_KIND:
            return -1
        m = PyUnicode_GET_LENGTH(value)
        buf_reserve(b, m)
        memcpy(b.p + b.n, PyUnicode_DATA(value), m)
    else:
        try:
            if fc.codec_enc != NULL:
                enc = (<object>fc.codec_enc)(value)
                if type(enc) is not tuple or len(<tuple>enc) != 2:
                    return -1
                enc = (<tuple>enc)[0]
            else:
                enc = PyUnicode_AsEncodedString(value, PyBytes_AS_STRING(<object>fc.encname), NULL)
        except Exception:
            return -1
        if type(enc) is not bytes:
            return -1
        m = PyBytes_GET_SIZE(enc)
        buf_reserve(b, m)
        memcpy(b.p + b.n, PyBytes_AS_STRING(enc), m)
    b.n += m
    return 2 * m if fc.nibbles else m


cdef int _put_field(_Table t, int slot, Buf* b, object value, dict doc_enc) except -2:
    """Encode one field (length prefix + data) at the end of ``b``; 0 ok, -1 reference decides."""
    cdef FieldC* fc = &t.f[slot]
    cdef Py_ssize_t start, lt, L, data_start, i
    cdef uint64_t v
    if not fc.fast or not _fresh(fc):
        return -1
    lt = fc.len_type
    start = b.n
    buf_reserve(b, lt)
    b.n += lt  # room for the prefix, back-filled below
    data_start = b.n
    if fc.dkind == DK_BIN:
        L = _put_binary(fc, b, value)
    else:
        L = _put_text(fc, b, value)
    if L < 0:
        return -1
    if lt == 0:
        if L != fc.max_len:
            return -1
    else:
        if L > fc.max_len:
            return -1
        v = <uint64_t>L
        if fc.lkind == LK_BIN:
            if lt < 8 and (v >> (8 * lt)) != 0:
                return -1
            for i in range(lt - 1, -1, -1):
                b.p[start + i] = <char>(v & 0xFF)
                v >>= 8
        elif fc.lkind == LK_BCD:
            for i in range(lt - 1, -1, -1):
                b.p[start + i] = <char>(((v // 10) % 10) << 4 | (v % 10))
                v //= 100
            if v:
                return -1
        else:
            for i in range(lt - 1, -1, -1):
                b.p[start + i] = <char>fc.digit_byte[v % 10]
                v //= 10
            if v:
                return -1
    if doc_enc is not None:
        doc_enc[<object>KEYS[slot]] = _enc_entry(_b(b.p + start, lt) if lt else _EMPTY,
                                                 _b(b.p + data_start, b.n - data_start))
    return 0


cdef str _bitmap_text(uint64_t bits):
    cdef unsigned char raw[8]
    cdef int i
    for i in range(8):
        raw[i] = <unsigned char>(bits >> (56 - 8 * i))
    return _hex_upper(raw, 8)


cdef object _bitmap_bytes(FieldC* fc, uint64_t bits, str text):
    """The encoded bitmap, or None (reference decides)."""
    cdef unsigned char raw[8]
    cdef int i
    cdef Buf tmp
    if fc.dkind == DK_BIN:
        for i in range(8):
            raw[i] = <unsigned char>(bits >> (56 - 8 * i))
        return _b(<char*>raw, 8)
    buf_init(&tmp)
    try:
        if _put_text(fc, &tmp, text) < 0:
            return None
        return _b(tmp.p, tmp.n)
    finally:
        buf_free(&tmp)


cdef inline int _slot_of_key(str key):
    """Slot of a document key: 2..192 (not 65), H or T; 0: a key encode ignores ("p", "1",
    "65", non-numeric); -1: a numeric key the reference must judge ("0", "03", "193", "٣")."""
    cdef Py_ssize_t n = PyUnicode_GET_LENGTH(key), i
    cdef const unsigned char* c
    cdef int v = 0
    if not PyUnicode_IS_ASCII(key):
        return -1 if key.isnumeric() else 0
    c = <const unsigned char*>PyUnicode_DATA(key)
    if n == 1:
        if c[0] == 104:  # h
            return H
        if c[0] == 116:  # t
            return T
    if n == 0:
        return 0
    for i in range(n):
        if c[i] < 48 or c[i] > 57:
            return 0
        v = v * 10 + (c[i] - 48) if i < 4 else 9999
    if c[0] == 48 or v > 192:
        return -1
    if v == 1 or v == 65:
        return 0
    return v


cdef object _fast_encode(_Table t, dict doc, bint compat):
    """Encoded bytes (compat: (bytearray, doc_enc)); None when the reference must decide.

    In compat mode ``doc["p"]``/``doc["1"]`` are written only on success: the document is left
    as the reference finds it when this gives up (pyiso8583 writes them before the field loop, but
    no other key is added in between, so the resulting dict, key order included, is the same).
    The values are held (incref'd) while encoding: a text codec may run Python code.
    """
    cdef PyObject* vals[NSLOTS]
    cdef int held[NSLOTS]
    cdef int nheld = 0
    cdef bint secondary = False
    cdef uint64_t bm[3]
    cdef object key, value, pbytes, sbytes, tbytes, out
    cdef int slot, i, w
    cdef Buf b
    cdef dict doc_enc = {} if compat else None
    cdef FieldC* fc
    cdef str ptext, stext, ttext
    cdef Py_ssize_t start
    bm[0] = bm[1] = bm[2] = 0
    vals[H] = vals[T] = NULL
    for key, value in doc.items():
        if type(key) is not str:
            return None
        slot = _slot_of_key(key)
        if slot <= 0:
            if slot == 0:
                continue
            return None
        if nheld < NSLOTS:
            Py_XINCREF(<PyObject*>value)
            vals[slot] = <PyObject*>value
            held[nheld] = slot
            nheld += 1
        if slot <= 192:
            bm[(slot - 1) >> 6] |= (<uint64_t>1) << (63 - ((slot - 1) & 63))
    buf_init(&b)
    try:
        if vals[T] == NULL:
            return None
        if not t.f[H].present or not t.f[H].fast:
            return None
        if not t.f[T].present or not t.f[T].fast or not _fresh(&t.f[T]):
            return None
        if not t.f[P].present or not t.f[P].fast or not _fresh(&t.f[P]):
            return None
        if bm[2]:
            bm[1] |= (<uint64_t>1) << 63
        if bm[1]:
            bm[0] |= (<uint64_t>1) << 63
            if not t.f[1].present or not t.f[1].fast or not _fresh(&t.f[1]):
                return None
        if t.header:
            if vals[H] == NULL:
                return None
            if _put_field(t, H, &b, <object>vals[H], doc_enc) < 0:
                return None
        # MTI
        fc = &t.f[T]
        start = b.n
        if fc.dkind == DK_BIN:
            value = <object>vals[T]
            if type(value) is not str or PyUnicode_GET_LENGTH(value) != 4:
                return None
            if _put_binary(fc, &b, value) != 2:
                return None
        elif _put_text(fc, &b, <object>vals[T]) != 4:
            return None
        if compat:
            doc_enc["t"] = _enc_entry(_EMPTY, _b(b.p + start, b.n - start))
        # bitmaps
        ptext = _bitmap_text(bm[0])
        pbytes = _bitmap_bytes(&t.f[P], bm[0], ptext)
        if pbytes is None:
            return None
        if bm[1]:
            stext = _bitmap_text(bm[1])
            sbytes = _bitmap_bytes(&t.f[1], bm[1], stext)
            if sbytes is None:
                return None
            if bm[2]:
                ttext = _bitmap_text(bm[2])
                tbytes = _bitmap_bytes(&t.f[1], bm[2], ttext)
                if tbytes is None:
                    return None
                sbytes = sbytes + tbytes
                stext = stext + ttext
        secondary = bm[1] != 0
        if compat:
            doc_enc["p"] = _enc_entry(_EMPTY, pbytes)
            if bm[1]:
                doc_enc["1"] = _enc_entry(_EMPTY, sbytes)
        buf_reserve(&b, PyBytes_GET_SIZE(pbytes))
        memcpy(b.p + b.n, PyBytes_AS_STRING(pbytes), PyBytes_GET_SIZE(pbytes))
        b.n += PyBytes_GET_SIZE(pbytes)
        if bm[1]:
            buf_reserve(&b, PyBytes_GET_SIZE(sbytes))
            memcpy(b.p + b.n, PyBytes_AS_STRING(sbytes), PyBytes_GET_SIZE(sbytes))
            b.n += PyBytes_GET_SIZE(sbytes)
        bm[0] &= ~((<uint64_t>1) << 63)
        bm[1] &= ~((<uint64_t>1) << 63)
        for i in range(3):
            while bm[i]:
                w = 63 - fc_clz64(bm[i])
                slot = 64 * i + (64 - w)
                bm[i] &= ~((<uint64_t>1) << w)
                if not t.f[slot].present:
                    return None
                if _put_field(t, slot, &b, <object>vals[slot], doc_enc) < 0:
                    return None
        if compat:
            out = PyByteArray_FromStringAndSize(b.p, b.n)
            doc["p"] = ptext
            if secondary:
                doc["1"] = stext
            return out, doc_enc
        return _b(b.p, b.n)
    finally:
        buf_free(&b)
        for i in range(nheld):
            Py_XDECREF(vals[held[i]])


def encode(doc_dec, spec):
    """Serialise ``doc_dec`` per ``spec``; returns ``(bytearray, doc_enc)`` like ``iso8583.encode``."""
    cdef _Table t
    cdef object r
    if type(doc_dec) is dict:
        t = _table_for(spec)
        if t is not None:
            (<dict>doc_dec).pop("1", None)
            (<dict>doc_dec).pop("65", None)
            r = _fast_encode(t, <dict>doc_dec, True)
            if r is not None:
                return r
            t = _refreshed(t)
            if t is not None:
                r = _fast_encode(t, <dict>doc_dec, True)
                if r is not None:
                    return r
    return _ref.encode(doc_dec, spec)


# --------------------------------------------------------------------------- hot-loop API

cdef class Codec:
    """A codec bound to one spec: ``decode(data) -> fields``, ``encode(fields) -> bytes``.

    Same validation and exceptions as :func:`decode` / :func:`encode`, except that a field
    missing from the spec raises ``FieldNotInSpecDecodeError``/``FieldNotInSpecEncodeError``
    (an ``iso8583`` error naming the field that is also a ``KeyError``) where pyiso8583 raises
    a bare ``KeyError``.  ``decode`` builds no ``doc_enc``; ``encode`` does not modify ``fields``.  The compiled table is checked
    against the spec's dict version tags on every call, like the module-level functions.
    """

    cdef readonly object spec
    cdef _Table _t

    def __init__(self, spec):
        self.spec = spec
        self._t = _compile(spec) if type(spec) is dict else None

    cdef inline _Table _table(self):
        cdef _Table t = self._t
        if t is None:
            return None
        if fc_dict_version(self.spec) != t.version:
            t = self._t = _compile(self.spec)
        return t

    def decode(self, data):
        cdef _Table t
        cdef object r
        if type(data) is bytes or type(data) is bytearray:
            t = self._table()
            if t is not None:
                r = _fast_decode(t, data, False)
                if r is not None:
                    return r
                if self._stale(t):
                    return self.decode(data)
        return _ref._decode(data, self.spec, True)[0]

    def encode(self, fields):
        cdef _Table t
        cdef object r
        if type(fields) is dict:
            t = self._table()
            if t is not None:
                r = _fast_encode(t, <dict>fields, False)
                if r is not None:
                    return r
                if self._stale(t):
                    return self.encode(fields)
        if not isinstance(fields, dict):
            raise TypeError(f"Decoded ISO8583 data must be dict, not {fields.__class__.__name__}")
        return bytes(_ref._encode(dict(fields), self.spec, True)[0])

    cdef bint _stale(self, _Table t):
        """A field dict changed since compiling: recompile (the caller retries once)."""
        cdef int slot
        if not FC_HAVE_DICT_VERSION:
            return False
        for slot in range(1, NSLOTS):
            if t.f[slot].fdict != NULL and not _fresh(&t.f[slot]):
                self._t = _compile(self.spec)
                return True
        return False

    def __repr__(self):
        return f"<Codec spec={id(self.spec):#x} (compiled)>"
