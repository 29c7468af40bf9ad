"""Snapshot the database before a data fix: `make db-snapshot` (docs/RUNBOOK.md).

Writes mongodump's directory layout, which `mongorestore --dir <snapshot>` reads back: `<out>/<db>/<collection>.bson`
(the documents, as BSON, one after another) and `<collection>.metadata.json` (its indexes). The database is
MONGO_URI / MONGO_DB from the environment, then `.env`, then the local defaults of `make run`. The URI is never
printed: it may hold a password.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from datetime import UTC, datetime
from pathlib import Path

import bson
from bson.raw_bson import RawBSONDocument
from bson import json_util
from pymongo import MongoClient

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(Path(__file__).parent))
from run_local import read_dotenv  # noqa: E402

LOCAL_URI = "mongodb://127.0.0.1:27017/?retryWrites=false"


def snapshot(uri: str, db_name: str, out: Path) -> dict[str, int]:
    """Write every collection of `db_name` under `out/db_name`; the document count per collection."""
    target = out / db_name
    target.mkdir(parents=True, exist_ok=False)
    counts: dict[str, int] = {}
    with MongoClient(uri, serverSelectionTimeoutMS=5000) as client:
        db = client[db_name]
        for name in sorted(db.list_collection_names()):
            collection = db[name]
            count = 0
            with open(target / f"{name}.bson", "wb") as f:
                for raw in collection.with_options(codec_options=bson.CodecOptions(document_class=RawBSONDocument)).find():
                    f.write(raw.raw)
                    count += 1
            indexes = [{"v": 2, **{k: v for k, v in info.items() if k != "ns"}, "name": index_name}
                       for index_name, info in collection.index_information().items()]
            for index in indexes:
                index["key"] = dict(index["key"])
            (target / f"{name}.metadata.json").write_text(json_util.dumps(
                {"indexes": indexes, "collectionName": name, "type": "collection"}))
            counts[name] = count
    return counts


def main(argv: list[str] | None = None) -> int:
    settings = {**read_dotenv(ROOT / ".env"), **os.environ}
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", default=settings.get("MONGO_DB", "tvtb"))
    parser.add_argument("--backups", type=Path, default=ROOT / "backups", help="where snapshots go (default backups/)")
    parser.add_argument("--out", type=Path, help="directory to create (default <backups>/<db>-<UTC time>)")
    args = parser.parse_args(argv)
    uri = settings.get("MONGO_URI") or LOCAL_URI
    if "mongodb:27017" in uri:  # the compose file's address means nothing outside its network
        print("db-snapshot: MONGO_URI names the compose network's host `mongodb`; under docker compose run\n"
              "  docker compose exec -T mongodb mongodump --db tvtb --archive --gzip > backups/tvtb.archive.gz",
              file=sys.stderr)
        return 2
    out = args.out or args.backups / f"{args.db}-{datetime.now(UTC):%Y%m%dT%H%M%SZ}"
    counts = snapshot(uri, args.db, out)
    print(json.dumps({"snapshot": str(out), "database": args.db, "documents": counts}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
