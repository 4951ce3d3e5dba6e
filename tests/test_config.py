"""Configuration: the example file loads, overrides apply, bad values are reported by table and key."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from switch.config import ConfigError, add_config_arguments, config_from_args, load_config

EXAMPLE = Path(__file__).resolve().parent.parent / "docs" / "example-config.toml"
KEY = "pan_hash_key = \"" + "00" * 32 + "\"\n"


def write(tmp_path: Path, text: str, name: str = "c.toml") -> Path:
    p = tmp_path / name
    p.write_text(text, encoding="utf-8")
    return p


def test_example_config_loads() -> None:
    cfg = load_config(EXAMPLE)
    assert cfg.acquirer_id == "48020000"
    assert cfg.listener.port == 5000 and cfg.listener.max_in_flight == 8 and cfg.listener.max_total_in_flight == 0
    assert load_config(EXAMPLE, ["listener.max_total_in_flight=500"]).listener.max_total_in_flight == 500
    assert (cfg.listener.frame_timeout, cfg.listener.max_connections) == (30.0, 0)
    lst = load_config(EXAMPLE, ["listener.frame_timeout=1.0", "listener.max_connections=100"]).listener
    assert (lst.frame_timeout, lst.max_connections) == (1.0, 100)
    assert cfg.issuers["cup"].port == 7001 and cfg.issuers["wechat"].kind == "wallet"
    assert cfg.routes.issuer_for_pan("6212345678901234") == "cup"
    assert cfg.routes.wallet_for_code("134567890123456789") == "wechat"
    assert cfg.routes.wallet_for_code("284412345678901234") == "alipay"
    assert cfg.routes.wallet_for_code("621234") is None
    assert len(cfg.journal.pan_hash_key) == 32
    assert [t.mac_algorithm for t in cfg.terminals] == ["pos-ecb", "x9.19"]
    assert cfg.fees["default"].debit.cap == 2000 and cfg.fees["default"].credit.rate == 60


def test_defaults_and_longest_prefix_wins(tmp_path: Path) -> None:
    p = write(tmp_path, f"""
[issuers.a]
port = 1
[issuers.b]
port = 2
[routes.bins]
"62" = "a"
"621234" = "b"
[journal]
{KEY}""")
    cfg = load_config(p)
    assert cfg.routes.issuer_for_pan("6212349999") == "b"
    assert cfg.routes.issuer_for_pan("6299") == "a"
    assert cfg.routes.issuer_for_pan("4000") is None
    assert cfg.hsm.timeout == 2.0 and cfg.metrics.port == 9108 and cfg.logging.level == "INFO"
    assert cfg.journal.gil_switch_interval_ms == 5.0


def test_overrides_parse_toml_values(tmp_path: Path) -> None:
    cfg = load_config(EXAMPLE, ["listener.port=9000", "logging.level=debug", "logging.json=true",
                                "issuers.cup.timeout=2.5", "journal.path=/tmp/x.db"])
    assert cfg.listener.port == 9000 and cfg.logging.level == "DEBUG" and cfg.logging.json is True
    assert cfg.issuers["cup"].timeout == 2.5 and cfg.journal.path == "/tmp/x.db"


def test_cli_arguments(tmp_path: Path) -> None:
    parser = argparse.ArgumentParser()
    add_config_arguments(parser)
    args = parser.parse_args(["--config", str(EXAMPLE), "--set", "metrics.port=0", "--set", "hsm.port=1234"])
    cfg = config_from_args(args)
    assert cfg.metrics.port == 0 and cfg.hsm.port == 1234


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ('issuers.cup.port="x"', 'config error: [issuers.cup] port: expected an integer 1-65535, got "x"'),
        ("issuers.cup.port=70000", "[issuers.cup] port: expected an integer 1-65535, got 70000"),
        ("listener.max_in_flight=0", "[listener] max_in_flight: expected an integer 1-10000, got 0"),
        ("listener.max_total_in_flight=-1", "[listener] max_total_in_flight: expected an integer 0-10000000"),
        ("listener.frame_timeout=0", "[listener] frame_timeout: expected a number 0.01-3600, got 0"),
        ('listener.max_connections="many"', '[listener] max_connections: expected an integer 0-10000000, got "many"'),
        ("listener.colour=1", "[listener] colour: unknown key"),
        ("hsm.timeout=true", "[hsm] timeout: expected a number"),
        ('routes.bins.62="nowhere"', '[routes.bins] 62: unknown issuer "nowhere"'),
        ('routes.bins.6x="cup"', "[routes.bins] 6x: prefix must be 1-19 digits"),
        ('routes.qr.10="cup"', '[routes.qr] 10: issuer "cup" is a card, expected a wallet'),
        ('journal.pan_hash_key="abcd"', "[journal] pan_hash_key: expected an even number of hex digits"),
        ('journal.backend="postgresql"', "[journal] backend: postgresql is not implemented yet"),
        ('journal.synchronous="sometimes"', "[journal] synchronous: expected one of FULL, NORMAL, OFF"),
        ("journal.gil_switch_interval_ms=0", "[journal] gil_switch_interval_ms: expected a number 0.05-100, got 0"),
        ('logging.level="chatty"', '[logging] level: expected one of DEBUG'),
        ('acquirer_id="abc"', 'acquirer_id: expected 1-11 digits (field 32), got "abc"'),
        ('mac_profiles.x919.algorithm="md5"', "[mac_profiles.x919] algorithm: expected one of pos-ecb"),
        ("fees.default.debit.rate=-1", "[fees.default.debit] rate: expected a number 0-10000, got -1"),
        ("issuers.cup=3", "issuers.cup: expected a table, got 3"),
    ],
)
def test_bad_values_name_table_and_key(override: str, message: str) -> None:
    with pytest.raises(ConfigError) as exc:
        load_config(EXAMPLE, [override])
    assert message in str(exc.value)


def test_registry_validation(tmp_path: Path) -> None:
    base = f"[journal]\n{KEY}\n[[merchants]]\nmerchant_id = \"898310048140001\"\n"
    term = '[[terminals]]\nterminal_id = "00000001"\nmerchant_id = "{mid}"\ntmk_under_lmk = "{tmk}"\n{extra}'
    ok = dict(mid="898310048140001", tmk="U" + "A" * 32, extra="")
    cfg = load_config(write(tmp_path, base + term.format(**ok)))
    assert cfg.terminals[0].key_mode == "003" and cfg.terminals[0].mac_algorithm == "pos-ecb"
    cases = [
        (dict(ok, mid="898310048140002"), '[terminals[0]] merchant_id: unknown merchant "898310048140002"'),
        (dict(ok, tmk="nothex"), "[terminals[0]] tmk_under_lmk: expected a key under LMK"),
        (dict(ok, extra='key_mode = "002"\n'), '[terminals[0]] key_mode: expected one of 001, 003, 004, got "002"'),
        (dict(ok, extra='mac_profile = "odd"\n'), '[terminals[0]] mac_profile: unknown MAC profile "odd"'),
    ]
    for values, message in cases:
        with pytest.raises(ConfigError) as exc:
            load_config(write(tmp_path, base + term.format(**values)))
        assert message in str(exc.value)
    with pytest.raises(ConfigError, match=r"\[terminals\[1\]\] terminal_id: duplicate terminal"):
        load_config(write(tmp_path, base + term.format(**ok) + term.format(**ok)))


def test_terminals_file_is_merged(tmp_path: Path) -> None:
    write(tmp_path, '[[merchants]]\nmerchant_id = "898310048140009"\nname = "from file"\n'
                    '[[terminals]]\nterminal_id = "00000009"\nmerchant_id = "898310048140009"\n'
                    f'tmk_under_lmk = "{"B" * 32}"\n', "fleet.toml")
    cfg = load_config(write(tmp_path, f'terminals_file = "fleet.toml"\n[journal]\n{KEY}'))
    assert [m.name for m in cfg.merchants] == ["from file"]
    assert cfg.terminals[0].terminal_id == "00000009"
    write(tmp_path, "terminals_file = \"loop.toml\"\n", "loop.toml")
    with pytest.raises(ConfigError, match="includes itself"):
        load_config(write(tmp_path, f'terminals_file = "loop.toml"\n[journal]\n{KEY}'))


def test_file_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "missing.toml")
    with pytest.raises(ConfigError, match="TOML syntax error"):
        load_config(write(tmp_path, "[listener\nport = 1"))
    with pytest.raises(ConfigError, match=r"\[journal\] pan_hash_key: required"):
        load_config(None)
    with pytest.raises(ConfigError, match="expected dotted.key=value"):
        load_config(EXAMPLE, ["listener.port"])


def test_example_keys_are_the_documented_test_keys_under_the_simulator_lmk() -> None:
    lmk = pytest.importorskip("hsm_sim.lmk")
    cfg = load_config(EXAMPLE)
    assert cfg.terminals[0].tmk_under_lmk == lmk.encrypt_under_lmk(
        bytes.fromhex("CA5D92598DCA48CE8A4C76361A9269E9"), "TMK")  # K62-1
    assert cfg.terminals[1].tmk_under_lmk == lmk.encrypt_under_lmk(
        bytes.fromhex("70F2A84CCBC2AE8625CBB0F2C22AB923"), "TMK")  # MAC-2
    assert cfg.issuers["cup"].zpk_under_lmk == lmk.encrypt_under_lmk(
        bytes.fromhex("0123456789ABCDEFFEDCBA9876543210"), "ZPK")


_KEYS = ["acquirer_id", "listener.host", "listener.port", "listener.max_frame", "listener.max_in_flight",
         "listener.max_total_in_flight", "listener.frame_timeout", "listener.max_connections",
         "listener.idle_timeout", "hsm.port", "hsm.header_len", "hsm.timeout", "issuers.cup.port",
         "issuers.cup.timeout", "issuers.cup.zpk_under_lmk", "issuers.cup.echo_interval", "issuers.cup.kind",
         "routes.default", "journal.path", "journal.group_commit_ms", "journal.synchronous", "journal.pan_hash_key",
         "journal.gil_switch_interval_ms",
         "metrics.enabled", "metrics.port", "logging.level", "logging.json", "fees.default.debit.rate",
         "fees.default.debit.cap", "settlement.utc_offset_hours", "mac_profiles.x919.algorithm"]


def _toml_literal(v) -> str:
    import json as _json

    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return _json.dumps(v)
    if isinstance(v, list):
        return "[" + ", ".join(_toml_literal(x) for x in v) + "]"
    return repr(v)


@given(key=st.sampled_from(_KEYS),
       value=st.one_of(st.integers(-10**6, 10**6), st.booleans(), st.text(max_size=40),
                       st.floats(allow_nan=False, allow_infinity=False, width=32),
                       st.lists(st.integers(0, 9), max_size=3)))
def test_any_override_is_accepted_or_named(key: str, value) -> None:
    try:
        load_config(EXAMPLE, [f"{key}={_toml_literal(value)}"])
    except ConfigError as exc:
        leaf = key.rsplit(".", 1)[-1]
        assert str(exc).startswith("config error: ") and leaf in str(exc)
