"""The observability profile's wiring (collector, Tempo, Loki, Promtail, Grafana), checked by parsing the files.

No Docker: each test follows one link a typo would break (a host, a port, a mount path, a field name, a label) from
one file to the file on the other end, and to what the services' code really sends and logs.
"""

from __future__ import annotations

import json
import logging
import re
from urllib.parse import urlsplit

import pytest
import yaml
from opentelemetry import trace
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags

from shared.observability import JsonFormatter, bound_signal
from shared.settings import ServiceSettings
from tests.support import ROOT

NEW_SERVICES = ("otel-collector", "tempo", "loki", "promtail")
DATASOURCES_DIR = ROOT / "ops" / "grafana" / "provisioning" / "datasources"
# Fields whose values differ per alert or per line: one Loki stream per value would be one stream per alert.
PER_LINE_FIELDS = {"trace_id", "span_id", "signal_id", "msg", "ts", "exc"}
TRACE_ID = 0x4BF92F3577B34DA6A3CE929D0E0E4736
SPAN_ID = 0x00F067AA0BA902B7


# --- helpers ----------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


@pytest.fixture(scope="module")
def services(compose) -> dict[str, dict]:
    return compose["services"]


def mounts(service: dict) -> dict[str, tuple[str, bool]]:
    """Container path -> (source, read-only) of each short-form volume."""
    out = {}
    for volume in service.get("volumes") or []:
        source, target, *mode = volume.split(":")
        out[target] = (source, "ro" in mode)
    return out


def config_path(service: dict) -> str:
    """The config file the service's command tells it to read (-config.file=... or --config=...)."""
    for arg in service["command"]:
        match = re.fullmatch(r"--?config(?:\.file)?=(.+)", arg)
        if match:
            return match[1]
    raise AssertionError(f"no config flag in {service['command']}")


def load_config(services: dict[str, dict], name: str) -> dict:
    """The YAML file mounted where the service's command reads its config."""
    source, _ = mounts(services[name])[config_path(services[name])]
    return yaml.safe_load((ROOT / source).read_text())


def host_port(address: str) -> tuple[str, int]:
    """'tempo:4317', '0.0.0.0:4317' or 'http://loki:3100/path' -> (host, port)."""
    parts = urlsplit(address if "://" in address else f"//{address}")
    assert parts.hostname and parts.port, address
    return parts.hostname, parts.port


def probed_port(service: dict) -> int:
    """The port the compose healthcheck asks on 127.0.0.1, whatever the probe (wget, /dev/tcp)."""
    test = " ".join(service["healthcheck"]["test"])
    match = re.search(r"127\.0\.0\.1(?::|/)(\d+)", test)
    assert match, test
    return int(match[1])


def unescape(value: str) -> str:
    """What Grafana keeps of a provisioned string: `$$` is a literal `$`."""
    return value.replace("$$", "$")


def datasources() -> list[dict]:
    out = []
    for path in sorted(DATASOURCES_DIR.glob("*.y*ml")):
        out += yaml.safe_load(path.read_text())["datasources"]
    return out


def datasource(uid: str) -> dict:
    (found,) = [d for d in datasources() if d["uid"] == uid]
    return found


@pytest.fixture(scope="module")
def log_line() -> dict:
    """One line as a service writes it: inside a span, for a signal."""
    record = logging.LogRecord("tvtb.test", logging.WARNING, __file__, 1, "order placed", (), None)
    context = SpanContext(trace_id=TRACE_ID, span_id=SPAN_ID, is_remote=False, trace_flags=TraceFlags(1))
    with trace.use_span(NonRecordingSpan(context)), bound_signal("sig-123"):
        text = JsonFormatter("executor").format(record)
    return {"text": text, "fields": json.loads(text)}


def promtail_stages(services) -> list[dict]:
    (job,) = load_config(services, "promtail")["scrape_configs"]
    return job["pipeline_stages"]


def stage(stages: list[dict], kind: str) -> dict:
    found = [s[kind] for s in stages if kind in s]
    assert len(found) == 1, f"expected one {kind} stage"
    return found[0] or {}


def promtail_labels(services) -> set[str]:
    """Every label the promtail job can put on a stream: relabeling, static labels and `labels` stages."""
    (job,) = load_config(services, "promtail")["scrape_configs"]
    labels = {r["target_label"] for r in job.get("relabel_configs", []) if r.get("action", "replace") == "replace"}
    labels |= {name for group in job.get("static_configs", []) for name in group.get("labels", {})}
    labels |= {name for s in job["pipeline_stages"] if "labels" in s for name in (s["labels"] or {})}
    return {name for name in labels if not name.startswith("__")}


# --- compose ----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", NEW_SERVICES)
def test_observability_service_is_opt_in_unpublished_and_restarts(services, name):
    service = services[name]
    assert service["profiles"] == ["observability"]
    assert not service.get("ports"), f"{name}: nothing but Grafana and Prometheus is published"
    assert service.get("restart") == "unless-stopped"


@pytest.mark.parametrize("name", NEW_SERVICES)
def test_observability_images_are_pinned(services, name):
    service = services[name]
    if "build" in service:
        # Built on a pinned upstream image: every FROM names a version.
        dockerfile = ROOT / service["build"] / "Dockerfile"
        images = [line.split()[1] for line in dockerfile.read_text().splitlines() if line.startswith("FROM ")]
    else:
        images = [service["image"]]
    assert images
    for image in images:
        _, _, tag = image.partition(":")
        assert re.match(r"^v?\d+\.\d+", tag), f"{name}: {image} is not pinned to a version"


def test_the_collector_image_can_run_its_own_healthcheck(services):
    # The upstream collector image is FROM scratch: a probe program must be added to the image the service runs.
    service = services["otel-collector"]
    probe = service["healthcheck"]["test"][1]
    dockerfile = (ROOT / service["build"] / "Dockerfile").read_text()
    assert re.search(rf"^COPY --from=\S+ \S+ {re.escape(probe)}$", dockerfile, re.M), probe
    assert "opentelemetry-collector-contrib" in dockerfile.split("FROM ")[-1]


@pytest.mark.parametrize("name", NEW_SERVICES)
def test_each_config_is_mounted_read_only_where_the_command_reads_it(services, name):
    path = config_path(services[name])
    assert path in mounts(services[name]), f"{name} reads {path}, which nothing is mounted on"
    source, read_only = mounts(services[name])[path]
    assert read_only, f"{name}: {path} must be mounted read-only"
    assert (ROOT / source).resolve().is_relative_to(ROOT / "ops"), source
    assert isinstance(load_config(services, name), dict)


@pytest.mark.parametrize(
    ("name", "listen"),
    [
        ("otel-collector", lambda c: host_port(c["extensions"]["health_check"]["endpoint"])[1]),
        ("tempo", lambda c: c["server"]["http_listen_port"]),
        ("loki", lambda c: c["server"]["http_listen_port"]),
        ("promtail", lambda c: c["server"]["http_listen_port"]),
    ],
)
def test_healthcheck_probes_the_port_the_config_listens_on(services, name, listen):
    assert probed_port(services[name]) == listen(load_config(services, name))


def test_the_collector_health_check_extension_is_enabled(services):
    config = load_config(services, "otel-collector")
    assert "health_check" in config["service"]["extensions"]


def test_trace_and_log_stores_keep_their_data_on_named_volumes(compose, services):
    declared = set(compose["volumes"])

    def on_named_volume(name: str, path: str) -> bool:
        return any(
            (path == target or path.startswith(target.rstrip("/") + "/")) and source in declared
            for target, (source, _) in mounts(services[name]).items()
        )

    tempo = load_config(services, "tempo")["storage"]["trace"]
    assert tempo["backend"] == "local"
    for path in (tempo["wal"]["path"], tempo["local"]["path"]):
        assert on_named_volume("tempo", path), path
    loki = load_config(services, "loki")
    filesystem = loki["common"]["storage"]["filesystem"]
    for path in (loki["common"]["path_prefix"], filesystem["chunks_directory"], filesystem["rules_directory"],
                 loki["compactor"]["working_directory"]):
        assert on_named_volume("loki", path), path
    positions = load_config(services, "promtail")["positions"]["filename"]
    assert on_named_volume("promtail", positions), positions


def test_depends_on_follows_the_data(services):
    assert "tempo" in services["otel-collector"]["depends_on"]
    assert "loki" in services["promtail"]["depends_on"]
    assert {"prometheus", "tempo", "loki"} <= set(services["grafana"]["depends_on"])


# --- traces: services -> collector -> Tempo ---------------------------------------------------------------------------


def otlp_protocol_ports(receiver: dict) -> dict[str, tuple[str, int]]:
    return {name: host_port(proto["endpoint"]) for name, proto in receiver["protocols"].items()}


def test_the_collector_receives_otlp_on_both_ports_from_other_containers(services):
    config = load_config(services, "otel-collector")
    ports = otlp_protocol_ports(config["receivers"]["otlp"])
    # localhost (the default since 0.104) would refuse every other container.
    assert ports == {"grpc": ("0.0.0.0", 4317), "http": ("0.0.0.0", 4318)}


def test_the_collector_traces_pipeline_goes_from_otlp_through_the_limiter_to_tempo(services):
    config = load_config(services, "otel-collector")
    pipeline = config["service"]["pipelines"]["traces"]
    assert pipeline["receivers"] == ["otlp"]
    assert set(pipeline["processors"]) <= set(config["processors"])
    # The memory limiter only protects what comes after it.
    assert pipeline["processors"][0].split("/")[0] == "memory_limiter"
    assert "batch" in {p.split("/")[0] for p in pipeline["processors"]}
    tempo_grpc = otlp_protocol_ports(load_config(services, "tempo")["distributor"]["receivers"]["otlp"])["grpc"]
    assert pipeline["exporters"]
    for name in pipeline["exporters"]:
        exporter = config["exporters"][name]
        assert name.split("/")[0] == "otlp", f"{name}: Tempo is reached over OTLP/gRPC"
        host, port = host_port(exporter["endpoint"])
        assert host == "tempo" and host in services
        assert port == tempo_grpc[1] and tempo_grpc[0] == "0.0.0.0"
        assert exporter["tls"]["insecure"] is True  # Tempo serves plain gRPC on the compose network


def test_the_services_otlp_endpoint_example_reaches_the_collector_http_receiver(services):
    # The services speak OTLP/HTTP to a base URL (shared/observability.py appends /v1/traces).
    assert "otel_exporter_otlp_endpoint" in ServiceSettings.model_fields
    source = (ROOT / "shared" / "observability.py").read_text()
    assert "proto.http.trace_exporter" in source and "/v1/traces" in source
    lines = (ROOT / ".env.example").read_text().splitlines()
    values = [line.split("=", 1)[1] for line in lines if re.match(r"^#\s*OTEL_EXPORTER_OTLP_ENDPOINT=", line)]
    assert values, ".env.example must show what to set with the observability profile"
    assert not [line for line in lines if line.startswith("OTEL_EXPORTER_OTLP_ENDPOINT=")], "off by default"
    url = urlsplit(values[0])
    assert url.scheme == "http" and url.path in ("", "/")
    assert url.hostname == "otel-collector" and url.hostname in services
    collector = load_config(services, "otel-collector")
    assert ("0.0.0.0", url.port) == otlp_protocol_ports(collector["receivers"]["otlp"])["http"]


# --- logs: containers -> Promtail -> Loki -----------------------------------------------------------------------------


def test_promtail_pushes_to_the_loki_service_and_port(services):
    (client,) = load_config(services, "promtail")["clients"]
    host, port = host_port(client["url"])
    assert host == "loki" and host in services
    assert port == load_config(services, "loki")["server"]["http_listen_port"]
    assert urlsplit(client["url"]).path == "/loki/api/v1/push"


def test_promtail_discovers_only_this_projects_containers_through_the_mounted_socket(compose, services):
    (job,) = load_config(services, "promtail")["scrape_configs"]
    (sd,) = job["docker_sd_configs"]
    socket = urlsplit(sd["host"])
    assert socket.scheme == "unix"
    assert socket.path in mounts(services["promtail"]), "the Docker socket must be mounted at the configured path"
    assert mounts(services["promtail"])[socket.path] == (socket.path, True)
    filters = {f["name"]: f["values"] for f in sd["filters"]}
    assert filters["label"] == [f"com.docker.compose.project={compose['name']}"]


def test_promtail_parses_fields_the_log_formatter_really_writes(services, log_line):
    extracted = stage(promtail_stages(services), "json")["expressions"]
    for name, expression in extracted.items():
        source = expression or name
        assert source in log_line["fields"], f"promtail reads {source!r}, which JsonFormatter does not write"
    assert {"service", "level", "trace_id", "signal_id"} <= set(extracted)
    assert log_line["fields"]["trace_id"] == format(TRACE_ID, "032x")
    assert log_line["fields"]["signal_id"] == "sig-123"


def test_promtail_labels_are_few_valued_and_the_ids_are_structured_metadata(services, log_line):
    labels = promtail_labels(services)
    assert {"service", "level"} <= labels
    assert not labels & PER_LINE_FIELDS, f"per-line fields as labels: {labels & PER_LINE_FIELDS}"
    # service and level take few values: the service's name and a logging level name.
    assert log_line["fields"]["service"] in services
    assert log_line["fields"]["level"] in {"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"}
    stages = promtail_stages(services)
    metadata = set(stage(stages, "structured_metadata"))
    assert {"trace_id", "signal_id"} <= metadata
    assert metadata <= set(stage(stages, "json")["expressions"]), "structured metadata comes from the json stage"


def test_loki_keeps_structured_metadata_in_a_tsdb_v13_filesystem_store(services):
    config = load_config(services, "loki")
    current = max(config["schema_config"]["configs"], key=lambda c: str(c["from"]))
    assert (current["store"], current["schema"], current["object_store"]) == ("tsdb", "v13", "filesystem")
    assert config["limits_config"].get("allow_structured_metadata", True) is True
    assert config["auth_enabled"] is False  # single tenant: Promtail sends no X-Scope-OrgID


# --- Grafana ----------------------------------------------------------------------------------------------------------


def test_grafana_datasources_are_unique_with_one_default():
    all_sources = datasources()
    uids = [d["uid"] for d in all_sources]
    assert len(uids) == len(set(uids)), uids
    assert {"prometheus", "tempo", "loki"} <= set(uids)
    assert sum(bool(d.get("isDefault")) for d in all_sources) == 1  # Grafana refuses to start on two


def test_grafana_datasource_urls_resolve_to_compose_services_and_their_ports(services):
    listening = {
        "prometheus": probed_port(services["prometheus"]),
        "tempo": load_config(services, "tempo")["server"]["http_listen_port"],
        "loki": load_config(services, "loki")["server"]["http_listen_port"],
    }
    for source in datasources():
        host, port = host_port(source["url"])
        assert host in services, f"{source['name']}: {host} is no compose service"
        assert port == listening[host], f"{source['name']}: {host} listens on {listening[host]}, not {port}"
        assert host in services["grafana"]["depends_on"], f"grafana must wait for {host}"


def test_a_log_lines_trace_id_links_to_tempo(log_line):
    loki = datasource("loki")
    (field,) = loki["jsonData"]["derivedFields"]
    assert datasource(field["datasourceUid"])["type"] == "tempo"
    assert unescape(field["url"]) == "${__value.raw}"
    match = re.search(unescape(field["matcherRegex"]), log_line["text"])
    assert match and match[1] == format(TRACE_ID, "032x"), "the regex must capture the trace id of a real line"


def test_a_traces_spans_link_to_its_log_lines(services, log_line):
    links = datasource("tempo")["jsonData"]["tracesToLogsV2"]
    assert datasource(links["datasourceUid"])["type"] == "loki"
    query = unescape(links["query"])
    assert links["customQuery"] is True and "${__trace.traceId}" in query
    # The stream selector names only labels Promtail makes, and the line filter finds the id in a real line.
    selector = re.match(r"^\{(.*?)\}", query)[1]
    assert {m.split("=")[0].strip() for m in selector.split(",")} <= promtail_labels(services)
    assert query.split("|=")[1].strip().strip('"').replace("${__trace.traceId}", format(TRACE_ID, "032x")) in (
        log_line["text"]
    )


def test_grafana_variables_are_escaped_from_env_expansion():
    # Grafana expands $VAR and ${VAR} from its environment in provisioning files: its own ${__...} must be $${__...}.
    for path in DATASOURCES_DIR.glob("*.y*ml"):
        text = "\n".join(line for line in path.read_text().splitlines() if not line.lstrip().startswith("#"))
        assert not re.search(r"(?<!\$)\$\{__", text), f"{path.name}: an unescaped Grafana variable"
