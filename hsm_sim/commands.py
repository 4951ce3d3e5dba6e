"""payShield-style host commands: parse the fields of one request, answer with code + fields.

:class:`Hsm` is transport-free: :meth:`Hsm.handle` takes one frame body (header + command
code + fields, without the 2-byte length) and returns the reply body.  Every failure is
an error code (``docs/hsm.md``), never an exception out of ``handle``; the reply code is
the command code with its second character advanced (``CA`` -> ``CB``).

Clear keys and PINs exist only inside the handlers (keys as cached key schedules in
:mod:`hsm_sim.lmk`); nothing here logs or returns them.  PIN, MAC, DUKPT and EMV
arithmetic come from :mod:`_fastcore.crypto`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from _fastcore import crypto as fc
from _fastcore.errors import CryptoError
from switch.logsafe import kv

from .keystore import KeyStore, StoredKey
from .lmk import (
    DEFAULT_LMK,
    DEFAULT_SCHEME,
    SCHEME_PARTS,
    SCHEME_VARIANTS,
    Lmk,
    LmkError,
    ParsedKey,
    ecb_cipher,
    has_odd_parity,
    normalise_key_type,
    parse_key_field,
    random_key,
)

log = logging.getLogger("posswitch.hsm_sim")

FIRMWARE = "0007-E000"
TRAILER_DELIMITER = "\x19"
#: posswitch extension: M6/M8 algorithm code of the UnionPay POS ECB MAC
ALG_POS_ECB = "91"

#: error codes used by this simulator (payShield meanings)
ERRORS: dict[str, str] = {
    "00": "no error",
    "01": "verification failed",
    "10": "source key parity error",
    "11": "destination key parity error",
    "12": "no keys loaded in user storage",
    "13": "LMK error",
    "15": "invalid input data",
    "20": "PIN block does not contain valid values",
    "23": "invalid PIN block format code",
    "24": "PIN is fewer than 4 or more than 12 digits long (or longer than the maximum)",
    "26": "invalid key scheme",
    "27": "incompatible key length",
    "68": "command disabled or unknown",
    "69": "PIN block format has been disabled",
    "80": "data length error",
}


_REPLY_CODES: dict[str, str] = {}  # filled for the registered commands below


class CommandError(Exception):
    """A request failed with a payShield error code; ``msg`` names the field and offset."""

    def __init__(self, code: str, msg: str) -> None:
        super().__init__(msg)
        self.code = code


def reply_code(command: str) -> str:
    """``CA`` -> ``CB``; non-printable codes answer as ``ZZ``."""
    code = _REPLY_CODES.get(command)
    if code is not None:
        return code
    if len(command) == 2 and command.isascii() and command.isprintable() and command[1] != "~":
        return command[0] + chr(ord(command[1]) + 1)
    return "ZZ"


class Fields:
    """A cursor over a request's fields (latin-1 text, so binary data survives)."""

    __slots__ = ("text", "pos", "hsm", "base")

    def __init__(self, text: str, hsm: Hsm, base: int) -> None:
        self.text = text
        self.pos = 0
        self.hsm = hsm
        self.base = base  # offset of the fields in the frame body, for messages

    def off(self) -> int:
        return self.base + self.pos

    def take(self, n: int, name: str) -> str:
        s = self.text[self.pos : self.pos + n]
        if len(s) != n:
            raise CommandError("15", f"{name}: need {n} characters at offset {self.off()}, got {len(s)}")
        self.pos += n
        return s

    def hex(self, n: int, name: str) -> bytes:
        s = self.take(n, name)
        try:
            raw = bytes.fromhex(s)
        except ValueError:
            raw = b""
        if len(raw) * 2 != n:  # fromhex would also skip whitespace
            raise CommandError("15", f"{name}: not hex at offset {self.off() - n}")
        return raw

    def hexlen(self, n: int, name: str) -> int:
        s = self.take(n, name)
        if not all(c in _HEX_DIGITS for c in s):
            raise CommandError("15", f"{name}: not hex at offset {self.off() - n}")
        return int(s, 16)

    def digits(self, n: int, name: str) -> str:
        s = self.take(n, name)
        if not (s.isascii() and s.isdigit()):
            raise CommandError("15", f"{name}: not decimal at offset {self.off() - n}")
        return s

    def one_of(self, name: str, allowed: str | tuple[str, ...], n: int = 1) -> str:
        s = self.take(n, name)
        if s not in allowed:
            raise CommandError("15", f"{name}: invalid value {s!r} at offset {self.off() - n}")
        return s

    def peek(self, n: int = 1) -> str:
        return self.text[self.pos : self.pos + n]

    def optional(self, delimiter: str) -> bool:
        if self.text.startswith(delimiter, self.pos):
            self.pos += len(delimiter)
            return True
        return False

    def key(self, name: str) -> ParsedKey:
        """A key field, or ``K`` + index (optionally scheme-prefixed) naming a stored key."""
        text, pos = self.text, self.pos
        k = pos + 1 if text[pos : pos + 1] in SCHEME_PARTS and text[pos + 1 : pos + 2] == "K" else pos
        if text[k : k + 1] == "K":
            index = text[k + 1 : k + 4]
            stored = self.hsm.keystore.get(index) if len(index) == 3 else None
            if stored is None:
                raise CommandError("12", f"{name}: no key stored at index {index!r} (offset {self.off()})")
            self.pos = k + 4
            return parse_key_field(stored.key)[0]
        try:
            pk, self.pos = parse_key_field(text, pos)
        except LmkError as exc:
            raise CommandError(exc.code, f"{name}: {exc}".replace(f"offset {pos}", f"offset {self.base + pos}")) from None
        return pk

    def key_clear(self, name: str, key_type: str, *, source: bool = True) -> tuple[bytes, Any]:
        """A key field decrypted under the LMK: ``(clear key, ECB cipher)``, cached per field text.

        The cache skips parsing and LMK decryption for keys seen before (the hot path of CA);
        stored keys (``K`` + index) are always looked up afresh.
        """
        text, pos = self.text, self.pos
        first = text[pos : pos + 1]
        if first != "K" and text[pos + 1 : pos + 2] != "K":
            n = _FIELD_LEN.get(first, 16)
            hit = self.hsm.key_cache.get((key_type, text[pos : pos + n]))
            if hit is not None:
                self.pos = pos + n
                return hit
            stored = False
        else:
            stored = True
        pk = self.key(name)
        clear = self.hsm.clear_key(pk, key_type, source=source)
        entry = (clear, ecb_cipher(clear))
        if not stored:
            cache = self.hsm.key_cache
            if len(cache) >= 65536:
                cache.clear()
            cache[(key_type, pk.text)] = entry
        return entry

    def pin_format(self, name: str) -> int:
        at = self.off()
        code = self.take(2, name)
        fmt = fc.PAYSHIELD_PIN_FORMATS.get(code)
        if fmt is None:
            raise CommandError("23", f"{name}: unknown PIN block format {code!r} at offset {at}")
        if fmt == fc.PIN_ISO4:
            raise CommandError("69", f"{name}: format 48 (ISO 4, AES) needs AES keys; not enabled")
        return fmt

    def account(self) -> str:
        """12-digit account field -> a PAN whose ISO 0/3 PAN field is that account."""
        return self.digits(12, "account number") + "0"

    def finish(self, strict: bool = True) -> str:
        """Accept an optional ``%`` LMK id (``%00`` only) and trailer; return the trailer.

        ``strict=False`` (after a failed verification) ignores fields left unparsed.
        """
        rest = self.text[self.pos :]
        if not strict:
            i = rest.find(TRAILER_DELIMITER)
            return rest[i:] if 0 <= i and len(rest) - i <= 33 else ""
        trailer = ""
        i = rest.find(TRAILER_DELIMITER)
        if i >= 0:
            rest, trailer = rest[:i], rest[i:]
            if len(trailer) > 33:
                raise CommandError("15", f"trailer longer than 32 characters at offset {self.off() + i}")
        if rest.startswith("%"):
            if rest[1:] != "00":
                raise CommandError("13", f"LMK identifier {rest[1:]!r} at offset {self.off()}: only %00 is loaded")
            rest = ""
        if rest:
            raise CommandError("15", f"unexpected data at offset {self.off()}: {len(rest)} characters")
        return trailer


#: payShield PIN block format codes usable with DES keys (48 = ISO 4 needs AES)
_DES_PIN_FORMATS = {code: fmt for code, fmt in fc.PAYSHIELD_PIN_FORMATS.items() if fmt != fc.PIN_ISO4}
_HEX_DIGITS = frozenset("0123456789ABCDEFabcdef")
_FIELD_LEN = {"U": 33, "X": 33, "T": 49, "Y": 49, "Z": 17}

Handler = Callable[["Hsm", Fields], tuple[str, str]]
HANDLERS: dict[str, Handler] = {}


def command(code: str) -> Callable[[Handler], Handler]:
    def deco(fn: Handler) -> Handler:
        HANDLERS[code] = fn
        _REPLY_CODES[code] = code[0] + chr(ord(code[1]) + 1)
        return fn

    return deco


class Hsm:
    """The simulated HSM: an LMK set, a key store, and the command table."""

    def __init__(self, lmk: Lmk | None = None, keystore: KeyStore | None = None, header_len: int = 4) -> None:
        self.lmk = lmk or DEFAULT_LMK
        self.keystore = keystore if keystore is not None else KeyStore(lmk_check=self.lmk.check_value())
        self.header_len = header_len
        self.counts: dict[str, int] = {}
        #: (key type, key field text) -> (clear key, cipher): the decrypted-key cache
        self.key_cache: dict[tuple[str, str], tuple[bytes, Any]] = {}
        self._debug = log.isEnabledFor(logging.DEBUG)

    # -- entry point ---------------------------------------------------------------------------
    def handle(self, frame: bytes) -> bytes:
        """One request body (header + command + fields) -> one reply body."""
        hl = self.header_len
        header = frame[:hl]
        text = frame[hl:].decode("latin-1")
        cmd = text[:2]
        fast = _FAST.get(cmd)
        if fast is not None and not self._debug:
            try:
                reply = fast(self, text)
            except Exception:  # pragma: no cover - the general path below answers (and logs) it
                reply = None
            if reply is not None:
                counts = self.counts
                counts[cmd] = counts.get(cmd, 0) + 1
                return header + reply
        if len(frame) < hl + 2:
            log.warning("hsm request too short", extra=kv(length=len(frame)))
            return header + b"ZZ15"
        rcode = reply_code(cmd)
        handler = HANDLERS.get(cmd)
        if handler is None:
            log.warning("hsm unknown command", extra=kv(command=cmd if cmd.isprintable() else repr(cmd)))
            return header + f"{rcode}68".encode("latin-1")
        t0 = time.perf_counter() if self._debug else 0.0
        fields = Fields(text[2:], self, hl + 2)
        try:
            code, out = handler(self, fields)
            out += fields.finish(strict=code == "00")
        except CommandError as exc:
            code, out = exc.code, ""
            log.info("hsm command rejected", extra=kv(command=cmd, error=exc.code, reason=str(exc)))
        except LmkError as exc:
            code, out = exc.code, ""
            log.info("hsm command rejected", extra=kv(command=cmd, error=exc.code, reason=str(exc)))
        except CryptoError as exc:
            code, out = "15", ""
            log.info("hsm command rejected", extra=kv(command=cmd, error="15", reason=str(exc)))
        except Exception as exc:  # never let one request take the server down
            code, out = "15", ""
            log.error("hsm command failed", extra=kv(command=cmd, error="15", exc_type=type(exc).__name__))
        self.counts[cmd] = self.counts.get(cmd, 0) + 1
        if self._debug:
            log.debug("hsm command", extra=kv(command=cmd, error=code, us=round((time.perf_counter() - t0) * 1e6)))
        return header + f"{rcode}{code}{out}".encode("latin-1")

    # -- key helpers --------------------------------------------------------------------------
    def clear_key(self, pk: ParsedKey, key_type: str, *, source: bool = True) -> bytes:
        try:
            return self.lmk.decrypt_key(pk, key_type, parity_code="10" if source else "11")
        except LmkError as exc:
            raise CommandError(exc.code, str(exc)) from None

    def key_under_lmk(self, clear: bytes, key_type: str, scheme: str) -> str:
        return self.lmk.encrypt_key(clear, key_type, scheme)


# ------------------------------------------------------------------------------ helpers


def _export(kek: bytes, clear: bytes, scheme: str) -> str:
    """Encrypt ``clear`` under a ZMK/TMK: ``X``/``Y``/``Z``: ECB per part; ``U``/``T``: the
    scheme variants XORed into byte 8 of the KEK per part (as for the LMK)."""
    nparts = len(clear) // 8
    if nparts == 1:
        scheme = "Z"
    elif scheme == "Z":
        scheme = "X" if nparts == 2 else "Y"
    if SCHEME_PARTS.get(scheme) != nparts:
        raise CommandError("26", f"key scheme {scheme!r} does not fit a {len(clear)}-byte key")
    parts = [clear[8 * i : 8 * i + 8] for i in range(nparts)]
    if scheme in SCHEME_VARIANTS:
        if len(kek) < 16:
            raise CommandError("27", f"scheme {scheme} export needs a double-length KEK")
        ct = b""
        for i, p in enumerate(parts):
            k = bytearray(kek)
            k[8] ^= SCHEME_VARIANTS[scheme][i]
            ct += ecb_cipher(bytes(k)).encrypt(p)
    else:
        cipher = ecb_cipher(kek)
        ct = b"".join(cipher.encrypt(p) for p in parts)
    text = ct.hex().upper()
    return text if scheme == "Z" else scheme + text


def _import(kek: bytes, pk: ParsedKey) -> bytes:
    if pk.scheme in SCHEME_VARIANTS:
        if len(kek) < 16:
            raise CommandError("27", "variant-scheme import needs a double-length ZMK")
        out = b""
        for i, p in enumerate(pk.parts):
            k = bytearray(kek)
            k[8] ^= SCHEME_VARIANTS[pk.scheme][i]
            out += ecb_cipher(bytes(k)).decrypt(p)
        return out
    cipher = ecb_cipher(kek)
    return b"".join(cipher.decrypt(p) for p in pk.parts)


def _kcv6(clear: bytes) -> str:
    return ecb_cipher(clear).encrypt(bytes(8)).hex().upper()[:6]


def _key_type3(f: Fields, name: str) -> str:
    at = f.off()
    kt = f.take(3, name).upper()
    try:
        return normalise_key_type(kt)
    except LmkError:
        raise CommandError("15", f"{name}: unknown key type {kt!r} at offset {at}") from None


#: the only thing said about a PIN block that does not decode: the details (which nibble is
#: wrong, and its value) are derived from the clear PIN field and must not reach a log
_BAD_PIN_BLOCK = "PIN block does not decode under this key, format and account"


def _decode_pin(cipher: Any, block: bytes, pan: str, fmt: int) -> str:
    """Decrypt with a cached cipher, decode with _fastcore; failures say nothing about the content."""
    try:
        return fc.pin_block_decode(cipher.decrypt(block), pan, fmt)
    except CryptoError:
        raise CommandError("20", _BAD_PIN_BLOCK) from None


def _decrypt_pin(key: bytes, block: bytes, pan: str, fmt: int) -> str:
    return _decode_pin(ecb_cipher(key), block, pan, fmt)


def _check_max_len(pin: str, max_len: int) -> None:
    if len(pin) > max_len:
        raise CommandError("24", f"PIN length {len(pin)} exceeds the maximum {max_len}")


# ------------------------------------------------------------------------------ diagnostics


@command("NC")
def cmd_nc(hsm: Hsm, f: Fields) -> tuple[str, str]:
    """Diagnostics: LMK check value (16H) + firmware number."""
    return "00", hsm.lmk.check_value() + FIRMWARE


@command("B2")
def cmd_b2(hsm: Hsm, f: Fields) -> tuple[str, str]:
    """Echo: length 4H + data -> data."""
    n = f.hexlen(4, "message length")
    return "00", f.take(n, "message")


# ------------------------------------------------------------------------------ keys


@command("A0")
def cmd_a0(hsm: Hsm, f: Fields) -> tuple[str, str]:
    """Generate a key: mode 1 · key type 3 · scheme (LMK) 1 · [mode 1: ;flag ZMK/TMK scheme]."""
    mode = f.one_of("mode", "01")
    kt = _key_type3(f, "key type")
    scheme = f.take(1, "key scheme (LMK)").upper()
    if scheme not in ("Z", "U", "T"):
        raise CommandError("26", f"key scheme (LMK) {scheme!r} at offset {f.off() - 1}")
    clear = random_key(8 * SCHEME_PARTS[scheme])
    under_lmk = hsm.key_under_lmk(clear, kt, scheme)
    out = under_lmk
    if mode == "1":
        kek_type = "000"
        if f.optional(";"):
            kek_type = "002" if f.one_of("ZMK/TMK flag", "01") == "1" else "000"
        kek = f.key_clear("ZMK/TMK", kek_type)[0]
        exp_scheme = f.take(1, "key scheme (ZMK)").upper()
        if exp_scheme not in SCHEME_PARTS:
            raise CommandError("26", f"key scheme (ZMK) {exp_scheme!r} at offset {f.off() - 1}")
        out += _export(kek, clear, exp_scheme)
    return "00", out + _kcv6(clear)


@command("A6")
def cmd_a6(hsm: Hsm, f: Fields) -> tuple[str, str]:
    """Import a key: key type 3 · ZMK · key (ZMK) · key scheme (LMK) 1."""
    kt = _key_type3(f, "key type")
    zmk = f.key_clear("ZMK", "000")[0]
    pk = f.key("key (ZMK)")
    scheme = f.take(1, "key scheme (LMK)").upper()
    clear = _import(zmk, pk)
    if not has_odd_parity(clear):
        raise CommandError("11", "imported key parity error")
    if scheme not in ("Z", "U", "T"):
        raise CommandError("26", f"key scheme (LMK) {scheme!r}")
    # Z/U/T each fit exactly one key length: the imported key's length decides
    return "00", hsm.key_under_lmk(clear, kt, DEFAULT_SCHEME[len(pk.parts)]) + _kcv6(clear)


@command("A8")
def cmd_a8(hsm: Hsm, f: Fields) -> tuple[str, str]:
    """Export a key: key type 3 · ZMK · key (LMK) · key scheme (ZMK) 1."""
    kt = _key_type3(f, "key type")
    zmk = f.key_clear("ZMK", "000")[0]
    clear = f.key_clear("key (LMK)", kt)[0]
    scheme = f.take(1, "key scheme (ZMK)").upper()
    if scheme not in SCHEME_PARTS:
        raise CommandError("26", f"key scheme (ZMK) {scheme!r}")
    return "00", _export(zmk, clear, scheme) + _kcv6(clear)


@command("BU")
def cmd_bu(hsm: Hsm, f: Fields) -> tuple[str, str]:
    """Key check value: type code 2 · length flag 1 · key · [;type 3] · [;reserved 2 + KCV type 1]."""
    at = f.off()
    code = f.take(2, "key type code").upper()
    flag = f.one_of("key length flag", "012")
    stored = f.peek(1) == "K" or f.peek(2)[1:] == "K"
    pk = f.key("key")
    kt = None
    if f.optional(";"):
        kt = _key_type3(f, "key type")
        if f.optional(";"):
            f.take(2, "reserved")
            kcv_type = f.one_of("KCV type", "01")
        else:
            kcv_type = "0"
    else:
        kcv_type = "0"
    if kt is None:
        if code == "FF":
            raise CommandError("15", f"key type code FF at offset {at} needs a ';' key type")
        try:
            kt = normalise_key_type("0" + code)
        except LmkError:
            raise CommandError("15", f"key type code {code!r} at offset {at}") from None
    if not stored and {"0": 1, "1": 2, "2": 3}[flag] != len(pk.parts):
        raise CommandError("27", f"key length flag {flag} does not match a {pk.length}-byte key")
    clear = hsm.clear_key(pk, kt)
    value = ecb_cipher(clear).encrypt(bytes(8)).hex().upper()
    return "00", value if kcv_type == "0" else value[:6]


@command("KA")
def cmd_ka(hsm: Hsm, f: Fields) -> tuple[str, str]:
    """Key check value (legacy): key · key type code 2 -> 16H."""
    pk = f.key("key")
    at = f.off()
    code = f.take(2, "key type code")
    try:
        kt = normalise_key_type("0" + code)
    except LmkError:
        raise CommandError("15", f"key type code {code!r} at offset {at}") from None
    return "00", ecb_cipher(hsm.clear_key(pk, kt)).encrypt(bytes(8)).hex().upper()


@command("LA")
def cmd_la(hsm: Hsm, f: Fields) -> tuple[str, str]:
    """Store a key in user storage (posswitch layout): index 3 · key type 3 · key (LMK)."""
    index = f.take(3, "index").upper()
    if not index.isalnum():
        raise CommandError("15", f"index {index!r} must be alphanumeric")
    kt = _key_type3(f, "key type")
    pk = f.key("key")
    clear = hsm.clear_key(pk, kt)
    hsm.keystore.put(index, StoredKey(pk.text, kt, _kcv6(clear)))
    return "00", ""


# ------------------------------------------------------------------------------ PIN translation


def _translate(hsm: Hsm, f: Fields, src_type: str) -> tuple[str, str]:
    _, src = f.key_clear("source key", src_type)
    _, dst = f.key_clear("destination ZPK", "001", source=False)
    # fast path: the 34 fixed characters after the keys, all valid; else parse field by field
    p = f.pos
    seg = f.text[p : p + 34]
    digits = seg[:2] + seg[22:]
    sfmt = _DES_PIN_FORMATS.get(seg[18:20])
    dfmt = _DES_PIN_FORMATS.get(seg[20:22])
    try:
        block = bytes.fromhex(seg[2:18])
    except ValueError:
        block = b""
    if (
        len(seg) == 34
        and len(block) == 8
        and sfmt is not None
        and dfmt is not None
        and digits.isascii()
        and digits.isdigit()
    ):
        f.pos = p + 34
        max_len, dfmt_code, pan = int(seg[:2]), seg[20:22], seg[22:] + "0"
    else:
        max_len = int(f.digits(2, "maximum PIN length"))
        block = f.hex(16, "source PIN block")
        sfmt = f.pin_format("source PIN block format")
        dfmt_code = f.peek(2)
        dfmt = f.pin_format("destination PIN block format")
        pan = f.account()
    # the block cipher runs here on cached contexts; the PIN-block format logic is _fastcore's
    pin = _decode_pin(src, block, pan, sfmt)
    _check_max_len(pin, max_len)
    out = dst.encrypt(fc.pin_block_encode(pin, pan, dfmt))
    return "00", f"{len(pin):02d}{out.hex().upper()}{dfmt_code}"


@command("CA")
def cmd_ca(hsm: Hsm, f: Fields) -> tuple[str, str]:
    """PIN TPK -> ZPK: TPK · ZPK · max PIN len 2 · block 16H · src fmt 2 · dst fmt 2 · account 12."""
    return _translate(hsm, f, "002")


@command("CC")
def cmd_cc(hsm: Hsm, f: Fields) -> tuple[str, str]:
    """PIN ZPK -> ZPK: same layout as CA with a source ZPK."""
    return _translate(hsm, f, "001")


def _dukpt(hsm: Hsm, f: Fields) -> tuple[str, str]:
    bdk = f.key_clear("BDK", "009")[0]
    zpk = f.key_clear("destination ZPK", "001", source=False)[0]
    at = f.off()
    descriptor = f.take(3, "KSN descriptor")
    if any(c not in "0123456789ABCDEFabcdef" for c in descriptor):
        raise CommandError("15", f"KSN descriptor: not hex at offset {at}")
    ksn = f.hex(20, "KSN")
    block = f.hex(16, "source PIN block")
    dfmt_code = f.peek(2)
    dfmt = f.pin_format("destination PIN block format")
    pan = f.account()
    if len(bdk) != 16:
        raise CommandError("27", "DUKPT needs a double-length BDK")
    pin_key = fc.dukpt_tdes_pin_key(bdk, ksn)
    pin = _decode_pin(ecb_cipher.__wrapped__(pin_key), block, pan, fc.PIN_ISO0)  # one-off key: not cached
    out = fc.encrypt_pin_block(zpk, pin, pan, dfmt)
    return "00", f"{len(pin):02d}{out.hex().upper()}{dfmt_code}"


@command("CI")
def cmd_ci(hsm: Hsm, f: Fields) -> tuple[str, str]:
    """PIN DUKPT -> ZPK: BDK · ZPK · KSN descriptor 3 · KSN 20H · block 16H · dst fmt 2 · account 12."""
    return _dukpt(hsm, f)


@command("G0")
def cmd_g0(hsm: Hsm, f: Fields) -> tuple[str, str]:
    """PIN TDES-DUKPT -> ZPK: same layout as CI."""
    return _dukpt(hsm, f)


def _lmk_pin_key(hsm: Hsm) -> bytes:
    return hsm.lmk.pair("02")  # LMK pair 02-03 encrypts PINs for host storage


@command("JE")
def cmd_je(hsm: Hsm, f: Fields) -> tuple[str, str]:
    """PIN ZPK -> LMK: ZPK · block 16H · fmt 2 · account 12 -> PIN (LMK) 16H."""
    zpk = f.key_clear("ZPK", "001")[0]
    block = f.hex(16, "PIN block")
    fmt = f.pin_format("PIN block format")
    pan = f.account()
    pin = _decrypt_pin(zpk, block, pan, fmt)
    return "00", fc.encrypt_pin_block(_lmk_pin_key(hsm), pin, pan, fc.PIN_ISO0).hex().upper()


@command("JG")
def cmd_jg(hsm: Hsm, f: Fields) -> tuple[str, str]:
    """PIN LMK -> ZPK: ZPK · fmt 2 · account 12 · PIN (LMK) 16H -> block 16H."""
    zpk = f.key_clear("ZPK", "001", source=False)[0]
    fmt = f.pin_format("PIN block format")
    pan = f.account()
    under_lmk = f.hex(16, "PIN (LMK)")
    pin = _decrypt_pin(_lmk_pin_key(hsm), under_lmk, pan, fc.PIN_ISO0)
    return "00", fc.encrypt_pin_block(zpk, pin, pan, fmt).hex().upper()


# ------------------------------------------------------------------------------ PIN verification


def _verify_ibm(hsm: Hsm, f: Fields, pin_key_type: str) -> tuple[str, str]:
    pin_key = f.key_clear("TPK/ZPK", pin_key_type)[0]
    pvk = f.key_clear("PVK", "002")[0]
    max_len = int(f.digits(2, "maximum PIN length"))
    block = f.hex(16, "PIN block")
    fmt = f.pin_format("PIN block format")
    check_len = int(f.digits(2, "check length"))
    pan = f.account()
    dec_table = f.digits(16, "decimalisation table")
    at = f.off()
    pvd = f.take(12, "PIN validation data").upper()
    offset = f.take(12, "offset").upper()
    if pvd.count("N") != 1 or any(c not in "0123456789ABCDEFN" for c in pvd):
        raise CommandError("15", f"PIN validation data at offset {at} needs hex and one N")
    validation = pvd.replace("N", pan[-6:-1])
    if not 4 <= check_len <= 12:
        raise CommandError("15", f"check length {check_len} outside 04-12")
    offset = offset[:check_len]
    if not offset.isdigit():
        raise CommandError("15", "offset: not decimal within the check length")
    pin = _decrypt_pin(pin_key, block, pan, fmt)
    _check_max_len(pin, max_len)
    return ("00" if fc.ibm3624_verify(pvk, pin, offset, validation, dec_table) else "01"), ""


@command("DA")
def cmd_da(hsm: Hsm, f: Fields) -> tuple[str, str]:
    """Verify a PIN under TPK by IBM 3624 offset (layout as EA)."""
    return _verify_ibm(hsm, f, "002")


@command("EA")
def cmd_ea(hsm: Hsm, f: Fields) -> tuple[str, str]:
    """Verify a PIN under ZPK by IBM 3624 offset: ZPK · PVK · max len 2 · block 16H · fmt 2 ·
    check length 2 · account 12 · dec table 16 · validation data 12 (with N) · offset 12."""
    return _verify_ibm(hsm, f, "001")


def _verify_pvv(hsm: Hsm, f: Fields, pin_key_type: str) -> tuple[str, str]:
    pin_key = f.key_clear("TPK/ZPK", pin_key_type)[0]
    pvk = f.key_clear("PVK pair", "002")[0]
    if len(pvk) != 16:
        raise CommandError("27", "PVK pair must be double length")
    block = f.hex(16, "PIN block")
    fmt = f.pin_format("PIN block format")
    pan = f.account()
    pvki = f.digits(1, "PVKI")
    pvv = f.digits(4, "PVV")
    pin = _decrypt_pin(pin_key, block, pan, fmt)
    ok = fc.mac_equal(fc.visa_pvv(pvk, pan, pvki, pin).encode(), pvv.encode())
    return ("00" if ok else "01"), ""


@command("DC")
def cmd_dc(hsm: Hsm, f: Fields) -> tuple[str, str]:
    """Verify a PIN under TPK by Visa PVV (layout as EC)."""
    return _verify_pvv(hsm, f, "002")


@command("EC")
def cmd_ec(hsm: Hsm, f: Fields) -> tuple[str, str]:
    """Verify a PIN under ZPK by Visa PVV: ZPK · PVK pair · block 16H · fmt 2 · account 12 · PVKI 1 · PVV 4."""
    return _verify_pvv(hsm, f, "001")


# ------------------------------------------------------------------------------ MAC


def _mac_request(hsm: Hsm, f: Fields) -> tuple[str, bytes, bytes]:
    f.one_of("mode flag (only 0, single block, is supported)", "0")
    in_fmt = f.one_of("input format", "012")
    alg = f.one_of("MAC algorithm", ("01", "03", ALG_POS_ECB), 2)
    pad = f.one_of("padding method", "0123")
    kt = f.one_of("key type", ("003", "008"), 3)
    key = f.key_clear("MAC key", kt)[0]
    n = f.hexlen(4, "message length")
    data = f.hex(2 * n, "message") if in_fmt == "1" else f.take(n, "message").encode("latin-1")
    if alg == ALG_POS_ECB:
        return alg, key, fc.mac_pos_ecb(key, data)
    if pad == "0":
        if len(data) % 8 or not data:
            raise CommandError("80", f"padding 0 needs a non-empty multiple of 8 bytes, got {len(data)}")
        pad = "1"
    if alg == "03" and len(key) == 8:
        key += key  # a single-length MAK is loaded as K||K (dialect §9.1): X9.19 = X9.9 then
    elif alg == "03" and len(key) != 16:
        raise CommandError("27", "MAC algorithm 03 needs a single or double-length key")
    return alg, key, fc.mac_iso9797_1(key, data, algorithm=int(alg), padding=int(pad), length=8)


@command("M6")
def cmd_m6(hsm: Hsm, f: Fields) -> tuple[str, str]:
    """Generate a MAC: mode 1 · input fmt 1 · algorithm 2 · padding 1 · key type 3 · key · length 4H ·
    message -> MAC (16H; 8 ASCII characters for algorithm 91)."""
    alg, _, mac = _mac_request(hsm, f)
    return "00", mac.decode("ascii") if alg == ALG_POS_ECB else mac.hex().upper()


@command("M8")
def cmd_m8(hsm: Hsm, f: Fields) -> tuple[str, str]:
    """Verify a MAC: M6 layout followed by the MAC (16H or 8H; 8 characters for algorithm 91)."""
    alg, _, mac = _mac_request(hsm, f)
    if alg == ALG_POS_ECB:
        given = f.take(8, "MAC").encode("latin-1")
        expected = mac
    else:
        n = 16 if len(f.text) - f.pos >= 16 and all(c in "0123456789ABCDEFabcdef" for c in f.peek(16)) else 8
        given = f.hex(n, "MAC")
        expected = mac[: n // 2]
    return ("00" if fc.mac_equal(given, expected) else "01"), ""


# ------------------------------------------------------------------------------ EMV


@command("KQ")
def cmd_kq(hsm: Hsm, f: Fields) -> tuple[str, str]:
    """ARQC verify / ARPC generate: mode 1 · scheme 1 · MK-AC · PAN/PSN 16H · R 16H · data length 2H ·
    data · ';' · ARQC 16H · [ARC 4H | CSU 8H + proprietary length 2H + data]."""
    mode = f.one_of("mode flag", "01234")
    scheme = f.one_of("scheme ID", "01")
    imk = f.key_clear("MK-AC", "109")[0]
    if len(imk) != 16:
        raise CommandError("27", "MK-AC must be double length")
    y = f.hex(16, "PAN/PSN").hex()
    r = f.hex(16, "session key derivation data")
    n = f.hexlen(2, "transaction data length")
    data = f.hex(2 * n, "transaction data")
    if not f.optional(";"):
        raise CommandError("15", f"delimiter ';' missing at offset {f.off()}")
    arqc = f.hex(16, "ARQC")
    if not y.isdigit():
        raise CommandError("15", "PAN/PSN must be decimal")
    mk = fc.emv_icc_master_key(imk, y[:14], y[14:])
    if scheme == "0":
        sk = mk
        expected = fc.mac_iso9797_1(sk, data, algorithm=3, padding=1, length=8)
    else:
        sk = fc.emv_session_key(mk, r)
        expected = fc.emv_arqc(sk, data)
    if mode in "013" and not fc.mac_equal(expected, arqc):
        return "01", ""
    if mode == "0":
        return "00", ""
    if mode in "12":
        arc = f.hex(4, "ARC")
        return "00", fc.emv_arpc_method1(mk, arqc, arc).hex().upper()
    csu = f.hex(8, "CSU")
    plen = f.hexlen(2, "proprietary data length")
    prop = f.hex(2 * plen, "proprietary data")
    return "00", fc.emv_arpc_method2(sk, arqc, csu, prop).hex().upper()


# ------------------------------------------------------------------------------ CVV, legacy MAC


def _pan_until_delimiter(f: Fields) -> str:
    at = f.off()
    end = f.text.find(";", f.pos)
    if end < 0:
        raise CommandError("15", f"PAN: delimiter ';' missing after offset {at}")
    pan = f.take(end - f.pos, "PAN")
    f.pos += 1
    if not (pan.isascii() and pan.isdigit() and 1 <= len(pan) <= 19):
        raise CommandError("15", f"PAN at offset {at}: 1-19 digits")
    return pan


def _cvv_inputs(hsm: Hsm, f: Fields, with_cvv: bool) -> tuple[bytes, str, str, str, str]:
    cvk = f.key_clear("CVK pair", "402")[0]
    if len(cvk) != 16:
        raise CommandError("27", "CVK pair must be double length")
    given = f.digits(3, "CVV") if with_cvv else ""
    pan = _pan_until_delimiter(f)
    return cvk, given, pan, f.digits(4, "expiry date"), f.digits(3, "service code")


@command("CW")
def cmd_cw(hsm: Hsm, f: Fields) -> tuple[str, str]:
    """Generate a CVV: CVK pair · PAN (up to 19N) · ';' · expiry 4N · service code 3N -> CVV 3N."""
    cvk, _, pan, expiry, sc = _cvv_inputs(hsm, f, False)
    return "00", fc.cvv(cvk, pan, expiry, sc)


@command("CY")
def cmd_cy(hsm: Hsm, f: Fields) -> tuple[str, str]:
    """Verify a CVV: CVK pair · CVV 3N · PAN · ';' · expiry 4N · service code 3N."""
    cvk, given, pan, expiry, sc = _cvv_inputs(hsm, f, True)
    return ("00" if fc.mac_equal(fc.cvv(cvk, pan, expiry, sc).encode(), given.encode()) else "01"), ""


def _x99(hsm: Hsm, f: Fields) -> bytes:
    key = f.key_clear("TAK", "003")[0]
    if len(key) != 8:
        raise CommandError("27", "MA/MC need a single-length TAK")
    return key


@command("MA")
def cmd_ma(hsm: Hsm, f: Fields) -> tuple[str, str]:
    """Legacy X9.9 MAC: TAK (single) · data (binary, the rest of the message) -> MAC 8H."""
    key = _x99(hsm, f)
    data = f.text[f.pos :].encode("latin-1")
    f.pos = len(f.text)
    return "00", fc.mac_x99(key, data, length=4).hex().upper()


@command("MC")
def cmd_mc(hsm: Hsm, f: Fields) -> tuple[str, str]:
    """Legacy X9.9 MAC verify: TAK (single) · MAC 8H · data (binary, the rest of the message)."""
    key = _x99(hsm, f)
    mac = f.hex(8, "MAC")
    data = f.text[f.pos :].encode("latin-1")
    f.pos = len(f.text)
    return ("00" if fc.mac_equal(fc.mac_x99(key, data, length=4), mac) else "01"), ""


# ------------------------------------------------------------------------------ key exchange shortcuts


@command("FA")
def cmd_fa(hsm: Hsm, f: Fields) -> tuple[str, str]:
    """ZPK from ZMK to LMK: ZMK · ZPK (ZMK) -> ZPK (LMK) · KCV 6H (A6 with key type 001)."""
    zmk = f.key_clear("ZMK", "000")[0]
    pk = f.key("ZPK (ZMK)")
    clear = _import(zmk, pk)
    if not has_odd_parity(clear):
        raise CommandError("11", "imported ZPK parity error")
    return "00", hsm.key_under_lmk(clear, "001", DEFAULT_SCHEME[len(pk.parts)]) + _kcv6(clear)


@command("GC")
def cmd_gc(hsm: Hsm, f: Fields) -> tuple[str, str]:
    """ZPK from LMK to ZMK: ZMK · ZPK (LMK) -> ZPK (ZMK, scheme X/Y) · KCV 6H."""
    zmk = f.key_clear("ZMK", "000")[0]
    clear = f.key_clear("ZPK (LMK)", "001")[0]
    return "00", _export(zmk, clear, "X") + _kcv6(clear)


def _to_tmk(hsm: Hsm, f: Fields, key_type: str, name: str) -> tuple[str, str]:
    tmk = f.key_clear("TMK", "002")[0]
    clear = f.key_clear(f"{name} (LMK)", key_type)[0]
    return "00", _export(tmk, clear, "X")


@command("AE")
def cmd_ae(hsm: Hsm, f: Fields) -> tuple[str, str]:
    """TMK/TPK/PVK from LMK to TMK: TMK · key (LMK, type 002) -> key under TMK (ECB, X/Y)."""
    return _to_tmk(hsm, f, "002", "TPK")


@command("AG")
def cmd_ag(hsm: Hsm, f: Fields) -> tuple[str, str]:
    """TAK from LMK to TMK: TMK · TAK (LMK, type 003) -> TAK under TMK (ECB, X/Y)."""
    return _to_tmk(hsm, f, "003", "TAK")


# ------------------------------------------------------------------------------ data encryption


def _data_command(hsm: Hsm, f: Fields, encrypt: bool) -> tuple[str, str]:
    mode = f.one_of("mode flag", ("00", "01"), 2)  # 00 ECB, 01 CBC
    in_fmt = f.one_of("input format flag", "01")  # 0 binary, 1 hex
    out_fmt = f.one_of("output format flag", "01")
    kt = f.one_of("key type", ("00A", "00B"), 3)  # ZEK, DEK/TDK
    _, cipher = f.key_clear("data key", kt)
    iv = f.hex(16, "IV") if mode == "01" else b""
    n = f.hexlen(4, "message length")
    data = f.hex(2 * n, "message") if in_fmt == "1" else f.take(n, "message").encode("latin-1")
    if len(data) % 8 or not data:
        raise CommandError("80", f"message length {len(data)} is not a non-zero multiple of 8")
    if mode == "00":
        out = cipher.encrypt(data) if encrypt else cipher.decrypt(data)
    else:
        out, chain = b"", iv
        for i in range(0, len(data), 8):
            block = data[i : i + 8]
            if encrypt:
                chain = cipher.encrypt(bytes(a ^ b for a, b in zip(block, chain, strict=True)))
                out += chain
            else:
                out += bytes(a ^ b for a, b in zip(cipher.decrypt(block), chain, strict=True))
                chain = block
    body = out.hex().upper() if out_fmt == "1" else out.decode("latin-1")
    return "00", (iv.hex().upper() if mode == "01" else "") + f"{len(out):04X}" + body


@command("M0")
def cmd_m0(hsm: Hsm, f: Fields) -> tuple[str, str]:
    """Encrypt a data block: mode 2 (00 ECB, 01 CBC) · input fmt 1 · output fmt 1 · key type 3H
    (00A ZEK, 00B DEK/TDK) · key · [IV 16H] · length 4H · message -> [IV] · length 4H · message."""
    return _data_command(hsm, f, True)


@command("M2")
def cmd_m2(hsm: Hsm, f: Fields) -> tuple[str, str]:
    """Decrypt a data block: same layout as M0."""
    return _data_command(hsm, f, False)


# ------------------------------------------------------------------------------ fast paths
#
# The four commands of every sale (M8 verify MAC, CA translate PIN, M6 generate MAC at the
# switch; EC verify PVV at the issuer) are answered here without the ``Fields`` cursor, the
# handler table or ``finish``: fixed offsets, keys only from ``Hsm.key_cache``.  A fast path
# answers only the common, fully valid case and returns ``None`` for anything else (a stored
# ``K`` key, a key not seen before, a trailer or ``%`` LMK id, a field that does not parse, a
# PIN block that does not decode, a PIN over the maximum length ...); the general handler then
# parses the request from the start and gives the error code, log line and key-cache fill.
# Replies are byte-identical to the general path's (``tests/test_hsm_properties.py``).

FastPath = Callable[[Hsm, str], "bytes | None"]
_FAST: dict[str, FastPath] = {}
_PAD_METHODS = frozenset("0123")
_MAC_KEY_TYPES = frozenset(("003", "008"))


def _cached_key(hsm: Hsm, text: str, pos: int, key_type: str) -> tuple[tuple[bytes, Any] | None, int]:
    """The key field at ``pos`` from the decrypted-key cache (as ``Fields.key_clear`` looks it up)."""
    first = text[pos : pos + 1]
    if first == "K" or text[pos + 1 : pos + 2] == "K":  # a stored key: the general path
        return None, pos
    end = pos + _FIELD_LEN.get(first, 16)
    return hsm.key_cache.get((key_type, text[pos:end])), end


def _fast_mac(hsm: Hsm, text: str) -> bytes | None:
    """M6/M8, binary input, algorithm 91 (UnionPay POS ECB): mode 0 · fmt 0 · 91 · pad · type 3 · key ·
    length 4H · data [· MAC 8]."""
    if text[2:6] != "0091" or text[6:7] not in _PAD_METHODS:
        return None
    kt = text[7:10]
    if kt not in _MAC_KEY_TYPES:
        return None
    entry, p = _cached_key(hsm, text, 10, kt)
    if entry is None:
        return None
    n_hex = text[p : p + 4]
    if len(n_hex) != 4 or not _HEX_DIGITS.issuperset(n_hex):
        return None
    start = p + 4
    end = start + int(n_hex, 16)
    mac = fc.mac_pos_ecb(entry[0], text[start:end].encode("latin-1"))
    if text[1] == "6":  # M6: nothing after the data
        return b"M700" + mac if len(text) == end else None
    if len(text) != end + 8:  # M8: exactly the 8-character MAC after the data
        return None
    return b"M900" if fc.mac_equal(text[end:].encode("latin-1"), mac) else b"M901"


def _fast_translate(hsm: Hsm, text: str) -> bytes | None:
    """CA/CC: source key · ZPK · max PIN length 2 · block 16H · src fmt 2 · dst fmt 2 · account 12."""
    ca = text[1] == "A"
    src, p = _cached_key(hsm, text, 2, "002" if ca else "001")
    if src is None:
        return None
    dst, p = _cached_key(hsm, text, p, "001")
    if dst is None or len(text) != p + 34:
        return None
    seg = text[p:]
    sfmt = _DES_PIN_FORMATS.get(seg[18:20])
    dfmt = _DES_PIN_FORMATS.get(seg[20:22])
    digits = seg[:2] + seg[22:]
    if sfmt is None or dfmt is None or not (digits.isascii() and digits.isdigit()):
        return None
    try:
        block = bytes.fromhex(seg[2:18])
    except ValueError:
        return None
    if len(block) != 8:
        return None
    pan = seg[22:] + "0"
    try:
        pin = fc.pin_block_decode(src[1].decrypt(block), pan, sfmt)
    except CryptoError:
        return None
    if len(pin) > int(seg[:2]):
        return None
    out = dst[1].encrypt(fc.pin_block_encode(pin, pan, dfmt))
    return f"{'CB' if ca else 'CD'}00{len(pin):02d}{out.hex().upper()}{seg[20:22]}".encode("latin-1")


def _fast_pvv(hsm: Hsm, text: str) -> bytes | None:
    """EC/DC: PIN key · PVK pair · block 16H · fmt 2 · account 12 · PVKI 1 · PVV 4."""
    ec = text[0] == "E"
    pin_key, p = _cached_key(hsm, text, 2, "001" if ec else "002")
    if pin_key is None:
        return None
    pvk, p = _cached_key(hsm, text, p, "002")
    if pvk is None or len(pvk[0]) != 16 or len(text) != p + 35:
        return None
    seg = text[p:]
    fmt = _DES_PIN_FORMATS.get(seg[16:18])
    digits = seg[18:]
    if fmt is None or not (digits.isascii() and digits.isdigit()):
        return None
    try:
        block = bytes.fromhex(seg[:16])
    except ValueError:
        return None
    if len(block) != 8:
        return None
    pan = seg[18:30] + "0"
    try:
        pin = fc.pin_block_decode(pin_key[1].decrypt(block), pan, fmt)
        ok = fc.mac_equal(fc.visa_pvv(pvk[0], pan, seg[30], pin).encode(), seg[31:].encode())
    except CryptoError:
        return None
    return (b"ED" if ec else b"DD") + (b"00" if ok else b"01")


_FAST.update(M6=_fast_mac, M8=_fast_mac, CA=_fast_translate, CC=_fast_translate, EC=_fast_pvv, DC=_fast_pvv)
