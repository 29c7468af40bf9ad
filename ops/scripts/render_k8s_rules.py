"""Write k8s/components/monitoring/prometheusrule.yaml from ops/prometheus/rules.yml: one set of alert rules for
compose and Kubernetes. tests/unit/test_k8s.py fails when the two differ; run this after changing the rules."""

from __future__ import annotations

import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "ops" / "prometheus" / "rules.yml"
TARGET = ROOT / "k8s" / "components" / "monitoring" / "prometheusrule.yaml"
HEADER = "# Generated from ops/prometheus/rules.yml by ops/scripts/render_k8s_rules.py: change the rules there.\n"


def render() -> str:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    document = {"apiVersion": "monitoring.coreos.com/v1", "kind": "PrometheusRule",
                "metadata": {"name": "tvtb"}, "spec": {"groups": groups}}
    return HEADER + yaml.safe_dump(document, sort_keys=False, width=120)


if __name__ == "__main__":
    TARGET.write_text(render())
    print(f"wrote {TARGET.relative_to(ROOT)}")
    sys.exit(0)
