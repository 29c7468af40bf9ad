"""The systemd units of ops/systemd/: parsed, checked against the services' code and settings, and verified by systemd."""

from __future__ import annotations

import importlib.util
import inspect
import os
import re
import shlex
import functools
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic_settings import BaseSettings

from services.bingx_sim.settings import BingxSimSettings
from services.control.settings import ControlSettings
from services.executor.settings import ExecutorSettings
from services.ingress.settings import IngressSettings
from services.notifier.settings import NotifierSettings
from shared import runtime
from shared.settings import ServiceSettings, load_settings
from tests.unit.test_deployment_files import APP_ENV, DEPLOYMENTS

ROOT = Path(__file__).resolve().parents[2]
SYSTEMD = ROOT / "ops" / "systemd"
SERVICE_FILES = sorted(SYSTEMD.glob("*.service"))
TARGET_FILE = SYSTEMD / "tvtb.target"

VENV_PYTHON = "/opt/tvtb/.venv/bin/python"
ENV_FILE = "/etc/tvtb/tvtb.env"
USER = "tvtb"
SETTINGS = {
    "ingress": IngressSettings,
    "executor": ExecutorSettings,
    "notifier": NotifierSettings,
    "control": ControlSettings,
    "bingx_sim": BingxSimSettings,
}
PAPER_ONLY = {"bingx_sim"}
NO_BROKER = {"bingx_sim"}  # the simulator needs MongoDB only (as in docker-compose.yml)
PUBLIC = {"ingress"}  # TradingView (through the TLS proxy) must reach it; every other port stays on loopback
HARD_DEPENDENCIES = ("Requires", "Requisite", "BindsTo")
SANDBOX = {
    "NoNewPrivileges": "yes",
    "ProtectSystem": "strict",
    "ProtectHome": "yes",
    "PrivateTmp": "yes",
    "PrivateDevices": "yes",
    "ProtectKernelTunables": "yes",
    "ProtectKernelModules": "yes",
    "ProtectControlGroups": "yes",
    "RestrictSUIDSGID": "yes",
    "RestrictNamespaces": "yes",
    "LockPersonality": "yes",
    "CapabilityBoundingSet": "",
    "AmbientCapabilities": "",
    "UMask": "0077",
}
EXEC_START = re.compile(rf"^{re.escape(VENV_PYTHON)} -m services\.(?P<module>[a-z_]+)$")


class Unit:
    """A unit file as systemd reads it: sections of (key, value) in order, repeated keys kept."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.name = path.name
        self.sections: dict[str, list[tuple[str, str]]] = {}
        current: list[tuple[str, str]] | None = None
        pending = ""
        for raw in path.read_text().splitlines():
            line = raw.strip()
            if not pending and (not line or line[0] in "#;"):
                continue
            if line.endswith("\\"):
                pending += line[:-1] + " "
                continue
            line, pending = pending + line, ""
            if line.startswith("[") and line.endswith("]"):
                current = self.sections.setdefault(line[1:-1], [])
                continue
            key, sep, value = line.partition("=")
            assert sep and current is not None, f"{self.name}: not a key=value line in a section: {line!r}"
            current.append((key.strip(), value.strip()))

    def all(self, section: str, key: str) -> list[str]:
        return [v for k, v in self.sections.get(section, []) if k == key]

    def get(self, section: str, key: str) -> str | None:
        """The value systemd uses for a single-valued setting: the last one."""
        values = self.all(section, key)
        return values[-1] if values else None

    def words(self, section: str, key: str) -> set[str]:
        """A list setting (Wants=, After=...): assignments add up, an empty one clears what came before."""
        out: set[str] = set()
        for value in self.all(section, key):
            out = set() if not value else out | set(value.split())
        return out

    def environment(self) -> dict[str, str]:
        env: dict[str, str] = {}
        for value in self.all("Service", "Environment"):
            for assignment in shlex.split(value):
                name, sep, setting = assignment.partition("=")
                assert sep, f"{self.name}: Environment={value!r}"
                env[name] = setting
        return env

    @property
    def module(self) -> str:
        (exec_start,) = self.all("Service", "ExecStart")
        match = EXEC_START.match(exec_start)
        assert match, f"{self.name}: ExecStart={exec_start!r}"
        return match["module"]


UNITS = [Unit(path) for path in SERVICE_FILES]
BY_MODULE = {unit.module: unit for unit in UNITS}
TARGET = Unit(TARGET_FILE)


def runnable_modules() -> set[str]:
    return {p.parent.name for p in (ROOT / "services").glob("*/__main__.py")}


def seconds(value: str) -> float:
    """A systemd time span as these units write it: 30, 30s, 1min, 1min 30s."""
    units = {"": 1, "s": 1, "sec": 1, "min": 60, "m": 60, "h": 3600}
    total = 0.0
    for number, unit in re.findall(r"(\d+(?:\.\d+)?)\s*([a-z]*)", value):
        total += float(number) * units[unit]
    return total


def default_instance(unit: Unit) -> str:
    instance = unit.get("Install", "DefaultInstance")
    assert instance, f"{unit.name}: a template needs DefaultInstance="
    return instance


def instance_names(unit: Unit) -> list[str]:
    """The names the unit runs under: itself, or a template's default instance."""
    if "@" in unit.name:
        return [unit.name.replace("@.", f"@{default_instance(unit)}.")]
    return [unit.name]


def k8s_name(module: str) -> str:
    return module.replace("_", "-")


# --- one unit per service -----------------------------------------------------------------------------------------


def test_one_unit_per_runnable_service():
    modules = [unit.module for unit in UNITS]
    assert len(modules) == len(set(modules)), modules
    assert set(modules) == runnable_modules()
    for unit in UNITS:
        expected = f"tvtb-{k8s_name(unit.module)}"
        assert unit.name in (f"{expected}.service", f"{expected}@.service"), unit.name
    assert BY_MODULE["executor"].name == "tvtb-executor@.service", "the executor is a template, for replicas"


@pytest.mark.parametrize("unit", UNITS, ids=lambda u: u.name)
def test_unit_runs_its_module_from_the_venv(unit):
    module = unit.module  # asserts the exact ExecStart form
    assert (ROOT / "services" / module / "__main__.py").is_file()
    spec = importlib.util.find_spec(f"services.{module}.__main__")
    assert spec is not None and spec.origin == str(ROOT / "services" / module / "__main__.py")
    assert unit.get("Service", "Type") == "exec"
    assert unit.get("Service", "WorkingDirectory") == "/opt/tvtb"


@pytest.mark.parametrize("unit", UNITS, ids=lambda u: u.name)
def test_unit_runs_as_the_dedicated_non_root_user(unit):
    user = unit.get("Service", "User")
    assert user == USER and user not in {"root", "0"}
    assert unit.get("Service", "Group") == USER
    assert unit.get("Service", "DynamicUser") in (None, "no")
    for key in ("ExecStart", "ExecStartPre", "ExecStartPost", "ExecCondition", "ExecStop", "ExecStopPost", "ExecReload"):
        for command in unit.all("Service", key):
            # `+`, `!` and `!!` run a command with full privileges, whatever User= says.
            assert not command.lstrip("@-:").startswith(("+", "!")), f"{unit.name}: {key}={command}"


@pytest.mark.parametrize("unit", UNITS, ids=lambda u: u.name)
def test_unit_reads_the_one_settings_file(unit):
    # Not `-/etc/...`: a missing file must stop the service, not start it without its settings.
    assert unit.all("Service", "EnvironmentFile") == [ENV_FILE]


# --- restarts and stopping ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("unit", UNITS, ids=lambda u: u.name)
def test_unit_restarts_on_failure_but_not_on_a_configuration_error(unit):
    assert unit.get("Service", "Restart") == "on-failure"
    assert seconds(unit.get("Service", "RestartSec") or "0") >= 1
    assert "2" in (unit.get("Service", "RestartPreventExitStatus") or "").split()


def test_a_configuration_error_exits_with_status_2(monkeypatch, capsys):
    """What RestartPreventExitStatus=2 relies on: load_settings stops the process with 2 on a bad setting."""

    class Needs(BaseSettings):
        tvtb_systemd_test_required: str

    monkeypatch.delenv("TVTB_SYSTEMD_TEST_REQUIRED", raising=False)
    with pytest.raises(SystemExit) as stopped:
        load_settings(Needs, "test")
    assert stopped.value.code == 2
    assert "configuration error" in capsys.readouterr().err


@pytest.mark.parametrize("unit", UNITS, ids=lambda u: u.name)
def test_unit_stops_with_sigterm_and_waits_for_the_graceful_shutdown(unit):
    assert unit.get("Service", "KillSignal") == "SIGTERM"
    assert unit.get("Service", "KillMode") in (None, "control-group", "mixed")
    assert "signal.SIGTERM" in inspect.getsource(runtime.run_until_stopped)
    # As long as Kubernetes gives the same service (its default is 30 s), and not so long that a hang goes unseen.
    deployment = DEPLOYMENTS.get(k8s_name(unit.module))
    grace = deployment["spec"]["template"]["spec"].get("terminationGracePeriodSeconds", 30) if deployment else 30
    assert grace <= seconds(unit.get("Service", "TimeoutStopSec") or "0") <= 300


def test_ingress_may_open_as_many_connections_as_its_setting_allows():
    (bound,) = [m.le for m in ServiceSettings.model_fields["http_max_connections"].metadata if hasattr(m, "le")]
    limit = BY_MODULE["ingress"].get("Service", "LimitNOFILE")
    assert limit and ":" not in limit
    assert int(limit) >= bound + 1000  # the broker's and the database's sockets, log and module files


# --- sandbox ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("unit", UNITS, ids=lambda u: u.name)
def test_unit_is_sandboxed(unit):
    for key, expected in SANDBOX.items():
        assert unit.get("Service", key) == expected, f"{unit.name}: {key}"
    # The only writable place is the unit's own StateDirectory; nothing opens the read-only file system again.
    for key in ("ReadWritePaths", "ReadWriteDirectories", "BindPaths"):
        assert not unit.all("Service", key), f"{unit.name}: {key}"


@pytest.mark.parametrize("unit", UNITS, ids=lambda u: u.name)
def test_every_path_the_unit_writes_is_in_its_state_directory(unit):
    state_dirs = [f"/var/lib/{d}/" for value in unit.all("Service", "StateDirectory") for d in value.split()]
    settings = SETTINGS[unit.module]
    # A session file is written: its default is relative to WorkingDirectory, read-only under ProtectSystem=strict.
    written = {name.upper() for name in settings.model_fields if name.endswith("_session_path")}
    env = unit.environment()
    assert written <= set(env), f"{unit.name}: {written - set(env)} must point into a StateDirectory"
    for name, value in env.items():
        if value.startswith("/"):
            assert any(value.startswith(d) for d in state_dirs), f"{unit.name}: {name}={value}"
    if written:
        assert unit.get("Service", "StateDirectoryMode") == "0700"


def test_the_two_telegram_sessions_are_different_files():
    notifier = BY_MODULE["notifier"].environment()["TELEGRAM_SESSION_PATH"]
    control = BY_MODULE["control"].environment()["TELEGRAM_CONTROL_SESSION_PATH"]
    assert notifier != control


@pytest.mark.parametrize("unit", UNITS, ids=lambda u: u.name)
def test_unit_sets_only_settings_its_service_reads(unit):
    env = unit.environment()
    assert set(env) <= APP_ENV, set(env) - APP_ENV
    fields = SETTINGS[unit.module].model_fields
    assert all(name.lower() in fields for name in env), f"{unit.name}: {[n for n in env if n.lower() not in fields]}"


@pytest.mark.parametrize("unit", UNITS, ids=lambda u: u.name)
def test_only_the_ingress_listens_beyond_loopback(unit):
    bind = unit.environment().get("BIND_HOST")
    if unit.module in PUBLIC:
        assert bind is None  # the settings' default, 0.0.0.0
    else:
        assert bind == "127.0.0.1"


# --- dependencies and the target ----------------------------------------------------------------------------------


@pytest.mark.parametrize("unit", UNITS, ids=lambda u: u.name)
def test_unit_waits_for_network_broker_and_database_without_requiring_them(unit):
    needs = {"network-online.target", "mongod.service"}
    if unit.module not in NO_BROKER:
        needs.add("rabbitmq-server.service")
    else:
        assert "rabbitmq-server.service" not in unit.words("Unit", "Wants")
    assert needs <= unit.words("Unit", "Wants")
    assert needs <= unit.words("Unit", "After")
    for key in HARD_DEPENDENCIES:
        assert not unit.all("Unit", key), f"{unit.name}: {key}= (the broker and the database may be on other hosts)"


def test_target_wants_every_unit_but_the_paper_venue():
    wanted = TARGET.words("Unit", "Wants")
    core = {name for unit in UNITS if unit.module not in PAPER_ONLY for name in instance_names(unit)}
    assert wanted == core
    assert not any(name in wanted for m in PAPER_ONLY for name in instance_names(BY_MODULE[m]))
    assert TARGET.words("Install", "WantedBy") == {"multi-user.target"}
    assert set(TARGET.sections) == {"Unit", "Install"}


@pytest.mark.parametrize("unit", UNITS, ids=lambda u: u.name)
def test_unit_belongs_to_the_target(unit):
    # PartOf: stopping or restarting the target does it to the unit; WantedBy: enabling the unit adds it to the target.
    assert "tvtb.target" in unit.words("Unit", "PartOf")
    assert unit.words("Install", "WantedBy") == {"tvtb.target"}


def test_executor_replicas_are_instances_named_by_their_port():
    executor = BY_MODULE["executor"]
    assert executor.environment()["EXECUTOR_PORT"] == "%i"
    default_port = ExecutorSettings.model_fields["executor_port"].default
    assert default_instance(executor) == str(default_port)
    assert f"tvtb-executor@{default_port}.service" in TARGET.words("Unit", "Wants")
    assert not any("EXECUTOR_PORT" in unit.environment() for unit in UNITS if unit is not executor)
    # The README's replicas take ports no other service uses.
    others = {SETTINGS[m].model_fields[f"{m}_port"].default for m in SETTINGS if m != "executor"}
    readme_ports = {int(p) for p in re.findall(r"tvtb-executor@(\d+)", (SYSTEMD / "README.md").read_text())}
    assert len(readme_ports) >= 2 and not readme_ports & others, readme_ports
    # Replicas start after the simulator when it runs (paper), so the executor's first venue call finds it.
    assert "tvtb-bingx-sim.service" in executor.words("Unit", "After")


@pytest.mark.parametrize(
    ("env", "runs"),
    [({}, True), ({"TRADING_MODE": "paper"}, True), ({"TRADING_MODE": "demo"}, False), ({"TRADING_MODE": "live"}, False)],
    ids=["unset", "paper", "demo", "live"],
)
def test_simulator_runs_in_paper_mode_only(env, runs):
    (condition,) = BY_MODULE["bingx_sim"].all("Service", "ExecCondition")
    # systemd turns $$ into $ and %% into % before it runs the command.
    argv = shlex.split(condition.replace("$$", "$").replace("%%", "%"))
    assert Path(argv[0]).is_absolute() and os.access(argv[0], os.X_OK), argv[0]
    base = {k: v for k, v in os.environ.items() if k != "TRADING_MODE"}
    status = subprocess.run(argv, env={**base, **env}, timeout=10).returncode
    if runs:
        assert status == 0
    else:
        assert 1 <= status <= 254  # the unit is skipped, not failed (255 or a signal would fail it)


def test_no_other_unit_has_a_start_condition():
    assert [u.name for u in UNITS if u.all("Service", "ExecCondition")] == ["tvtb-bingx-sim.service"]


# --- README -------------------------------------------------------------------------------------------------------


def test_readme_installs_what_the_units_expect():
    readme = (SYSTEMD / "README.md").read_text()
    for needed in (
        "useradd --system", f"--shell /usr/sbin/nologin {USER}", "-m venv /opt/tvtb/.venv", "pip install .",
        f"install -m 0600 -o root -g root .env {ENV_FILE}", "systemctl daemon-reload", "systemctl enable --now tvtb.target",
        "journalctl -u 'tvtb-*' -f", "systemctl enable --now tvtb-bingx-sim.service",
    ):
        assert needed in readme, needed
    for path in [*SERVICE_FILES, TARGET_FILE]:
        assert path.name in readme, path.name


# --- systemd itself -----------------------------------------------------------------------------------------------

def needs_systemd_analyze(test):
    """systemd-analyze reads unit files without a running systemd; missing, the test fails saying so (no skip)."""
    def run(*args, **kwargs):
        if shutil.which("systemd-analyze") is None:
            pytest.fail("systemd-analyze (Debian's systemd package) is needed to verify the units")
        return test(*args, **kwargs)
    return functools.wraps(test)(run)


def installable_copy(directory: Path) -> list[str]:
    """The units in `directory`, runnable here: the venv's python for /opt/tvtb's, a directory that exists."""
    for path in [*SERVICE_FILES, TARGET_FILE]:
        text = path.read_text().replace(VENV_PYTHON, sys.executable)
        text = text.replace("WorkingDirectory=/opt/tvtb", f"WorkingDirectory={directory}")
        (directory / path.name).write_text(text)
    names = [p.name for p in [*SERVICE_FILES, TARGET_FILE]]
    names += [name for unit in UNITS if "@" in unit.name for name in instance_names(unit)]
    names += ["tvtb-executor@9112.service"]  # a second replica
    return [str(directory / name) for name in names]


def verify(paths: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["systemd-analyze", "verify", "--man=no", *paths],
        capture_output=True, text=True, timeout=120, env={**os.environ, "SYSTEMD_LOG_COLOR": "0"},
    )


@needs_systemd_analyze
def test_systemd_analyze_verify_accepts_the_units(tmp_path):
    # `verify` needs no running systemd: it loads the files the way PID 1 would and reports every line it ignores.
    out = verify(installable_copy(tmp_path))
    assert out.returncode == 0, out.stderr
    assert out.stderr.strip() == "" and out.stdout.strip() == "", out.stderr + out.stdout


@needs_systemd_analyze
def test_systemd_analyze_verify_reports_a_broken_unit(tmp_path):
    """The check above means something here: a bad value and a missing program are reported."""
    installable_copy(tmp_path)
    ingress = tmp_path / "tvtb-ingress.service"
    ingress.write_text(ingress.read_text().replace("Restart=on-failure", "Restart=sometimes"))
    out = verify([str(ingress)])
    assert "Failed to parse service restart specifier" in out.stderr, out.stderr
    notifier = tmp_path / "tvtb-notifier.service"
    notifier.write_text(notifier.read_text().replace(sys.executable, str(tmp_path / "missing-python")))
    out = verify([str(notifier)])
    assert out.returncode != 0 and "missing-python" in out.stderr, out.stderr


@needs_systemd_analyze
@pytest.mark.parametrize("unit", UNITS, ids=lambda u: u.name)
def test_systemd_scores_the_sandbox_ok(unit, tmp_path):
    installable_copy(tmp_path)
    (name,) = instance_names(unit)
    # Exposure 0-10 as `systemd-analyze security` prints it, given here times ten: at most 2.0 ("OK").
    out = subprocess.run(
        ["systemd-analyze", "security", "--offline=yes", "--threshold=20", "--no-pager", str(tmp_path / name)],
        capture_output=True, text=True, timeout=120,
    )
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr
