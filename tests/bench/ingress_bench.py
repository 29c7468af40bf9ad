"""`make bench`: the ingress's rate and latency under wrk beside two bare aiohttp handlers measured in the same run."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import re
import resource
import secrets
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from contextlib import ExitStack
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from tests.support import ROOT, MongoServer, create_vhost, delete_vhost, drain_signals, free_port, purge_queue, queue_info

BENCH_DIR = Path(__file__).resolve().parent
LUA_SCRIPT = BENCH_DIR / "unique_alert.lua"
OUT_DIR = ROOT / "bench" / "out"
CONNECTIONS = 16
THREADS = 2
WARMUP_S = 2
# DESIGN.md, "Performance targets".
P99_TARGET_MS = 10.0
NON_200_WARN_SHARE = 0.01
# Above this many cores used by processes outside the bench, its figures are not worth much.
BUSY_OTHER_CORES = 0.2
BROKER_COMMANDS = {"beam.smp", "erl_child_setup", "epmd", "inet_gethost"}
WEBHOOK_PATH = "/webhook/tradingview"
TOKEN_NAME = "bench"
BARE_QUEUE = "bench.bare"
SIGNALS_QUEUE = "executor.signals.*"  # the executor's shards, which the ingress feeds; nothing consumes them during the bench
READY_TIMEOUT_S = 60
STOP_TIMEOUT_S = 15
TARGET_NAMES = ("bare-parse", "bare-confirmed-publish", "ingress")


@dataclass
class Target:
    name: str
    command: list[str]
    env: dict[str, str]
    port: int
    queue: str | None  # where its 200s should end up, to check that every accepted alert is there
    runs: list[dict] = field(default_factory=list)  # one per round
    results: dict = field(default_factory=dict)  # the run of median rate, which the report shows

    def settle(self) -> None:
        self.results = sorted(self.runs, key=lambda run: run["ok_per_s"])[len(self.runs) // 2]


class Interrupted(Exception):
    """SIGTERM, turned into an exception so every `finally` below still stops what it started."""


def _on_sigterm(signum, frame):  # noqa: ARG001 - the signal API's signature
    raise Interrupted()


def stop_process(process: subprocess.Popen, timeout: float = STOP_TIMEOUT_S) -> None:
    """Terminate, wait, kill on timeout: no process of ours outlives the bench."""
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=5)


def http_get(url: str, timeout: float = 2.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def wait_ready(process: subprocess.Popen, port: int, name: str, log_path: Path) -> float:
    """Poll /readyz until 200; fail fast if the server died. Returns how long it took."""
    started = time.monotonic()
    deadline = started + READY_TIMEOUT_S
    last = "no answer"
    while time.monotonic() < deadline:
        if process.poll() is not None:
            tail = log_path.read_text(errors="replace")[-2000:]
            raise RuntimeError(f"{name} exited with {process.returncode} before it was ready; its log ends:\n{tail}")
        try:
            status, body = http_get(f"http://127.0.0.1:{port}/readyz", timeout=1.0)
            if status == 200:
                return time.monotonic() - started
            last = f"{status} {body[:200]!r}"
        except OSError as error:
            last = type(error).__name__
        time.sleep(0.1)
    raise RuntimeError(f"{name} was not ready within {READY_TIMEOUT_S}s (last: {last})")


def run_wrk(port: int, duration: int, run_tag: str, token: str, raw_path: Path | None) -> dict:
    """One wrk run against the webhook; returns the machine-readable line of unique_alert.lua's done()."""
    # The timeout is above TradingView's 3 s budget, so a slow answer shows as latency, not as a socket error.
    command = [
        "wrk", f"-t{THREADS}", f"-c{CONNECTIONS}", f"-d{duration}s", "--latency", "--timeout", "5s",
        "-s", str(LUA_SCRIPT), f"http://127.0.0.1:{port}{WEBHOOK_PATH}",
    ]
    env = {**os.environ, "BENCH_TOKEN": token, "BENCH_RUN": run_tag}
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               start_new_session=True)
    try:
        stdout, stderr = process.communicate(timeout=duration + 30)
    except subprocess.TimeoutExpired:
        stop_process(process, timeout=5)
        raise RuntimeError(f"wrk did not finish within {duration + 30}s")
    finally:
        stop_process(process, timeout=5)
    if raw_path is not None:
        raw_path.write_text(stdout + ("\n--- stderr ---\n" + stderr if stderr else ""))
    match = re.search(r"^BENCH_RESULT (\{.*\})$", stdout, re.MULTILINE)
    if process.returncode != 0 or match is None:
        raise RuntimeError(f"wrk failed (rc={process.returncode}): {stderr.strip() or stdout[-1000:]}")
    result = json.loads(match.group(1))
    # wrk's own summary line, as a cross-check of the Lua figures.
    wrk_rate = re.search(r"^Requests/sec:\s+([\d.]+)", stdout, re.MULTILINE)
    result["wrk_requests_per_s"] = float(wrk_rate.group(1)) if wrk_rate else None
    ok = result["statuses"].get("200", 0)
    result["ok"] = ok
    result["ok_per_s"] = ok / (result["duration_us"] / 1e6)
    result["non_200"] = result["requests"] - ok
    return result


def scrape_metrics(port: int) -> dict[str, float]:
    """The ingress's own count of requests by result, to name the cause of any non-200."""
    try:
        status, body = http_get(f"http://127.0.0.1:{port}/metrics", timeout=5.0)
    except OSError:
        return {}
    if status != 200:
        return {}
    counts: dict[str, float] = {}
    for line in body.decode(errors="replace").splitlines():
        match = re.match(r'^tvtb_webhook_requests_total\{result="([^"]+)"\}\s+([\d.eE+-]+)$', line)
        if match:
            counts[match.group(1)] = float(match.group(2))
    return counts


def queue_depth(vhost: str, queue: str, low: int, high: int) -> int | None:
    """Messages in `queue`; the management API refreshes its figures every few seconds, so wait a little for them."""
    depth = None
    deadline = time.monotonic() + 12
    while time.monotonic() < deadline:
        try:
            depth = queue_info(vhost, queue).get("messages")
        except (OSError, ValueError):
            depth = None
        if depth is not None and low <= depth <= high:
            return depth
        time.sleep(1)
    return depth


def summarise_log(log_path: Path) -> dict:
    """Warnings and errors the server logged under load (JSON lines), grouped by message."""
    levels: dict[str, int] = {}
    messages: dict[str, int] = {}
    if not log_path.exists():
        return {"levels": levels, "messages": messages}
    for line in log_path.read_text(errors="replace").splitlines():
        try:
            record = json.loads(line)
            level = str(record.get("level") or record.get("levelname") or "?").upper()
            message = str(record.get("message") or record.get("msg") or line)[:160]
        except ValueError:
            level, message = "TEXT", line[:160]
        levels[level] = levels.get(level, 0) + 1
        messages[message] = messages.get(message, 0) + 1
    top = dict(sorted(messages.items(), key=lambda item: -item[1])[:10])
    return {"levels": levels, "messages": top}


def cpu_ticks() -> dict[tuple[int, int], tuple[str, int]]:
    """CPU time (user + system, in clock ticks, all threads) of every process, keyed by pid and start time."""
    ticks: dict[tuple[int, int], tuple[str, int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:  # the process ended meanwhile
            continue
        comm = text[text.index("(") + 1 : text.rindex(")")]
        fields = text[text.rindex(")") + 2 :].split()
        # The start time tells a reused pid apart; kernel workers rename themselves, so the name cannot.
        ticks[(int(stat.parent.name), int(fields[19]))] = (comm, int(fields[11]) + int(fields[12]))
    return ticks


def cpu_breakdown(before: dict, after: dict, pids: dict[str, int], wrk_seconds: float, seconds: float) -> dict:
    """Cores used between two snapshots by the server, the database, the broker, wrk, and everything else.

    On a two-core machine these show who the bottleneck is, and whether something outside the bench interfered.
    Processes that began and ended between the snapshots are not seen, except wrk, which is counted from its rusage.
    """
    scale = seconds * os.sysconf("SC_CLK_TCK") or 1
    used: dict[str, float] = {"server": 0, "mongo": 0, "broker": 0, "bench": 0, "other": 0}
    others: dict[str, float] = {}
    by_pid = {pid: group for group, pid in pids.items()}
    for key, (comm, total) in after.items():
        delta = total - before[key][1] if key in before else total
        if not delta:
            continue
        group = by_pid.get(key[0]) or ("broker" if comm in BROKER_COMMANDS else "other")
        used[group] += delta
        if group == "other":
            others[comm] = others.get(comm, 0) + delta
    cores = {group: round(ticks / scale, 2) for group, ticks in used.items()}
    cores["wrk"] = round(wrk_seconds / seconds, 2) if seconds else 0.0
    cores["top_other"] = {comm: round(ticks / scale, 2) for comm, ticks in sorted(others.items(), key=lambda i: -i[1])[:5]}
    return cores


def children_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def measure(target: Target, duration: int, token: str, vhost: str) -> None:
    log_path = OUT_DIR / f"{target.name}.log"
    print(f"\n[{target.name}] starting on 127.0.0.1:{target.port}", flush=True)
    env = dict(target.env)
    mongo = None
    if "MONGO_URI" in env:
        # A database server of its own for each run, as each bare handler starts from nothing: the test server
        # slows as the records of earlier runs pile up, and goes on using CPU for a while after a run (0.1 to 0.3
        # cores), which would fall on whichever target came next.
        mongo = MongoServer()
        mongo.start()
        env["MONGO_URI"] = mongo.uri
    with open(log_path, "wb") as log:
        # Own session: a Ctrl-C at the terminal reaches only the bench, which then stops the server in order.
        try:
            process = subprocess.Popen(target.command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                                       start_new_session=True)
        except BaseException:
            if mongo is not None:
                mongo.stop()
            raise
    try:
        ready_s = wait_ready(process, target.port, target.name, log_path)
        print(f"[{target.name}] ready in {ready_s:.1f}s; warm-up {WARMUP_S}s", flush=True)
        run_id = secrets.token_hex(4)
        warmup = run_wrk(target.port, WARMUP_S, f"{run_id}-warmup", token, None)
        print(f"[{target.name}] measuring {duration}s ({CONNECTIONS} connections, {THREADS} threads)", flush=True)
        # wrk is the only child that ends during the run: RUSAGE_CHILDREN's growth is its CPU time.
        before, children_before, started = cpu_ticks(), children_cpu_seconds(), time.monotonic()
        measured = run_wrk(target.port, duration, f"{run_id}-measured", token, OUT_DIR / f"{target.name}.wrk.txt")
        pids = {"server": process.pid, "bench": os.getpid(), "mongo": mongo.process.pid if mongo else -1}
        cpu = cpu_breakdown(before, cpu_ticks(), pids, children_cpu_seconds() - children_before, time.monotonic() - started)
        alive = process.poll() is None
        metrics = scrape_metrics(target.port) if target.name == "ingress" and alive else {}
    finally:
        stop_process(process)
        if mongo is not None:
            mongo.stop()
    results = {
        **measured,
        "warmup": {key: warmup[key] for key in ("requests", "requests_per_s", "non_2xx", "statuses", "p99_us")},
        "ready_after_s": round(ready_s, 2),
        "cpu_cores": cpu,
        "alive_after_load": alive,
        "exit_code": process.returncode,
        "server_metrics": metrics,
        "log": summarise_log(log_path),
    }
    if target.queue:
        # Every 200 must be in the queue. A few more may be too: wrk stops with up to one request per connection in
        # flight, which the server still publishes but wrk never counts (two runs: warm-up and measured).
        accepted = warmup["statuses"].get("200", 0) + measured["ok"]
        unanswered = 2 * CONNECTIONS + warmup["non_2xx"] + measured["non_2xx"] + measured["socket_errors"]["timeout"]
        queue = {"name": target.queue, "accepted": accepted, "at_most": accepted + unanswered}
        if target.name == "ingress":
            # The ingress commits alerts in groups (a SignalBatchV1 holds several): count signals, not messages,
            # and check that none is there twice.
            signals = asyncio.run(drain_signals(target.env["AMQP_URL"], timeout=30))
            ids = [signal.signal_id for signal in signals]
            queue.update(messages=len(ids), distinct=len(set(ids)), unit="signals")
        else:
            queue.update(messages=queue_depth(vhost, target.queue, accepted, accepted + unanswered), unit="messages")
        results["queue"] = queue
        # Empty for the next run: a queue left holding tens of thousands of messages would slow the broker for it.
        if target.name != "ingress":
            purge_queue(vhost, target.queue)
    target.runs.append(results)


def ms(microseconds: float) -> str:
    return f"{microseconds / 1000:.2f}"


def ratio(a: float, b: float) -> float | None:
    return a / b if b else None


def _queue_ok(queue: dict) -> bool:
    return (queue["messages"] is not None and queue["accepted"] <= queue["messages"] <= queue["at_most"]
            and queue.get("distinct", queue["messages"]) == queue["messages"])


def report(targets: dict[str, Target], duration: int, rounds: int) -> dict:
    header = f"{'target':<24}{'req/s':>10}{'200/s':>10}{'p50':>8}{'p90':>8}{'p99':>8}{'p99.9':>8}{'max':>9}{'non-2xx':>9}"
    lines = [
        "",
        f"ingress benchmark: wrk {CONNECTIONS} connections, {THREADS} threads, {duration}s per target after a "
        f"{WARMUP_S}s warm-up, unique alerts; latencies in ms; {os.cpu_count()} CPUs",
        f"{rounds} rounds, the targets taking turns in a rotating order; each row is the target's run of median rate",
        "ingress rate limits off for the bench: WEBHOOK_RATE_LIMIT_PER_TOKEN=0, WEBHOOK_RATE_LIMIT_PER_IP=0",
        "",
        header,
        "-" * len(header),
    ]
    for name in TARGET_NAMES:
        r = targets[name].results
        lines.append(
            f"{name:<24}{r['requests_per_s']:>10.0f}{r['ok_per_s']:>10.0f}{ms(r['p50_us']):>8}{ms(r['p90_us']):>8}"
            f"{ms(r['p99_us']):>8}{ms(r['p999_us']):>8}{ms(r['max_us']):>9}{r['non_2xx']:>9}"
        )
    cpu_header = f"{'CPU cores used while measured':<32}{'server':>8}{'broker':>8}{'mongo':>8}{'wrk':>8}{'other':>8}"
    lines += ["", cpu_header, "-" * len(cpu_header)]
    for name in TARGET_NAMES:
        c = targets[name].results["cpu_cores"]
        lines.append(f"{name:<32}{c['server']:>8.2f}{c['broker']:>8.2f}{c['mongo']:>8.2f}{c['wrk']:>8.2f}{c['other']:>8.2f}")
    per_round = {name: " ".join(f"{run['ok_per_s']:.0f}" for run in targets[name].runs) for name in TARGET_NAMES}
    lines += ["", "200/s in each round: " + "; ".join(f"{name} {rates}" for name, rates in per_round.items())]
    ours = targets["ingress"].results
    publish = targets["bare-confirmed-publish"].results
    parse = targets["bare-parse"].results
    ratios = {
        "rate_vs_bare_confirmed_publish": ratio(ours["ok_per_s"], publish["ok_per_s"]),
        "rate_vs_bare_parse": ratio(ours["ok_per_s"], parse["ok_per_s"]),
        "p99_vs_bare_confirmed_publish": ratio(ours["p99_us"], publish["p99_us"]),
        "p99_vs_bare_parse": ratio(ours["p99_us"], parse["p99_us"]),
    }

    def fmt(value: float | None) -> str:
        return "n/a" if value is None else f"{value:.2f}x"

    lines += [
        "",
        f"ours / bare-confirmed-publish: rate {fmt(ratios['rate_vs_bare_confirmed_publish'])}, "
        f"p99 {fmt(ratios['p99_vs_bare_confirmed_publish'])}",
        f"ours / bare-parse:             rate {fmt(ratios['rate_vs_bare_parse'])}, p99 {fmt(ratios['p99_vs_bare_parse'])}",
    ]
    rate_holds = ours["ok_per_s"] >= publish["ok_per_s"]
    p99_holds = ours["p99_us"] / 1000 < P99_TARGET_MS
    lines += [
        "",
        "DESIGN targets:",
        f"  ingress 200/s >= bare-confirmed-publish 200/s: {'HOLDS' if rate_holds else 'MISSED'} "
        f"({ours['ok_per_s']:.0f} vs {publish['ok_per_s']:.0f})",
        f"  ingress p99 < {P99_TARGET_MS:.0f} ms: {'HOLDS' if p99_holds else 'MISSED'} ({ms(ours['p99_us'])} ms)",
    ]
    warnings = []
    for name in TARGET_NAMES:
        r = targets[name].results
        share = r["non_200"] / r["requests"] if r["requests"] else 1.0
        if name == "ingress" and share > NON_200_WARN_SHARE:
            warnings.append(
                f"WARNING: {share:.1%} of the ingress's answers were not 200 ({r['statuses']}); "
                f"its rate is not a rate of accepted alerts (server counts: {r['server_metrics']})"
            )
        elif r["non_200"]:
            warnings.append(f"note: {name} answered {r['non_200']} non-200 ({r['statuses']})")
        errors = {k: v for k, v in r["socket_errors"].items() if v}
        if errors:
            warnings.append(f"note: {name} had socket errors {errors}")
        if not r["alive_after_load"]:
            warnings.append(f"WARNING: {name} was not running after the load")
        queue = r.get("queue")
        if queue and not _queue_ok(queue):
            warnings.append(
                f"WARNING: {name} answered 200 {queue['accepted']} times but {queue['name']} holds {queue['messages']} {queue['unit']}"
                f" ({queue.get('distinct', queue['messages'])} distinct) "
                f"(expected {queue['accepted']}..{queue['at_most']})"
            )
        if r["cpu_cores"]["other"] > BUSY_OTHER_CORES:
            warnings.append(
                f"note: processes outside the bench used {r['cpu_cores']['other']:.2f} cores during {name}'s measured "
                f"run ({r['cpu_cores']['top_other']}): its figures are low and noisy"
            )
        logged = {k: v for k, v in r["log"]["levels"].items() if k not in ("DEBUG", "INFO")}
        if logged:
            warnings.append(f"note: {name} logged {logged}; see bench/out/{name}.log")
    lines += ["", "Durability check (warm-up and measured run):"]
    for name in TARGET_NAMES:
        queue = targets[name].results.get("queue")
        if queue and _queue_ok(queue):
            lines.append(
                f"  {name}: {queue['accepted']} answered 200, {queue['name']} holds {queue['messages']} {queue['unit']}, none twice "
                f"(the rest were in flight when wrk stopped)"
            )
    if warnings:
        lines += [""] + warnings
    print("\n".join(lines), flush=True)
    return {"ratios": ratios, "targets_hold": {"rate_ge_bare_confirmed_publish": rate_holds, "p99_under_10ms": p99_holds},
            "warnings": warnings}


def plot(targets: dict[str, Target], path: Path) -> str:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib is not installed: no latency plot (pip install matplotlib to get one)"
    points = [("50", "p50_us"), ("75", "p75_us"), ("90", "p90_us"), ("99", "p99_us"), ("99.9", "p999_us"),
              ("99.99", "p9999_us")]
    figure, axes = plt.subplots(figsize=(8, 5))
    for name in TARGET_NAMES:
        r = targets[name].results
        axes.plot([label for label, _ in points], [r[key] / 1000 for _, key in points], marker="o",
                  label=f"{name} ({r['ok_per_s']:.0f}/s)")
    axes.axhline(P99_TARGET_MS, linestyle="--", color="grey", label=f"p99 target {P99_TARGET_MS:.0f} ms")
    axes.set_xlabel("percentile")
    axes.set_ylabel("latency (ms)")
    axes.set_yscale("log")
    axes.set_title(f"webhook latency, wrk {CONNECTIONS} connections, unique alerts")
    axes.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return f"latency plot: {os.path.relpath(path, ROOT)}"


def wrk_version() -> str:
    completed = subprocess.run(["wrk", "-v"], capture_output=True, text=True, timeout=10)
    return (completed.stdout + completed.stderr).strip().splitlines()[0] if (completed.stdout + completed.stderr) else "?"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--duration", type=int, default=10, help="seconds of measured load per target (default 10)")
    parser.add_argument("--rounds", type=int, default=3, help="measurements of each target, interleaved (default 3)")
    arguments = parser.parse_args()
    if not 1 <= arguments.rounds <= 10:
        parser.error("--rounds must be between 1 and 10")
    if not 1 <= arguments.duration <= 600:
        parser.error("--duration must be between 1 and 600 seconds")
    if shutil.which("wrk") is None:
        print("wrk is not installed: `make bench` installs it (apt-get install -y wrk)", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, _on_sigterm)
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    token = secrets.token_urlsafe(24)

    with ExitStack() as cleanup:
        vhost, amqp_url = create_vhost()
        cleanup.callback(delete_vhost, vhost)
        print(f"bench: RabbitMQ vhost {vhost}; a SecantusDB of its own for each ingress run", flush=True)

        # The caller's own service settings must not leak into the servers under bench.
        base_env = {key: value for key, value in os.environ.items()
                    if not key.startswith(("WEBHOOK_", "INGRESS_", "AMQP_", "MONGO_"))}
        python = sys.executable
        ports = {name: free_port() for name in TARGET_NAMES}
        targets = {
            "bare-parse": Target(
                "bare-parse", [python, "-m", "tests.bench.bare", "parse", "--port", str(ports["bare-parse"])],
                base_env, ports["bare-parse"], None),
            "bare-confirmed-publish": Target(
                "bare-confirmed-publish",
                [python, "-m", "tests.bench.bare", "publish", "--port", str(ports["bare-confirmed-publish"]),
                 "--amqp-url", amqp_url],
                base_env, ports["bare-confirmed-publish"], BARE_QUEUE),
            "ingress": Target(
                "ingress", [python, "-m", "services.ingress"],
                {
                    **base_env,
                    "AMQP_URL": amqp_url,
                    "MONGO_URI": "",  # a server of its own per run (measure)
                    "MONGO_DB": "tvtb_bench",
                    "WEBHOOK_TOKENS": f"{TOKEN_NAME}:{token}",
                    "INGRESS_PORT": str(ports["ingress"]),
                    "BIND_HOST": "127.0.0.1",
                    "LOG_LEVEL": "WARNING",
                    "TRADING_MODE": "paper",
                    # Limits off: the bench measures the door's throughput, not how fast it says 429.
                    "WEBHOOK_RATE_LIMIT_PER_TOKEN": "0",
                    "WEBHOOK_RATE_LIMIT_PER_IP": "0",
                },
                ports["ingress"], SIGNALS_QUEUE),
        }

        # One at a time, same load: on two cores, servers running side by side would measure each other. Several
        # rounds, each in another order, so that drift on the machine and the order of turns favour none of them.
        for round_ in range(arguments.rounds):
            for offset in range(len(TARGET_NAMES)):
                name = TARGET_NAMES[(round_ + offset) % len(TARGET_NAMES)]
                measure(targets[name], arguments.duration, token, vhost)
        for target in targets.values():
            target.settle()

        summary = report(targets, arguments.duration, arguments.rounds)
        document = {
            "at": datetime.now(timezone.utc).isoformat(),
            "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
            "load": {"tool": wrk_version(), "connections": CONNECTIONS, "threads": THREADS,
                     "duration_s": arguments.duration, "warmup_s": WARMUP_S, "unique_alerts": True, "rounds": arguments.rounds},
            "ingress_settings": {"WEBHOOK_RATE_LIMIT_PER_TOKEN": 0, "WEBHOOK_RATE_LIMIT_PER_IP": 0, "LOG_LEVEL": "WARNING"},
            "targets": {name: {**targets[name].results, "runs": targets[name].runs} for name in TARGET_NAMES},
            **summary,
        }
        json_path = OUT_DIR / "ingress.json"
        json_path.write_text(json.dumps(document, indent=2) + "\n")
        print(f"\nresults: {json_path.relative_to(ROOT)}", flush=True)
        print(plot(targets, OUT_DIR / "ingress_latency.png"), flush=True)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except (KeyboardInterrupt, Interrupted):
        print("\nbench: interrupted; every process it started was stopped", file=sys.stderr)
        sys.exit(130)
