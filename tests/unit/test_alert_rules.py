"""The shipped alert rules, scrape example and Grafana dashboard, checked without a server.

* ``promtool check rules`` / ``check config`` accept the shipped files;
* ``promtool test rules`` passes, and every alert has a case there that fires and one that
  stays quiet;
* the annotations name the labels the alert carries (device, peer, vpn, errno, instance);
* every PromQL expression of the dashboard parses (run through ``promtool check rules`` as
  recording rules) and every metric and label the dashboard and the alerts use exists in
  ``vtibgp.shell.metrics.REGISTRY``;
* the dashboard is importable: Grafana 10 schema, ``__inputs``/``__requires``, datasource and
  multi-select instance variables, panels that do not overlap.

promtool comes with Debian's ``prometheus`` package; without it the promtool tests are skipped
(they fail instead when VTIBGP_REQUIRE_PROMTOOL or VTIBGP_REQUIRE_INTEGRATION is set, as in CI).
Whether the expressions return data is proven against a real Prometheus in
tests/integration/test_prometheus.py.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import generate_latest
from prometheus_client.metrics import MetricWrapperBase

from vtibgp.shell import metrics

ROOT = Path(__file__).resolve().parents[2]
PROM_DIR = ROOT / "config" / "prometheus"
ALERTS = PROM_DIR / "vtibgp-alerts.yml"
ALERT_TESTS = PROM_DIR / "vtibgp-alerts.test.yml"
SCRAPE_EXAMPLE = PROM_DIR / "prometheus.yml"
DASHBOARD = ROOT / "grafana" / "vtibgp-dashboard.json"

# what the template variables stand for when an expression is checked outside Grafana
TEMPLATE_VALUES = {"instance": ".+", "__rate_interval": "15s"}
# labels every scraped series has, and the histogram bucket label
TARGET_LABELS = {"instance", "job"}
# metric names outside vtibgp that the rules and the dashboard may use
FOREIGN_METRICS = {"up"}
# PromQL words that look like label or metric names in the regexes below
PROMQL_WORDS = {
    "by", "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless",
    "offset", "bool", "sum", "max", "min", "avg", "count", "group", "rate", "increase",
    "changes", "histogram_quantile", "max_over_time", "absent", "time",
}


# --------------------------------------------------------------------------- helpers


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def alert_rules() -> list[dict[str, Any]]:
    return [r for g in load_yaml(ALERTS)["groups"] for r in g["rules"] if "alert" in r]


def dashboard() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return data


def panels(dash: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel, rows' nested (collapsed) panels included; rows themselves left out."""
    for p in dash["panels"]:
        if p.get("type") == "row":
            yield from p.get("panels", [])
        else:
            yield p


def dashboard_exprs(dash: dict[str, Any]) -> list[tuple[str, str]]:
    """(panel title / refId, expression) of every Prometheus target."""
    return [(f"{p['title']} / {t['refId']}", t["expr"])
            for p in panels(dash) for t in p.get("targets", []) if "expr" in t]


def substitute(expr: str) -> str:
    """The expression as Grafana would send it, template variables filled in."""

    def repl(m: re.Match[str]) -> str:
        name = m.group(1) or m.group(2)
        if name not in TEMPLATE_VALUES:
            raise AssertionError(f"unknown template variable ${name} in {expr!r}")
        return TEMPLATE_VALUES[name]

    return re.sub(r"\$\{(\w+)\}|\$(\w+)", repl, expr)


def exposed_names() -> dict[str, set[str]]:
    """Every series name vtibgp exposes -> the label names it carries."""
    # prometheus_client keeps the label names of a metric without children only in the
    # (long stable) private attribute _labelnames
    labels_of = {obj._name: set(obj._labelnames) for obj in vars(metrics).values()
                 if isinstance(obj, MetricWrapperBase)}
    out: dict[str, set[str]] = {}
    for family in metrics.REGISTRY.collect():
        name, labels = family.name, labels_of[family.name]
        if family.type == "counter":
            out[f"{name}_total"] = labels
        elif family.type == "histogram":
            out[f"{name}_bucket"] = labels | {"le"}
            out[f"{name}_sum"] = out[f"{name}_count"] = labels
        elif family.type == "info":
            out[f"{name}_info"] = labels | {"version", "exabgp_api"}
        else:
            out[name] = labels
    return out


def metric_names(expr: str) -> set[str]:
    """Metric names used in a PromQL expression (label values and strings left out)."""
    bare = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # drop string contents
    bare = re.sub(r"\{[^}]*\}", "{}", bare)  # and matchers
    bare = re.sub(r"\[[^\]]*\]", "[]", bare)  # and ranges
    bare = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", bare)
    words = set(re.findall(r"\b[a-zA-Z_:][a-zA-Z0-9_:]*\b", bare))
    return {w for w in words - PROMQL_WORDS if not re.fullmatch(r"\d+[smhdwy]?", w)}


def used_labels(expr: str) -> set[str]:
    """Label names in matchers and in by/on/without/ignoring clauses."""
    bare = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    out: set[str] = set()
    for body in re.findall(r"\{([^}]*)\}", bare):
        out |= set(re.findall(r"(\w+)\s*(?:=~|!~|!=|=)", body))
    for body in re.findall(r"\b(?:by|without|on|ignoring)\s*\(([^)]*)\)", bare):
        out |= {w.strip() for w in body.split(",") if w.strip()}
    return out


def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        required = any(os.environ.get(v, "") not in ("", "0")
                       for v in ("VTIBGP_REQUIRE_PROMTOOL", "VTIBGP_REQUIRE_INTEGRATION"))
        if required:
            pytest.fail("promtool not found (apt-get install prometheus)")
        pytest.skip("promtool not found (apt-get install prometheus)")
    return path


def run_promtool(*args: str, cwd: Path = PROM_DIR) -> subprocess.CompletedProcess[str]:
    return subprocess.run([promtool(), *args], cwd=cwd, capture_output=True, text=True,
                          timeout=60, check=False)


# --------------------------------------------------------------------------- promtool


def test_promtool_check_rules_accepts_the_alerts() -> None:
    res = run_promtool("check", "rules", ALERTS.name)
    assert res.returncode == 0, res.stdout + res.stderr
    assert f"SUCCESS: {len(alert_rules())} rules found" in res.stdout


def test_promtool_check_config_accepts_the_scrape_example() -> None:
    res = run_promtool("check", "config", SCRAPE_EXAMPLE.name)
    assert res.returncode == 0, res.stdout + res.stderr
    scrape = load_yaml(SCRAPE_EXAMPLE)
    assert "vtibgp-alerts.yml" in scrape["rule_files"]
    job = next(j for j in scrape["scrape_configs"] if j["job_name"] == "vtibgp")
    assert job["static_configs"][0]["targets"] == ["127.0.0.1:10179"]


def test_promtool_test_rules_passes() -> None:
    res = run_promtool("test", "rules", ALERT_TESTS.name)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "SUCCESS" in res.stdout


def test_exposition_passes_promtool_check_metrics() -> None:
    """Prometheus' own linter on what vtibgp serves (naming, units, _total, help)."""
    res = subprocess.run([promtool(), "check", "metrics"], input=generate_latest(
        metrics.REGISTRY).decode(), capture_output=True, text=True, timeout=60, check=False)
    assert res.returncode == 0 and not res.stdout.strip(), res.stdout + res.stderr


def test_dashboard_expressions_parse(tmp_path: Path) -> None:
    """promtool has no "parse this expression" command; a rule file does the same job: each
    expression becomes a recording rule, and `check rules` parses every one."""
    exprs = dashboard_exprs(dashboard())
    rules = [{"record": f"vtibgp:dashboard_expr_{i}", "expr": substitute(e)}
             for i, (_, e) in enumerate(exprs)]
    variable = next(v for v in dashboard()["templating"]["list"] if v["name"] == "instance")
    rules.append({"record": "vtibgp:dashboard_variable",
                  "expr": re.sub(r"label_values\((.+),\s*\w+\)", r"\1",
                                 variable["definition"])})
    path = tmp_path / "dashboard-exprs.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    res = run_promtool("check", "rules", str(path))
    assert res.returncode == 0, res.stdout + res.stderr
    assert f"SUCCESS: {len(rules)} rules found" in res.stdout


# --------------------------------------------------------------------------- alert tests


def _alert_cases() -> dict[str, dict[str, int]]:
    """alertname -> {"fires": n, "quiet": n} over the promtool test file."""
    cases: dict[str, dict[str, int]] = {}
    for group in load_yaml(ALERT_TESTS)["tests"]:
        for case in group.get("alert_rule_test", []):
            seen = cases.setdefault(case["alertname"], {"fires": 0, "quiet": 0})
            seen["fires" if case.get("exp_alerts") else "quiet"] += 1
    return cases


def test_the_test_file_loads_the_shipped_rules() -> None:
    assert load_yaml(ALERT_TESTS)["rule_files"] == [ALERTS.name]
    assert set(_alert_cases()) <= {r["alert"] for r in alert_rules()}


@pytest.mark.parametrize("alert", [r["alert"] for r in alert_rules()])
def test_every_alert_has_a_firing_and_a_quiet_case(alert: str) -> None:
    seen = _alert_cases().get(alert, {"fires": 0, "quiet": 0})
    assert seen["fires"] and seen["quiet"], f"{alert}: {seen} in {ALERT_TESTS.name}"


@pytest.mark.parametrize("rule", alert_rules(), ids=lambda r: str(r["alert"]))
def test_alert_annotations_name_what_is_down(rule: dict[str, Any]) -> None:
    """summary + description exist; each label the alert carries when it fires (per the
    promtool cases) is named in them: device, peer, vpn, errno, instance."""
    assert rule["labels"]["severity"] in ("warning", "critical")
    ann = rule["annotations"]
    assert ann.get("summary") and ann.get("description")
    text = ann["summary"] + ann["description"]
    carried: set[str] = set()
    for group in load_yaml(ALERT_TESTS)["tests"]:
        for case in group.get("alert_rule_test", []):
            if case["alertname"] == rule["alert"]:
                for exp in case.get("exp_alerts") or []:
                    carried |= set(exp["exp_labels"])
    for label in carried - {"severity", "job", "alertname"}:
        assert f"$labels.{label}" in text, f"{rule['alert']} does not name its {label}"


# --------------------------------------------------------------------------- metric names


def _all_exprs() -> list[tuple[str, str]]:
    out = [(f"alert {r['alert']}", str(r["expr"])) for r in alert_rules()]
    out += [(f"panel {where}", substitute(e)) for where, e in dashboard_exprs(dashboard())]
    return out


@pytest.mark.parametrize(("where", "expr"), _all_exprs(), ids=[w for w, _ in _all_exprs()])
def test_metrics_and_labels_exist(where: str, expr: str) -> None:
    exposed = exposed_names()
    names = metric_names(expr)
    assert names, f"{where}: no metric found in {expr!r}"
    unknown = {n for n in names if n not in exposed and n not in FOREIGN_METRICS}
    assert not unknown, f"{where}: not exported by vtibgp: {sorted(unknown)} in {expr!r}"
    allowed = set(TARGET_LABELS)
    for n in names:
        allowed |= exposed.get(n, set())
    bad = used_labels(expr) - allowed
    assert not bad, f"{where}: labels {sorted(bad)} not on {sorted(names)} in {expr!r}"


def test_the_name_parser_sees_through_promql() -> None:
    expr = ('histogram_quantile(0.99, sum by (instance, le) (rate(vtibgp_update_to_kernel_'
            'seconds_bucket{instance=~"vtibgp_x.+"}[5m]))) or on (instance) up offset 10m')
    assert metric_names(expr) == {"vtibgp_update_to_kernel_seconds_bucket", "up"}
    assert used_labels(expr) == {"instance", "le"}
    assert substitute('rate(x{instance=~"$instance"}[$__rate_interval])') == \
        'rate(x{instance=~".+"}[15s])'


# --------------------------------------------------------------------------- dashboard


def test_dashboard_is_importable_into_grafana_10() -> None:
    dash = dashboard()
    assert dash["schemaVersion"] >= 38
    assert dash["uid"] and dash["title"] and dash.get("id") is None
    ds_inputs = [i for i in dash["__inputs"] if i["type"] == "datasource"]
    assert [(i["name"], i["pluginId"]) for i in ds_inputs] == [("DS_PROMETHEUS", "prometheus")]
    req = {(r["type"], r["id"]): r for r in dash["__requires"]}
    assert int(req[("grafana", "grafana")]["version"].split(".")[0]) >= 10
    assert ("datasource", "prometheus") in req
    used_types = {p["type"] for p in panels(dash)}
    assert used_types <= {i for (t, i) in req if t == "panel"}, used_types


def test_dashboard_variables_serve_a_fleet() -> None:
    variables = {v["name"]: v for v in dashboard()["templating"]["list"]}
    ds = variables["datasource"]
    assert (ds["type"], ds["query"]) == ("datasource", "prometheus")
    assert ds["current"]["value"] == "${DS_PROMETHEUS}"  # replaced by the import dialog
    inst = variables["instance"]
    assert inst["type"] == "query" and inst["multi"] and inst["includeAll"]
    assert inst["datasource"]["uid"] == "${datasource}"
    assert inst["definition"] == "label_values(vtibgp_build_info, instance)"
    assert inst["query"]["query"] == inst["definition"]


def test_every_panel_uses_the_variables() -> None:
    dash = dashboard()
    rows = [p for p in dash["panels"] if p["type"] == "row"]
    ids = [p["id"] for p in rows] + [p["id"] for p in panels(dash)]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for p in panels(dash):
        assert p["datasource"]["uid"] == "${datasource}", p["title"]
        targets = p["targets"]
        assert targets, f"{p['title']}: no query"
        assert len({t["refId"] for t in targets}) == len(targets), p["title"]
        for t in targets:
            assert t["datasource"]["uid"] == "${datasource}", p["title"]
            assert 'instance=~"$instance"' in t["expr"], f"{p['title']}: {t['expr']}"


def test_panels_fit_the_grid_without_overlapping() -> None:
    cells: dict[tuple[int, int], str] = {}
    for p in dashboard()["panels"]:
        g = p["gridPos"]
        assert g["x"] >= 0 and g["w"] > 0 and g["x"] + g["w"] <= 24, p["title"]
        for x in range(g["x"], g["x"] + g["w"]):
            for y in range(g["y"], g["y"] + g["h"]):
                assert (x, y) not in cells, f"{p['title']} overlaps {cells[(x, y)]}"
                cells[(x, y)] = p["title"]


def test_dashboard_covers_the_issue() -> None:
    """The panels the issue asks for are there (by what they query, not by title)."""
    by_type: dict[str, str] = {}
    for p in panels(dashboard()):
        by_type[p["type"]] = by_type.get(p["type"], "") + " ".join(
            t["expr"] for t in p["targets"]) + "\n"
    timelines = by_type["state-timeline"]
    assert "vtibgp_tunnel_up" in timelines and "vtibgp_peer_up" in timelines
    every = "".join(by_type.values())
    for needle in (
        "vtibgp_tunnel_routes", "vtibgp_peer_routes", "vtibgp_peer_paths",
        "vtibgp_kernel_routes", "rate(vtibgp_prefixes_received_total",
        "rate(vtibgp_withdraws_received_total",
        "histogram_quantile(0.5, sum by (instance, le) (rate(vtibgp_update_to_kernel_seconds",
        "histogram_quantile(0.99, sum by (instance, le) (rate(vtibgp_update_to_kernel_seconds",
        "histogram_quantile(0.5, sum by (instance, le) (rate(vtibgp_kernel_batch_seconds",
        "histogram_quantile(0.99, sum by (instance, le) (rate(vtibgp_kernel_batch_seconds",
        "vtibgp_tunnel_transitions_total", "vtibgp_tunnel_flaps_total",
        "vtibgp_kernel_errors_total", 'result="conflict"', "vtibgp_input_rejected_total",
        "vtibgp_last_update_timestamp_seconds", "vtibgp_build_info",
        "rate(vtibgp_probe_lost_total", "rate(vtibgp_probe_requests_total",
        "histogram_quantile(0.99, sum by (instance, device, le) (rate(vtibgp_probe_rtt_seconds",
    ):
        assert needle in every, needle


def test_docs_list_every_metric_and_alert() -> None:
    """docs/metrics.md is the reference: it must not fall behind shell/metrics.py or the rules."""
    docs = (ROOT / "docs" / "metrics.md").read_text()
    for name in exposed_names():
        base = re.sub(r"_(bucket|sum|count)$", "", name)
        assert f"`{base}`" in docs, f"docs/metrics.md does not describe {base}"
    for rule in alert_rules():
        assert f"`{rule['alert']}`" in docs, f"docs/metrics.md does not list {rule['alert']}"
