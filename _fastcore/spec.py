"""ISO 8583 field specifications: the CUPS POS terminal dialect and the host-to-host choice.

``POS_SPEC`` is a pyiso8583 4.0.1 spec dict for the dialect our POS terminals speak
(``/work/shared/reference/pos-8583-dialect.md`` §2-§3, summary in ``docs/dialect.md``).
``iso8583.encode``/``iso8583.decode`` and our compiled codec (``_fastcore.iso8583``)
accept it.  It describes the ISO 8583 message only (MTI, bitmap, fields): the 2-byte
length, the TPDU and the 6-byte header are handled by ``_fastcore.framing``.

What a caller puts in a document (``doc[...]`` is always ``str``):

* ``n`` / ``z`` fields (``data_enc="b"``): the digits, e.g. ``doc["3"] = "000000"``,
  ``doc["22"] = "051"`` (3 digits; the codec packs it left-aligned ``05 10``).
  Track data (35, 36) uses ``D`` for the ``=`` separator (the wire nibble), e.g.
  ``"6225880000000000D2512101"``; see ``fields.track_to_wire``/``track_from_wire``.
  Decoded values are upper-case.
* ``b`` fields (52, 55, 58, 62, 64): upper- or lower-case hex of the bytes; decoded
  values are upper-case hex.  Field 64 of MAC-1 is ``"4233413039324145"``.
* ``an``/``ans`` fields: text.  Fixed fields must already have their exact length
  (pad with spaces yourself, e.g. ``doc["42"] = mid.ljust(15)``).  Field 63 is GBK
  (its reply texts are Chinese); every other text field is ASCII.

``H2H_SPEC`` is the switch<->issuer host-to-host spec (ASCII ISO 8583, see ``docs/dialect.md``).

The reference's tables are data here too: §4 :data:`TRANSACTION_TYPES`, :func:`lookup_transaction`,
:data:`MAC_TYPES`; §10 :data:`RESPONSE_CODES`; §11 the ``FIELD55_*`` tag lists.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import iso8583.specs

__all__ = [
    "POS_SPEC",
    "H2H_SPEC",
    "FieldSpec",
    "TransactionType",
    "TRANSACTION_TYPES",
    "TRANSACTIONS_BY_NAME",
    "NETWORK_MGMT_CODES",
    "MAC_TYPES",
    "REVERSAL_DONE_CODES",
    "FIELD55_REQUEST_MANDATORY",
    "FIELD55_REQUEST_OPTIONAL",
    "FIELD55_REVERSAL_TAGS",
    "FIELD55_SCRIPT_ADVICE_TAGS",
    "FIELD55_REPLY_TAGS",
    "RESPONSE_CODES",
    "APPROVED_CODES",
    "lookup_transaction",
    "response_mti",
    "derive_spec",
    "FieldPresence",
    "REQUEST_FIELDS",
    "missing_request_fields",
]

FieldSpec = dict[str, Any]


def _bcd(max_len: int, desc: str, *, len_type: int = 0, align: str = "right") -> FieldSpec:
    """Packed-BCD numeric: ``max_len`` counts digits; odd lengths get one pad nibble ``0``.

    ``align="right"``: pad nibble first (fixed numerics); ``"left"``: pad nibble last
    (F22 and the variable numerics).  ``len_type`` 0 fixed, 1 LL (1 BCD byte), 2 LLL (2 BCD bytes).
    """
    spec: FieldSpec = {
        "data_enc": "b",
        "len_enc": "bcd",
        "len_type": len_type,
        "max_len": max_len,
        "len_count": "nibbles",
        "desc": desc,
    }
    spec["left_pad" if align == "right" else "right_pad"] = "0"
    return spec


def _text(max_len: int, desc: str, *, len_type: int = 0, enc: str = "ascii") -> FieldSpec:
    """ASCII (or GBK) text; a variable length prefix is BCD and counts bytes."""
    return {"data_enc": enc, "len_enc": "bcd", "len_type": len_type, "max_len": max_len, "desc": desc}


def _bin(max_len: int, desc: str, *, len_type: int = 0) -> FieldSpec:
    """Raw bytes (hex string in a document); a variable length prefix is BCD and counts bytes."""
    return {"data_enc": "b", "len_enc": "bcd", "len_type": len_type, "max_len": max_len, "desc": desc}


LL, LLL = 1, 2

# Fields of the dialect (reference §3).  Anything not listed below follows ISO 8583:1987
# with the same wire rules (see _ISO_1987_OTHERS): a terminal never sends those, but a
# frame that does gets a clean DecodeError/field-level result instead of a KeyError.
_DIALECT: dict[str, FieldSpec] = {
    "h": {"data_enc": "b", "len_enc": "bcd", "len_type": 0, "max_len": 0,
          "desc": "No ISO header (TPDU and header are framing: _fastcore.framing)"},
    "t": {"data_enc": "b", "len_enc": "bcd", "len_type": 0, "max_len": 2,
          "desc": "Message Type Identifier, 2 bytes BCD"},
    "p": {"data_enc": "b", "len_enc": "bcd", "len_type": 0, "max_len": 8,
          "desc": "Bitmap, Primary (binary)"},
    "1": {"data_enc": "b", "len_enc": "bcd", "len_type": 0, "max_len": 8,
          "desc": "Bitmap, Secondary (binary; never used by POS terminals)"},
    "2": _bcd(19, "Primary Account Number 主账号", len_type=LL, align="left"),
    "3": _bcd(6, "Processing Code 交易处理码"),
    "4": _bcd(12, "Amount, Transaction 交易金额 (fen)"),
    "11": _bcd(6, "System Trace Audit Number 受卡方系统跟踪号"),
    "12": _bcd(6, "Time, Local Transaction 受卡方所在地时间 hhmmss"),
    "13": _bcd(4, "Date, Local Transaction 受卡方所在地日期 MMDD"),
    "14": _bcd(4, "Date, Expiration 卡有效期 YYMM"),
    "15": _bcd(4, "Date, Settlement 清算日期 MMDD"),
    "22": _bcd(3, "POS Entry Mode 服务点输入方式码 (left-aligned)", align="left"),
    "23": _bcd(3, "Card Sequence Number 卡片序列号"),
    "25": _bcd(2, "POS Condition Code 服务点条件码"),
    "26": _bcd(2, "PIN Capture Code 服务点PIN获取码"),
    "32": _bcd(11, "Acquiring Institution ID 受理方标识码", len_type=LL, align="left"),
    "35": _bcd(37, "Track 2 Data 二磁道数据 ('=' as D)", len_type=LL, align="left"),
    "36": _bcd(104, "Track 3 Data 三磁道数据 ('=' as D)", len_type=LLL, align="left"),
    "37": _text(12, "Retrieval Reference Number 检索参考号"),
    "38": _text(6, "Authorization ID Response 授权标识应答码"),
    "39": _text(2, "Response Code 应答码"),
    "41": _text(8, "Card Acceptor Terminal ID 受卡机终端标识码"),
    "42": _text(15, "Card Acceptor ID 受卡方标识码"),
    "44": _text(25, "Additional Response Data 附加响应数据", len_type=LL),
    "48": _bcd(322, "Additional Data - Private 附加数据 (settlement totals, batch upload)",
               len_type=LLL, align="left"),
    "49": _text(3, "Currency Code, Transaction 交易货币代码"),
    "52": _bin(8, "PIN Data 个人标识码数据 (ISO 9564 format 0 under PIK)"),
    "53": _bcd(16, "Security Related Control Information 安全控制信息"),
    "54": _text(20, "Additional Amounts 附加金额 (balance)", len_type=LLL),
    "55": _bin(255, "ICC Data IC卡数据域 (BER-TLV)", len_type=LLL),
    "58": _bin(100, "E-purse Data 电子钱包", len_type=LLL),
    "59": _text(999, "Terminal / Scan Info 终端信息 / 扫码信息 (ASCII TLV)", len_type=LLL),
    "60": _bcd(32, "Reserved Private 自定义域 (60.1 type, 60.2 batch, 60.3 net mgmt, ...)",
               len_type=LLL, align="left"),
    "61": _bcd(29, "Original Message Data 原始信息域", len_type=LLL, align="left"),
    "62": _bin(512, "Reserved Private 自定义域 (working keys, terminal info, TLVs)", len_type=LLL),
    "63": _text(163, "Reserved Private 自定义域 (operator / 63.1 card org + texts, GBK)",
                len_type=LLL, enc="gbk"),
    "64": _bin(8, "Message Authentication Code 报文鉴别码"),
}

# ISO 8583:1987 formats of the fields the dialect does not use: (field, kind, max_len, len_type, desc).
# kind: n (BCD right-aligned if fixed, left-aligned if variable), a (ASCII text), b (binary bytes).
_ISO_1987_OTHERS: tuple[tuple[int, str, int, int, str], ...] = (
    (5, "n", 12, 0, "Amount, Settlement"),
    (6, "n", 12, 0, "Amount, Cardholder Billing"),
    (7, "n", 10, 0, "Transmission Date and Time"),
    (8, "n", 8, 0, "Amount, Cardholder Billing Fee"),
    (9, "n", 8, 0, "Conversion Rate, Settlement"),
    (10, "n", 8, 0, "Conversion Rate, Cardholder Billing"),
    (16, "n", 4, 0, "Date, Conversion"),
    (17, "n", 4, 0, "Date, Capture"),
    (18, "n", 4, 0, "Merchant Type"),
    (19, "n", 3, 0, "Acquiring Institution Country Code"),
    (20, "n", 3, 0, "PAN Extended Country Code"),
    (21, "n", 3, 0, "Forwarding Institution Country Code"),
    (24, "n", 3, 0, "Network International ID"),
    (27, "n", 1, 0, "Authorization ID Response Length"),
    (28, "a", 9, 0, "Amount, Transaction Fee"),
    (29, "a", 9, 0, "Amount, Settlement Fee"),
    (30, "a", 9, 0, "Amount, Transaction Processing Fee"),
    (31, "a", 9, 0, "Amount, Settlement Processing Fee"),
    (33, "n", 11, LL, "Forwarding Institution ID"),
    (34, "a", 28, LL, "PAN, Extended"),
    (40, "a", 3, 0, "Service Restriction Code"),
    (43, "a", 40, 0, "Card Acceptor Name/Location"),
    (45, "a", 76, LL, "Track 1 Data"),
    (46, "a", 999, LLL, "Additional Data - ISO"),
    (47, "a", 999, LLL, "Additional Data - National"),
    (50, "a", 3, 0, "Currency Code, Settlement"),
    (51, "a", 3, 0, "Currency Code, Cardholder Billing"),
    (56, "a", 999, LLL, "Reserved ISO"),
    (57, "a", 999, LLL, "Reserved National"),
    (65, "b", 8, 0, "Bitmap, Extended"),
    (66, "n", 1, 0, "Settlement Code"),
    (67, "n", 2, 0, "Extended Payment Code"),
    (68, "n", 3, 0, "Receiving Institution Country Code"),
    (69, "n", 3, 0, "Settlement Institution Country Code"),
    (70, "n", 3, 0, "Network Management Information Code"),
    (71, "n", 4, 0, "Message Number"),
    (72, "n", 4, 0, "Message Number, Last"),
    (73, "n", 6, 0, "Date, Action"),
    (74, "n", 10, 0, "Credits, Number"),
    (75, "n", 10, 0, "Credits, Reversal Number"),
    (76, "n", 10, 0, "Debits, Number"),
    (77, "n", 10, 0, "Debits, Reversal Number"),
    (78, "n", 10, 0, "Transfer, Number"),
    (79, "n", 10, 0, "Transfer, Reversal Number"),
    (80, "n", 10, 0, "Inquiries, Number"),
    (81, "n", 10, 0, "Authorizations, Number"),
    (82, "n", 12, 0, "Credits, Processing Fee Amount"),
    (83, "n", 12, 0, "Credits, Transaction Fee Amount"),
    (84, "n", 12, 0, "Debits, Processing Fee Amount"),
    (85, "n", 12, 0, "Debits, Transaction Fee Amount"),
    (86, "n", 16, 0, "Credits, Amount"),
    (87, "n", 16, 0, "Credits, Reversal Amount"),
    (88, "n", 16, 0, "Debits, Amount"),
    (89, "n", 16, 0, "Debits, Reversal Amount"),
    (90, "n", 42, 0, "Original Data Elements"),
    (91, "a", 1, 0, "File Update Code"),
    (92, "a", 2, 0, "File Security Code"),
    (93, "a", 5, 0, "Response Indicator"),
    (94, "a", 7, 0, "Service Indicator"),
    (95, "a", 42, 0, "Replacement Amounts"),
    (96, "b", 8, 0, "Message Security Code"),
    (97, "a", 17, 0, "Amount, Net Settlement"),
    (98, "a", 25, 0, "Payee"),
    (99, "n", 11, LL, "Settlement Institution ID"),
    (100, "n", 11, LL, "Receiving Institution ID"),
    (101, "a", 17, LL, "File Name"),
    (102, "a", 28, LL, "Account ID 1"),
    (103, "a", 28, LL, "Account ID 2"),
    (104, "a", 100, LLL, "Transaction Description"),
    *((f, "a", 999, LLL, "Reserved ISO") for f in range(105, 112)),
    *((f, "a", 999, LLL, "Reserved National") for f in range(112, 120)),
    *((f, "a", 999, LLL, "Reserved Private") for f in range(120, 128)),
    (128, "b", 8, 0, "Message Authentication Code (secondary)"),
)


def _build_pos_spec() -> dict[str, FieldSpec]:
    spec: dict[str, FieldSpec] = dict(_DIALECT)
    for field, kind, max_len, len_type, desc in _ISO_1987_OTHERS:
        desc = f"{desc} (ISO 8583:1987; not used by the POS dialect)"
        if kind == "n":
            spec[str(field)] = _bcd(max_len, desc, len_type=len_type,
                                    align="left" if len_type else "right")
        elif kind == "a":
            spec[str(field)] = _text(max_len, desc, len_type=len_type)
        else:
            spec[str(field)] = _bin(max_len, desc, len_type=len_type)
    order = ["h", "t", "p"] + [str(i) for i in range(1, 129)]
    return {k: spec[k] for k in order}


#: pyiso8583 spec dict of the CUPS POS terminal dialect (message only: MTI, bitmap, fields).
POS_SPEC: dict[str, FieldSpec] = _build_pos_spec()

def derive_spec(overrides: dict[str, dict[str, Any]], base: dict[str, FieldSpec] | None = None) -> dict[str, FieldSpec]:
    """A per-acquirer dialect profile: a deep copy of ``base`` (default ``POS_SPEC``) with field overrides.

    ``overrides`` maps a field key to the spec keys to change, e.g.
    ``derive_spec({"60": {"max_len": 40}, "59": {"data_enc": "gbk"}})``.  A key absent from the base
    must come as a complete field spec.  Never mutate ``POS_SPEC`` itself: it is shared.
    """
    spec = copy.deepcopy(POS_SPEC if base is None else base)
    required = {"data_enc", "len_enc", "len_type", "max_len"}
    for key, change in overrides.items():
        merged = {**spec.get(key, {}), **change}
        missing = required - merged.keys()
        if missing:
            raise ValueError(f"field {key}: spec lacks {sorted(missing)}")
        merged.setdefault("desc", f"Field {key}")
        spec[key] = merged
    return spec


#: Switch <-> issuer host-to-host spec: pyiso8583's ``default_ascii`` (ASCII MTI, hex-text
#: bitmap, ASCII numerics and LL/LLL prefixes), deep-copied so nobody mutates the library's.
H2H_SPEC: dict[str, FieldSpec] = copy.deepcopy(iso8583.specs.default_ascii)


# --------------------------------------------------------------------------------------
# §4: message / processing code / 60.1 table
# --------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TransactionType:
    """One row of the transaction-determination table (reference §4)."""

    name: str
    mti: str  # request MTI
    processing_code: str | None  # F3; None when the message carries no F3
    condition_code: str | None  # F25
    type_code: str  # 60.1
    network_code: str  # 60.3
    reversible: bool  # a missing reply makes the terminal send an 0400
    mac: bool  # the request and reply carry F64

    @property
    def response_mti(self) -> str:
        return response_mti(self.mti)


def _t(name: str, mti: str, f3: str | None, f25: str | None, t601: str, t603: str,
       reversible: bool, mac: bool) -> TransactionType:
    return TransactionType(name, mti, f3, f25, t601, t603, reversible, mac)


#: Rows of reference §4 (financial rows: 60.3 ``000``; management rows: 60.1 ``00``).
TRANSACTION_TYPES: tuple[TransactionType, ...] = (
    _t("balance", "0200", "310000", "00", "01", "000", False, True),
    _t("preauth", "0100", "030000", "06", "10", "000", True, True),
    _t("preauth_void", "0100", "200000", "06", "11", "000", True, True),
    _t("preauth_completion", "0200", "000000", "06", "20", "000", True, True),
    _t("preauth_completion_void", "0200", "200000", "06", "21", "000", True, True),
    _t("preauth_completion_advice", "0220", "000000", "06", "24", "000", False, True),
    _t("sale", "0200", "000000", "00", "22", "000", True, True),
    _t("void", "0200", "200000", "00", "23", "000", True, True),
    _t("refund", "0220", "200000", "00", "25", "000", False, True),
    _t("offline_sale", "0220", "000000", "00", "30", "000", False, True),
    _t("adjust", "0220", "000000", "00", "32", "000", False, True),
    _t("tip", "0220", "000000", "00", "34", "000", False, True),
    _t("ic_offline_upload", "0320", "000000", "00", "36", "000", False, False),
    _t("sign_on_single", "0800", None, None, "00", "001", False, False),
    _t("sign_on_double", "0800", None, None, "00", "003", False, False),
    _t("sign_on_double_tdk", "0800", None, None, "00", "004", False, False),
    _t("sign_off", "0820", None, None, "00", "002", False, False),
    _t("settlement", "0500", None, None, "00", "201", False, False),
    _t("batch_upload_magstripe", "0320", "000000", None, "00", "201", False, False),
    _t("batch_upload_ic", "0320", "000000", None, "00", "203", False, False),
    _t("batch_upload_ic_failed", "0320", "000000", None, "00", "204", False, False),
    _t("batch_upload_end", "0320", None, None, "00", "202", False, False),
    _t("batch_upload_end_ic", "0320", None, None, "00", "207", False, False),
    _t("echo", "0820", None, None, "00", "301", False, False),
    _t("param_download", "0800", None, None, "00", "360", False, False),
    _t("status_upload", "0820", None, None, "00", "362", False, False),
    _t("capk_query", "0820", None, None, "00", "372", False, False),
    _t("capk_download", "0800", None, None, "00", "370", False, False),
    _t("capk_download_end", "0800", None, None, "00", "371", False, False),
    _t("aid_query", "0820", None, None, "00", "382", False, False),
    _t("aid_download", "0800", None, None, "00", "380", False, False),
    _t("aid_download_end", "0800", None, None, "00", "381", False, False),
    _t("blacklist_download", "0800", None, None, "00", "390", False, False),
    _t("blacklist_download_end", "0800", None, None, "00", "391", False, False),
    _t("script_advice", "0620", None, None, "00", "951", False, True),
)

TRANSACTIONS_BY_NAME: dict[str, TransactionType] = {t.name: t for t in TRANSACTION_TYPES}

#: 60.3 network management codes of the management messages.
NETWORK_MGMT_CODES: dict[str, str] = {
    "000": "financial",
    "001": "sign-on, single DES keys",
    "002": "sign-off",
    "003": "sign-on, double-length keys",
    "004": "sign-on, double-length keys + TDK",
    "201": "settlement / magstripe batch upload",
    "202": "end of batch upload",
    "203": "IC (TC / offline) batch upload",
    "204": "failed IC batch upload",
    "207": "end of IC-only batch upload",
    "301": "echo test",
    "360": "parameter download",
    "362": "status upload",
    "370": "CAPK download",
    "371": "CAPK download end",
    "372": "CAPK query",
    "380": "AID download",
    "381": "AID download end",
    "382": "AID query",
    "390": "blacklist download",
    "391": "blacklist download end",
    "951": "script result advice",
}

#: Names of the transactions whose messages carry a MAC (F64): LY ``HaveMacData``; reversals
#: (0400/0410) of these are MACed too.
MAC_TYPES: frozenset[str] = frozenset(t.name for t in TRANSACTION_TYPES if t.mac)

#: Field 39 values a terminal accepts in an 0410 as "reversal done".
REVERSAL_DONE_CODES: frozenset[str] = frozenset({"00", "12", "25"})

_BY_KEY: dict[tuple[str, str | None, str, str], TransactionType] = {
    (t.mti, t.processing_code, t.type_code, t.network_code): t for t in TRANSACTION_TYPES
}


def response_mti(mti: str) -> str:
    """The reply MTI of a request MTI: ``"0200"`` -> ``"0210"`` (request + 10)."""
    if len(mti) != 4 or not mti.isdigit() or mti[2] not in "02468":
        raise ValueError(f"not a request MTI: {mti!r}")
    return f"{mti[:2]}{int(mti[2]) + 1}{mti[3]}"


def lookup_transaction(mti: str, processing_code: str | None, type_code: str,
                       network_code: str) -> TransactionType | None:
    """Identify a request from MTI, F3, 60.1 and 60.3, or ``None`` if it is not in §4.

    For messages without F3 pass ``None``; 0320 batch uploads match with or without F3
    (magstripe uploads may carry ``200000``).  Reversals (0400) are not in the table:
    identify them through their original (same F3 / 60.1 / 60.3 under MTI 0200/0100/0220).
    """
    hit = _BY_KEY.get((mti, processing_code, type_code, network_code))
    if hit is None and mti == "0320":
        for f3 in ("000000", None):
            hit = _BY_KEY.get((mti, f3, type_code, network_code))
            if hit is not None:
                break
    return hit


# --------------------------------------------------------------------------------------
# §11: field 55 tag lists; §10: response codes
# --------------------------------------------------------------------------------------

#: Request field 55 of online sale / balance / pre-auth (contact and contactless): mandatory tags.
FIELD55_REQUEST_MANDATORY: tuple[str, ...] = (
    "9F26", "9F27", "9F10", "9F37", "9F36", "95", "9A", "9C", "9F02", "5F2A", "82", "9F1A", "9F03", "9F33",
)
#: ... and the tags sent when available (``9F74`` only for e-cash).  The card sequence number
#: (``5F34``) travels in field 23, not in field 55.
FIELD55_REQUEST_OPTIONAL: tuple[str, ...] = ("9F34", "9F35", "9F1E", "84", "9F09", "9F41", "9F63", "9F74")
#: Tags a reversal (0400) keeps from the original's field 55 (``_fastcore.tlv.select``).
FIELD55_REVERSAL_TAGS: tuple[str, ...] = ("95", "9F1E", "9F10", "9F36", "DF31")
#: Tags of a script-result advice (0620) or a TC batch upload.
FIELD55_SCRIPT_ADVICE_TAGS: tuple[str, ...] = (
    "9F33", "95", "9F37", "9F1E", "9F10", "9F26", "9F36", "82", "DF31", "9F1A", "9A",
)
#: Tags a host may put in a 0110/0210 field 55 (never ``8A``: the terminal derives the ARC from 39).
FIELD55_REPLY_TAGS: tuple[str, ...] = ("91", "71", "72")

#: Field 39 meanings (reference §10).
RESPONSE_CODES: dict[str, str] = {
    "00": "approved", "01": "refer to issuer", "03": "invalid merchant", "04": "pick up card",
    "05": "cardholder verification failed", "10": "partial approval", "11": "approved (VIP)",
    "12": "invalid transaction", "13": "invalid amount", "14": "invalid card number", "15": "no such issuer",
    "21": "card not initialised / dormant", "22": "operation error or beyond allowed days",
    "25": "original not found", "30": "format error", "34": "suspected fraud, capture",
    "38": "PIN tries exceeded, call issuer", "40": "function not supported by issuer",
    "41": "lost card, capture", "43": "stolen card, capture", "51": "insufficient funds", "54": "expired card",
    "55": "wrong PIN", "57": "card not permitted", "58": "not permitted on this terminal",
    "59": "card verification error", "61": "amount over limit", "62": "restricted card",
    "64": "amount differs from original", "65": "over frequency limit", "68": "timeout, retry",
    "75": "PIN tries exceeded", "90": "cut-over in progress", "91": "issuer unavailable",
    "92": "issuer link down", "94": "duplicate transaction", "96": "switch malfunction",
    "97": "terminal not registered", "98": "issuer timeout / reversal reason: no reply",
    "99": "PIN format error, sign on again", "A0": "MAC error, sign on again / reversal reason: bad reply MAC",
    "A1": "currency mismatch", "A2": "approved, confirm with issuer", "A3": "account incorrect",
    "A4": "approved, confirm with issuer", "A5": "approved, confirm with issuer",
    "A6": "approved, confirm with issuer", "A7": "switch malfunction",
}
#: Codes terminals treat as an approval.
APPROVED_CODES: frozenset[str] = frozenset({"00", "10", "11", "A2", "A4", "A5", "A6"})


# --------------------------------------------------------------------------------------
# §6 / §7: field presence per request
# --------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class FieldPresence:
    """Fields of a request: mandatory and conditional (reference §6; replies there are [low])."""

    mandatory: frozenset[str]
    conditional: frozenset[str] = frozenset()


def _fp(mandatory: str, conditional: str = "") -> FieldPresence:
    return FieldPresence(frozenset(mandatory.split()), frozenset(conditional.split()))


_SALE_M = "3 4 11 22 25 41 42 49 60 64"
_SALE_C = "2 14 23 26 35 36 52 53 55 62"  # 62: private QR dialect (MAC-1)
_SIGNON = _fp("11 41 42 60", "62 63")
_BATCH = _fp("11 41 42 60", "2 3 4 14 22 23 25 37 38 48 55 61 63")

#: Request field presence by transaction name (``TRANSACTIONS_BY_NAME`` keys, plus ``"reversal"``).
#: Either 2 or 35 carries the card for a card sale; QR sales of private dialects carry neither,
#: so neither is mandatory here.  63 (operator) is conditional: many terminals omit it.
REQUEST_FIELDS: dict[str, FieldPresence] = {
    "sale": _fp(_SALE_M, _SALE_C),
    "preauth": _fp(_SALE_M, _SALE_C),
    "preauth_completion": _fp(_SALE_M, _SALE_C + " 37 38 61"),
    "preauth_void": _fp(_SALE_M, _SALE_C + " 37 38 61"),
    "preauth_completion_void": _fp(_SALE_M + " 37 61", _SALE_C + " 38"),
    "void": _fp(_SALE_M + " 37 61", _SALE_C + " 38"),
    "refund": _fp(_SALE_M + " 37 61", _SALE_C + " 38 63"),
    "balance": _fp("3 11 22 25 41 42 49 60 64", _SALE_C),
    "reversal": _fp("3 11 39 41 42 60 64", "2 4 14 22 23 25 38 49 55 61"),
    "sign_on_single": _SIGNON,
    "sign_on_double": _SIGNON,
    "sign_on_double_tdk": _SIGNON,
    "sign_off": _fp("11 41 42 60"),
    "echo": _fp("11 41 42 60"),
    "settlement": _fp("11 41 42 48 49 60", "63"),
    "batch_upload_magstripe": _BATCH,
    "batch_upload_ic": _BATCH,
    "batch_upload_ic_failed": _BATCH,
    "batch_upload_end": _BATCH,
    "batch_upload_end_ic": _BATCH,
    "script_advice": _fp("3 11 41 42 55 60 61 64", "2 4 22 23 32 37 38 49"),
}


def missing_request_fields(name: str, doc: dict[str, Any]) -> list[str]:
    """Mandatory fields of request ``name`` absent from ``doc``, in field order ([] if ``name`` is unknown)."""
    presence = REQUEST_FIELDS.get(name)
    if presence is None:
        return []
    return sorted((f for f in presence.mandatory if f not in doc), key=int)
