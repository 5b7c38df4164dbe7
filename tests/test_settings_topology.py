"""Deployment settings (audit sink, Redis Cluster, TLS bundles, S3 region and token) and the
deploy/ files: every variable they set is one Settings knows, every service and port is the
README's Production topology."""

from __future__ import annotations

import inspect
import re
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from rlm_core.settings import ENV_VARIABLES, Settings, SettingsError

REPO = Path(__file__).resolve().parents[1]
DEPLOY = REPO / "deploy"
CA_TEXT = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"
S3 = {"MINIO_ENDPOINT": "minio:9000", "MINIO_ACCESS_KEY": "k", "MINIO_SECRET_KEY": "s"}
# Read by Dagster, not by Settings: the instance's storage URL (dagster.postgres.yaml) and home.
DAGSTER_VARIABLES = frozenset({"RLM_DAGSTER_PG_URL", "DAGSTER_HOME"})
# Which environment variable names which service of the topology.
CONNECTIONS = {
    "REDIS_URL": "redis",
    "QDRANT_URL": "qdrant",
    "MONGODB_URL": "mongodb",
    "MINIO_ENDPOINT": "minio",
    "RLM_DAGSTER_PG_URL": "postgres",
    "RLM_DAGSTER_URL": "dagster-webserver",
}


def _error(env: dict[str, str]) -> str:
    with pytest.raises(SettingsError) as info:
        Settings.from_env(env)
    return str(info.value)


@pytest.fixture
def ca_file(tmp_path: Path) -> Path:
    path = tmp_path / "ca.pem"
    path.write_text(CA_TEXT)
    return path


# ------------------------------------------------------------- new settings


def test_defaults() -> None:
    s = Settings.from_env({})
    assert (s.audit_sink, s.audit_prefix, s.audit_retention_days) == ("file", ".rlm-audit/", 90)
    assert (s.redis_cluster, s.redis_ca_bundle, s.minio_ca_bundle) == (False, None, None)
    assert (s.minio_region, s.minio_session_token) == (None, None)


def test_every_deployment_setting_read_together(ca_file: Path) -> None:
    s = Settings.from_env(
        {
            **S3,
            "MINIO_SECURE": "true",
            "REDIS_URL": "rediss://redis:6380/0",
            "MONGODB_URL": "mongodb://m:27017",
            "RLM_AUDIT_SINK": " S3 ",
            "RLM_AUDIT_PREFIX": "/ops/rlm-audit",
            "RLM_AUDIT_RETENTION_DAYS": "30",
            "REDIS_CLUSTER": "yes",
            "REDIS_CA_BUNDLE": str(ca_file),
            "MINIO_CA_BUNDLE": str(ca_file),
            "MINIO_REGION": "eu-west-3",
            "MINIO_SESSION_TOKEN": "token-value",
        }
    )
    assert s.audit_sink == "s3"
    assert s.audit_prefix == "ops/rlm-audit/"  # always a folder: no leading '/', one trailing
    assert s.audit_retention_days == 30
    assert s.redis_cluster is True
    assert s.redis_ca_bundle == s.minio_ca_bundle == ca_file
    assert s.minio_region == "eu-west-3"
    assert s.public_view()["minio_session_token"] == "***"
    assert "token-value" not in repr(s)


@pytest.mark.parametrize(
    ("variable", "raw", "allowed"),
    [
        ("RLM_AUDIT_SINK", "kafka", "allowed: file, s3 or mongodb"),
        ("RLM_AUDIT_PREFIX", "/", "object key prefix"),
        ("RLM_AUDIT_PREFIX", "a//b", "object key prefix"),
        ("RLM_AUDIT_PREFIX", "a/../b", "object key prefix"),
        ("RLM_AUDIT_PREFIX", "audit trail", "object key prefix"),
        ("RLM_AUDIT_RETENTION_DAYS", "0", "whole number > 0"),
        ("RLM_AUDIT_RETENTION_DAYS", "1.5", "whole number > 0"),
        ("REDIS_CLUSTER", "cluster", "true/false"),
        ("REDIS_CA_BUNDLE", "/nonexistent/ca.pem", "readable PEM file"),
        ("MINIO_CA_BUNDLE", "/etc/hostname", "readable PEM file"),
        ("MINIO_REGION", "eu west", "S3 region name"),
        ("MINIO_REGION", "r" * 65, "S3 region name"),
    ],
)
def test_an_invalid_value_names_variable_value_and_allowed(
    variable: str, raw: str, allowed: str
) -> None:
    message = _error({variable: raw})
    assert f"{variable}={raw!r} is invalid; allowed: " in message
    assert allowed in message


def test_a_bad_session_token_is_reported_without_its_value() -> None:
    message = _error({**S3, "MINIO_SESSION_TOKEN": "   "})
    assert "MINIO_SESSION_TOKEN=*** is invalid; allowed: a non-empty string" in message


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"RLM_AUDIT_SINK": "s3"}, "RLM_AUDIT_SINK='s3' is invalid; allowed: file, or s3 with"),
        ({"RLM_AUDIT_SINK": "mongodb"}, "allowed: file, or mongodb with MONGODB_URL set"),
        ({"REDIS_CLUSTER": "true"}, "REDIS_CLUSTER='true' is invalid; allowed: true only with"),
        (
            {"REDIS_CLUSTER": "true", "REDIS_URL": "unix:///run/redis.sock"},
            "the embedded Redis is no cluster",
        ),
        (
            {"REDIS_CLUSTER": "true", "REDIS_URL": "redis://r:6379/2"},
            "REDIS_URL='redis://r:6379/2' is invalid; allowed: database 0 with REDIS_CLUSTER",
        ),
        (
            {"REDIS_URL": "redis://r:6379", "REDIS_CA_BUNDLE": "{ca}"},
            "together with a rediss:// REDIS_URL",
        ),
        ({**S3, "MINIO_CA_BUNDLE": "{ca}"}, "MINIO_SECURE=true or an https:// MINIO_ENDPOINT"),
        ({"MINIO_REGION": "us-east-1"}, "MINIO_REGION='us-east-1' is invalid"),
        ({"MINIO_SESSION_TOKEN": "t"}, "MINIO_SESSION_TOKEN=*** is invalid"),
    ],
)
def test_deployment_settings_need_their_connection(
    env: dict[str, str], expected: str, ca_file: Path
) -> None:
    filled = {k: v.replace("{ca}", str(ca_file)) for k, v in env.items()}
    assert expected in _error(filled)


def test_an_https_endpoint_is_enough_for_a_minio_ca(ca_file: Path) -> None:
    env = {**S3, "MINIO_ENDPOINT": "https://minio:9000", "MINIO_CA_BUNDLE": str(ca_file)}
    assert Settings.from_env(env).minio_ca_bundle == ca_file


def test_the_new_variables_are_listed() -> None:
    new = {
        "RLM_AUDIT_SINK",
        "RLM_AUDIT_PREFIX",
        "RLM_AUDIT_RETENTION_DAYS",
        "REDIS_CLUSTER",
        "REDIS_CA_BUNDLE",
        "MINIO_CA_BUNDLE",
        "MINIO_REGION",
        "MINIO_SESSION_TOKEN",
    }
    assert new <= set(ENV_VARIABLES)


# ------------------------------------------------------------- deploy/ against the topology


def _load(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def _topology() -> dict[str, int | None]:
    """The README's Production table: service -> port (None: no port)."""
    text = (REPO / "README.md").read_text()
    section = re.split(r"^## Production$", text, flags=re.MULTILINE)[1].split("\n## ", 1)[0]
    rows = re.findall(r"^\| `([a-z-]+)` \| [^|]+ \| (\d+|none) \|$", section, re.MULTILINE)
    return {name: None if port == "none" else int(port) for name, port in rows}


def _compose() -> dict[str, Any]:
    return dict(_load(DEPLOY / "docker-compose.yml")["services"])


def _rlm_services(services: dict[str, Any]) -> dict[str, dict[str, str]]:
    """The services running rlm's image, with their environment."""
    return {
        name: {k: str(v) for k, v in svc["environment"].items()}
        for name, svc in services.items()
        if svc.get("image", "").startswith("rlm:")
    }


def _container_port(service: dict[str, Any]) -> int | None:
    exposed = [int(str(p)) for p in service.get("expose", [])]
    published = [int(str(p).rsplit(":", 1)[1]) for p in service.get("ports", [])]
    ports = set(exposed + published)
    assert len(ports) <= 1, ports
    return ports.pop() if ports else None


def _host_port(variable: str, value: str) -> tuple[str, int | None]:
    if variable == "MINIO_ENDPOINT" and "://" not in value:
        value = f"http://{value}"
    parts = urlsplit(value.replace("${POSTGRES_PASSWORD:?set POSTGRES_PASSWORD}", "pw"))
    return parts.hostname or "", parts.port


def test_the_readme_documents_the_topology() -> None:
    topology = _topology()
    assert topology["rlm-code"] == 4000
    assert topology["rlm-api"] == 8001
    assert topology["dagster-webserver"] == 3000
    assert len(topology) == 10


def test_compose_runs_exactly_the_documented_services_on_their_ports() -> None:
    services = _compose()
    topology = _topology()
    assert set(services) == set(topology)
    for name, service in services.items():
        assert _container_port(service) == topology[name], name


def test_compose_sets_only_variables_that_settings_or_dagster_read() -> None:
    envs = _rlm_services(_compose())
    assert set(envs) == {"rlm-init", "rlm-code", "dagster-webserver", "dagster-daemon", "rlm-api"}
    for name, env in envs.items():
        unknown = set(env) - set(ENV_VARIABLES) - DAGSTER_VARIABLES
        assert not unknown, f"{name}: {sorted(unknown)}"
    first = next(iter(envs.values()))
    assert all(env == first for env in envs.values())  # one environment for every process


def test_compose_settings_load_and_name_the_documented_services() -> None:
    env = next(iter(_rlm_services(_compose()).values()))
    filled = {k: re.sub(r"\$\{[A-Z_]+:\?[^}]*\}", "x" * 32, v) for k, v in env.items()}
    settings = Settings.from_env({k: v for k, v in filled.items() if k not in DAGSTER_VARIABLES})
    assert settings.audit_sink == "s3"
    topology = _topology()
    for variable, service in CONNECTIONS.items():
        assert _host_port(variable, env[variable]) == (service, topology[service]), variable


def test_compose_commands_match_the_topology() -> None:
    services = _compose()
    code = services["rlm-code"]["command"]
    assert code[code.index("--port") + 1] == "4000"
    assert services["rlm-api"]["command"][-2:] == ["--port", "8001"]
    web = services["dagster-webserver"]["command"]
    assert web[web.index("-p") + 1] == "3000"
    assert services["rlm-init"]["command"] == ["rlm", "init"]
    workspace = _load(DEPLOY / "workspace.yaml")["load_from"][0]["grpc_server"]
    assert (workspace["host"], workspace["port"]) == ("rlm-code", 4000)
    assert all(p.startswith("127.0.0.1:") for s in services.values() for p in s.get("ports", []))


def test_the_dockerfile_serves_the_code_location_on_its_port() -> None:
    text = (DEPLOY / "Dockerfile").read_text()
    assert "EXPOSE 4000" in text
    assert '"--port", "4000"' in text
    assert "COPY dagster.postgres.yaml ${DAGSTER_HOME}/dagster.yaml" in text
    for copied in re.findall(r"^COPY (\S+)", text, re.MULTILINE):
        assert (REPO / copied).exists(), copied


def _helm() -> dict[str, Any]:
    return dict(_load(DEPLOY / "helm" / "values.yaml"))


def test_helm_values_use_the_k8s_run_launcher_and_known_variables() -> None:
    values = _helm()
    assert values["runLauncher"]["type"] == "K8sRunLauncher"
    (deployment,) = values["dagster-user-deployments"]["deployments"]
    assert deployment["port"] == _topology()["rlm-code"]
    assert deployment["includeConfigInLaunchedRuns"]["enabled"] is True
    env = {item["name"]: str(item["value"]) for item in deployment["env"]}
    assert not set(env) - set(ENV_VARIABLES), sorted(set(env) - set(ENV_VARIABLES))
    Settings.from_env({**env, "MINIO_SECRET_KEY": "from-the-secret"})
    topology = _topology()
    for variable in ("REDIS_URL", "QDRANT_URL", "MONGODB_URL", "MINIO_ENDPOINT"):
        assert _host_port(variable, env[variable]) == (
            CONNECTIONS[variable],
            topology[CONNECTIONS[variable]],
        )
    assert values["dagsterWebserver"]["service"]["port"] == topology["dagster-webserver"]
    assert values["postgresql"]["service"]["port"] == topology["postgres"]
    assert values["postgresql"]["postgresqlHost"] == "postgres"


def test_helm_queue_limits_are_those_of_the_instance_config() -> None:
    coordinator = _helm()["dagsterDaemon"]["runCoordinator"]["config"]["queuedRunCoordinator"]
    instance = _load(REPO / "dagster.postgres.yaml")
    runs = instance["concurrency"]["runs"]
    assert coordinator["maxConcurrentRuns"] == runs["max_concurrent_runs"]
    assert coordinator["tagConcurrencyLimits"] == runs["tag_concurrency_limits"]


# ------------------------------------------------------------- RLM_LOG_FORMAT reaches Dagster

DAGSTER_COMMANDS = ("rlm-code", "dagster-webserver", "dagster-daemon")


def _flag(command: list[str], flag: str) -> str | None:
    return command[command.index(flag) + 1] if flag in command else None


def test_compose_gives_dagster_processes_the_log_format_of_rlm_log_format() -> None:
    """RLM_LOG_FORMAT=json in compose: the code server, webserver and daemon log JSON too."""
    services = _compose()
    env = _rlm_services(services)["rlm-code"]
    from rlm_dagster.dev import dagster_log_format

    expected = dagster_log_format(Settings.from_env({"RLM_LOG_FORMAT": env["RLM_LOG_FORMAT"]}))
    assert expected == "json"
    for name in DAGSTER_COMMANDS:
        assert _flag(services[name]["command"], "--log-format") == expected, name


def test_the_dockerfile_code_server_logs_json() -> None:
    text = (DEPLOY / "Dockerfile").read_text()
    (cmd,) = re.findall(r"^CMD (\[.*\])$", text, re.MULTILINE)
    assert _flag(yaml.safe_load(cmd), "--log-format") == "json"


def test_helm_gives_the_code_server_and_webserver_json_logs() -> None:
    values = _helm()
    (deployment,) = values["dagster-user-deployments"]["deployments"]
    env = {item["name"]: str(item["value"]) for item in deployment["env"]}
    assert env["RLM_LOG_FORMAT"] == "json"
    assert _flag(deployment["dagsterApiGrpcArgs"], "--log-format") == "json"
    web_env = {item["name"]: item["value"] for item in values["dagsterWebserver"]["env"]}
    assert web_env == {"DAGSTER_WEBSERVER_LOG_FORMAT": "json"}


def test_dagster_webserver_reads_its_log_format_from_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """What the Helm value relies on: dagster-webserver's options come from DAGSTER_WEBSERVER_*
    (its entry point sets click's auto_envvar_prefix); the daemon has no such variable."""
    from dagster._daemon.cli import cli as daemon_cli
    from dagster_webserver.cli import cli as webserver_cli
    from dagster_webserver.cli import main as webserver_main

    monkeypatch.setenv("DAGSTER_WEBSERVER_LOG_FORMAT", "json")
    context = webserver_cli.make_context(
        "dagster-webserver", ["--empty-workspace"], auto_envvar_prefix="DAGSTER_WEBSERVER"
    )
    assert context.params["log_format"] == "json"
    monkeypatch.setenv("DAGSTER_DAEMON_LOG_FORMAT", "json")
    run = daemon_cli.get_command(daemon_cli.make_context("dagster-daemon", ["run"]), "run")
    assert run is not None
    assert run.make_context("run", []).params["log_format"] == "colored"
    # The console script's main() is what passes the prefix.
    assert 'auto_envvar_prefix="DAGSTER_WEBSERVER"' in inspect.getsource(webserver_main)
