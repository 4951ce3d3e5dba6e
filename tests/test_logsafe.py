from __future__ import annotations

import io
import json
import logging

from switch.logsafe import configure_logging, kv, mask_pan, mask_pans_in_text


def test_mask_pan_keeps_first6_last4() -> None:
    assert mask_pan("6212142000000000012") == "621214*********0012"
    assert mask_pan(b"4012345678909") == "401234***8909"
    assert mask_pan("1234") == "****"


def test_pan_in_free_text_is_masked() -> None:
    assert mask_pans_in_text("card 6212142000000000012 ok") == "card 621214*********0012 ok"
    assert mask_pans_in_text("stan 000123") == "stan 000123"


def test_log_lines_redact_secrets_and_mask_pan() -> None:
    buf = io.StringIO()
    configure_logging("INFO", json_lines=True, stream=buf)
    logging.getLogger("t").info(
        "sale", extra=kv(pan="6212142000000000012", pin_block="9CA4E8A0FA2C49B3", track2="62121420=2512", stan=7)
    )
    doc = json.loads(buf.getvalue())
    assert doc["pan"] == "621214*********0012"
    assert doc["pin_block"] == "[REDACTED]" and doc["track2"] == "[REDACTED]"
    assert doc["stan"] == 7 and "9CA4E8A0" not in buf.getvalue()


def test_merchant_id_is_not_mistaken_for_a_pan() -> None:
    buf = io.StringIO()
    configure_logging("INFO", json_lines=True, stream=buf)
    logging.getLogger("t").info("settled", extra=kv(merchant_id="898310048140001", note="card 6212340000000019"))
    doc = json.loads(buf.getvalue())
    assert doc["merchant_id"] == "898310048140001"
    assert doc["note"] == "card 621234******0019"
