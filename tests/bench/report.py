"""`make bench`, last part: one report of the three benchmarks, as a table and as a latency-distribution plot.

Reads what the three wrote in bench/out/ (ingress.json, executor.json, notifier.json), prints a table of each figure
beside its baseline measured in the same run, and draws bench/out/report.png: the webhook's latency percentiles
beside the two bare aiohttp handlers, the alert-to-order latency distribution beside ccxt's create_order alone, and
the notifier's event-to-Telegram latency."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from tests.bench.executor_bench import OUT_DIR, percentile

INGRESS_P99_TARGET_MS, EXECUTOR_P99_TARGET_MS = 10.0, 25.0


def load(name: str) -> dict | None:
    path = OUT_DIR / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else None


def rows(ingress: dict | None, executor: dict | None, notifier: dict | None) -> list[tuple[str, str, str, str]]:
    """(what, ours, baseline, ratio or target) per figure."""
    out: list[tuple[str, str, str, str]] = []
    if ingress:
        t = ingress["targets"]
        ours, bare, parse = t["ingress"], t["bare-confirmed-publish"], t["bare-parse"]
        out.append(("webhook accepted/s (16 connections)", f"{ours['ok_per_s']:.0f}",
                    f"{bare['ok_per_s']:.0f} confirmed publish / {parse['ok_per_s']:.0f} parse only",
                    f"{ours['ok_per_s'] / bare['ok_per_s']:.2f}x the durable baseline"))
        out.append(("webhook p99, ms", f"{ours['p99_us'] / 1000:.2f}", f"{bare['p99_us'] / 1000:.2f}",
                    f"target < {INGRESS_P99_TARGET_MS:.0f}"))
    if executor:
        out.append((f"alert to order p50, ms ({executor['rate']}/s)", f"{executor['ours_50']:.2f}",
                    f"{executor['baseline_50']:.2f} create_order alone", ""))
        out.append((f"alert to order p99, ms ({executor['rate']}/s)", f"{executor['ours_99']:.2f}",
                    f"{executor['baseline_99']:.2f} create_order alone", f"target < {EXECUTOR_P99_TARGET_MS:.0f}"))
    if notifier:
        idle, burst, limits = notifier["idle"]["latency_ms"], notifier["burst"], notifier["limits"]
        out.append((f"event to Telegram p50 / max of {len(idle)}, ms (idle)", f"{percentile(idle, 50):.1f} / {max(idle):.1f}",
                    "", ""))
        out.append((f"burst: {burst['events']} events x {burst['chats']} chats told in, s", f"{burst['seconds']:.1f}",
                    f"{burst['events'] / limits['per_chat_per_s']:.0f} at one message per event (1/s per chat)",
                    f"in {burst['messages']} messages"))
        out.append(("fastest message gap in one chat, ms", f"{burst['min_gap_per_chat_ms']:.0f}",
                    f"{1000 / limits['per_chat_per_s']:.0f} (Telegram: 1/s per chat)", ""))
        out.append(("most messages in any second, all chats", f"{burst['peak_messages_per_s_overall']}",
                    f"{limits['per_bot_per_s']} (Telegram: 30/s per bot)", ""))
    return out


def table(lines: list[tuple[str, str, str, str]]) -> str:
    header = ("figure", "ours", "baseline (same run) / limit", "")
    widths = [max(len(row[i]) for row in [header, *lines]) for i in range(4)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    return "\n".join([fmt.format(*header), fmt.format(*("-" * w for w in widths)), *(fmt.format(*row) for row in lines)])


def plot(ingress: dict | None, executor: dict | None, notifier: dict | None, path: Path) -> str:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib is not installed (pip install -e '.[bench]'): no plot"
    figure, axes = plt.subplots(1, 3, figsize=(16, 5))
    if ingress:
        points = [("50", "p50_us"), ("90", "p90_us"), ("99", "p99_us"), ("99.9", "p999_us")]
        for name, r in ingress["targets"].items():
            axes[0].plot([label for label, _ in points], [r[key] / 1000 for _, key in points], marker="o",
                         label=f"{name} ({r['ok_per_s']:.0f}/s)")
        axes[0].axhline(INGRESS_P99_TARGET_MS, linestyle="--", color="grey", label="p99 target")
        axes[0].set(title="webhook latency by percentile", xlabel="percentile", ylabel="ms", yscale="log")
        axes[0].legend(fontsize=8)
    if executor:
        for name, key in (("alert to order", "ours_ms"), ("create_order alone", "baseline_ms")):
            values = sorted(executor.get(key, []))
            if values:
                axes[1].plot(values, [(i + 1) / len(values) for i in range(len(values))], label=name)
        axes[1].axvline(EXECUTOR_P99_TARGET_MS, linestyle="--", color="grey", label="p99 target")
        axes[1].set(title=f"alert to order at {executor['rate']}/s (CDF)", xlabel="ms", ylabel="share of orders", xscale="log")
        axes[1].legend(fontsize=8)
    if notifier:
        axes[2].hist(notifier["idle"]["latency_ms"], bins=20)
        axes[2].set(title="event to Telegram, idle chat", xlabel="ms", ylabel="events")
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return f"plot: {path}"


def main() -> int:
    ingress, executor, notifier = load("ingress"), load("executor"), load("notifier")
    if not (ingress or executor or notifier):
        print("no results in bench/out: run `make bench` first", file=sys.stderr)
        return 1
    print("\n" + table(rows(ingress, executor, notifier)))
    print(plot(ingress, executor, notifier, OUT_DIR / "report.png"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
