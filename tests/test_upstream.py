"""The upstream client (SPEC §6), against the real fake-FAL server: each way a call can end is
classified by what it means for money — `Unreachable` (nothing sent: retried, then failed),
`Refused` (an answered 4xx/5xx: never retried), `NoAnswer` (sent, no usable answer: never
retried, the estimate stays counted) — plus error messages and configuration."""

from __future__ import annotations

import socket
import sys
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from support import rule_usage

from ledger import RuleSpec, Settings, TxStatus
from ledger.errors import InvalidRequest, UpstreamError
from ledger.forward.runner import run_governed
from ledger.forward.upstream import (
    CONNECT_TIMEOUT,
    DEFAULT_TIMEOUT,
    DEFAULT_URL,
    NoAnswer,
    Refused,
    Unreachable,
    Upstream,
    UpstreamConfig,
    UpstreamFailure,
    UpstreamResult,
    error_message,
)
from pixelgov.cli.run_cmd import fal_key_from_env

sys.path.insert(0, str(Path(__file__).parent))

DEV = "fal-ai/flux/dev"
KEY = "fal-key-for-upstream-tests"
ESTIMATE = Decimal("0.01185")  # flux-dev landscape_4_3: 0.79 MP × 0.015


def config_from(environ: dict[str, str], **options: Any) -> UpstreamConfig:
    """The upstream config as the CLI builds it: settings from an environment, then its options."""
    return UpstreamConfig.from_settings(Settings.from_env(environ), **options)


def client(url: str, **config: float) -> Upstream:
    return Upstream(UpstreamConfig(url=url, **{"timeout": 10, **config}))  # type: ignore[arg-type]


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --- classification --------------------------------------------------------------------------


def test_a_success_returns_the_json_and_fal_headers(fake_fal):
    with client(fake_fal.url) as up:
        result = up.call(DEV, {"prompt": "fox", "image_size": "square", "seed": 7}, KEY)
    assert isinstance(result, UpstreamResult)
    assert result.status == 200
    assert result.body["images"][0]["width"] == 512 and result.body["seed"] == 7
    assert result.billable_units == "0.27"  # 512×512 = 0.262144 → 0.27 MP
    assert result.request_id and result.headers["x-fal-request-id"] == result.request_id
    assert result.latency_ms > 0


def test_the_request_goes_to_the_endpoint_with_the_key_header_and_the_body_unchanged(fake_fal):
    body = {"prompt": "fox", "unknown_field": {"nested": [1, 2]}}
    with client(fake_fal.url + "/") as up:  # a trailing slash in the base URL is not doubled
        up.call(DEV, body, KEY)
    [sent] = fake_fal.requests
    assert sent.path == DEV and sent.query == ""
    assert sent.headers["authorization"] == f"Key {KEY}"
    assert sent.headers["content-type"] == "application/json"
    assert sent.body == body


@pytest.mark.parametrize("status", [400, 401, 403, 404, 413, 422, 429, 500, 502, 503])
def test_an_answered_error_status_is_refused_and_not_retried(fake_fal, status):
    fake_fal.set_mode("status", status=status, detail="upstream says no")
    with client(fake_fal.url) as up, pytest.raises(Refused) as raised:
        up.call(DEV, {"prompt": "fox"}, KEY)
    assert raised.value.status == status
    detail = "prompt: upstream says no" if status == 422 else "upstream says no"
    assert raised.value.message == f"upstream answered HTTP {status}: {detail}"
    assert raised.value.latency_ms is not None
    assert fake_fal.count() == 1


def test_fails_times_503_is_not_retried_the_next_call_succeeds(fake_fal):
    fake_fal.set_mode("fail_times", times=1, status=503)
    with client(fake_fal.url, retries=3, backoff=0.01) as up:
        with pytest.raises(Refused):
            up.call(DEV, {"prompt": "fox"}, KEY)
        assert fake_fal.count() == 1
        assert up.call(DEV, {"prompt": "fox"}, KEY).status == 200
    assert fake_fal.count() == 2


def test_a_read_timeout_after_sending_is_no_answer(fake_fal):
    fake_fal.set_mode("slow", delay=5)
    started = time.monotonic()
    with client(fake_fal.url, timeout=0.3) as up, pytest.raises(NoAnswer) as raised:
        up.call(DEV, {"prompt": "fox"}, KEY)
    assert time.monotonic() - started < 3
    assert "no answer" in raised.value.message and "0.3s" in raised.value.message
    assert fake_fal.count() == 1


def test_a_dropped_connection_is_no_answer_and_not_retried(fake_fal):
    fake_fal.set_mode("drop")
    with client(fake_fal.url, retries=3, backoff=0.01) as up, pytest.raises(NoAnswer) as raised:
        up.call(DEV, {"prompt": "fox"}, KEY)
    assert "lost after the request was sent" in raised.value.message
    assert fake_fal.count() == 1


def test_malformed_json_is_no_answer(fake_fal):
    fake_fal.set_mode("malformed")
    with client(fake_fal.url) as up, pytest.raises(NoAnswer) as raised:
        up.call(DEV, {"prompt": "fox"}, KEY)
    assert raised.value.status == 200
    assert "not a JSON object" in raised.value.message
    assert fake_fal.count() == 1


def test_an_unreachable_upstream_is_retried_with_backoff_then_unreachable():
    url = f"http://127.0.0.1:{closed_port()}"
    started = time.monotonic()
    with client(url, retries=2, backoff=0.1) as up, pytest.raises(Unreachable) as raised:
        up.call(DEV, {"prompt": "fox"}, KEY)
    elapsed = time.monotonic() - started
    assert "unreachable after 3 attempt(s)" in raised.value.message  # 1 try + 2 retries
    assert "ConnectError" in raised.value.message
    assert 0.1 + 0.2 <= elapsed < 5  # backoff 0.1, then 0.2


def test_with_no_retries_an_unreachable_upstream_fails_at_once():
    with client(f"http://127.0.0.1:{closed_port()}", retries=0) as up, pytest.raises(Unreachable) as raised:
        up.call(DEV, {"prompt": "fox"}, KEY)
    assert "after 1 attempt(s)" in raised.value.message


class Recording(Upstream):
    """The real client, remembering the failure class its call raised (if any)."""

    raised: UpstreamFailure | None = None

    def call(self, endpoint: str, body: Any, fal_key: str) -> UpstreamResult:
        try:
            return super().call(endpoint, body, fal_key)
        except UpstreamFailure as exc:
            self.raised = exc
            raise


#: (how the fake upstream is driven, the failure class it must produce, the status the transaction ends in,
#: what the budget counts as spent afterwards: nothing, the estimate, or the actual cost).
MONEY_CASES = {
    "unreachable": (None, Unreachable, TxStatus.failed, "nothing"),
    "refused-429": (("status", {"status": 429}), Refused, TxStatus.failed, "nothing"),
    "refused-500": (("status", {"status": 500}), Refused, TxStatus.failed, "nothing"),
    "refused-422": (("status", {"status": 422}), Refused, TxStatus.failed, "nothing"),
    "dropped": (("drop", {}), NoAnswer, TxStatus.unknown, "estimate"),
    "malformed": (("malformed", {}), NoAnswer, TxStatus.unknown, "estimate"),
    "read-timeout": (("slow", {"delay": 3}), NoAnswer, TxStatus.unknown, "estimate"),
    "answered": (("wrong_size", {"width": 1280, "height": 720}), None, TxStatus.completed, "actual"),
}


@pytest.mark.parametrize("case", sorted(MONEY_CASES))
def test_the_failure_classes_say_what_they_mean_for_money(ledger, fake_fal, case):
    """Each way a call can end, driven for real through `run_governed`: unreachable and refused →
    `failed`, nothing counted; no usable answer → `unknown`, the estimate counted as spent (it may
    have been served); an answer → `completed` at the actual cost of what came back."""
    drive, failure, status, counts = MONEY_CASES[case]
    budget = ledger.admin.create_rule(
        RuleSpec(
            name="budget", type="spend-limit", limit="1", period="total", given={"name", "type", "limit", "period"}
        )
    )
    requests = ledger.admin.create_rule(
        RuleSpec(
            name="requests", type="rate-limit", limit="100", period="day", given={"name", "type", "limit", "period"}
        )
    )
    if drive is not None:
        fake_fal.set_mode(drive[0], **drive[1])
    url = fake_fal.url if drive is not None else f"http://127.0.0.1:{closed_port()}"
    body = {"prompt": "fox"}
    quote = ledger.quote(DEV, body)
    assert quote.amount == ESTIMATE
    with Recording(UpstreamConfig(url=url, timeout=0.5, retries=1, backoff=0.01)) as up:
        if failure is None:
            outcome = run_governed(ledger.governor, up, agent="bot", quote=quote, body=body, fal_key=KEY)
            tx = outcome.transaction
        else:
            with pytest.raises(UpstreamError) as raised:
                run_governed(ledger.governor, up, agent="bot", quote=quote, body=body, fal_key=KEY)
            tx = raised.value.details["transaction"]
    assert type(up.raised) is failure if failure else up.raised is None
    assert fake_fal.count() == (0 if drive is None else 1)  # nothing sent twice, whatever happened

    stored = ledger.governor.transaction(tx.id)
    assert tx.status == stored.status == status
    expected_spent = {"nothing": Decimal(0), "estimate": ESTIMATE, "actual": Decimal("0.01395")}[counts]
    assert stored.actual_cost == (expected_spent if counts == "actual" else None)
    # What the budget counts: nothing is held any more; spent is what this outcome means for money.
    assert rule_usage(ledger.engine, budget.id) == (expected_spent, Decimal(0), 1)
    assert rule_usage(ledger.engine, requests.id)[2] == 1  # it was authorized, so it counts as a request
    # And the governor decides the next request with exactly that counted.
    verdict = next(v for v in ledger.governor.check("bot", quote).verdicts if v.rule.name == "budget")
    assert verdict.usage_after == expected_spent + ESTIMATE


@pytest.mark.parametrize("bad_key", ["", "with space", "line\nbreak", "tab\t", "caf\u00e9"])
def test_a_key_that_cannot_be_a_header_is_refused_before_sending_without_quoting_it(fake_fal, bad_key):
    with client(fake_fal.url) as up, pytest.raises(InvalidRequest) as raised:
        up.call(DEV, {"prompt": "fox"}, bad_key)
    assert raised.value.field == "FAL_KEY"
    if bad_key:
        assert bad_key not in raised.value.message
    assert fake_fal.count() == 0


# --- error messages --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "text", "expected"),
    [
        ({"detail": "Application not found"}, "", "Application not found"),
        (
            {"detail": [{"loc": ["body", "prompt"], "msg": "field required", "type": "missing"}]},
            "",
            "prompt: field required",
        ),
        (
            {"detail": [{"loc": ["body", "image_size", "width"], "msg": "too big"}, {"loc": [], "msg": "bad"}]},
            "",
            "image_size.width: too big; bad",
        ),
        (
            {"detail": [{"loc": ["body", f"f{i}"], "msg": "x"} for i in range(8)]},
            "",
            "; ".join(f"f{i}: x" for i in range(5)),
        ),
        (None, "<html>\n  502   Bad\tGateway </html>", "<html> 502 Bad Gateway </html>"),
        (None, "x" * 500, "x" * 200),
        (None, "", "no error detail"),
        ({"error": "other shape"}, '{"error": "other shape"}', '{"error": "other shape"}'),
        ({"detail": []}, '{"detail": []}', '{"detail": []}'),
    ],
)
def test_error_message_is_fals_detail_as_one_line(body, text, expected):
    assert error_message(body, text) == expected


# --- configuration ---------------------------------------------------------------------------


def test_config_defaults_to_fal_run_and_two_minutes():
    config = config_from({})
    assert (config.url, config.timeout, config.connect_timeout) == (DEFAULT_URL, DEFAULT_TIMEOUT, CONNECT_TIMEOUT)
    assert config.url == "https://fal.run" and config.timeout == 120
    assert UpstreamConfig.from_settings(Settings()) == config


def test_config_reads_the_environment():
    config = config_from({"PIXELGOV_UPSTREAM_URL": "http://127.0.0.1:9/base/", "PIXELGOV_UPSTREAM_TIMEOUT": "2.5"})
    assert config.url == "http://127.0.0.1:9/base"
    assert config.timeout == 2.5
    assert config.connect_timeout == 2.5  # never longer than the whole wait


def test_config_reads_no_environment_of_its_own(monkeypatch):
    """Settings are read once, at the edge: what is in os.environ later changes nothing."""
    monkeypatch.setenv("PIXELGOV_UPSTREAM_URL", "http://env.example")
    monkeypatch.setenv("PIXELGOV_UPSTREAM_TIMEOUT", "99")
    config = UpstreamConfig.from_settings(Settings())
    assert (config.url, config.timeout) == (DEFAULT_URL, DEFAULT_TIMEOUT)


def test_config_arguments_override_the_environment():
    config = config_from(
        {"PIXELGOV_UPSTREAM_URL": "http://env.example", "PIXELGOV_UPSTREAM_TIMEOUT": "99"},
        url="https://cli.example",
        timeout=30,
    )
    assert (config.url, config.timeout, config.connect_timeout) == ("https://cli.example", 30, CONNECT_TIMEOUT)


@pytest.mark.parametrize(
    "url",
    [
        "fal.run",
        "ftp://fal.run",
        "file:///etc/passwd",
        "javascript:alert(1)",
        "http://",
        "http://[::1",
        "http://host:99999",
    ],
)
def test_a_url_that_is_not_http_is_invalid(url):
    with pytest.raises(InvalidRequest) as raised:
        config_from({}, url=url)
    assert raised.value.field == "upstream"
    with pytest.raises(InvalidRequest) as from_env:
        config_from({"PIXELGOV_UPSTREAM_URL": url})
    assert from_env.value.field == "upstream"


@pytest.mark.parametrize("raw", ["soon", "1s", "0", "-3", "nan", "inf", "1e400", "3601"])
def test_a_bad_timeout_in_the_environment_is_invalid(raw):
    with pytest.raises(InvalidRequest) as raised:
        config_from({"PIXELGOV_UPSTREAM_TIMEOUT": raw})
    assert raised.value.field == "PIXELGOV_UPSTREAM_TIMEOUT"
    assert "PIXELGOV_UPSTREAM_TIMEOUT" in raised.value.message


@pytest.mark.parametrize("timeout", [0, -1.0, float("nan"), float("inf"), "soon", 1e9])
def test_a_bad_timeout_argument_is_invalid(timeout):
    with pytest.raises(InvalidRequest) as raised:
        config_from({}, timeout=timeout)
    assert raised.value.field == "timeout"


def test_the_fal_key_comes_from_the_environment_trimmed(monkeypatch):
    monkeypatch.setenv("FAL_KEY", "  abc:def  \n")
    assert fal_key_from_env() == "abc:def"


@pytest.mark.parametrize("value", [None, "", "   "])
def test_a_missing_fal_key_is_invalid_and_named(monkeypatch, value):
    if value is not None:
        monkeypatch.setenv("FAL_KEY", value)
    with pytest.raises(InvalidRequest) as raised:
        fal_key_from_env()
    assert raised.value.field == "FAL_KEY"
    assert "FAL_KEY" in raised.value.message


def test_an_unsendable_fal_key_in_the_environment_is_invalid_and_not_quoted(monkeypatch):
    monkeypatch.setenv("FAL_KEY", "s3cr3t\nvalue")
    with pytest.raises(InvalidRequest) as raised:
        fal_key_from_env()
    assert "s3cr3t" not in raised.value.message and "value" not in raised.value.message
