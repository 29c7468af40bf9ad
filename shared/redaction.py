"""Keeping secrets out of what a service says: a reason may quote input, and input may hold a token pasted in the
wrong place."""

from __future__ import annotations

import re

REDACT_FROM = 8  # a quoted value is cut at 32-40 characters: a secret's first characters are as secret as it


def redact(text: str, secrets: tuple[str, ...]) -> str:
    """`text` with every secret, or the longest beginning of one (8 characters or more) that it holds, as ***.

    Without regard to case: a reason may quote a value lowercased (the ingress's `order_type`) or uppercased (an
    OctoBot key).
    """
    lowered = text.lower()
    for secret in secrets:
        if len(secret) < REDACT_FROM or secret[:REDACT_FROM].lower() not in lowered:
            continue
        for end in range(len(secret), REDACT_FROM - 1, -1):
            if secret[:end].lower() in lowered:
                text = re.sub(re.escape(secret[:end]), "***", text, flags=re.IGNORECASE)
                lowered = text.lower()
                break
    return text
