"""Sales slips (签购单) on ESC/POS printers via python-escpos, bilingual Chinese/English.

:func:`render` writes one copy (merchant 商户存根 or customer 持卡人存根) of a
:class:`Receipt` to any ``escpos`` printer object; Chinese text goes out as
GB18030 (python-escpos' magic encoder does that for any string with CJK
ideographs).  The PAN is always printed masked (first 6 / last 4).
:func:`open_printer` turns a URL into a back-end:

* ``tcp://HOST[:9100]``   network printer (raw port 9100)
* ``file:/dev/usb/lp0``   character device or file
* ``serial:/dev/ttyS0?baudrate=9600``  serial printer (pyserial)
* ``dummy:``              in memory (``printer.output`` holds the bytes)
"""

from __future__ import annotations

import datetime
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import parse_qs, urlparse

from escpos.escpos import Escpos
from escpos.printer import Dummy, File, Network, Serial

from switch.logsafe import kv, mask_pan

from .devices import DeviceError, EntryMode

log = logging.getLogger(__name__)

FS_CHINESE_MODE = b"\x1c\x26"  # FS &: Kanji/Chinese mode on, for printers that do not boot in it

TXN_NAMES = {
    "sale": ("消费", "SALE"), "void": ("消费撤销", "VOID"), "refund": ("退货", "REFUND"),
    "preauth": ("预授权", "PRE-AUTH"), "completion": ("预授权完成", "AUTH COMPLETE"),
    "preauth_void": ("预授权撤销", "AUTH VOID"), "completion_void": ("预授权完成撤销", "COMPLETE VOID"),
    "balance": ("余额查询", "BALANCE"), "qr_sale": ("扫码消费", "QR SALE"),
}
ENTRY_NAMES = {
    "01": ("手输", "MANUAL"), "02": ("刷卡", "SWIPE"), "03": ("扫码", "QR"), "05": ("插卡", "CHIP"),
    "07": ("挥卡", "CONTACTLESS"),
}
COPIES = {"merchant": ("商户存根", "MERCHANT COPY"), "customer": ("持卡人存根", "CARDHOLDER COPY")}


@dataclass(frozen=True)
class Receipt:
    merchant_name: str
    merchant_id: str  # field 42
    terminal_id: str  # field 41
    pan: str  # printed masked
    entry_mode: str | EntryMode  # "05" / EntryMode.CHIP
    amount_fen: int
    rrn: str  # field 37
    auth_code: str  # field 38
    batch: int
    trace: int
    when: datetime.datetime
    txn_type: str = "sale"
    operator: str = "01"
    card_org: str = "CUP"
    issuer: str = ""
    expiry: str = ""  # YYMM, printed as YY/MM
    aid: str = ""
    app_label: str = ""
    tc: str = ""  # transaction certificate (hex) for chip sales
    result: str = "approved"  # approved / declined
    reference: str = ""  # QR order number, if any
    qr_payload: str = ""  # e-receipt / query link printed as a native QR code (GS ( k) at the bottom

    def __repr__(self) -> str:
        return f"Receipt(pan={mask_pan(self.pan)}, amount_fen={self.amount_fen}, rrn={self.rrn})"


def _amount(fen: int) -> str:
    return f"{fen // 100}.{fen % 100:02d}"


def _entry(mode: str | EntryMode) -> tuple[str, str]:
    code = mode.value if isinstance(mode, EntryMode) else mode[:2]
    return ENTRY_NAMES.get(code, (code, code))


def lines_for(r: Receipt, copy: str = "merchant") -> list[tuple[str, str]]:
    """The slip as ``(style, text)`` lines; style is ``title``, ``big``, ``bold`` or ``""``."""
    if copy not in COPIES:
        raise ValueError(f"unknown receipt copy {copy!r}: use merchant or customer")
    txn_zh, txn_en = TXN_NAMES.get(r.txn_type, (r.txn_type, r.txn_type.upper()))
    entry_zh, entry_en = _entry(r.entry_mode)
    ok = r.result == "approved"
    sign = "-" if r.txn_type in ("void", "refund", "completion_void") else ""
    out: list[tuple[str, str]] = [
        ("title", "银联POS签购单"), ("title", "POS SALES SLIP"), ("", f"{COPIES[copy][0]} {COPIES[copy][1]}"),
        ("", "-" * 32),
        ("", "商户名称(MERCHANT NAME):"), ("bold", r.merchant_name),
        ("", f"商户编号(MERCHANT NO.): {r.merchant_id}"),
        ("", f"终端编号(TERMINAL NO.): {r.terminal_id}"),
        ("", f"操作员号(OPERATOR NO.): {r.operator}"),
        ("", "-" * 32),
        ("", f"发卡行(ISSUER): {r.issuer or r.card_org}"),
        ("", "卡号(CARD NO.):"), ("bold", f"{mask_pan(r.pan)} {entry_zh}/{entry_en[0]}"),
        ("", f"输入方式(ENTRY MODE): {entry_en}"),
    ]
    if r.expiry:
        out.append(("", f"有效期(EXP DATE): {r.expiry[:2]}/{r.expiry[2:4]}"))
    out += [
        ("", f"交易类型(TRANS TYPE): {txn_zh} {txn_en}"),
        ("", f"批次号(BATCH NO.): {r.batch:06d}"),
        ("", f"凭证号(VOUCHER NO.): {r.trace:06d}"),
        ("", f"授权码(AUTH NO.): {r.auth_code}"),
        ("", f"参考号(REF NO.): {r.rrn}"),
        ("", f"日期/时间(DATE/TIME): {r.when:%Y/%m/%d %H:%M:%S}"),
    ]
    if r.reference:
        out.append(("", f"订单号(ORDER NO.): {r.reference}"))
    if r.aid:
        out.append(("", f"AID: {r.aid} {r.app_label}".rstrip()))
    if r.tc:
        out.append(("", f"TC: {r.tc}"))
    out += [
        ("", "金额(AMOUNT):"), ("big", f"RMB {sign}{_amount(r.amount_fen)}"),
        ("bold", "支付成功 APPROVED" if ok else "交易失败 DECLINED"),
        ("", "-" * 32),
    ]
    if copy == "merchant":
        out += [("", "持卡人签名(CARDHOLDER SIGNATURE):"), ("", ""), ("", ""),
                ("", "本人确认以上交易,同意将其记入本卡账户"),
                ("", "I ACKNOWLEDGE SATISFACTORY RECEIPT OF RELATIVE GOODS/SERVICES")]
    else:
        out.append(("", "请妥善保管 PLEASE KEEP THIS SLIP"))
    return out


def render(printer: Escpos, r: Receipt, copy: str = "merchant", *, chinese_mode: bool = True,
           cut: bool = True) -> None:
    """Write one copy to ``printer`` (init, optional FS &, styled lines, feed and cut)."""
    printer._raw(b"\x1b\x40")  # ESC @ initialise
    if chinese_mode:
        printer._raw(FS_CHINESE_MODE)
    for style, text in lines_for(r, copy):
        if style == "title":
            printer.set(align="center", bold=True, double_height=True, double_width=False)
        elif style == "big":
            printer.set(align="left", bold=True, double_height=True, double_width=True)
        elif style == "bold":
            printer.set(align="left", bold=True, normal_textsize=True)
        else:
            printer.set(align="left", bold=False, normal_textsize=True)
        printer.text(text + "\n")
    printer.set(align="left", bold=False, normal_textsize=True)
    if r.qr_payload:
        printer.set(align="center")
        printer.qr(r.qr_payload, size=5, native=True)
        printer.set(align="left")
    if cut:
        printer.cut()


class EscPosReceiptPrinter:
    """A :class:`terminal_bridge.devices.ReceiptPrinter` over any python-escpos back-end."""

    def __init__(self, printer: Escpos, *, chinese_mode: bool = True) -> None:
        self.printer = printer
        self.chinese_mode = chinese_mode

    def print_receipt(self, receipt: Receipt, copies: Sequence[str] = ("merchant", "customer")) -> None:
        try:
            for copy in copies:
                render(self.printer, receipt, copy, chinese_mode=self.chinese_mode)
            flush = getattr(self.printer, "flush", None)
            if callable(flush):
                flush()
        except OSError as exc:
            raise DeviceError(f"receipt printer: {exc}") from exc
        log.info("receipt printed", extra=kv(pan=receipt.pan, rrn=receipt.rrn, copies=",".join(copies)))

    def close(self) -> None:
        self.printer.close()


def open_printer(url: str, *, timeout: float = 10.0) -> Escpos:
    """``tcp://host:9100`` / ``file:/dev/usb/lp0`` / ``serial:/dev/ttyS0?baudrate=9600`` / ``dummy:``."""
    u = urlparse(url)
    try:
        if u.scheme == "tcp":
            p: Escpos = Network(u.hostname or "127.0.0.1", port=u.port or 9100, timeout=timeout)
        elif u.scheme == "file":
            p = File(u.path)
        elif u.scheme == "serial":
            q = {k: v[0] for k, v in parse_qs(u.query).items()}
            p = Serial(u.path, baudrate=int(q.get("baudrate", 9600)), timeout=timeout)
        elif u.scheme == "dummy":
            return Dummy()
        else:
            raise DeviceError(f"printer URL {url!r}: scheme must be tcp, file, serial or dummy")
        p.open()
    except DeviceError:
        raise
    except Exception as exc:  # noqa: BLE001 - escpos raises its own DeviceNotFoundError etc.
        raise DeviceError(f"printer {url}: {exc}") from exc
    return p
