"""Settings: a missing or malformed setting stops a service at start with one line naming it, never a secret."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from services.executor.settings import ExecutorSettings
from services.ingress.settings import IngressSettings
from services.notifier.settings import NotifierSettings
from shared.settings import load_settings, parse_webhook_tokens
from tests.support import ROOT

BASE = {"AMQP_URL": "amqp://guest:guest@127.0.0.1:5672/%2F", "MONGO_URI": "mongodb://127.0.0.1:27017"}


def run_service(name: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if k not in {*BASE, "WEBHOOK_TOKENS", "CONTROL_API_TOKEN", "BINGX_API_KEY", "BINGX_API_SECRET"}}
    return subprocess.run(
        [sys.executable, "-m", f"services.{name}"], env={**clean, **env}, cwd=ROOT, capture_output=True, text=True, timeout=60
    )


@pytest.mark.parametrize(
    ("service", "env", "expected"),
    [
        ("ingress", {**BASE}, "ingress: configuration error: WEBHOOK_TOKENS is required but not set"),
        ("ingress", {**BASE, "WEBHOOK_TOKENS": "s3cr3t-without-name"}, "WEBHOOK_TOKENS: entry 1 is not of the form name:secret"),
        ("control", {**BASE, "CONTROL_API_TOKEN": "short-s3cr3t"}, "CONTROL_API_TOKEN: must be at least 16 characters"),
        ("executor", {"MONGO_URI": BASE["MONGO_URI"], "AMQP_URL": "http://s3cr3t@x", "BINGX_API_KEY": "k", "BINGX_API_SECRET": "s3cr3t"},
         "AMQP_URL: must start with amqp:// or amqps://"),
        ("notifier", {**BASE, "TELEGRAM_BOT_TOKEN": "123:s3cr3t"}, "TELEGRAM_API_ID, TELEGRAM_API_HASH missing"),
        ("executor", {"MONGO_URI": BASE["MONGO_URI"], "AMQP_URL": "amqp://guest:s3cr3t@127.0.0.1:notaport/%2F",
                      "BINGX_API_KEY": "k", "BINGX_API_SECRET": "s3cr3t"},
         "AMQP_URL: is not a valid URL (check the port, and that user and password are %-escaped)"),
        ("control", {"AMQP_URL": BASE["AMQP_URL"], "MONGO_URI": "mongodb://tvtb:s3cr3t@db:notaport/", "CONTROL_API_TOKEN": "s3cr3t-0123456789ab"},
         "MONGO_URI: is not a valid MongoDB URI: Port contains non-digit characters"),
        ("ingress", {"AMQP_URL": BASE["AMQP_URL"], "MONGO_URI": "mongodb://tvtb:s3cr3t@db/?s3cr3t=1", "WEBHOOK_TOKENS": "a:s3cr3t"},
         "MONGO_URI: is not a valid MongoDB URI: Unknown option"),
        ("ingress", {**BASE, "WEBHOOK_TOKENS": "a:s3cr3t", "TRADING_MODE": "yolo"}, "TRADING_MODE: Input should be 'paper', 'demo' or 'live'"),
        ("executor", {**BASE, "TRADING_MODE": "live", "BINGX_API_KEY": "k3y", "BINGX_API_SECRET": "change-me"},
         "BINGX_API_SECRET still hold the change-me placeholder: set real secrets before TRADING_MODE=live"),
        ("ingress", {**BASE, "TRADING_MODE": "demo", "WEBHOOK_TOKENS": "a:s3cr3t,tv:change-me"},
         "WEBHOOK_TOKENS still hold the change-me placeholder"),
        ("ingress", {**BASE, "WEBHOOK_TOKENS": "a:s3cr3t", "WEBHOOK_TOKEN_SYMBOLS": "b=BTCUSDT.P"},
         "WEBHOOK_TOKEN_SYMBOLS names tokens that WEBHOOK_TOKENS does not have: b"),
        ("ingress", {**BASE, "WEBHOOK_TOKENS": "a:s3cr3t", "WEBHOOK_ALLOWED_SOURCES": "tradingview,example.com"},
         "WEBHOOK_ALLOWED_SOURCES: 'example.com' is not an IP address"),
        ("bingx_sim", {"BINGX_API_KEY": "k", "BINGX_API_SECRET": "s3cr3t", "BINGX_SIM_PRICES": "BTC-USDT=60000,ETH-USDT=abc"},
         "bingx_sim: configuration error: BINGX_SIM_PRICES: the price of ETH-USDT ('abc') is not a number"),
    ],
)
def test_a_bad_setting_stops_the_service_with_one_clear_line(service, env, expected):
    result = run_service(service, env)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert expected in lines[0]
    assert "s3cr3t" not in result.stderr + result.stdout


def test_webhook_tokens_are_parsed_with_names_and_secret_secrets():
    tokens = parse_webhook_tokens(" main:abc , backup:d:e:f ,")
    assert [t.name for t in tokens] == ["main", "backup"]
    assert tokens[1].secret.get_secret_value() == "d:e:f"
    assert "abc" not in repr(tokens)


def test_a_name_used_twice_is_refused():
    with pytest.raises(ValueError, match="used twice"):
        parse_webhook_tokens("a:x,a:y")


def test_paper_mode_points_the_executor_at_the_simulator(monkeypatch):
    for name, value in {**BASE, "BINGX_API_KEY": "k", "BINGX_API_SECRET": "s"}.items():
        monkeypatch.setenv(name, value)
    assert load_settings(ExecutorSettings, "executor").venue_base_url == "http://127.0.0.1:8090"
    monkeypatch.setenv("TRADING_MODE", "live")
    assert load_settings(ExecutorSettings, "executor").venue_base_url is None
    monkeypatch.setenv("BINGX_BASE_URL", "http://127.0.0.1:9999/")
    assert load_settings(ExecutorSettings, "executor").venue_base_url == "http://127.0.0.1:9999"


def test_secret_values_cover_every_secret_the_process_holds(monkeypatch):
    for name, value in {**BASE, "AMQP_URL": "amqp://u:brokerpw@h/v", "WEBHOOK_TOKENS": "a:tokensecret"}.items():
        monkeypatch.setenv(name, value)
    secrets = load_settings(IngressSettings, "ingress").secret_values()
    assert "tokensecret" in secrets and "brokerpw" in secrets


def test_notifier_without_telegram_uses_the_log(monkeypatch):
    for name, value in BASE.items():
        monkeypatch.setenv(name, value)
    assert load_settings(NotifierSettings, "notifier").telegram_enabled is False


def test_placeholder_secrets_run_paper_trading(monkeypatch):
    for name, value in {**BASE, "CONTROL_API_TOKEN": "change-me-control-api-token"}.items():
        monkeypatch.setenv(name, value)
    from services.control.settings import ControlSettings

    assert load_settings(ControlSettings, "control").control_api_token.get_secret_value().startswith("change-me")


def test_a_library_reason_that_quotes_the_uri_is_not_repeated():
    from shared.settings import _without

    assert _without("cannot resolve host s3cr3t-db", "mongodb://tvtb:pw0@s3cr3t-db:27017/") == (
        "check the host, the port, the options and that user and password are %-escaped")
    assert _without("Port must be an integer", "mongodb://tvtb:pw0@db:99999/") == "Port must be an integer"


def test_per_symbol_defaults_are_read_and_checked():
    settings = ExecutorSettings(amqp_url=BASE["AMQP_URL"], mongo_uri=BASE["MONGO_URI"], bingx_api_key="k", bingx_api_secret="s",
                                symbol_leverage="btc-usdt=10, *=3", symbol_margin_mode="*=Isolated,ETH-USDT=cross")
    assert settings.default_for(settings.symbol_leverage, "BTC/USDT:USDT") == 10
    assert settings.default_for(settings.symbol_leverage, "SOL/USDT:USDT") == 3
    assert settings.default_for(settings.symbol_margin_mode, "ETH/USDT:USDT") == "cross"
    assert settings.default_for(settings.symbol_margin_mode, "BTC/USDT:USDT") == "isolated"
    for bad in ({"symbol_leverage": "BTC-USDT=ten"}, {"symbol_leverage": "BTC-USDT=500"}, {"symbol_leverage": "BTC-USDT"},
                {"symbol_margin_mode": "*=portfolio"}):
        with pytest.raises(ValueError):
            ExecutorSettings(amqp_url=BASE["AMQP_URL"], mongo_uri=BASE["MONGO_URI"], bingx_api_key="k", bingx_api_secret="s", **bad)
