"""Writes the Grafana dashboards in `dashboards/` (`python deploy/grafana/dashboards.py`).

The JSON files are committed and provisioned as they are; this script is their source,
so that every panel is built the same way. tests/test_deploy.py checks that the files
match it and that every query names a metric Keelson exports.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["DASHBOARDS", "Dashboard", "Panel", "Query", "Row", "main", "render", "rendered_files"]

DATASOURCE = {"type": "prometheus", "uid": "prometheus"}
_WIDTH = 24


@dataclass(frozen=True)
class Query:
    expr: str
    legend: str


@dataclass(frozen=True)
class Panel:
    title: str
    queries: tuple[Query, ...]
    unit: str = "short"
    kind: str = "timeseries"
    width: int = 12
    height: int = 8
    description: str = ""
    stack: bool = False


@dataclass(frozen=True)
class Row:
    title: str
    panels: tuple[Panel, ...]


@dataclass(frozen=True)
class Dashboard:
    uid: str
    title: str
    description: str
    rows: tuple[Row, ...]
    variables: tuple[dict[str, Any], ...] = ()
    tags: tuple[str, ...] = field(default=("keelson",))

    def queries(self) -> Iterator[str]:
        for row in self.rows:
            for panel in row.panels:
                for query in panel.queries:
                    yield query.expr


def _query_variable(metric: str, label: str, name: str, *, multi: bool = True) -> dict[str, Any]:
    return {
        "name": name,
        "label": name.capitalize(),
        "type": "query",
        "datasource": DATASOURCE,
        "query": {"query": f"label_values({metric}, {label})", "refId": f"{name}-values"},
        "definition": f"label_values({metric}, {label})",
        "refresh": 2,
        "sort": 1,
        "multi": multi,
        "includeAll": multi,
        "current": {},
        "options": [],
    }


_RATE = "$__rate_interval"


def _quantiles(selector: str, by: str) -> tuple[Query, ...]:
    return tuple(
        Query(
            f"histogram_quantile({q}, sum by ({by}, le) "
            f"(rate(http_request_duration_seconds_bucket{{{selector}}}[{_RATE}])))",
            f"{{{{{by}}}}} p{round(q * 100)}",
        )
        for q in (0.5, 0.95, 0.99)
    )


def _business(service: str, event: str, title: str, description: str) -> Panel:
    """Events per second of one business event by outcome (`keelson.metrics`)."""
    selector = f'service="{service}"' + (f', event="{event}"' if event else "")
    by = "outcome" if event else "event, outcome"
    return Panel(
        title,
        (
            Query(
                f"sum by ({by}) (rate(business_events_total{{{selector}}}[{_RATE}]))",
                "{{outcome}}" if event else "{{event}} {{outcome}}",
            ),
        ),
        unit="ops",
        width=8,
        description=description,
    )


BUSINESS = Row(
    "Business",
    (
        _business("auth", "registration", "Registrations per second", "Accounts created."),
        _business(
            "auth",
            "login",
            "Logins per second by outcome",
            "success, failure (bad credentials), "
            "locked (refused while the account or address is locked out).",
        ),
        _business(
            "auth",
            "refresh",
            "Token refreshes per second by outcome",
            "success, or failure (unknown, expired, revoked or spent refresh token).",
        ),
        Panel(
            "Refresh-token reuse detected (last hour)",
            (
                Query(
                    'sum(increase(business_events_total{service="auth", '
                    'event="refresh_reuse"}[1h]))',
                    "reuse",
                ),
            ),
            kind="stat",
            width=8,
            description="A spent refresh token came back: its whole session was revoked.",
        ),
        Panel(
            "Log records ingested and dropped per second",
            (
                Query(
                    f"sum by (source) (rate(logs_records_ingested_total[{_RATE}]))",
                    "ingested {{source}}",
                ),
                Query(
                    f"sum by (reason) (rate(logs_records_rejected_total[{_RATE}]))",
                    "dropped {{reason}}",
                ),
                Query(f"sum(rate(logs_tail_dropped_total[{_RATE}]))", "missed by live tails"),
            ),
            unit="ops",
            width=8,
            description="Committed by the log service, and refused or lost on the way in.",
        ),
        Panel(
            "Payment intents by status",
            (Query("max by (status) (payments_intents)", "{{status}}"),),
            width=8,
            description="Intents in each status now, counted in the payments database "
            "(every replica counts the same table, hence max).",
            stack=True,
        ),
        Panel(
            "Payment webhooks per second by outcome",
            (
                Query(
                    f"sum by (outcome) (rate(payments_webhook_events_total[{_RATE}]))",
                    "{{outcome}}",
                ),
                Query(
                    "histogram_quantile(0.95, sum by (le) "
                    f"(rate(payments_webhook_lag_seconds_bucket[{_RATE}])))",
                    "p95 lag (s)",
                ),
            ),
            unit="ops",
            width=8,
            description="applied, recorded, stale (older than the state), duplicate, "
            "unknown_intent, ignored, rejected (bad signature); and the p95 lag from the "
            "provider creating an event to its handling.",
        ),
        Panel(
            "Payment provider calls: p95 latency and errors per second",
            (
                Query(
                    "histogram_quantile(0.95, sum by (le, operation) "
                    f"(rate(payment_provider_call_seconds_bucket[{_RATE}])))",
                    "p95 {{operation}}",
                ),
                Query(
                    f"sum by (kind) (rate(payment_provider_errors_total[{_RATE}]))",
                    "errors {{kind}}",
                ),
            ),
            unit="s",
            width=8,
            description="Stripe (or the sandbox) by operation; errors by kind "
            "(card declined, invalid request, provider unavailable, idempotency conflict).",
        ),
        Panel(
            "Refunds per second",
            (
                Query(
                    f"sum by (status) (rate(payments_refunds_total[{_RATE}]))",
                    "{{status}}",
                ),
            ),
            unit="ops",
            width=8,
            description="Refunds committed, by the provider's status of each.",
        ),
        Panel(
            "Notifications per second by channel: sent, failed, dead-lettered",
            (
                Query(
                    f"sum by (channel) (rate(notifications_sent_total[{_RATE}]))",
                    "sent {{channel}}",
                ),
                Query(
                    f"sum by (channel, kind) (rate(notifications_failed_total[{_RATE}]))",
                    "failed {{channel}} ({{kind}})",
                ),
                Query(
                    f"sum by (channel) (rate(notifications_dead_lettered_total[{_RATE}]))",
                    "dead-lettered {{channel}}",
                ),
            ),
            unit="ops",
            width=8,
            description="Delivered; failed attempts (transient: retried, permanent: given up); "
            "moved to dead letter after the last attempt.",
        ),
        Panel(
            "Notification delivery p95 by channel",
            (
                Query(
                    "histogram_quantile(0.95, sum by (channel, le) "
                    f"(rate(notifications_delivery_seconds_bucket[{_RATE}])))",
                    "{{channel}}",
                ),
            ),
            unit="s",
            width=8,
            description="From a notification's creation to its delivery.",
        ),
        Panel(
            "Notifications waiting",
            (Query("sum(notifications_queue_depth)", "waiting"),),
            width=8,
            description="Queued to be sent, due now or later (retries back off).",
        ),
    ),
)


_SERVICES = 'service=~"$service"'

OVERVIEW = Dashboard(
    uid="keelson-overview",
    title="Keelson / Overview",
    description="RED per service: request rate, errors, duration; targets up.",
    variables=(_query_variable("http_requests_total", "service", "service"),),
    rows=(
        Row(
            "Health",
            (
                Panel(
                    "Targets up",
                    (Query('up{job="keelson"}', "{{app}} {{instance}}"),),
                    kind="stat",
                    width=24,
                    height=4,
                    description="1 when Prometheus scraped the service's /metrics.",
                ),
            ),
        ),
        Row(
            "Rate, errors, duration",
            (
                Panel(
                    "Requests per second",
                    (
                        Query(
                            f"sum by (service) (rate(http_requests_total{{{_SERVICES}}}[{_RATE}]))",
                            "{{service}}",
                        ),
                    ),
                    unit="reqps",
                ),
                Panel(
                    "5xx ratio",
                    (
                        Query(
                            "sum by (service) (rate(http_requests_total"
                            f'{{{_SERVICES}, status=~"5.."}}[{_RATE}]))'
                            " / sum by (service) (rate(http_requests_total"
                            f"{{{_SERVICES}}}[{_RATE}]))",
                            "{{service}}",
                        ),
                    ),
                    unit="percentunit",
                ),
                Panel(
                    "4xx per second",
                    (
                        Query(
                            "sum by (service) (rate(http_requests_total"
                            f'{{{_SERVICES}, status=~"4.."}}[{_RATE}]))',
                            "{{service}}",
                        ),
                    ),
                    unit="reqps",
                    description="Client errors: rejected tokens, rate limits, validation.",
                ),
                Panel(
                    "Duration p95",
                    (
                        Query(
                            "histogram_quantile(0.95, sum by (service, le) "
                            f"(rate(http_request_duration_seconds_bucket{{{_SERVICES}}}[{_RATE}])))",
                            "{{service}}",
                        ),
                    ),
                    unit="s",
                ),
                Panel(
                    "Duration p50 / p95 / p99",
                    _quantiles(_SERVICES, "service"),
                    unit="s",
                ),
                Panel(
                    "Business events per second",
                    (
                        Query(
                            "sum by (service, event, outcome) "
                            f"(rate(business_events_total{{{_SERVICES}}}[{_RATE}]))",
                            "{{service}} {{event}} {{outcome}}",
                        ),
                    ),
                    unit="ops",
                    description="Auth's sign-ups, logins, token refreshes and reuse detections.",
                ),
                Panel(
                    "Requests in flight",
                    (
                        Query(
                            f"sum by (service) (http_requests_in_flight{{{_SERVICES}}})",
                            "{{service}}",
                        ),
                    ),
                ),
            ),
        ),
        BUSINESS,
    ),
)


_ONE = 'service="$service"'

SERVICE = Dashboard(
    uid="keelson-service",
    title="Keelson / Service routes",
    description="RED per route of one service.",
    variables=(_query_variable("http_requests_total", "service", "service", multi=False),),
    rows=(
        Row(
            "$service",
            (
                Panel(
                    "Requests per second by route and status",
                    (
                        Query(
                            "sum by (method, route, status) "
                            f"(rate(http_requests_total{{{_ONE}}}[{_RATE}]))",
                            "{{method}} {{route}} {{status}}",
                        ),
                    ),
                    unit="reqps",
                    width=24,
                    stack=True,
                ),
                Panel(
                    "5xx per second by route",
                    (
                        Query(
                            "sum by (method, route) (rate(http_requests_total"
                            f'{{{_ONE}, status=~"5.."}}[{_RATE}]))',
                            "{{method}} {{route}}",
                        ),
                    ),
                    unit="reqps",
                ),
                Panel(
                    "Duration p95 by route",
                    (
                        Query(
                            "histogram_quantile(0.95, sum by (method, route, le) "
                            f"(rate(http_request_duration_seconds_bucket{{{_ONE}}}[{_RATE}])))",
                            "{{method}} {{route}}",
                        ),
                    ),
                    unit="s",
                ),
                Panel(
                    "Database statement duration p95",
                    (
                        Query(
                            "histogram_quantile(0.95, sum by (le) "
                            f"(rate(db_query_duration_seconds_bucket{{{_ONE}}}[{_RATE}])))",
                            "p95",
                        ),
                    ),
                    unit="s",
                ),
                Panel(
                    "Database connections in use",
                    (Query(f"sum(db_pool_connections_in_use{{{_ONE}}})", "in use"),),
                ),
            ),
        ),
    ),
)

PLATFORM = Dashboard(
    uid="keelson-platform",
    title="Keelson / Bus, logs, database",
    description="Bus lag and dead letters, log shipper drops and spills, DB pools.",
    rows=(
        Row(
            "Message bus",
            (
                Panel(
                    "Consumer lag (entries not yet delivered)",
                    (Query("max by (stream, group) (bus_consumer_lag)", "{{group}} @ {{stream}}"),),
                ),
                Panel(
                    "Events handled per second by outcome",
                    (
                        Query(
                            f"sum by (topic, outcome) (rate(bus_events_handled_total[{_RATE}]))",
                            "{{topic}} {{outcome}}",
                        ),
                    ),
                    unit="ops",
                    stack=True,
                ),
                Panel(
                    "Dead letters (last hour)",
                    (Query("sum by (topic) (increase(bus_dead_letters_total[1h]))", "{{topic}}"),),
                    kind="stat",
                    width=24,
                    height=4,
                ),
            ),
        ),
        Row(
            "Log shipping",
            (
                Panel(
                    "Log records dropped per second",
                    (
                        Query(
                            f"sum by (app, reason) (rate(log_records_dropped_total[{_RATE}]))",
                            "{{app}} {{reason}}",
                        ),
                    ),
                    unit="ops",
                    description="Lost records: buffer and spill file full. Should stay at 0.",
                ),
                Panel(
                    "Log records spilled to disk per second",
                    (
                        Query(
                            f"sum by (app) (rate(log_records_spilled_total[{_RATE}]))",
                            "{{app}}",
                        ),
                    ),
                    unit="ops",
                    description="Kept on disk while the log service is away; re-sent later.",
                ),
            ),
        ),
        Row(
            "Log service",
            (
                Panel(
                    "Records committed per second by source",
                    (
                        Query(
                            f"sum by (source) (rate(logs_records_ingested_total[{_RATE}]))",
                            "{{source}}",
                        ),
                        Query(
                            f"sum(rate(logs_records_duplicate_total[{_RATE}]))",
                            "duplicates skipped",
                        ),
                    ),
                    unit="ops",
                ),
                Panel(
                    "Records rejected per second by reason",
                    (
                        Query(
                            f"sum by (reason) (rate(logs_records_rejected_total[{_RATE}]))",
                            "{{reason}}",
                        ),
                    ),
                    unit="ops",
                ),
                Panel(
                    "Batch commit p95 and retries",
                    (
                        Query(
                            "histogram_quantile(0.95, sum by (le) "
                            f"(rate(logs_batch_write_seconds_bucket[{_RATE}])))",
                            "commit p95",
                        ),
                        Query(f"sum(rate(logs_write_retries_total[{_RATE}]))", "retries/s"),
                    ),
                    unit="s",
                ),
                Panel(
                    "Batches waiting for a writer",
                    (Query("sum(logs_queued_batches)", "queued"),),
                ),
            ),
        ),
        Row(
            "Database",
            (
                Panel(
                    "Connections in use, idle and pool size by service",
                    (
                        Query(
                            "sum by (service) (db_pool_connections_in_use)", "{{service}} in use"
                        ),
                        Query("sum by (service) (db_pool_connections_idle)", "{{service}} idle"),
                        Query("sum by (service) (db_pool_size)", "{{service}} pool size"),
                        Query(
                            "sum by (service) (db_pool_overflow_connections)",
                            "{{service}} overflow",
                        ),
                    ),
                ),
                Panel(
                    "Statement duration p95 by service",
                    (
                        Query(
                            "histogram_quantile(0.95, sum by (service, le) "
                            f"(rate(db_query_duration_seconds_bucket[{_RATE}])))",
                            "{{service}}",
                        ),
                    ),
                    unit="s",
                ),
                Panel(
                    "Statements per second by service",
                    (
                        Query(
                            f"sum by (service) (rate(db_query_duration_seconds_count[{_RATE}]))",
                            "{{service}}",
                        ),
                    ),
                    unit="ops",
                ),
            ),
        ),
    ),
)

GATEWAY = Dashboard(
    uid="keelson-gateway",
    title="Keelson / Gateway",
    description="Upstream traffic, retries, circuit breakers, rate limits, validation.",
    rows=(
        Row(
            "Upstreams",
            (
                Panel(
                    "Forwarded requests per second by upstream and status",
                    (
                        Query(
                            "sum by (upstream, status) "
                            f"(rate(gateway_upstream_requests_total[{_RATE}]))",
                            "{{upstream}} {{status}}",
                        ),
                    ),
                    unit="reqps",
                    stack=True,
                ),
                Panel(
                    "Upstream response time p95",
                    (
                        Query(
                            "histogram_quantile(0.95, sum by (upstream, le) "
                            f"(rate(gateway_upstream_request_duration_seconds_bucket[{_RATE}])))",
                            "{{upstream}}",
                        ),
                    ),
                    unit="s",
                ),
                Panel(
                    "Circuit state (0 closed, 1 half-open, 2 open)",
                    (Query("max by (upstream) (gateway_circuit_state)", "{{upstream}}"),),
                ),
                Panel(
                    "Retries and circuit rejections per second",
                    (
                        Query(
                            f"sum by (upstream) (rate(gateway_upstream_retries_total[{_RATE}]))",
                            "retries {{upstream}}",
                        ),
                        Query(
                            f"sum by (upstream) (rate(gateway_circuit_rejections_total[{_RATE}]))",
                            "rejected {{upstream}}",
                        ),
                    ),
                    unit="ops",
                ),
            ),
        ),
        Row(
            "Protection",
            (
                Panel(
                    "Rate-limited requests per second by rule",
                    (
                        Query(
                            f"sum by (rule) (rate(gateway_rate_limit_rejections_total[{_RATE}]))",
                            "{{rule}}",
                        ),
                    ),
                    unit="reqps",
                ),
                Panel(
                    "Rejected by validation per second by reason",
                    (
                        Query(
                            f"sum by (reason) (rate(gateway_validation_rejections_total[{_RATE}]))",
                            "{{reason}}",
                        ),
                    ),
                    unit="reqps",
                ),
            ),
        ),
    ),
)

DASHBOARDS = (OVERVIEW, SERVICE, PLATFORM, GATEWAY)


def _panel_json(panel: Panel, panel_id: int, x: int, y: int) -> dict[str, Any]:
    custom: dict[str, Any] = {"lineWidth": 1, "fillOpacity": 10, "showPoints": "never"}
    if panel.stack:
        custom["stacking"] = {"mode": "normal", "group": "A"}
    options: dict[str, Any] = {
        "legend": {"displayMode": "table", "placement": "bottom", "calcs": ["mean", "max"]},
        "tooltip": {"mode": "multi", "sort": "desc"},
    }
    if panel.kind == "stat":
        custom = {}
        options = {
            "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
            "colorMode": "background",
            "graphMode": "none",
            "textMode": "value_and_name",
        }
    return {
        "id": panel_id,
        "type": panel.kind,
        "title": panel.title,
        "description": panel.description,
        "datasource": DATASOURCE,
        "gridPos": {"x": x, "y": y, "w": panel.width, "h": panel.height},
        "fieldConfig": {"defaults": {"unit": panel.unit, "custom": custom}, "overrides": []},
        "options": options,
        "targets": [
            {
                "refId": chr(ord("A") + index),
                "datasource": DATASOURCE,
                "expr": query.expr,
                "legendFormat": query.legend,
                "range": True,
            }
            for index, query in enumerate(panel.queries)
        ],
    }


def render(dashboard: Dashboard) -> dict[str, Any]:
    """The dashboard as Grafana's JSON model, laid out left to right, row by row."""
    panels: list[dict[str, Any]] = []
    panel_id = 1
    y = 0
    for row in dashboard.rows:
        panels.append(
            {
                "id": panel_id,
                "type": "row",
                "title": row.title,
                "collapsed": False,
                "gridPos": {"x": 0, "y": y, "w": _WIDTH, "h": 1},
                "panels": [],
            }
        )
        panel_id += 1
        y += 1
        x = 0
        line_height = 0
        for panel in row.panels:
            if x + panel.width > _WIDTH:
                x, y, line_height = 0, y + line_height, 0
            panels.append(_panel_json(panel, panel_id, x, y))
            panel_id += 1
            x += panel.width
            line_height = max(line_height, panel.height)
        y += line_height
    return {
        "uid": dashboard.uid,
        "title": dashboard.title,
        "description": dashboard.description,
        "tags": list(dashboard.tags),
        "timezone": "browser",
        "editable": False,
        "graphTooltip": 1,
        "refresh": "30s",
        "schemaVersion": 39,
        "version": 1,
        "time": {"from": "now-1h", "to": "now"},
        "templating": {"list": list(dashboard.variables)},
        "annotations": {"list": []},
        "links": [
            {
                "type": "dashboards",
                "title": "Keelson",
                "tags": ["keelson"],
                "asDropdown": True,
                "includeVars": False,
                "keepTime": True,
            }
        ],
        "panels": panels,
    }


def rendered_files() -> dict[str, str]:
    """File name to the exact text `main` writes."""
    return {
        f"{dashboard.uid}.json": json.dumps(render(dashboard), indent=2) + "\n"
        for dashboard in DASHBOARDS
    }


def main(argv: list[str]) -> int:
    target = Path(argv[1]) if len(argv) > 1 else Path(__file__).parent / "dashboards"
    target.mkdir(parents=True, exist_ok=True)
    for name, text in rendered_files().items():
        (target / name).write_text(text)
        print(f"wrote {target / name}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
