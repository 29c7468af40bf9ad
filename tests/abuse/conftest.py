"""The abuse suite's fixture: a secret scan around every test (every log record it caused is looked through at its
end; tests add what else they produced)."""

from __future__ import annotations

import pytest

from tests.abuse.secrets_scan import SECRETS, SecretScan


@pytest.fixture(autouse=True)
def secret_scan():
    """Every log record of the test is kept; at its end none may hold a piece of a secret. Tests add what else they
    produced (answers, documents, Telegram messages) to the same scan."""
    scan = SecretScan(SECRETS)
    with scan.capturing_logs():
        yield scan
    scan.assert_clean()

