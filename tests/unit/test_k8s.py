"""The Kubernetes overlays, rendered by kubectl's kustomize and checked offline: every object against the Kubernetes
schemas (kubernetes-validate's copy, strict: an unknown field fails), the operators' resources against the fields
their CRDs define, and what the objects mean together (who may talk to whom, what keeps running during a drain)."""

from __future__ import annotations

import shutil
import subprocess
from functools import cache

import jsonschema
import kubernetes_validate
import pytest
import yaml

from tests.support import ROOT

K8S = ROOT / "k8s"
KUBERNETES_VERSION = "1.32.0"  # the version of kubectl on the machines that run these tests
APPS = ["ingress", "executor", "notifier", "control", "bingx-sim"]
APP_PORTS = {"ingress": 8080, "executor": 9102, "notifier": 9103, "control": 8081, "bingx-sim": 8090}


@cache
def rendered(overlay: str) -> tuple[dict, ...]:
    if shutil.which("kubectl") is None:
        pytest.fail("kubectl (with its built-in kustomize) is needed to render the overlays")
    out = subprocess.run(["kubectl", "kustomize", str(K8S / "overlays" / overlay)],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return tuple(d for d in yaml.safe_load_all(out.stdout) if d)


def objects(overlay: str, kind: str) -> dict[str, dict]:
    return {d["metadata"]["name"]: d for d in rendered(overlay) if d["kind"] == kind}


# The fields of the operators' custom resources that these manifests may use, as their CRDs define them
# (rabbitmq/cluster-operator's RabbitmqCluster v1beta1, mongodb-kubernetes-operator's MongoDBCommunity v1).
# Closed objects, so a misspelt field fails here rather than being dropped by the API server.
def closed(properties: dict, required: tuple[str, ...] = ()) -> dict:
    return {"type": "object", "properties": properties, "required": list(required), "additionalProperties": False}


STRING, INTEGER = {"type": "string"}, {"type": "integer"}
QUANTITY = {"type": ["string", "integer"]}
RESOURCES = closed({k: closed({"cpu": QUANTITY, "memory": QUANTITY}) for k in ("requests", "limits")})
METADATA = {"type": "object", "required": ["name"], "properties": {"name": STRING, "labels": {"type": "object"}}}
CRD_SCHEMAS = {
    ("rabbitmq.com/v1beta1", "RabbitmqCluster"): closed({
        "apiVersion": STRING, "kind": STRING, "metadata": METADATA,
        "spec": closed({
            "replicas": INTEGER, "image": STRING,
            "persistence": closed({"storage": QUANTITY, "storageClassName": STRING}),
            "resources": RESOURCES,
            "rabbitmq": closed({
                "additionalPlugins": {"type": "array", "items": STRING},
                "additionalConfig": STRING, "advancedConfig": STRING, "envConfig": STRING,
            }),
        }),
    }, ("apiVersion", "kind", "metadata", "spec")),
    ("mongodbcommunity.mongodb.com/v1", "MongoDBCommunity"): closed({
        "apiVersion": STRING, "kind": STRING, "metadata": METADATA,
        "spec": closed({
            "members": INTEGER, "type": {"enum": ["ReplicaSet"]}, "version": STRING,
            "security": closed({"authentication": closed({
                "modes": {"type": "array", "items": {"enum": ["SCRAM", "SCRAM-SHA-1", "SCRAM-SHA-256", "X509"]}},
            }, ("modes",))}),
            "users": {"type": "array", "items": closed({
                "name": STRING, "db": STRING, "passwordSecretRef": closed({"name": STRING, "key": STRING}, ("name",)),
                "roles": {"type": "array", "items": closed({"name": STRING, "db": STRING}, ("name", "db"))},
                "scramCredentialsSecretName": STRING, "connectionStringSecretName": STRING,
            }, ("name", "db", "passwordSecretRef", "roles", "scramCredentialsSecretName"))},
            "additionalMongodConfig": {"type": "object"},
            "statefulSet": closed({"spec": {"type": "object"}}),
        }, ("members", "type", "version", "security", "users")),
    }, ("apiVersion", "kind", "metadata", "spec")),
}


@pytest.mark.parametrize("overlay", ["paper", "live"])
def test_every_object_is_valid_against_the_kubernetes_schemas(overlay):
    kinds = set()
    for doc in rendered(overlay):
        kinds.add(doc["kind"])
        schema = CRD_SCHEMAS.get((doc["apiVersion"], doc["kind"]))
        if schema is not None:
            jsonschema.validate(doc, schema)
        else:
            kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
    assert {"Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget", "Ingress", "NetworkPolicy",
            "RabbitmqCluster", "MongoDBCommunity"} <= kinds


def test_the_schema_check_catches_a_misspelt_field():
    deployment = yaml.safe_load(yaml.safe_dump(objects("paper", "Deployment")["executor"]))
    deployment["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSION, strict=True)
    cluster = yaml.safe_load(yaml.safe_dump(objects("paper", "RabbitmqCluster")["rabbitmq"]))
    cluster["spec"]["rabbitmq"]["additionalPlugin"] = []
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(cluster, CRD_SCHEMAS[("rabbitmq.com/v1beta1", "RabbitmqCluster")])


@pytest.mark.parametrize("overlay", ["paper", "live"])
def test_the_ingress_is_scaled_by_its_autoscaler_alone(overlay):
    (hpa,) = objects(overlay, "HorizontalPodAutoscaler").values()
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "ingress"}
    assert hpa["spec"]["minReplicas"] >= 2 and hpa["spec"]["maxReplicas"] > hpa["spec"]["minReplicas"]
    # A fixed count in the Deployment would fight the autoscaler on every apply.
    assert "replicas" not in objects(overlay, "Deployment")["ingress"]["spec"]


@pytest.mark.parametrize("overlay", ["paper", "live"])
def test_every_disruption_budget_leaves_a_pod_to_evict(overlay):
    """A budget that can never be met blocks node drains; one that allows every pod to go protects nothing."""
    budgets = objects(overlay, "PodDisruptionBudget")
    assert {"executor", "ingress"} <= set(budgets)
    hpa = objects(overlay, "HorizontalPodAutoscaler")
    for name, budget in budgets.items():
        (deployment,) = [d for d in objects(overlay, "Deployment").values()
                         if budget["spec"]["selector"]["matchLabels"].items()
                         <= d["spec"]["template"]["metadata"]["labels"].items()]
        replicas = deployment["spec"].get("replicas") or hpa[deployment["metadata"]["name"]]["spec"]["minReplicas"]
        assert 1 <= budget["spec"]["minAvailable"] < replicas, name


@pytest.mark.parametrize("overlay", ["paper", "live"])
def test_the_webhook_alone_is_published_over_tls(overlay):
    (ingress,) = objects(overlay, "Ingress").values()
    (tls,) = ingress["spec"]["tls"]
    assert tls["secretName"] and tls["secretName"] not in objects(overlay, "Secret")  # referenced, not inlined
    (rule,) = ingress["spec"]["rules"]
    assert rule["host"] in tls["hosts"]
    service = objects(overlay, "Service")["ingress"]
    for path in rule["http"]["paths"]:
        # The routes the ingress service answers: /webhook/tradingview and /webhook/tradingview/{token}.
        assert path["path"] == "/webhook" and path["pathType"] == "Prefix"
        backend = path["backend"]["service"]
        assert backend["name"] == "ingress"
        assert backend["port"]["name"] in {p["name"] for p in service["spec"]["ports"]}
    source = (ROOT / "services" / "ingress" / "app.py").read_text()
    assert 'add_post("/webhook/tradingview"' in source


# --- who may talk to whom -----------------------------------------------------------------------------------------

def selects(selector: dict | None, labels: dict) -> bool:
    if selector is None:
        return False
    for key, value in selector.get("matchLabels", {}).items():
        if labels.get(key) != value:
            return False
    for expr in selector.get("matchExpressions", []):
        present = expr["key"] in labels
        if expr["operator"] == "In" and labels.get(expr["key"]) not in expr["values"]:
            return False
        if expr["operator"] == "NotIn" and labels.get(expr["key"]) in expr["values"]:
            return False
        if expr["operator"] == "Exists" and not present:
            return False
    return True


def peer_matches(peer: dict, other: dict) -> bool:
    """`other`: {"namespace": labels, "pod": labels, "same_namespace": bool, "ip": "public"|"private"}."""
    if "ipBlock" in peer:
        return other.get("ip") == "public" and peer["ipBlock"]["cidr"] == "0.0.0.0/0"
    if "namespaceSelector" in peer:
        if not selects(peer["namespaceSelector"], other.get("namespace", {})):
            return False
        return "podSelector" not in peer or selects(peer["podSelector"], other.get("pod", {}))
    return other.get("same_namespace", False) and selects(peer["podSelector"], other.get("pod", {}))


def allowed(overlay: str, pod: str, direction: str, other: dict, port: int, protocol: str = "TCP") -> bool:
    """Whether the policies let `pod` (one of ours) receive from (Ingress) or send to (Egress) `other` on `port`."""
    labels = {"app.kubernetes.io/name": pod}
    policies = [p for p in objects(overlay, "NetworkPolicy").values()
                if selects(p["spec"]["podSelector"], labels) and direction in p["spec"]["policyTypes"]]
    if not policies:
        return True  # not isolated
    key, peers = ("ingress", "from") if direction == "Ingress" else ("egress", "to")
    for policy in policies:
        for rule in policy["spec"].get(key, []):
            ports = rule.get("ports")
            if ports and not any(p["port"] == port and p.get("protocol", "TCP") == protocol for p in ports):
                continue
            if any(peer_matches(peer, other) for peer in rule.get(peers, [])):
                return True
    return False


def namespace(name: str) -> dict:
    return {"namespace": {"kubernetes.io/metadata.name": name}}


def our_pod(name: str) -> dict:
    return {"same_namespace": True, "pod": {"app.kubernetes.io/name": name}}


INTERNET = {"ip": "public"}
RABBITMQ = {"same_namespace": True, "pod": {"app.kubernetes.io/name": "rabbitmq"}}
MONGODB = {"same_namespace": True, "pod": {"app": "mongodb-svc"}}


@pytest.mark.parametrize("overlay", ["paper", "live"])
def test_every_service_is_closed_unless_a_policy_opens_it(overlay):
    for app in APPS:
        for direction in ("Ingress", "Egress"):
            assert not allowed(overlay, app, direction, namespace("somewhere-else"), APP_PORTS[app]), (app, direction)
            assert not allowed(overlay, app, direction, our_pod("notifier"), 12345), (app, direction)


@pytest.mark.parametrize("overlay", ["paper", "live"])
def test_the_webhook_is_open_to_the_ingress_controller_and_nothing_else_is(overlay):
    controller = namespace("ingress-nginx")
    assert allowed(overlay, "ingress", "Ingress", controller, 8080)
    for app in ("executor", "notifier", "control", "bingx-sim"):
        assert not allowed(overlay, app, "Ingress", controller, APP_PORTS[app]), app
    for app in ("ingress", "executor", "notifier", "control"):
        assert allowed(overlay, app, "Ingress", namespace("monitoring"), APP_PORTS[app]), f"{app}: metrics"


@pytest.mark.parametrize("overlay", ["paper", "live"])
def test_each_service_reaches_what_it_uses_and_the_tokens_cannot_leave(overlay):
    for app in ("ingress", "executor", "notifier", "control"):
        assert allowed(overlay, app, "Egress", namespace("kube-system"), 53, "UDP"), f"{app}: DNS"
        assert allowed(overlay, app, "Egress", RABBITMQ, 5672), f"{app}: broker"
        assert allowed(overlay, app, "Egress", MONGODB, 27017), f"{app}: database"
        assert allowed(overlay, app, "Egress", namespace("monitoring"), 4318), f"{app}: traces"
    for app in ("executor", "notifier", "control"):  # BingX, Telegram
        assert allowed(overlay, app, "Egress", INTERNET, 443), app
    # The ingress holds the webhook tokens and has no business outside.
    assert not allowed(overlay, "ingress", "Egress", INTERNET, 443)
    assert allowed(overlay, "executor", "Egress", our_pod("bingx-sim"), 8090) is (overlay == "paper")
    if overlay == "paper":
        assert allowed(overlay, "bingx-sim", "Ingress", our_pod("executor"), 8090)
        assert not allowed(overlay, "bingx-sim", "Ingress", our_pod("ingress"), 8090)


# --- the operators' resources -------------------------------------------------------------------------------------

def conf_lines(text: str) -> set[str]:
    return {line.strip() for line in text.splitlines() if line.strip() and not line.strip().startswith("#")}


@pytest.mark.parametrize("overlay", ["paper", "live"])
def test_rabbitmq_runs_three_nodes_configured_like_the_compose_broker(overlay):
    (cluster,) = objects(overlay, "RabbitmqCluster").values()
    spec = cluster["spec"]
    assert spec["replicas"] == 3  # a quorum survives one node
    compose_conf = conf_lines((ROOT / "ops" / "rabbitmq" / "10-tvtb.conf").read_text())
    assert compose_conf and compose_conf <= conf_lines(spec["rabbitmq"]["additionalConfig"])
    assert "default_queue_type = quorum" in conf_lines(spec["rabbitmq"]["additionalConfig"])
    enabled = (ROOT / "ops" / "rabbitmq" / "enabled_plugins").read_text()
    for plugin in spec["rabbitmq"]["additionalPlugins"]:
        assert plugin in enabled
    assert "rabbitmq_consistent_hash_exchange" in spec["rabbitmq"]["additionalPlugins"]
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    assert spec["image"].split(":")[1].split(".")[0] == compose["services"]["rabbitmq"]["image"].split(":")[1][0]


@pytest.mark.parametrize("overlay", ["paper", "live"])
def test_mongodb_is_a_replica_set_whose_password_is_only_referenced(overlay):
    (db,) = objects(overlay, "MongoDBCommunity").values()
    spec = db["spec"]
    assert spec["type"] == "ReplicaSet" and spec["members"] >= 3 and spec["members"] % 2 == 1
    (user,) = spec["users"]
    assert set(user["passwordSecretRef"]) <= {"name", "key"}
    assert {"name": "readWrite", "db": "tvtb"} in user["roles"]
    config = objects(overlay, "ConfigMap")
    (literals,) = [c["data"] for c in config.values()]
    assert literals["MONGO_DB"] == user["db"]


# --- each pod gets what its service needs to start --------------------------------------------------------------

def secret_stand_in(name: str) -> str:
    return {
        "AMQP_URL": "amqp://tvtb:pass@rabbitmq:5672/%2F",
        "MONGO_URI": "mongodb://tvtb:pass@mongodb-svc:27017/tvtb?replicaSet=mongodb",
        "WEBHOOK_TOKENS": "tradingview:0123456789abcdef0123456789",
    }.get(name, "stand-in-secret-0123456789abcdef")


@pytest.mark.parametrize("overlay", ["paper", "live"])
def test_every_deployment_gives_its_service_the_settings_it_needs_to_start(overlay, monkeypatch):
    """The settings class of each service, built from exactly what its pod would see (the ConfigMap, its own
    env entries, stand-ins for the Secret's values): a required setting that no manifest provides fails here rather
    than as a crash loop in the cluster."""
    from services.bingx_sim.settings import BingxSimSettings
    from services.control.settings import ControlSettings
    from services.executor.settings import ExecutorSettings
    from services.ingress.settings import IngressSettings
    from services.notifier.settings import NotifierSettings
    from tests.unit.test_deployment_files import APP_ENV

    classes = {"ingress": IngressSettings, "executor": ExecutorSettings, "notifier": NotifierSettings,
               "control": ControlSettings, "bingx-sim": BingxSimSettings}
    (config,) = objects(overlay, "ConfigMap").values()
    deployments = objects(overlay, "Deployment")
    assert set(deployments) == set(classes) - ({"bingx-sim"} if overlay == "live" else set())
    monkeypatch.chdir(ROOT / "k8s")  # no .env here for pydantic-settings to find
    for name, deployment in deployments.items():
        for setting in APP_ENV:
            monkeypatch.delenv(setting, raising=False)
        (container,) = deployment["spec"]["template"]["spec"]["containers"]
        env = dict(config["data"])
        for var in container.get("env", []):
            if var.get("valueFrom", {}).get("secretKeyRef", {}).get("optional"):
                continue  # as on a cluster whose Secret leaves it out (Telegram, until it is set up)
            env[var["name"]] = var["value"] if "value" in var else secret_stand_in(var["name"])
        for key, value in env.items():
            monkeypatch.setenv(key, value)
        try:
            classes[name]()
        except Exception as error:  # noqa: BLE001 - the message names the missing setting
            pytest.fail(f"{overlay}/{name} would not start: {error}")


@pytest.mark.parametrize("overlay", ["paper", "live"])
def test_a_pod_with_a_persistent_volume_can_write_to_it(overlay):
    """A claim's volume is root's until fsGroup hands it to the app's group: Telethon must save its session there."""
    with_claims = 0
    for name, deployment in objects(overlay, "Deployment").items():
        pod = deployment["spec"]["template"]["spec"]
        if any("persistentVolumeClaim" in v for v in pod.get("volumes", [])):
            with_claims += 1
            assert pod["securityContext"].get("fsGroup") == pod["securityContext"]["runAsGroup"], name
    assert with_claims >= 2  # the notifier's and the control bot's Telegram sessions


# --- monitoring: the Prometheus Operator component ----------------------------------------------------------------

SELECTOR = {"type": "object", "properties": {"matchLabels": {"type": "object"}, "matchExpressions": {"type": "array"}},
            "additionalProperties": False}
RELABELING = closed({"action": {"enum": ["replace", "keep", "drop", "labelmap"]}, "sourceLabels": {"type": "array"},
                     "targetLabel": STRING, "replacement": STRING, "regex": STRING})
CRD_SCHEMAS[("monitoring.coreos.com/v1", "ServiceMonitor")] = closed({
    "apiVersion": STRING, "kind": STRING, "metadata": METADATA,
    "spec": closed({
        "selector": SELECTOR,
        "endpoints": {"type": "array", "items": closed({
            "port": STRING, "path": STRING, "interval": STRING, "relabelings": {"type": "array", "items": RELABELING},
        }, ("port",))},
    }, ("selector", "endpoints")),
}, ("apiVersion", "kind", "metadata", "spec"))
CRD_SCHEMAS[("monitoring.coreos.com/v1", "PrometheusRule")] = closed({
    "apiVersion": STRING, "kind": STRING, "metadata": METADATA,
    "spec": closed({"groups": {"type": "array", "items": closed({
        "name": STRING, "interval": STRING,
        "rules": {"type": "array", "items": closed({
            "alert": STRING, "record": STRING, "expr": STRING, "for": STRING,
            "labels": {"type": "object"}, "annotations": {"type": "object"},
        }, ("expr",))},
    }, ("name", "rules"))}}, ("groups",)),
}, ("apiVersion", "kind", "metadata", "spec"))


def scraped_labels(monitor: dict, service: dict, port_name: str) -> dict | None:
    """The job and service labels the operator's relabelings give a target, or None when the monitor does not pick
    this Service's port (its defaults: job = the Service's name, service = the Service's name)."""
    if not selects(monitor["spec"]["selector"], service["metadata"].get("labels", {})):
        return None
    for endpoint in monitor["spec"]["endpoints"]:
        if endpoint["port"] != port_name:
            continue
        labels = {"job": service["metadata"]["name"], "service": service["metadata"]["name"],
                  "__meta_kubernetes_service_name": service["metadata"]["name"]}
        for rule in endpoint.get("relabelings", []):
            assert rule["action"] == "replace" and "regex" not in rule  # what this simulation knows
            if "sourceLabels" in rule:  # regex (.*), replacement $1: the joined values
                labels[rule["targetLabel"]] = ";".join(labels.get(s, "") for s in rule["sourceLabels"])
            else:
                labels[rule["targetLabel"]] = rule["replacement"]
        return {"job": labels["job"], "service": labels["service"], "path": endpoint.get("path", "/metrics")}
    return None


def test_live_is_scraped_with_the_labels_the_alert_rules_select_on():
    monitors = objects("live", "ServiceMonitor")
    for name, service in objects("live", "Service").items():
        (port,) = service["spec"]["ports"]
        found = [labels for m in monitors.values() if (labels := scraped_labels(m, service, port["name"]))]
        assert found == [{"job": "tvtb", "service": name, "path": "/metrics"}], name
    # The broker's Service is the operator's: labelled with the cluster's name, its metrics port named `prometheus`.
    broker = {"metadata": {"name": "rabbitmq", "labels": {"app.kubernetes.io/name": "rabbitmq"}}}
    assert scraped_labels(monitors["rabbitmq"], broker, "prometheus") == \
        {"job": "rabbitmq", "service": "rabbitmq", "path": "/metrics/per-object"}
    rules = (ROOT / "ops" / "prometheus" / "rules.yml").read_text()
    assert 'job="tvtb"' in rules and 'service="executor"' in rules and 'job="rabbitmq"' in rules


def test_the_clusters_alert_rules_are_the_ones_of_ops_prometheus():
    """k8s/components/monitoring/prometheusrule.yaml is rendered from ops/prometheus/rules.yml; they never differ."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("render_k8s_rules", ROOT / "ops" / "scripts" / "render_k8s_rules.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.TARGET.read_text() == module.render(), "run ops/scripts/render_k8s_rules.py"
    (rule,) = objects("live", "PrometheusRule").values()
    assert rule["spec"]["groups"] == yaml.safe_load((ROOT / "ops" / "prometheus" / "rules.yml").read_text())["groups"]
