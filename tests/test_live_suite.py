"""The suite started the `keelson up` way, once for this module, met as an operator and a
newcomer would: a real Prometheus scraping it, every dashboard panel and every alert
expression evaluated through Prometheus' HTTP API after a mixed workload; and `/docs`
opened in a headless Chromium that can reach nothing but 127.0.0.1.

Needs Debian's `prometheus`, `chromium` and `chromium-driver` (`.ci/run` installs them
where apt works); each test skips, saying so, where its tool is absent.
"""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest
import redis
import yaml
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy.engine import make_url

from keelson_dev.embedded import free_port
from keelson_dev.suite import SERVICES, Layout, free_port_block, readiness
from keelson_dev.testing import fresh_database

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
DASHBOARDS = DEPLOY / "grafana" / "dashboards"
RULES = DEPLOY / "prometheus" / "rules" / "keelson.yml"
KEELSON = Path(sys.executable).parent / "keelson"
READY_TIMEOUT = 180.0
SCRAPE_INTERVAL = "1s"
# Every sample since Prometheus started lies within this window: the whole workload counts.
RATE_WINDOW = "5m"
PASSWORD = "plum tractors sing quietly"

pytestmark = pytest.mark.timeout(480)

# Dashboards whose every panel must answer with series after the workload.
MUST_ANSWER = {"keelson-overview", "keelson-service"}
# The per-service dashboard is evaluated for each service the workload went through.
SERVICE_VALUES = ("gateway", "auth", "logs", "notifications", "payments")

# (dashboard uid, panel title, $service or None) -> why it may be empty after the workload.
MAY_BE_EMPTY: dict[tuple[str, str, str | None], str] = {
    ("keelson-overview", "5xx ratio", None): (
        "a healthy workload answers no 5xx, and a ratio over no 5xx series has no series"
    ),
    **{
        ("keelson-service", "5xx per second by route", service): (
            "a healthy workload answers no 5xx"
        )
        for service in SERVICE_VALUES
    },
    ("keelson-service", "Database statement duration p95", "gateway"): (
        "the gateway has no database"
    ),
    ("keelson-service", "Database connections in use", "gateway"): "the gateway has no database",
}

_PROMQL_WORDS = {
    "by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or",
    "unless", "offset", "le", "inf", "nan",
}  # fmt: skip


def _metrics_in(expr: str) -> set[str]:
    """The series names a PromQL expression selects (as tests/test_deploy.py reads them)."""
    text = re.sub(r'"[^"]*"', "", expr)
    text = re.sub(r"\{[^}]*\}|\[[^\]]*\]", " ", text)
    text = re.sub(r"\b(by|without|on|ignoring)\s*\([^)]*\)", " ", text)
    names = set(re.findall(r"(?<![\w.$])([a-zA-Z_:][\w:]*)\b(?!\s*\()", text))
    return {n for n in names if n.lower() not in _PROMQL_WORDS}


def _poll(
    what: str, condition: Callable[[], bool], timeout: float, output: Callable[[], str]
) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"{what} not reached in {timeout}s:\n{output()}")
        time.sleep(0.2)


@dataclass
class Stack:
    root: Path
    base_port: int
    prometheus: str | None
    database_url: str

    def url(self, name: str) -> str:
        offset = next(service.port_offset for service in SERVICES if service.name == name)
        return f"http://127.0.0.1:{self.base_port + offset}"

    def query(self, expr: str) -> dict[str, Any]:
        assert self.prometheus is not None
        response = httpx.get(f"{self.prometheus}/api/v1/query", params={"query": expr}, timeout=30)
        body: dict[str, Any] = response.json()
        return body


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is not None:
        return
    leftovers = [process.pid, *(p.pid for p in psutil.Process(process.pid).children(True))]
    process.terminate()
    try:
        process.wait(60)
    except subprocess.TimeoutExpired:
        for pid in leftovers:
            if psutil.pid_exists(pid):
                psutil.Process(pid).kill()
        process.wait(10)


@pytest.fixture(scope="module")
def stack(
    tmp_path_factory: pytest.TempPathFactory, postgres_server_url: str, redis_url: str
) -> Iterator[Stack]:
    """The suite under `keelson up`, and a Prometheus scraping it where one is installed."""
    tmp_path = tmp_path_factory.mktemp("suite")
    binary = shutil.which("prometheus")
    keys_before = set(redis.Redis.from_url(redis_url).scan_iter(count=1000))
    with fresh_database(postgres_server_url, prefix="keelson_prom") as async_url:
        database_url = make_url(async_url).set(drivername="postgresql")
        database = database_url.render_as_string(hide_password=False)
        env = {k: v for k, v in os.environ.items() if not k.startswith("KEELSON_")}
        env.update(NO_COLOR="1", KEELSON_DATABASE_URL=database, KEELSON_REDIS_URL=redis_url)
        # The SMTP sink on a port of its own, not the default another suite may hold.
        env["KEELSON_UP_SMTP_PORT"] = str(free_port())
        base_port = free_port_block(len(SERVICES) + 3)
        up_log = tmp_path / "up.log"
        with up_log.open("ab") as out:
            suite = subprocess.Popen(
                [
                    str(KEELSON), "up", "--root", str(tmp_path), "--base-port", str(base_port),
                    "--zmq-base-port", str(base_port + len(SERVICES)),
                    "--timeout", str(READY_TIMEOUT),
                ],
                cwd=tmp_path, env=env, stdout=out, stderr=subprocess.STDOUT,
            )  # fmt: skip
        prometheus_port = free_port()
        config = {
            "global": {"scrape_interval": SCRAPE_INTERVAL, "evaluation_interval": "1s"},
            "rule_files": [str(RULES)],
            "scrape_configs": [
                {
                    "job_name": "keelson",
                    "static_configs": [
                        {
                            "targets": [f"127.0.0.1:{base_port + s.port_offset}"],
                            "labels": {"app": s.name},
                        }
                        for s in SERVICES
                    ],
                }
            ],
        }
        (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
        prom_log = tmp_path / "prometheus.log"
        prom_log.touch()
        prometheus: subprocess.Popen[bytes] | None = None
        if binary is not None:
            with prom_log.open("ab") as out:
                prometheus = subprocess.Popen(
                    [
                        binary, f"--config.file={tmp_path / 'prometheus.yml'}",
                        f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                        f"--web.listen-address=127.0.0.1:{prometheus_port}",
                    ],
                    cwd=tmp_path, stdout=out, stderr=subprocess.STDOUT,
                )  # fmt: skip
        try:
            layout = Layout(tmp_path, tmp_path / ".keelson", base_port=base_port)

            def output() -> str:
                return up_log.read_text(errors="replace")[-4000:] + prom_log.read_text()[-2000:]

            def ready() -> bool:
                assert suite.poll() is None, output()
                assert prometheus is None or prometheus.poll() is None, output()
                return all(code == 200 for code in readiness(layout).values())

            _poll("the suite ready", ready, READY_TIMEOUT, output)
            scraper = f"http://127.0.0.1:{prometheus_port}" if prometheus is not None else None
            yield Stack(tmp_path, base_port, scraper, database)
        finally:
            if prometheus is not None:
                _stop(prometheus)
            _stop(suite)
    client = redis.Redis.from_url(redis_url)
    left = set(client.scan_iter(count=1000)) - keys_before
    if left:
        client.delete(*left)
    client.close()


def _create_admin(stack: Stack) -> str:
    """An admin account made as an operator makes one (`keelson create-admin`); its email."""
    admin_email = f"ops-{uuid.uuid4().hex[:8]}@example.com"
    created = subprocess.run(
        [str(KEELSON), "create-admin", admin_email],
        cwd=stack.root,
        env={
            **{k: v for k, v in os.environ.items() if not k.startswith("KEELSON_")},
            "KEELSON_DATABASE_URL": stack.database_url,
            "KEELSON_ADMIN_PASSWORD": PASSWORD,
        },
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert created.returncode == 0, created.stderr
    return admin_email


def _drive_workload(stack: Stack) -> None:
    """Register, log in (right and wrong), refresh (and reuse), /me, a 404, a 429, a logs query."""
    admin_email = _create_admin(stack)
    email = f"user-{uuid.uuid4().hex[:8]}@example.com"
    with httpx.Client(base_url=stack.url("gateway"), timeout=15) as client:
        credentials = {"email": email, "password": PASSWORD}
        assert client.post("/api/v1/auth/register", json=credentials).status_code == 202
        wrong = client.post("/api/v1/auth/login", json={**credentials, "password": "nope" * 4})
        assert wrong.status_code == 401
        login = client.post("/api/v1/auth/login", json=credentials)
        assert login.status_code == 200, login.text
        tokens = login.json()
        spent = {"refresh_token": tokens["refresh_token"]}
        refreshed = client.post("/api/v1/auth/refresh", json=spent)
        assert refreshed.status_code == 200, refreshed.text
        bearer = {"Authorization": f"Bearer {refreshed.json()['access_token']}"}
        assert client.get("/api/v1/auth/me", headers=bearer).status_code == 200
        assert client.get("/api/v1/no-such-thing", headers=bearer).status_code == 404
        admin = client.post("/api/v1/auth/login", json={"email": admin_email, "password": PASSWORD})
        assert admin.status_code == 200, admin.text
        ops = {"Authorization": f"Bearer {admin.json()['access_token']}"}
        _pay_refund_and_notify(client, bearer, ops, email)
        # Reuse: the first token again once its successor is spent too (before that, the
        # grace window hands out the same pair).
        successor = {"refresh_token": refreshed.json()["refresh_token"]}
        assert client.post("/api/v1/auth/refresh", json=successor).status_code == 200
        assert client.post("/api/v1/auth/refresh", json=spent).status_code == 401  # reuse
        statuses = []
        for _ in range(20):  # the password-reset rule allows a few a minute per client
            reset = client.post("/api/v1/auth/password-reset/request", json={"email": email})
            statuses.append(reset.status_code)
            if reset.status_code == 429:
                break
        assert statuses[-1] == 429, statuses
        logs = client.get("/api/v1/logs", params={"limit": 10}, headers=ops)
        assert logs.status_code == 200, logs.text


def _pay_refund_and_notify(
    client: httpx.Client, bearer: dict[str, str], ops: dict[str, str], email: str
) -> None:
    """A sandbox payment an admin marks paid, refunded in full; a forged provider webhook;
    an email to the user's own address, followed until the SMTP sink has taken it."""
    created = client.post(
        "/api/v1/payments/intents",
        json={"amount": 2500, "currency": "eur", "description": "live workload"},
        headers={**bearer, "Idempotency-Key": str(uuid.uuid4())},
    )
    assert created.status_code == 201, created.text
    intent = created.json()["id"]
    paid = client.post(f"/api/v1/payments/sandbox/intents/{intent}/succeed", headers=ops)
    assert paid.status_code == 200 and paid.json()["status"] == "succeeded", paid.text
    refund = client.post(
        f"/api/v1/payments/intents/{intent}/refunds",
        json={},
        headers={**bearer, "Idempotency-Key": str(uuid.uuid4())},
    )
    assert refund.status_code == 201, refund.text
    forged = client.post(
        "/api/v1/payments/webhooks/stripe",
        content=b'{"id": "evt_forged", "type": "payment_intent.succeeded"}',
        headers={"Content-Type": "application/json", "Stripe-Signature": "t=1,v1=00"},
    )
    assert forged.status_code == 400, forged.text
    sent = client.post(
        "/api/v1/notifications",
        json={"channel": "email", "to": email, "subject": "Live", "body": "workload"},
        headers=bearer,
    )
    assert sent.status_code == 202, sent.text
    notification = f"/api/v1/notifications/{sent.json()['id']}"

    def delivered() -> bool:
        answer = client.get(notification, headers=bearer)
        assert answer.status_code == 200, answer.text
        return bool(answer.json()["status"] == "sent")

    _poll(
        "the notification sent",
        delivered,
        60,
        lambda: client.get(notification, headers=bearer).text,
    )


def _wait_for_two_scrapes(stack: Stack) -> None:
    """Until every target has been scraped twice since now."""

    def last_scrapes() -> dict[str, str]:
        targets = httpx.get(f"{stack.prometheus}/api/v1/targets", timeout=10).json()
        return {t["scrapeUrl"]: t["lastScrape"] for t in targets["data"]["activeTargets"]}

    for _ in range(2):
        seen = last_scrapes()
        assert len(seen) == len(SERVICES)
        _poll(
            "a new scrape of every target",
            lambda seen=seen: all(  # type: ignore[misc]
                last != seen[url] for url, last in last_scrapes().items()
            ),
            30,
            lambda: json.dumps(last_scrapes()),
        )


def _live_metric_names(stack: Stack) -> set[str]:
    """Every series name the running services' /metrics declare (with a type's suffixes)."""
    suffixes = {
        "counter": ("_total", "_created"),
        "histogram": ("_bucket", "_count", "_sum", "_created"),
        "summary": ("", "_count", "_sum", "_created"),
    }
    names = {"up"}
    for service in SERVICES:
        text = httpx.get(f"{stack.url(service.name)}/metrics", timeout=10).text
        for family in text_string_to_metric_families(text):
            names.update(family.name + s for s in suffixes.get(family.type, ("",)))
            names.update(sample.name for sample in family.samples)
    return names


def _panels() -> Iterator[tuple[str, dict[str, Any]]]:
    for path in sorted(DASHBOARDS.glob("*.json")):
        dashboard = json.loads(path.read_text())
        for panel in dashboard["panels"]:
            if panel.get("targets"):
                yield dashboard["uid"], panel


def _substitute(expr: str, service: str | None) -> str:
    expr = expr.replace("$__rate_interval", RATE_WINDOW)
    if service is None:  # the multi-value variable at "All"
        return expr.replace('=~"$service"', '=~".+"')
    return expr.replace("$service", service)


def test_every_dashboard_panel_and_alert_answers_from_a_live_prometheus(stack: Stack) -> None:
    if stack.prometheus is None:
        pytest.skip("the `prometheus` binary is not installed (apt-get install prometheus)")
    _drive_workload(stack)
    _wait_for_two_scrapes(stack)

    errors: list[str] = []
    empty: list[str] = []
    allowed_and_empty: set[tuple[str, str, str | None]] = set()
    for uid, panel in _panels():
        uses_service = any("$service" in t["expr"] for t in panel["targets"])
        values: tuple[str | None, ...] = (
            SERVICE_VALUES if uses_service and uid == "keelson-service" else (None,)
        )
        for service in values:
            series = 0
            for target in panel["targets"]:
                expr = _substitute(target["expr"], service)
                answer = stack.query(expr)
                if answer.get("status") != "success":
                    errors.append(f"{uid} / {panel['title']}: {expr}: {answer.get('error')}")
                    continue
                series += len(answer["data"]["result"])
            key = (uid, panel["title"], service)
            if series == 0 and uid in MUST_ANSWER:
                if key in MAY_BE_EMPTY:
                    allowed_and_empty.add(key)
                else:
                    empty.append(f"{uid} / {panel['title']} (service={service})")
    assert errors == []
    assert empty == [], "panels with no series after the workload"
    # The workload went through the auth business: those panels are not in the list.
    assert not {k for k in allowed_and_empty if "auth" in k[1].lower()}

    rules = yaml.safe_load(RULES.read_text())
    entries = [rule for group in rules["groups"] for rule in group["rules"]]
    for rule in entries:
        answer = stack.query(rule["expr"])
        assert answer.get("status") == "success", (rule.get("alert") or rule["record"], answer)
    loaded = httpx.get(f"{stack.prometheus}/api/v1/rules", timeout=10).json()
    evaluated = [rule for group in loaded["data"]["groups"] for rule in group["rules"]]
    assert len(evaluated) == len(entries)
    assert [r["name"] for r in evaluated if r.get("health") == "err"] == []

    # Nothing queried names a metric that no running service declares.
    live = _live_metric_names(stack)
    recorded = {rule["record"] for rule in entries if "record" in rule}
    queried = {(uid, t["expr"]) for uid, panel in _panels() for t in panel["targets"]}
    queried |= {("rules", rule["expr"]) for rule in entries}
    unknown = {(uid, name) for uid, expr in queried for name in _metrics_in(expr)}
    assert {(uid, name) for uid, name in unknown if name not in live | recorded} == set()

    # The business series Prometheus holds are the ones the workload caused.
    answer = stack.query('business_events_total{service="auth"}')
    values = {
        (r["metric"]["event"], r["metric"]["outcome"]): float(r["value"][1])
        for r in answer["data"]["result"]
    }
    assert values[("registration", "ok")] == 1
    assert values[("login", "success")] == 2  # the user and the admin
    assert values[("login", "failure")] == 1
    assert values[("refresh", "success")] == 2
    assert values[("refresh", "failure")] == 1
    assert values[("refresh_reuse", "detected")] == 1
    assert values[("login", "locked")] == 0

    def ingested() -> bool:
        result = stack.query("sum(logs_records_ingested_total)")["data"]["result"]
        return bool(result) and float(result[0]["value"][1]) > 0

    _poll("log records ingested and scraped", ingested, 30, lambda: "")

    def one(expr: str) -> float:
        result = stack.query(expr)["data"]["result"]
        return float(result[0]["value"][1]) if result else 0.0

    # Intents in each status now, counted in the database every 15 s (a gauge).
    _poll(
        "the intents gauge counting the refunded payment",
        lambda: one('max(payments_intents{status="refunded"})') == 1,
        60,
        lambda: json.dumps(stack.query("payments_intents")["data"]["result"]),
    )
    assert one('sum(payments_refunds_total{status="succeeded"})') == 1
    assert one('sum(payments_webhook_events_total{outcome="rejected"})') == 1
    # The user's own email; auth's events (verification mail) may have sent more.
    assert one('sum(notifications_sent_total{channel="email"})') >= 1


def test_locust_payers_senders_and_operator_run_clean(stack: Stack, tmp_path: Path) -> None:
    """loadtests/locustfile.py's PaymentUser (pay, paid by the admin in the sandbox, refund),
    NotificationUser (an email to itself, its retry, reading it back) and AdminUser (logs
    searched and tailed, plugin states, users) against the suite
    started the `keelson up` way: every request answered as expected, each step taken."""
    gateway = stack.url("gateway")
    # Locust reads what the gateway offers once at the start (then every 30 s), and the
    # gateway fetches each upstream's document after that upstream starts.
    wanted = {"/api/v1/payments/intents", "/api/v1/notifications", "/api/v1/logs/tail"}

    def offered() -> bool:
        paths = httpx.get(f"{gateway}/openapi.json", timeout=10).json().get("paths", {})
        return wanted <= set(paths)

    _poll("the gateway's document offering payments, notifications, logs", offered, 60, str)
    admin = httpx.post(
        f"{gateway}/api/v1/auth/login",
        json={"email": _create_admin(stack), "password": PASSWORD},
        timeout=15,
    )
    assert admin.status_code == 200, admin.text
    accounts = tmp_path / "accounts.json"
    accounts.write_text(json.dumps({"accounts": [], "admin": admin.json()}))
    locust = Path(sys.executable).parent / "locust"
    result = subprocess.run(
        [
            str(locust), "-f", str(ROOT / "loadtests" / "locustfile.py"), "--headless",
            "-u", "4", "-r", "4", "-t", "20s", "--host", gateway, "--csv", str(tmp_path / "run"),
            "--only-summary", "--exit-code-on-error", "1",
            "PaymentUser", "NotificationUser", "AdminUser",
            "--tags", "payments", "notifications", "tail",  # (last: it takes what follows)
        ],
        env={**os.environ, "KEELSON_LOAD_ACCOUNTS": str(accounts)},
        capture_output=True, text=True, cwd=tmp_path, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    with (tmp_path / "run_stats.csv").open() as stats:
        rows = {row["Name"]: int(row["Request Count"]) for row in csv.DictReader(stats)}
        stats.seek(0)
        failures = {row["Name"]: row["Failure Count"] for row in csv.DictReader(stats)}
    assert failures["Aggregated"] == "0", failures
    for step in (
        "/api/v1/payments/intents (create)",
        "/api/v1/payments/sandbox/intents/{intent_id}/succeed (admin)",
        "/api/v1/payments/intents/{intent_id}/refunds",
        "/api/v1/notifications",
        "/api/v1/notifications (retried)",
        "/api/v1/notifications/{notification_id}",
        "/api/v1/logs/tail",
    ):
        assert rows.get(step, 0) > 0, (step, sorted(rows.items()))


CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
# Where the screenshot is kept (git-ignored); KEELSON_TEST_ARTIFACTS moves it.
ARTIFACTS = Path(os.environ.get("KEELSON_TEST_ARTIFACTS", ROOT / "tests" / "artifacts"))


def test_docs_render_every_operation_with_nothing_but_loopback_reachable(stack: Stack) -> None:
    """Swagger UI at the gateway's /docs, in a browser for which only 127.0.0.1 exists."""
    if not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
        pytest.skip("Debian's chromium and chromium-driver are not installed (apt-get install)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.support.ui import WebDriverWait

    gateway = stack.url("gateway")
    expected = set(httpx.get(f"{gateway}/openapi.json", timeout=15).json()["paths"])
    prefixes = {f"/api/v1/{name}" for name in ("auth", "logs")}
    assert all(any(p.startswith(prefix) for p in expected) for prefix in prefixes)

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for argument in (
        "--headless=new",
        "--no-sandbox",  # root in CI
        "--disable-dev-shm-usage",
        "--window-size=1280,2400",
        # No way out but loopback: every host name but 127.0.0.1 fails to resolve, and
        # anything not on loopback goes to a proxy on a closed loopback port.
        "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
        f"--proxy-server=http://127.0.0.1:{free_port()}",
        "--disable-background-networking",
        "--disable-component-update",
        "--no-first-run",
    ):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    try:
        driver.set_page_load_timeout(60)
        driver.get(f"{gateway}/docs")

        def rendered_paths(d: Any) -> set[str]:
            found = d.execute_script(
                "return [...document.querySelectorAll('.opblock-summary-path')]"
                ".map(e => e.getAttribute('data-path'))"
            )
            return set(found) if found and set(found) >= expected else set()

        paths = WebDriverWait(driver, 60, poll_frequency=0.25).until(rendered_paths)
        assert paths == expected
        # Everything the page loaded came from the gateway, and the world is unreachable.
        origins = driver.execute_script(
            "return performance.getEntriesByType('resource').map(e => new URL(e.name).origin)"
        )
        assert set(origins) == {gateway}, origins
        outside = driver.execute_async_script(
            "const done = arguments[arguments.length - 1];"
            "fetch('https://cdn.jsdelivr.net/npm/swagger-ui-dist@5/swagger-ui.css')"
            ".then(() => done('reached'), () => done('unreachable'));"
        )
        assert outside == "unreachable"
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        shot = ARTIFACTS / "docs-swagger-ui.png"
        assert driver.save_screenshot(str(shot)), shot
        print(f"screenshot: {shot}")
    finally:
        driver.quit()
