"""Checks the deployment files (compose, Dockerfile, .env.example, k8s) by parsing them: no Docker, cluster or network."""

from __future__ import annotations

import re
import shlex
import subprocess
from pathlib import Path

import pytest
import yaml

from services.bingx_sim.settings import BingxSimSettings
from services.control.settings import ControlSettings
from services.executor.settings import ExecutorSettings
from services.ingress.settings import IngressSettings
from services.notifier.settings import NotifierSettings

ROOT = Path(__file__).resolve().parents[2]

# Compose service name -> the port its /healthz answers on (DESIGN.md's ports).
APP_PORTS = {"ingress": 8080, "executor": 9102, "notifier": 9103, "control": 8081, "bingx-sim": 8090}
PORT_SETTINGS = {
    "ingress": "INGRESS_PORT",
    "executor": "EXECUTOR_PORT",
    "notifier": "NOTIFIER_PORT",
    "control": "CONTROL_PORT",
    "bingx-sim": "BINGX_SIM_PORT",
}
# DESIGN.md's operator-facing contract: these names are kept exactly.
DESIGN_ENV = {
    "AMQP_URL", "MONGO_URI", "MONGO_DB", "WEBHOOK_TOKENS", "CONTROL_API_TOKEN", "TRADING_MODE",
    "BINGX_API_KEY", "BINGX_API_SECRET", "BINGX_BASE_URL", "TELEGRAM_API_ID", "TELEGRAM_API_HASH",
    "TELEGRAM_BOT_TOKEN", "TELEGRAM_CHAT_IDS", "TELEGRAM_ADMIN_IDS", "OTEL_EXPORTER_OTLP_ENDPOINT", "LOG_LEVEL",
    "INITIAL_AUTOTRADE", "WEBHOOK_RATE_LIMIT_PER_TOKEN", "WEBHOOK_RATE_LIMIT_PER_IP",
}
# The services' other settings, read from their settings classes so a new one needs no edit here.
SERVICE_ENV = {
    name.upper()
    for settings_class in (IngressSettings, ExecutorSettings, NotifierSettings, ControlSettings, BingxSimSettings)
    for name in settings_class.model_fields
}
APP_ENV = DESIGN_ENV | SERVICE_ENV
BROKER_ENV = {"RABBITMQ_DEFAULT_USER", "RABBITMQ_DEFAULT_PASS"}
OBSERVABILITY_ENV = {"GRAFANA_ADMIN_PASSWORD"}

SECRET_NAME = re.compile(r"SECRET|TOKEN|PASSWORD|PASS|KEY|HASH")
# user:password@ inside a URL: a credential written out.
URL_CREDENTIALS = re.compile(r"://[^/\s@:]+:[^/\s@]+@")
REFERENCE = re.compile(r"^\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?])(?P<rest>[^}]*))?\}$")
INTERPOLATION = re.compile(r"(?<!\$)\$(?:\{([A-Za-z_][A-Za-z0-9_]*)|([A-Za-z_][A-Za-z0-9_]*))")


def module_of(service: str) -> str:
    return service.replace("-", "_")


def load_yaml_docs(path: Path) -> list[dict]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def strings(node: object) -> list[str]:
    """Every string value in a parsed YAML tree (comments are gone, so only what compose would interpolate)."""
    if isinstance(node, str):
        return [node]
    if isinstance(node, dict):
        return [s for value in node.values() for s in strings(value)]
    if isinstance(node, list):
        return [s for value in node for s in strings(value)]
    return []


def environment(service: dict) -> dict[str, str | None]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        pairs = (item.partition("=") for item in env)
        return {name: (value if sep else None) for name, sep, value in pairs}
    return {name: (None if value is None else str(value)) for name, value in env.items()}


def holds_no_secret(value: str | None) -> bool:
    """Absent, or a ${...} reference whose default (if any) is empty: the value itself lives in .env."""
    if value is None:
        return True
    match = REFERENCE.match(value)
    if not match:
        return False
    return not (match["op"] or "").endswith("-") or match["rest"] == ""


# --- docker-compose.yml ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


@pytest.fixture(scope="module")
def services(compose: dict) -> dict[str, dict]:
    return compose["services"]


def test_compose_runs_the_five_services_and_the_infrastructure(services):
    assert set(APP_PORTS) | {"rabbitmq", "mongodb"} <= set(services)


@pytest.mark.parametrize("name", sorted(APP_PORTS))
def test_app_service_builds_the_one_image_and_runs_its_module(services, name):
    service = services[name]
    build = service["build"]
    if isinstance(build, dict):
        assert build.get("context", ".") == "." and build.get("dockerfile", "Dockerfile") == "Dockerfile"
    else:
        assert build == "."
    assert service["command"] == ["python", "-m", f"services.{module_of(name)}"]
    assert (ROOT / "services" / module_of(name)).is_dir()


def test_app_services_share_one_image_name(services):
    assert len({services[name]["image"] for name in APP_PORTS}) == 1


def test_every_service_has_a_healthcheck(services):
    for name, service in services.items():
        check = service.get("healthcheck") or {}
        assert check.get("test") and check["test"] != ["NONE"] and not check.get("disable"), name


@pytest.mark.parametrize("name", sorted(APP_PORTS))
def test_app_healthcheck_probes_its_own_healthz_without_curl(services, name):
    test = " ".join(services[name]["healthcheck"]["test"])
    assert "urllib" in test and "curl" not in test  # the slim image has no curl
    assert f"127.0.0.1:{APP_PORTS[name]}/healthz" in test
    # The port is pinned over .env so the probe, the port mapping and Prometheus agree with the service.
    assert environment(services[name]).get(PORT_SETTINGS[name]) == str(APP_PORTS[name])


def test_depends_on_waits_for_healthy_services(services):
    for name, service in services.items():
        depends = service.get("depends_on") or {}
        assert isinstance(depends, dict), f"{name}: the short form of depends_on does not wait for health"
        for target, rule in depends.items():
            assert target in services, f"{name} depends on unknown {target}"
            assert rule.get("condition") == "service_healthy", f"{name} -> {target}"
    for name in APP_PORTS:
        # The simulator uses no broker, only MongoDB (MONGO_URI) for its accounts.
        needs = {"mongodb"} if name == "bingx-sim" else {"rabbitmq", "mongodb"}
        assert needs <= set(services[name].get("depends_on") or {}), name
    assert "bingx-sim" in services["executor"]["depends_on"]


def published(service: dict) -> list[tuple[str | None, str, str]]:
    """(host ip, host port, container port) of each short-form port mapping."""
    out = []
    for port in service.get("ports") or []:
        parts = str(port).split(":")
        host_ip = parts[0] if len(parts) == 3 else None
        out.append((host_ip, parts[-2] if len(parts) > 1 else "", parts[-1]))
    return out


def test_only_ingress_and_control_are_published(services):
    for name, service in services.items():
        mappings = published(service)
        if name == "ingress":
            assert [m[1:] for m in mappings] == [("8080", "8080")]
        elif name == "control":
            assert mappings == [("127.0.0.1", "8081", "8081")]
        elif name in APP_PORTS or name in {"rabbitmq", "mongodb"}:
            assert mappings == [], f"{name} must not be published"
        else:  # opt-in tools (observability profile): loopback only
            assert all(ip == "127.0.0.1" for ip, _, _ in mappings), name


def test_rabbitmq_is_4x_with_the_consistent_hash_plugin(services):
    rabbit = services["rabbitmq"]
    assert re.match(r"^rabbitmq:4\.\d+", rabbit["image"])
    assert rabbit["healthcheck"]["test"][1:] == ["rabbitmq-diagnostics", "-q", "ping"]
    # A fixed node name keeps the data directory (and the quorum queues) across re-creation.
    assert rabbit.get("hostname") == "rabbitmq"
    mounts = {v.split(":")[1]: v.split(":")[0] for v in rabbit["volumes"]}
    plugins_file = ROOT / mounts["/etc/rabbitmq/enabled_plugins"]
    plugins = plugins_file.read_text().strip()
    assert plugins.startswith("[") and plugins.endswith("].")  # an Erlang term: a malformed one stops the node
    assert "rabbitmq_consistent_hash_exchange" in plugins and "rabbitmq_management" in plugins
    # The notifier holds events through a Telegram outage: the broker must not time its consumer out after 30 min.
    conf = (ROOT / mounts["/etc/rabbitmq/conf.d/10-tvtb.conf"]).read_text()
    settings = dict(line.split(" = ") for line in conf.splitlines() if line and not line.startswith("#"))
    assert int(settings["consumer_timeout"]) >= 24 * 3600 * 1000


def test_mongodb_runs_as_a_single_node_replica_set(services):
    mongo = services["mongodb"]
    assert re.match(r"^mongo:\d+\.\d+", mongo["image"])
    command = mongo["command"]
    assert command[command.index("--replSet") + 1] == "rs0"
    check = " ".join(mongo["healthcheck"]["test"])
    assert "rs.initiate" in check and "_id: 'rs0'" in check and "mongodb:27017" in check
    for name in set(APP_PORTS) - {"bingx-sim"}:
        uri = environment(services[name]).get("MONGO_URI") or ""
        assert uri.startswith("mongodb://mongodb:27017/") and "replicaSet=rs0" in uri, name


def test_named_volumes_keep_broker_database_and_telegram_session(compose, services):
    declared = set(compose["volumes"])

    def mounts(name: str) -> dict[str, str]:
        return {v.split(":")[1]: v.split(":")[0] for v in services[name].get("volumes") or []}

    assert mounts("rabbitmq")["/var/lib/rabbitmq"] in declared
    assert mounts("mongodb")["/data/db"] in declared
    notifier = mounts("notifier")
    session = environment(services["notifier"])["TELEGRAM_SESSION_PATH"]
    holding = [target for target in notifier if session.startswith(target.rstrip("/") + "/")]
    assert holding and notifier[holding[0]] in declared, "the Telegram session must live on a named volume"


def test_compose_writes_no_secret_value(services):
    for name, service in services.items():
        for var, value in environment(service).items():
            if SECRET_NAME.search(var):
                assert holds_no_secret(value), f"{name}: {var} must come from .env"
        for text in strings(service):
            assert not (URL_CREDENTIALS.search(text) and "${" not in text), f"{name}: credentials in a URL"
        if name in APP_PORTS:
            assert service["env_file"] in (".env", [".env"])


def test_compose_uses_the_design_env_names(services):
    for name in APP_PORTS:
        unknown = set(environment(services[name])) - APP_ENV
        assert not unknown, f"{name}: {unknown}"
    assert set(environment(services["rabbitmq"])) <= BROKER_ENV


# --- .env.example ------------------------------------------------------------------------------------------------------

SETTING_LINE = re.compile(r"^(?P<commented>#\s*)?(?P<name>[A-Z][A-Z0-9_]*)=(?P<value>.*)$")


@pytest.fixture(scope="module")
def env_example_lines() -> list[str]:
    return (ROOT / ".env.example").read_text().splitlines()


@pytest.fixture(scope="module")
def env_example(env_example_lines) -> dict[str, str]:
    """Active settings only."""
    matches = (SETTING_LINE.match(line) for line in env_example_lines)
    return {m["name"]: m["value"] for m in matches if m and not m["commented"]}


@pytest.fixture(scope="module")
def documented(env_example_lines) -> set[str]:
    """Every setting shown, active or commented out (a default or an example)."""
    return {m["name"] for m in (SETTING_LINE.match(line) for line in env_example_lines) if m}


def test_every_interpolated_variable_is_in_env_example(compose, documented):
    used = {a or b for text in strings(compose) for a, b in INTERPOLATION.findall(text)}
    assert used, "the broker credentials are expected to be interpolated from .env"
    assert used <= documented, used - documented


def test_env_example_documents_every_setting_and_only_known_ones(documented):
    assert APP_ENV <= documented, APP_ENV - documented
    assert documented <= APP_ENV | BROKER_ENV | OBSERVABILITY_ENV, documented - APP_ENV - BROKER_ENV - OBSERVABILITY_ENV


def test_env_example_explains_each_setting(env_example_lines):
    # Each block of settings (lines without a blank between them) starts with a comment saying what it is for.
    block_has_comment = False
    for line in env_example_lines:
        if not line.strip():
            block_has_comment = False
        elif line.startswith("#") and not SETTING_LINE.match(line):
            block_has_comment = True
        else:
            assert block_has_comment, f"no comment above: {line}"


def test_env_example_holds_placeholders_and_paper_defaults(env_example):
    for name, value in env_example.items():
        if SECRET_NAME.search(name):
            assert "change-me" in value, f"{name} must be a placeholder"
    assert env_example["TRADING_MODE"] == "paper"
    assert env_example["BINGX_BASE_URL"] == "http://bingx-sim:8090"
    # The services log in with the user the broker was created with.
    credentials = re.match(r"^amqp://([^:]+):([^@]+)@rabbitmq:5672/", env_example["AMQP_URL"])
    assert credentials, env_example["AMQP_URL"]
    assert credentials.groups() == (env_example["RABBITMQ_DEFAULT_USER"], env_example["RABBITMQ_DEFAULT_PASS"])


# --- ops/ --------------------------------------------------------------------------------------------------------------


def test_prometheus_is_opt_in_and_scrapes_the_four_metrics_ports(services):
    prometheus = services["prometheus"]
    assert prometheus["profiles"] == ["observability"]
    source = prometheus["volumes"][0].split(":")[0]
    config = yaml.safe_load((ROOT / source).read_text())
    targets = {t for job in config["scrape_configs"] for group in job["static_configs"] for t in group["targets"]}
    assert {"ingress:8080", "control:8081", "executor:9102", "notifier:9103"} <= targets


# --- Dockerfile --------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    instructions, current = [], ""
    for line in (ROOT / "Dockerfile").read_text().splitlines():
        stripped = line.strip()
        if not current and (not stripped or stripped.startswith("#")):
            continue
        if stripped.endswith("\\"):
            current += stripped[:-1] + " "
            continue
        word, _, rest = (current + stripped).partition(" ")
        instructions.append((word.upper(), rest.strip()))
        current = ""
    return instructions


def test_dockerfile_base_images_are_pinned(dockerfile):
    stages: set[str] = set()
    bases = []
    for word, args in dockerfile:
        if word != "FROM":
            continue
        parts = [p for p in args.split() if not p.startswith("--")]
        image = parts[0]
        if image not in stages:
            name, _, tag = image.partition(":")
            assert tag and tag != "latest" and "$" not in image, f"unpinned base image {image}"
            bases.append(image)
        if len(parts) == 3 and parts[1].upper() == "AS":
            stages.add(parts[2])
    assert bases and bases[-1].startswith("python:3.11")


def test_dockerfile_runs_as_a_non_root_user(dockerfile):
    last_from = max(i for i, (word, _) in enumerate(dockerfile) if word == "FROM")
    users = [args for word, args in dockerfile[last_from:] if word == "USER"]
    assert users, "the final stage must set USER"
    assert users[-1].split(":")[0] not in {"root", "0"}


def test_dockerfile_holds_no_secret(dockerfile):
    for word, args in dockerfile:
        if word not in {"ENV", "ARG"}:
            continue
        tokens = shlex.split(args)
        if word == "ENV" and tokens and "=" not in tokens[0]:  # legacy `ENV NAME value`
            pairs = [(tokens[0], " ".join(tokens[1:]))]
        else:
            pairs = [(t.partition("=")[0], t.partition("=")[2]) for t in tokens]
        for name, value in pairs:
            if SECRET_NAME.search(name):
                assert word == "ARG" and not value, f"{word} {name} holds a value in the image"


def test_dockerfile_installs_only_the_package_and_runs_unbuffered(dockerfile):
    copied = set()
    for word, args in dockerfile:
        if word == "COPY" and "--from=" not in args:
            copied.update(args.split()[:-1])
    assert {p.rstrip("/") for p in copied} == {"pyproject.toml", "shared", "services"}
    env = " ".join(args for word, args in dockerfile if word == "ENV")
    assert "PYTHONUNBUFFERED=1" in env
    cmd = [args for word, args in dockerfile if word == "CMD"][-1]
    assert re.fullmatch(r'\["python", "-m", "services\.[a-z_]+"\]', cmd)


def test_dockerignore_keeps_secrets_and_local_state_out_of_the_context():
    ignored = set((ROOT / ".dockerignore").read_text().split())
    assert {".git", ".venv", ".env", "*.session"} <= ignored


# --- k8s/ --------------------------------------------------------------------------------------------------------------

K8S = ROOT / "k8s"
KUSTOMIZATIONS = sorted(K8S.rglob("kustomization.yaml"))
MANIFESTS = [
    (path, doc)
    for path in sorted(K8S.rglob("*.yaml"))
    if path.name != "kustomization.yaml"
    for doc in load_yaml_docs(path)
]
DEPLOYMENTS = {doc["metadata"]["name"]: doc for _, doc in MANIFESTS if doc["kind"] == "Deployment"}


def test_k8s_base_has_a_deployment_and_service_per_service():
    services = {doc["metadata"]["name"] for _, doc in MANIFESTS if doc["kind"] == "Service"}
    assert set(DEPLOYMENTS) == set(APP_PORTS)
    assert services == set(APP_PORTS)


@pytest.mark.parametrize("name", sorted(APP_PORTS))
def test_k8s_deployment_is_probed_limited_and_non_root(name):
    pod = DEPLOYMENTS[name]["spec"]["template"]["spec"]
    # Service links would inject INGRESS_PORT=tcp://... and the like over the services' own port settings.
    assert pod.get("enableServiceLinks") is False
    (container,) = pod["containers"]
    assert container["command"] == ["python", "-m", f"services.{module_of(name)}"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    readiness, liveness = container["readinessProbe"]["httpGet"], container["livenessProbe"]["httpGet"]
    assert liveness["path"] == "/healthz"
    assert readiness["path"] == ("/healthz" if name == "bingx-sim" else "/readyz")  # the simulator has no /readyz
    assert ports[readiness["port"]] == ports[liveness["port"]] == APP_PORTS[name]
    for kind in ("requests", "limits"):
        assert {"cpu", "memory"} <= set(container["resources"][kind]), f"{name}: {kind}"
    pod_ctx, ctx = pod.get("securityContext", {}), container.get("securityContext", {})
    assert ctx.get("runAsNonRoot", pod_ctx.get("runAsNonRoot")) is True
    assert ctx.get("readOnlyRootFilesystem") is True
    assert ctx.get("allowPrivilegeEscalation") is False


@pytest.mark.parametrize("name", sorted(APP_PORTS))
def test_k8s_secrets_are_only_referenced(name):
    (container,) = DEPLOYMENTS[name]["spec"]["template"]["spec"]["containers"]
    for source in container.get("envFrom", []):
        assert set(source) <= {"configMapRef", "secretRef", "prefix"}
    for var in container.get("env", []):
        assert var["name"] in APP_ENV, f"{name}: {var['name']} is not a known setting"
        if "value" in var:
            assert not SECRET_NAME.search(var["name"]), f"{name}: {var['name']} written in the manifest"
            assert not URL_CREDENTIALS.search(str(var["value"]))
        else:
            ref = var["valueFrom"].get("secretKeyRef") or var["valueFrom"].get("configMapKeyRef")
            assert ref, f"{name}: {var['name']}"
        if SECRET_NAME.search(var["name"]) or var["name"] in {"AMQP_URL", "MONGO_URI"}:
            assert var["valueFrom"]["secretKeyRef"]["name"] == "tvtb-secrets", f"{name}: {var['name']}"


def test_k8s_keeps_no_secret_object():
    assert not [path for path, doc in MANIFESTS if doc["kind"] == "Secret"]
    for path in KUSTOMIZATIONS:
        assert "secretGenerator" not in yaml.safe_load(path.read_text()), path


def test_k8s_services_select_a_deployment_port():
    for _, doc in MANIFESTS:
        if doc["kind"] != "Service":
            continue
        selected = [
            d for d in DEPLOYMENTS.values()
            if doc["spec"]["selector"].items() <= d["spec"]["template"]["metadata"]["labels"].items()
        ]
        assert len(selected) == 1, doc["metadata"]["name"]
        names = {p["name"] for p in selected[0]["spec"]["template"]["spec"]["containers"][0]["ports"]}
        assert {p["targetPort"] for p in doc["spec"]["ports"]} <= names


def kustomization_paths(path: Path) -> list[Path]:
    """Every file or directory a kustomization names."""
    k = yaml.safe_load(path.read_text())
    names = list(k.get("resources", [])) + list(k.get("components", []))
    names += [p["path"] for p in k.get("patches", []) if "path" in p]
    for generator in k.get("configMapGenerator", []):
        names += [f.rpartition("=")[2] for f in generator.get("files", [])] + generator.get("envs", [])
    return [path.parent / name for name in names]


@pytest.mark.parametrize("path", KUSTOMIZATIONS, ids=lambda p: str(p.relative_to(K8S)))
def test_kustomization_lists_files_that_exist(path):
    for target in kustomization_paths(path):
        assert target.is_file() or (target / "kustomization.yaml").is_file(), target


def test_kustomize_base_lists_every_manifest_beside_it():
    base = K8S / "base" / "kustomization.yaml"
    listed = {p.resolve() for p in kustomization_paths(base)}
    present = {p.resolve() for p in base.parent.glob("*.yaml") if p.name != "kustomization.yaml"}
    assert listed == present


def config_literals(path: Path) -> dict[str, str]:
    k = yaml.safe_load(path.read_text())
    (generator,) = [g for g in k.get("configMapGenerator", []) if g["name"] == "tvtb-config"]
    return dict(item.split("=", 1) for item in generator.get("literals", []))


def test_k8s_config_uses_only_known_settings():
    with_config = [path for path in KUSTOMIZATIONS
                   if any(g["name"] == "tvtb-config" for g in yaml.safe_load(path.read_text()).get("configMapGenerator", []))]
    assert len(with_config) == 3  # the base and both overlays
    for path in with_config:
        assert set(config_literals(path)) <= APP_ENV, path


def test_paper_overlay_trades_against_the_simulator():
    literals = config_literals(K8S / "overlays" / "paper" / "kustomization.yaml")
    assert literals["TRADING_MODE"] == "paper"
    assert literals["BINGX_BASE_URL"] == "http://bingx-sim:8090"


def test_live_overlay_trades_live_without_the_simulator():
    path = K8S / "overlays" / "live" / "kustomization.yaml"
    k = yaml.safe_load(path.read_text())
    assert config_literals(path)["TRADING_MODE"] == "live"
    # Inherited from nowhere: the base does not set it either, so ccxt uses BingX's own address.
    assert "BINGX_BASE_URL" not in config_literals(path)
    assert "BINGX_BASE_URL" not in config_literals(K8S / "base" / "kustomization.yaml")
    assert {"name": "executor", "count": 2} in k["replicas"]
    deleted = set()
    for patch in k["patches"]:
        doc = yaml.safe_load(patch["patch"])
        if doc.get("$patch") == "delete":
            deleted.add((doc["kind"], doc["metadata"]["name"]))
    assert {("Deployment", "bingx-sim"), ("Service", "bingx-sim")} <= deleted


@pytest.mark.parametrize("overlay", ["paper", "live"])
def test_overlay_builds_with_kustomize(overlay):
    out = subprocess.run(
        ["kubectl", "kustomize", str(K8S / "overlays" / overlay)], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    docs = [d for d in yaml.safe_load_all(out.stdout) if d]
    deployments = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Deployment"}
    (config,) = [d for d in docs if d["kind"] == "ConfigMap"]
    assert config["data"]["TRADING_MODE"] == overlay
    # The generated, hashed ConfigMap name is what every Deployment reads.
    for d in deployments.values():
        refs = [s["configMapRef"]["name"] for s in d["spec"]["template"]["spec"]["containers"][0]["envFrom"]]
        assert refs == [config["metadata"]["name"]]
    if overlay == "live":
        assert "bingx-sim" not in deployments and deployments["executor"]["spec"]["replicas"] == 2
    else:
        assert set(deployments) == set(APP_PORTS)


@pytest.mark.parametrize("settings_class", [IngressSettings, ExecutorSettings, NotifierSettings, ControlSettings, BingxSimSettings])
def test_every_service_starts_on_the_env_example_as_it_is(settings_class, monkeypatch):
    """`make up` on a fresh clone copies .env.example to .env: every service must accept it (paper mode)."""
    for line in (ROOT / ".env.example").read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            name, _, value = line.partition("=")
            monkeypatch.setenv(name.strip(), value.strip())
    monkeypatch.setenv("MONGO_URI", "mongodb://mongodb:27017/?replicaSet=rs0")  # set by docker-compose.yml
    settings = settings_class()
    assert getattr(settings, "trading_mode", "paper") == "paper"
