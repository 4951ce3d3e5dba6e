"""No clear key or clear PIN leaves the HSM simulator: not in replies, not in any log line.

Every command is run (successes, verification failures and error paths) with distinctive
clear keys and PINs while the root logger captures DEBUG output through the project's
structured formatter; then replies and logs are scanned for the clear values.
"""

from __future__ import annotations

import io
import logging

import psec.pinblock
import pytest
from Crypto.Cipher import DES, DES3

from hsm_sim.lmk import encrypt_under_lmk, set_odd_parity
from hsm_sim.server import start_hsm
from switch.hsm_client import HsmClient, HsmError, account_number
from switch.logsafe import StructuredFormatter

CLEAR = {
    "ZMK": set_odd_parity(bytes.fromhex("4CA2161637D0133E5E151AEA45DA2A16")),
    "TMK": set_odd_parity(bytes.fromhex("159D86C7C1F779EA29F77A6858E0DA2A")),
    "TPK": set_odd_parity(bytes.fromhex("3E8F5B7A9C1D2E4F6A7B8C9D0E1F2A3B")),
    "ZPK": set_odd_parity(bytes.fromhex("B0C1D2E3F405162738495A6B7C8D9EAF")),
    "ZPK2": set_odd_parity(bytes.fromhex("5D4C3B2A19087F6E5D4C3B2A19087F6E")[::-1]),
    "PVK": set_odd_parity(bytes.fromhex("0123456789ABCDEFFEDCBA9876543210")),
    "TAK": set_odd_parity(bytes.fromhex("E9CB01B93B20914F")),
    "ZAK": set_odd_parity(bytes.fromhex("A1B2C3D4E5F60718293A4B5C6D7E8F90")),
    "BDK": set_odd_parity(bytes.fromhex("0123456789ABCDEFFEDCBA9876543210")),
    "MK-AC": set_odd_parity(bytes.fromhex("9E15204313F7318ACB79B90BD986AD29")),
    "CVK": set_odd_parity(bytes.fromhex("7A3C5E1F0B2D4E6F8091A2B3C4D5E6F7")),
}
PINS = ["739164", "58203917", "864205"]
PAN = "6225880123456789"


def tdes(key: bytes):
    return DES.new(key, DES.MODE_ECB) if len(key) == 8 else DES3.new(key, DES3.MODE_ECB)


def needles() -> list[bytes]:
    out: list[bytes] = []
    for key in CLEAR.values():
        h = key.hex()
        out += [h.upper().encode(), h.lower().encode()]
        out += [key[i : i + 8].hex().upper().encode() for i in range(0, len(key), 8)]
    for pin in PINS:
        out.append(pin.encode())
        out.append(psec.pinblock.encode_pinblock_iso_0(pin, PAN).hex().upper().encode())
    return out


@pytest.fixture
def captured_logs():
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(StructuredFormatter())
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    try:
        yield stream
    finally:
        root.removeHandler(handler)
        root.setLevel(old_level)


class Recorder(HsmClient):
    """HsmClient that keeps every raw reply (fields included) for the scan."""

    replies: list[bytes]

    async def request(self, command: str, body: bytes = b"") -> tuple[str, bytes]:
        err, fields = await super().request(command, body)
        self.replies.append(command.encode() + err.encode() + fields)
        return err, fields


async def test_no_clear_secret_in_replies_or_logs(captured_logs: io.StringIO) -> None:
    server, port = await start_hsm("127.0.0.1", 0)
    c = await Recorder.connect("127.0.0.1", port)
    c.replies = []
    k = {name: encrypt_under_lmk(v, "ZPK" if name == "ZPK2" else name) for name, v in CLEAR.items()}
    pin_blocks = [tdes(CLEAR["TPK"]).encrypt(psec.pinblock.encode_pinblock_iso_0(p, PAN)) for p in PINS]
    zblock = tdes(CLEAR["ZPK"]).encrypt(psec.pinblock.encode_pinblock_iso_0(PINS[0], PAN))
    try:
        await c.diagnostics()
        await c.echo(b"ping")
        for kt in ("ZMK", "TMK", "TPK", "ZPK", "PVK", "TAK", "ZAK", "BDK", "MK-AC"):
            await c.kcv(k[kt], kt)
        await c.request("KA", f"{k['ZPK']}01".encode())
        g = await c.generate_key("ZPK", export_under=k["ZMK"])
        await c.export_key("ZPK", k["ZMK"], g.under_lmk)
        await c.import_key("ZPK", k["ZMK"], g.under_export or "")
        await c.generate_working_keys_for_terminal(k["TMK"], mode="004")
        err, fa = await c.request("GC", f"{k['ZMK']}{k['ZPK']}".encode())
        await c.request("FA", k["ZMK"].encode() + fa[:-6])
        await c.request("AE", f"{k['TMK']}{k['TPK']}".encode())
        await c.request("AG", f"{k['TMK']}{k['TAK']}".encode())
        for blk in pin_blocks:
            zb = await c.translate_pin_tpk_to_zpk(k["TPK"], k["ZPK"], blk, PAN)
            zb3 = await c.translate_pin_zpk_to_zpk(k["ZPK"], k["ZPK2"], zb, PAN, "01", "47")
            await c.translate_pin_zpk_to_zpk(k["ZPK2"], k["ZPK"], zb3, PAN, "47", "05")
        lmk_pin = await c.pin_zpk_to_lmk(k["ZPK"], zblock, PAN)
        await c.pin_lmk_to_zpk(k["ZPK"], lmk_pin, PAN)
        await c.translate_pin_dukpt_to_zpk(k["BDK"], k["ZPK"], "FFFF9876543210E00001",
                                           bytes.fromhex("1B9C1845EB993A7A"), "4012345678909")  # fmt: skip
        for off in ("0000", "1234"):
            await c.verify_pin_ibm_zpk(k["ZPK"], k["PVK"], zblock, PAN, off)
            await c.verify_pin_ibm_zpk(k["TPK"], k["PVK"], pin_blocks[0], PAN, off, command="DA")
        for pvv in ("0000", "9999"):
            await c.verify_pin_pvv_zpk(k["ZPK"], k["PVK"], zblock, PAN, "1", pvv)
            await c.verify_pin_pvv_zpk(k["TPK"], k["PVK"], pin_blocks[0], PAN, "1", pvv, command="DC")
        for alg, key, kt in (("pos-ecb", "TAK", "TAK"), ("x9.9", "TAK", "TAK"), ("x9.19", "ZAK", "ZAK")):
            mac = await c.generate_mac(k[key], b"some message", algorithm=alg, key_type=kt)
            await c.verify_mac(k[key], b"some message", mac, algorithm=alg, key_type=kt)
            await c.verify_mac(k[key], b"other message", mac, algorithm=alg, key_type=kt)
        for arqc in (bytes(8), bytes.fromhex("4B46013359B7A58B")):
            await c.verify_arqc(k["MK-AC"], PAN, "01", b"\0\1", arqc, b"data" * 8, un=b"\1\2\3\4")
            await c.verify_arqc(k["MK-AC"], PAN, "01", b"\0\1", arqc, b"data", arpc_method=2)
        wk = await c.generate_working_keys_for_terminal(k["TMK"], mode="004")
        assert wk.tdk is not None
        ct = await c.encrypt_data(wk.tdk.under_lmk, b"6225880123456789")
        await c.decrypt_data(wk.tdk.under_lmk, ct, mode="cbc", iv=b"\1" * 8)
        cvv = await c.generate_cvv(k["CVK"], PAN, "2912", "101")
        await c.verify_cvv(k["CVK"], PAN, "2912", "101", cvv)
        await c.verify_cvv(k["CVK"], PAN, "2912", "101", "999" if cvv != "999" else "000")
        err, mac4 = await c.request("MA", k["TAK"].encode() + b"legacy data")
        await c.request("MC", k["TAK"].encode() + mac4 + b"legacy data")
        await c.request("MC", k["TAK"].encode() + b"00000000" + b"legacy data")
        # error paths: wrong PAN (bad PIN block), wrong key type, bad parity, max length
        failures = [
            c.translate_pin_tpk_to_zpk(k["TPK"], k["ZPK"], pin_blocks[1], "4111111111111111"),
            c.translate_pin_tpk_to_zpk(k["ZPK"], k["ZPK"], pin_blocks[1], PAN),
            c.kcv(k["ZPK"][:-1] + "0", "ZPK"),
            c.request("CA", f"{k['TPK']}{k['ZPK']}04".encode() + pin_blocks[1].hex().upper().encode()
                      + f"0101{account_number(PAN)}".encode()),  # fmt: skip
            c.request("XX", b"secret?"),
        ]
        for coro in failures:
            try:
                await coro
            except HsmError:
                pass
    finally:
        await c.close()
        await server.close()

    logs = captured_logs.getvalue().encode()
    assert b"hsm command" in logs and b"hsm command rejected" in logs  # logging really ran at DEBUG
    assert len(c.replies) > 50
    # a PIN block that fails to decode must not be described nibble by nibble (PIN-derived data)
    assert b"nibble" not in logs and b"PIN digit" not in logs
    replies = b"\n".join(c.replies)
    for needle in needles():
        assert needle not in replies, f"clear value {needle!r} in a reply"
        assert needle not in logs, f"clear value {needle!r} in the logs"
