"""The Prometheus alert rules: each with a severity and a runbook section that exists, naming only real metrics."""

from __future__ import annotations

import re
import subprocess

import yaml

from tests.support import ROOT

RULES = ROOT / "ops" / "prometheus" / "rules.yml"
RUNBOOK = ROOT / "docs" / "RUNBOOK.md"


def rules() -> list[dict]:
    return [rule for group in yaml.safe_load(RULES.read_text())["groups"] for rule in group["rules"]]


def metrics_in_code() -> set[str]:
    names: set[str] = set()
    for path in [*(ROOT / "services").rglob("*.py"), *(ROOT / "shared").rglob("*.py")]:
        names.update(re.findall(r'"(tvtb_[a-z_]+)"', path.read_text()))
    return names


def test_every_alert_has_a_severity_and_a_runbook_section_that_exists():
    anchors = {re.sub(r"[^a-z0-9-]", "", line[3:].strip().lower().replace(" ", "-"))
               for line in RUNBOOK.read_text().splitlines() if line.startswith("## ")}
    assert rules()
    for rule in rules():
        assert rule["labels"]["severity"] in {"SEV1", "SEV2", "SEV3"}, rule["alert"]
        page, _, anchor = rule["annotations"]["runbook_url"].partition("#")
        assert page == "docs/RUNBOOK.md" and anchor in anchors, rule["alert"]
        assert rule["annotations"]["summary"]


def test_every_metric_a_rule_names_exists():
    known = metrics_in_code()
    for rule in rules():
        for name in re.findall(r"\b(tvtb_[a-z_]+)", rule["expr"]):
            base = re.sub(r"_(bucket|sum|count)$", "", name)
            assert name in known or base in known, f"{rule['alert']} names {name}, which no service exports"
        for name in re.findall(r"\b([a-z]+_[a-z_]+)\{", rule["expr"]):
            assert name.startswith(("tvtb_", "rabbitmq_")) or name == "up", f"{rule['alert']}: {name}"


def test_prometheus_loads_the_rules_and_compose_mounts_them():
    config = yaml.safe_load((ROOT / "ops" / "prometheus" / "prometheus.yml").read_text())
    assert "/etc/prometheus/rules.yml" in config["rule_files"]
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    mounts = {v.split(":")[1]: v.split(":")[0] for v in compose["services"]["prometheus"]["volumes"]}
    assert (ROOT / mounts["/etc/prometheus/rules.yml"]).resolve() == RULES


def test_every_metric_a_dashboard_panel_names_exists_and_grafana_is_provisioned_with_it():
    import json

    known = metrics_in_code()
    dashboards = list((ROOT / "ops" / "grafana" / "dashboards").glob("*.json"))
    assert dashboards
    for path in dashboards:
        dashboard = json.loads(path.read_text())
        assert dashboard["panels"], path.name
        for panel in dashboard["panels"]:
            assert panel["datasource"]["uid"] == "prometheus" and panel["targets"], panel["title"]
            for target in panel["targets"]:
                for name in re.findall(r"\b(tvtb_[a-z_]+)", target["expr"]):
                    base = re.sub(r"_(bucket|sum|count)$", "", name)
                    assert name in known or base in known, f"{panel['title']} names {name}, which no service exports"
    datasources = yaml.safe_load((ROOT / "ops/grafana/provisioning/datasources/prometheus.yml").read_text())["datasources"]
    assert [d["uid"] for d in datasources] == ["prometheus"]
    provider = yaml.safe_load((ROOT / "ops/grafana/provisioning/dashboards/tvtb.yml").read_text())["providers"][0]
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    mounts = {v.split(":")[1]: v.split(":")[0] for v in compose["services"]["grafana"]["volumes"]}
    assert (ROOT / mounts[provider["options"]["path"]]).resolve() == (ROOT / "ops/grafana/dashboards").resolve()
    assert (ROOT / mounts["/etc/grafana/provisioning"]).resolve() == (ROOT / "ops/grafana/provisioning").resolve()


# --- promtool: Debian's, unpacked by ops/scripts/ensure-promtool.sh when it is not installed -------------------------

def promtool() -> str:
    out = subprocess.run([str(ROOT / "ops" / "scripts" / "ensure-promtool.sh")], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, f"promtool could not be found or unpacked: {out.stderr}"
    return out.stdout.strip().splitlines()[-1]


def test_promtool_accepts_the_rules():
    out = subprocess.run([promtool(), "check", "rules", str(RULES)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr


def test_the_alerts_fire_on_the_series_the_services_and_the_broker_export():
    """ops/prometheus/rules.test.yml: promtool's unit tests of each alert, on series shaped as ours are."""
    tests = ROOT / "ops" / "prometheus" / "rules.test.yml"
    out = subprocess.run([promtool(), "test", "rules", str(tests)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
    tested = {t["alertname"] for group in yaml.safe_load(tests.read_text())["tests"] for t in group["alert_rule_test"]}
    assert {"ExchangeAuthenticationFailed", "KillSwitchUnknown", "SignalQueueBacklogGrowing", "ServiceDown"} <= tested


def test_promtool_accepts_the_scrape_config(tmp_path):
    config = yaml.safe_load((ROOT / "ops" / "prometheus" / "prometheus.yml").read_text())
    # Where compose mounts it, the rules file is /etc/prometheus/rules.yml; here it is the repository's.
    config["rule_files"] = [str(RULES)]
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    out = subprocess.run([promtool(), "check", "config", str(tmp_path / "prometheus.yml")],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr


def test_the_broker_is_scraped_per_queue():
    """The rules and panels select rabbitmq_* by `queue`; the plugin's default /metrics has no such label."""
    config = yaml.safe_load((ROOT / "ops" / "prometheus" / "prometheus.yml").read_text())
    (job,) = [j for j in config["scrape_configs"] if j["job_name"] == "rabbitmq"]
    assert job["metrics_path"] == "/metrics/per-object"
