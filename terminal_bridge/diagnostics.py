"""Terminal self-test (``posswitch terminal ... --diagnose``): printer, card reader, network, keys.

Each check gives a :class:`~terminal_bridge.devices.SelfTestResult` with a line the merchant can act
on (Chinese first, for the counter) and a detail for ops; no check raises.  The checks:

* printer: DLE EOT 1 / DLE EOT 4 through python-escpos (offline, out of paper, no status channel);
* card reader: a PC/SC reader present (real devices) or a card answering SELECT PSE (software card);
* network: TCP connect + 0820/301 echo test, with the switch's response code;
* keys: working keys present and decrypting under the TMK with matching check values; a host
  request to sign on again, a reply MAC failure or an ``A0`` answer is reported as "keys out of sync";
* pending reversal: a reversal still waiting to go out (network was down).
"""

from __future__ import annotations

import asyncio
from typing import Any

from .apdu import DirectTransport, exchange
from .devices import DeviceError, SelfTestResult
from .emv import PSE
from .selftest import check_card_reader, check_printer


def check_printer_of(app: Any) -> SelfTestResult:
    escpos = app.devices.escpos
    if escpos is None:
        return SelfTestResult("printer", False, "打印机未配置 no printer configured")
    res = check_printer(escpos)
    if res.ok:
        return res
    zh = "打印机缺纸" if "paper" in res.detail else "打印机脱机"
    detail = res.detail
    if "no status" in detail:
        zh = "打印机无状态应答"
        if detail.rstrip().endswith(":"):  # e.g. NotImplementedError() of a back-end that cannot read
            detail = "no status channel (this printer back-end cannot answer DLE EOT)"
    return SelfTestResult("printer", False, f"{zh} {detail}")


def check_reader_of(app: Any, card: Any = None) -> SelfTestResult:
    """``card``: a software card (applet) or transport to probe with SELECT PSE; else the PC/SC reader."""
    if card is None and app.devices.kind == "real":  # do not wait for a card: is the reader there?
        res = check_card_reader(app.devices.reader_name, "card reader")
        return res if res.ok else SelfTestResult("card reader", False, f"读卡器未就绪 reader not ready: {res.detail}")
    if card is None and app.devices.chip is None:
        return SelfTestResult("card reader", True, "software card reader (cards given per transaction)")
    try:
        target = card if card is not None else app.devices.chip()
        transport = target if hasattr(target, "transmit") else DirectTransport(target)
        _data, sw = exchange(transport, b"\x00\xa4\x04\x00" + bytes([len(PSE)]) + PSE + b"\x00")
    except (DeviceError, OSError) as exc:
        return SelfTestResult("card reader", False, f"读卡失败 card not read: {exc}")
    if sw not in (b"\x90\x00", b"\x6a\x82"):
        return SelfTestResult("card reader", False, f"读卡失败 card answered SW {sw.hex().upper()}")
    return SelfTestResult("card reader", True, f"card answered SELECT PSE with SW {sw.hex().upper()}")


async def check_network(app: Any) -> SelfTestResult:
    res = await app.echo()
    if res.ok:
        return SelfTestResult("network", True, f"{app.config.host}:{app.config.port} echo 00")
    if res.rc == "NET":
        return SelfTestResult("network", False, f"网络异常 network down: {res.message}")
    return SelfTestResult("network", False, f"网络异常 echo answered {res.rc}")


def check_keys(app: Any) -> SelfTestResult:
    st = app.state
    if st.keys is None or not st.signed_on:
        why = st.last_mac_error or "never signed on"
        return SelfTestResult("keys", False, f"未签到 keys not loaded ({why}): sign on")
    try:
        app._unwrap("MAK", st.keys.mak, st.keys.mak_cv)
        app._unwrap("PIK", st.keys.pik, st.keys.pik_cv)
    except DeviceError as exc:
        return SelfTestResult("keys", False, f"密钥不同步 keys out of sync: {exc}")
    if st.need_sign_on or st.last_mac_error:
        why = st.last_mac_error or "host asked for a new sign-on"
        return SelfTestResult("keys", False, f"密钥不同步 keys out of sync: {why}; sign on again")
    return SelfTestResult("keys", True, f"mode {st.keys.mode}, MAK check value {st.keys.mak_cv}")


def check_reversal(app: Any) -> SelfTestResult:
    rev = app.state.pending_reversal
    if rev is None or not rev.sent:
        return SelfTestResult("reversal", True, "no pending reversal")
    return SelfTestResult("reversal", False, f"待冲正 reversal pending (trace {rev.request.get('11')}, "
                                              f"reason {rev.reason}): sent before the next transaction")


async def self_test(app: Any, *, card: Any = None) -> list[SelfTestResult]:
    """All checks, in the order the merchant would fix them."""
    printer = await asyncio.to_thread(check_printer_of, app)
    reader = await asyncio.to_thread(check_reader_of, app, card)
    network = await check_network(app)
    return [printer, reader, network, check_keys(app), check_reversal(app)]


def format_report(results: list[SelfTestResult]) -> str:
    lines = [f"{'OK' if r.ok else 'FAIL':<4} {r.device:<12} {r.detail}" for r in results]
    bad = [r.device for r in results if not r.ok]
    lines.append("自检通过 all checks passed" if not bad else f"自检失败 {len(bad)} problem(s): {', '.join(bad)}")
    return "\n".join(lines)


__all__ = ["check_keys", "check_network", "check_printer_of", "check_reader_of", "check_reversal",
           "format_report", "self_test"]
