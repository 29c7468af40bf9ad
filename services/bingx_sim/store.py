"""Where paper accounts are kept between runs: one MongoDB document per account, or nowhere (in memory only)."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from typing import Any, Protocol

from pymongo.asynchronous.database import AsyncDatabase

COLLECTION = "bingx_sim_accounts"


def account_id(api_key: str) -> str:
    """The document id of an account: the API key is a credential, so only its hash is stored."""
    return hashlib.sha256(api_key.encode()).hexdigest()[:32]


class AccountStore(Protocol):
    async def load(self, api_key: str) -> dict[str, Any] | None: ...

    async def save(self, api_key: str, document: dict[str, Any]) -> None: ...


class MemoryAccountStore:
    """A store that lives as long as the process (tests of a restart without a database)."""

    def __init__(self) -> None:
        self.documents: dict[str, dict[str, Any]] = {}

    async def load(self, api_key: str) -> dict[str, Any] | None:
        return self.documents.get(account_id(api_key))

    async def save(self, api_key: str, document: dict[str, Any]) -> None:
        self.documents[account_id(api_key)] = document


class MongoAccountStore:
    def __init__(self, db: AsyncDatabase) -> None:
        self._collection = db[COLLECTION]

    async def load(self, api_key: str) -> dict[str, Any] | None:
        found = await self._collection.find_one({"_id": account_id(api_key)})
        return found["state"] if found else None

    async def save(self, api_key: str, document: dict[str, Any]) -> None:
        key = account_id(api_key)
        await self._collection.replace_one(
            {"_id": key}, {"_id": key, "state": document, "saved_at": datetime.now(UTC)}, upsert=True)
