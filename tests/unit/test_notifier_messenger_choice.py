"""The notifier sends through Telegram when its settings are all given, and to the log otherwise."""

from __future__ import annotations

import pytest

from services.notifier.bootstrap import default_messenger
from services.notifier.messenger import LogMessenger
from services.notifier.settings import NotifierSettings
from services.notifier.telegram import TelethonMessenger

BASE = {"amqp_url": "amqp://guest:guest@127.0.0.1:5672/%2F", "mongo_uri": "mongodb://127.0.0.1:27017"}
TELEGRAM = {"telegram_api_id": 12345, "telegram_api_hash": "0123456789abcdef", "telegram_bot_token": "123:bot-token",
            "telegram_chat_ids": "111,222"}


@pytest.fixture(autouse=True)
def no_telegram_in_the_environment(monkeypatch):
    for name in ("TELEGRAM_API_ID", "TELEGRAM_API_HASH", "TELEGRAM_BOT_TOKEN", "TELEGRAM_CHAT_IDS"):
        monkeypatch.delenv(name, raising=False)


def test_telegram_settings_choose_the_telethon_messenger():
    messenger = default_messenger(NotifierSettings(**BASE, **TELEGRAM))
    assert isinstance(messenger, TelethonMessenger) and messenger.name == "telegram"


def test_without_telegram_settings_notifications_go_to_the_log():
    messenger = default_messenger(NotifierSettings(**BASE))
    assert isinstance(messenger, LogMessenger) and messenger.name == "log"
