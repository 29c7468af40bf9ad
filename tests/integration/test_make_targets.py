"""The operator's make targets, run as the runbook runs them: `make db-snapshot` against a real database, `make lint`,
and the docker compose targets against a stand-in `docker` (there is no Docker engine here) that records its
arguments, so what they would run is checked."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import bson
from bson import json_util

from tests.support import ROOT


def make(*args: str, env: dict[str, str] | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items() if k not in {"MONGO_URI", "MONGO_DB", "MAKEFLAGS", "MFLAGS"}}
    return subprocess.run(["make", "--no-print-directory", "-C", str(ROOT), *args], capture_output=True, text=True,
                          timeout=timeout, env={**base, **(env or {})})


def fake_docker(tmp_path: Path, running: bool = True) -> dict[str, str]:
    """A `docker` first on PATH: records each call in calls.log; `compose ps -q` names a container when `running`;
    `compose exec ... mongodump ... --archive` writes a stand-in archive to stdout."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    script = bin_dir / "docker"
    script.write_text(f"""#!/usr/bin/env bash
echo "$*" >> {tmp_path}/calls.log
case "$*" in
  "compose ps -q --status running mongodb") {"echo 4f3c2a1b" if running else "true"} ;;
  *mongodump*--archive*) printf 'ARCHIVE-BYTES' ;;
esac
""")
    script.chmod(0o755)
    return {"PATH": f"{bin_dir}:{os.environ['PATH']}"}


def calls(tmp_path: Path) -> list[str]:
    return (tmp_path / "calls.log").read_text().splitlines()


async def test_db_snapshot_copies_every_collection_and_its_indexes_in_mongodumps_layout(mongo_uri, mongo_db_name, mongo_db, tmp_path):
    await mongo_db.signals.insert_many([{"_id": f"sig-{n}", "symbol": "BTC/USDT:USDT", "qty": n / 10} for n in range(25)])
    await mongo_db.signals.create_index([("symbol", 1), ("received_at", -1)], name="by_symbol")
    await mongo_db.orders.insert_one({"_id": "o-1", "client_order_id": "tvtb-abc", "status": "filled"})
    out = make("db-snapshot", f"MONGO_DB={mongo_db_name}", f"BACKUP_DIR={tmp_path}", env={"MONGO_URI": mongo_uri})
    assert out.returncode == 0, out.stdout + out.stderr
    assert mongo_uri not in out.stdout + out.stderr  # it may hold a password
    report = json_util.loads(out.stdout.strip().splitlines()[-1])
    snapshot = Path(report["snapshot"])
    assert snapshot.parent == tmp_path and report["documents"] == {"orders": 1, "signals": 25}
    signals = bson.decode_all((snapshot / mongo_db_name / "signals.bson").read_bytes())
    assert signals == await mongo_db.signals.find().to_list(None)
    metadata = json_util.loads((snapshot / mongo_db_name / "signals.metadata.json").read_text())
    assert {"_id_", "by_symbol"} <= {index["name"] for index in metadata["indexes"]}
    (by_symbol,) = [index for index in metadata["indexes"] if index["name"] == "by_symbol"]
    assert by_symbol["key"] == {"symbol": 1, "received_at": -1}
    assert bson.decode_all((snapshot / mongo_db_name / "orders.bson").read_bytes())[0]["client_order_id"] == "tvtb-abc"


def test_db_snapshot_under_compose_runs_mongodump_in_the_database_container(tmp_path):
    out = make("db-snapshot", f"BACKUP_DIR={tmp_path / 'backups'}", env=fake_docker(tmp_path))
    assert out.returncode == 0, out.stdout + out.stderr
    assert "compose exec -T mongodb mongodump --quiet --db tvtb --archive --gzip" in calls(tmp_path)
    (archive,) = (tmp_path / "backups").glob("tvtb-*.archive.gz")
    assert archive.read_bytes() == b"ARCHIVE-BYTES"


def test_db_snapshot_without_a_reachable_database_fails_and_leaves_nothing(tmp_path):
    env = {**fake_docker(tmp_path, running=False), "MONGO_URI": "mongodb://127.0.0.1:9/?serverSelectionTimeoutMS=500"}
    out = make("db-snapshot", f"BACKUP_DIR={tmp_path / 'backups'}", env=env, timeout=60)
    assert out.returncode != 0
    assert not list((tmp_path / "backups").rglob("*.bson"))


def test_logs_up_and_down_drive_docker_compose(tmp_path):
    env = fake_docker(tmp_path)
    assert make("logs", "SERVICE=executor", env=env).returncode == 0
    assert make("down", env=env).returncode == 0
    assert calls(tmp_path) == ["compose logs --follow --tail=200 executor", "compose down"]


def test_lint_passes_on_the_code_and_the_tests():
    out = make("lint")
    assert out.returncode == 0, out.stdout + out.stderr
