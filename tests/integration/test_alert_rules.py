"""The alert rules, their promtool unit tests, the example Prometheus configuration and the Grafana dashboard.

``promtool`` checks and unit-tests the rules (deploy/prometheus/); every PromQL expression of the dashboard
is checked by promtool too; and every metric that the dashboard's and the rules' expressions name — with the
job, label names and label values they select — must exist in a live scrape of an in-process scheduler and
control plane, so that renaming a metric or a label value cannot silently break a panel or an alert.

promtool comes from Debian's prometheus package (``tools/ensure-prometheus.sh`` installs it when run as
root); without it these tests are skipped, or fail when ``CI`` is ``true``.
"""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import subprocess
import urllib.request
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest
import pytest_asyncio
from prometheus_client import CollectorRegistry
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families

from hodei import (
    JobOutcome,
    RegistrationConfig,
    RegistrationFailed,
    SchedulerPortClient,
    SchedulerTimeout,
    WorkerRegistrationAdapter,
)
from hodei._infra.fixtures import skip_or_fail_for_missing
from hodei.observability._http import MetricsEndpoint
from hodei.observability._metrics import AgentMetrics, ControlPlaneMetrics, SchedulerMetrics
from hodei.pools import Requirements, ScaleReason
from hodei.testing import EmbeddedScheduler
from hodei.transport._codec import pb, pb_grpc
from tests.helpers import make_worker, wait_for

ROOT = Path(__file__).resolve().parents[2]
PROMETHEUS_DIR = ROOT / "deploy" / "prometheus"
RULES = PROMETHEUS_DIR / "hodei-alerts.yml"
RULE_TESTS = PROMETHEUS_DIR / "hodei-alerts.test.yml"
PROMETHEUS_CONFIG = PROMETHEUS_DIR / "prometheus.yml"
DASHBOARD = ROOT / "deploy" / "grafana" / "hodei-registration.json"

SCHEDULER_JOB = "hodei-scheduler"
CONTROL_PLANE_JOB = "hodei-control-plane"
AGENT_JOB = "hodei-agent"
SCRAPE_JOBS = frozenset({SCHEDULER_JOB, CONTROL_PLANE_JOB, AGENT_JOB})

# Grafana's variables, given values that make each expression plain PromQL.
GRAFANA_VARIABLES = {
    "$__rate_interval": "1m",
    "$__interval": "1m",
    "$__range": "1h",
    "$scheduler": ".*",
    "$control_plane": ".*",
    "$pool": ".*",
}

# Sample names each metric type exposes, by family name (the text parser names a counter's family without
# ``_total``); a family with no samples yet still exposes them, it is only empty.
SAMPLE_SUFFIXES = {
    "counter": ("_total", "_created"),
    "gauge": ("",),
    "histogram": ("_bucket", "_sum", "_count", "_created"),
    "summary": ("", "_sum", "_count", "_created"),
    "info": ("_info",),
    "stateset": ("",),
    "gaugehistogram": ("_bucket", "_gsum", "_gcount"),
    "unknown": ("",),
}
# Labels that Prometheus attaches to every scraped series, and those of the histogram's own samples.
TARGET_LABELS = frozenset({"job", "instance"})
SAMPLE_LABELS = frozenset({"le", "quantile"})


@pytest.fixture(scope="module")
def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        skip_or_fail_for_missing(
            "promtool is needed: install Debian's prometheus package (tools/ensure-prometheus.sh does it when "
            "run as root)"
        )
    return path


def run_promtool(promtool: str, *args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [promtool, *map(str, args)], capture_output=True, text=True, timeout=60, check=False
    )


def rules_found(output: str) -> int:
    """The rule count in ``promtool check rules`` output (``SUCCESS: 10 rules found``)."""
    found = re.findall(r"SUCCESS: (\d+) rules found", output)
    assert len(found) == 1, f"no rule count in promtool's output:\n{output}"
    return int(found[0])


# --- Reading the rule files (the format that hodei-alerts.yml keeps: see its header) ---------------------------


@dataclass(frozen=True)
class Rule:
    name: str
    expr: str
    block: str  # the rule's lines, as written


def read_rules(text: str) -> list[Rule]:
    """The alerting and recording rules of a rule file: each rule's name, its ``expr`` (one line, quoted or
    not, or a ``|`` block) and its text. No YAML library is needed for the subset the file keeps to; the
    callers check the count against promtool's."""
    lines = text.splitlines()
    rules: list[Rule] = []
    starts = [i for i, line in enumerate(lines) if re.match(r"\s*- (alert|record):", line)]
    for n, start in enumerate(starts):
        end = starts[n + 1] if n + 1 < len(starts) else len(lines)
        group_end = next(
            (i for i in range(start + 1, end) if re.match(r"\s*- name:", lines[i])), end
        )  # a rule ends where the next group begins
        block = lines[start:group_end]
        name = block[0].split(":", 1)[1].strip()
        exprs = [i for i, line in enumerate(block) if re.match(r"\s*expr:", line)]
        assert len(exprs) == 1, f"rule {name}: expected one expr, found {len(exprs)}"
        key_line = block[exprs[0]]
        indent = len(key_line) - len(key_line.lstrip())
        value = key_line.split(":", 1)[1].strip()
        if value in ("|", "|-", "|+", ">", ">-"):
            body = []
            for line in block[exprs[0] + 1 :]:
                if line.strip() and len(line) - len(line.lstrip()) <= indent:
                    break
                body.append(line)
            expr = "\n".join(line.strip() for line in body).strip()
        elif value.startswith('"'):
            expr = json.loads(value)
        elif value.startswith("'"):
            expr = value[1:-1].replace("''", "'")
        else:
            expr = value
        rules.append(Rule(name, expr, "\n".join(block)))
    return rules


def alert_rules() -> list[Rule]:
    return [rule for rule in read_rules(RULES.read_text()) if rule.block.lstrip().startswith("- alert:")]


# --- Reading the dashboard ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class PanelExpr:
    where: str
    expr: str


def dashboard() -> dict[str, Any]:
    loaded = json.loads(DASHBOARD.read_text())
    assert isinstance(loaded, dict)
    return loaded


def all_panels(board: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel, those nested in collapsed rows included."""
    panels = board.get("panels", [])
    assert isinstance(panels, list)
    for panel in panels:
        yield panel
        yield from panel.get("panels", [])


def dashboard_exprs(board: dict[str, Any]) -> list[PanelExpr]:
    found = []
    for panel in all_panels(board):
        for target in panel.get("targets", []):
            found.append(PanelExpr(f"panel {panel['title']!r} target {target['refId']}", target["expr"]))
    return found


def as_promql(expr: str) -> str:
    """A dashboard expression with Grafana's variables replaced by values."""
    for variable, value in sorted(GRAFANA_VARIABLES.items(), key=lambda item: -len(item[0])):
        expr = expr.replace(variable, value).replace("${" + variable[1:] + "}", value)
    leftover = re.findall(r"\$\{?\w+", expr)
    assert not leftover, f"unknown Grafana variables {leftover} in: {expr}"
    return expr


def check_promql(promtool: str, exprs: list[str], directory: Path) -> subprocess.CompletedProcess[str]:
    """``promtool check rules`` on a rule file with one recording rule per expression: PromQL's own parser."""
    rule_file = directory / "expressions.rules.yml"
    lines = ["groups:", "  - name: expressions", "    rules:"]
    for n, expr in enumerate(exprs):
        lines += [f"      - record: expression:{n}", f"        expr: {json.dumps(expr)}"]
    rule_file.write_text("\n".join(lines) + "\n")
    return run_promtool(promtool, "check", "rules", rule_file)


# --- The live scrape and the check of an expression against it ----------------------------------------------


@dataclass
class Scrape:
    """The metric families of one scrape, and which side of the system (scrape job) exports each."""

    families: dict[str, Metric]
    job_of_family: dict[str, str]
    text: str = field(repr=False)

    def family_of(self, sample_name: str) -> Metric | None:
        for family in self.families.values():
            if sample_name in {family.name + suffix for suffix in SAMPLE_SUFFIXES[family.type]}:
                return family
        return None

    def value(self, sample_name: str, **labels: str) -> float:
        family = self.family_of(sample_name)
        assert family is not None, f"{sample_name} is not in the scrape"
        return sum(
            s.value for s in family.samples if s.name == sample_name and labels.items() <= s.labels.items()
        )


def catalogue_jobs() -> dict[str, str]:
    """The scrape job whose processes export each family of the catalogue: hodei_workers -> hodei-scheduler."""
    jobs = {}
    for job, metrics_class in (
        (SCHEDULER_JOB, SchedulerMetrics),
        (CONTROL_PLANE_JOB, ControlPlaneMetrics),
        (AGENT_JOB, AgentMetrics),
    ):
        registry = CollectorRegistry(auto_describe=True)
        metrics_class(registry)
        for family in registry.collect():
            jobs[family.name] = job
    return jobs


SELECTOR = re.compile(r"(?<![\w:])(?P<name>[a-zA-Z_:][\w:]*)\s*(?:\{(?P<matchers>[^}]*)\})?")
MATCHER = re.compile(r'(?P<label>\w+)\s*(?P<op>=~|!~|!=|=)\s*"(?P<value>(?:[^"\\]|\\.)*)"')
GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\((?P<labels>[^)]*)\)")
STRING = re.compile(r'"(?:[^"\\]|\\.)*"')


@dataclass(frozen=True)
class Selector:
    name: str
    matchers: tuple[tuple[str, str, str], ...]  # (label, op, value)


def selectors(expr: str) -> list[Selector]:
    """The metric selectors an expression names: ``hodei_*`` metrics and ``up``, with their matchers."""
    found = []
    # Blank out string contents (keeping their length) so that a label value is never read as a name.
    code = STRING.sub(lambda m: '"' + " " * (len(m.group()) - 2) + '"', expr)
    for match in SELECTOR.finditer(code):
        name = match.group("name")
        if not (name.startswith("hodei_") or name == "up"):
            continue
        start, end = match.span("matchers") if match.group("matchers") is not None else (0, 0)
        matchers = tuple((m["label"], m["op"], m["value"]) for m in MATCHER.finditer(expr[start:end]))
        found.append(Selector(name, matchers))
    return found


def grouping_labels(expr: str) -> set[str]:
    code = STRING.sub('""', expr)
    return {
        label.strip() for m in GROUPING.finditer(code) for label in m["labels"].split(",") if label.strip()
    }


def problems(expr: str, scrape: Scrape) -> list[str]:
    """What in ``expr`` the live scrape does not back: metric names, jobs, label names, label values."""
    found: list[str] = []
    known_labels = set(TARGET_LABELS)
    named = selectors(expr)
    if not named:
        found.append("names no hodei metric and no up")
    for selector in named:
        labels = dict((label, (op, value)) for label, op, value in selector.matchers)
        job = labels.get("job")
        if job is None or job[0] != "=":
            found.append(f'{selector.name}: select the scrape job with job="..."')
        elif job[1] not in SCRAPE_JOBS:
            found.append(f"{selector.name}: job {job[1]!r} is none of the scrape jobs {sorted(SCRAPE_JOBS)}")
        if selector.name == "up":
            for label in labels.keys() - TARGET_LABELS:
                found.append(f"up has no label {label!r}")
            continue
        family = scrape.family_of(selector.name)
        if family is None:
            found.append(f"{selector.name} is not in the live scrape")
            continue
        exporter = scrape.job_of_family.get(family.name)
        if job is not None and job[0] == "=" and exporter is not None and job[1] != exporter:
            found.append(f"{selector.name} is exported by job {exporter!r}, not {job[1]!r}")
        samples = [s for s in family.samples if s.name == selector.name]
        family_labels = {label for s in samples for label in s.labels}
        known_labels |= family_labels
        for label, (op, value) in labels.items():
            if label in TARGET_LABELS:
                continue
            if not samples:
                found.append(f"{selector.name} has no samples to check label {label!r} against")
                continue
            if label not in family_labels:
                found.append(f"{selector.name} has no label {label!r} (it has {sorted(family_labels)})")
                continue
            values = {s.labels[label] for s in samples}
            if op in ("=", "!="):
                wanted = [value]
            elif re.fullmatch(r"[\w|]+", value):
                wanted = value.split("|")  # an alternation of values: each must exist
            else:
                continue  # a real regular expression: nothing to look up
            for one in wanted:
                if one not in values:
                    found.append(
                        f"{selector.name}: {label} never takes the value {one!r} (it takes {sorted(values)})"
                    )
    for label in grouping_labels(expr) - known_labels - SAMPLE_LABELS:
        found.append(f"groups by {label!r}, a label of none of the metrics it names")
    if any(label in SAMPLE_LABELS for label in grouping_labels(expr)) and not any(
        s.name.endswith("_bucket") for s in named
    ):
        found.append("groups by le without a histogram's _bucket")
    return found


async def scrape_over_http(registry: CollectorRegistry) -> str:
    """Serve ``registry`` on a loopback port as the processes do (``MetricsEndpoint``), GET /metrics once, and
    stop serving."""
    with MetricsEndpoint(registry, "127.0.0.1:0") as endpoint:

        def get() -> str:
            with urllib.request.urlopen(endpoint.url, timeout=10) as response:
                body: bytes = response.read()
                return body.decode()

        return await asyncio.to_thread(get)


SCRAPE_POOLS = """\
[pools.builders]
kind = "dynamic"
provider = "process"
max = 4

[pools.builders.template]
cpu_cores = 2
memory_mb = 1024
"""


async def declare_a_busy_pool(
    port: SchedulerPortClient, scheduler_metrics: SchedulerMetrics, control_plane_metrics: ControlPlaneMetrics
) -> None:
    """Pool builders, declared on the scheduler, with one worker that ran a job; an acquire that found no free
    worker timed out. The scheduler sets the pool's gauges on its own (about once a second): wait for them.
    The autoscaler's series are recorded as the control plane's autoscaler records them (one scale-up for
    waiting jobs, one failed provision, a desired size), the autoscaler itself not being part of this scrape."""
    await port.apply_pools("pools.toml", SCRAPE_POOLS)
    await port.register_worker(make_worker("scrape-pool-1", cpu_cores=2, memory_mb=1024, pool="builders"))
    acquired = await port.acquire_worker("scrape-job-1", Requirements(pool="builders"))
    with pytest.raises(SchedulerTimeout):
        await port.acquire_worker("scrape-job-2", Requirements(pool="builders"), wait=0.01)
    await port.release_worker(acquired.assignment.assignment_id, outcome=JobOutcome.FAILED)
    control_plane_metrics.pool_scale_events.labels("builders", "up", ScaleReason.WAITING_JOBS.value).inc()
    control_plane_metrics.pool_provision_failures.labels("builders").inc()
    control_plane_metrics.pool_desired_workers.labels("builders").set(2)
    registry = scheduler_metrics.registry

    async def counted() -> bool:
        labels = {"pool": "builders", "status": "available"}
        return registry.get_sample_value("hodei_pool_workers", labels) == 1

    await wait_for(counted, timeout=10)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def live_scrape() -> AsyncIterator[Scrape]:
    """One scrape of a scheduler and a control plane (and an agent's metrics) that share one registry, after
    a few registrations went through them: a success, a batch, a worker the adapter rejects itself, and one
    that only the scheduler refuses as invalid; then a pool declared, a worker of it bound to a job and
    released, and an acquire that timed out, so that the pools' series carry their labels."""
    registry = CollectorRegistry(auto_describe=True)
    scheduler_metrics = SchedulerMetrics(registry)
    control_plane_metrics = ControlPlaneMetrics(registry)
    AgentMetrics(registry)
    async with EmbeddedScheduler(metrics=scheduler_metrics) as scheduler, scheduler.client() as port:
        adapter = WorkerRegistrationAdapter(
            port, RegistrationConfig(max_retries=1), metrics=control_plane_metrics
        )
        await adapter.register_worker(make_worker("scrape-worker-1"))
        await adapter.register_workers_batch([make_worker(f"scrape-batch-{n}") for n in range(3)])
        with pytest.raises(RegistrationFailed):
            await adapter.register_worker(make_worker("scrape-invalid", cpu_cores=0))
        stub = pb_grpc.SchedulerServiceStub(scheduler.channel())
        with pytest.raises(grpc.aio.AioRpcError):
            await stub.RegisterWorker(pb.RegisterWorkerRequest(worker_id="not a valid id"))
        await declare_a_busy_pool(port, scheduler_metrics, control_plane_metrics)
        text = await scrape_over_http(registry)
    families = {family.name: family for family in text_string_to_metric_families(text)}
    yield Scrape(families, catalogue_jobs(), text)


# --- promtool -----------------------------------------------------------------------------------------------


def test_promtool_check_rules_passes(promtool: str) -> None:
    result = run_promtool(promtool, "check", "rules", RULES)

    assert result.returncode == 0, result.stdout + result.stderr
    assert rules_found(result.stdout) == len(read_rules(RULES.read_text())) == len(alert_rules())


def test_promtool_unit_tests_of_the_rules_pass(promtool: str) -> None:
    result = run_promtool(promtool, "test", "rules", RULE_TESTS)

    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_promtool_check_config_passes_on_the_example_configuration(promtool: str) -> None:
    result = run_promtool(promtool, "check", "config", PROMETHEUS_CONFIG)

    assert result.returncode == 0, result.stdout + result.stderr
    assert "is valid prometheus config file syntax" in result.stdout
    assert rules_found(result.stdout) == len(alert_rules())  # it loads hodei-alerts.yml
    for job in sorted(SCRAPE_JOBS):
        assert re.search(rf"job_name:\s*{job}\s*$", PROMETHEUS_CONFIG.read_text(), re.M), job


def alert_cases() -> dict[str, dict[str, int]]:
    """For each alert the unit tests name: how many cases expect it firing and how many expect it quiet."""
    return alert_cases_in(RULE_TESTS.read_text())


def alert_cases_in(tests: str) -> dict[str, dict[str, int]]:
    """The same, in the text of a unit-test file."""
    found: dict[str, dict[str, int]] = {}
    for match in re.finditer(r"alertname:\s*(\S+)\s*\n\s*exp_alerts:[ \t]*(\[\])?", tests):
        counts = found.setdefault(match.group(1), {"firing": 0, "quiet": 0})
        counts["quiet" if match.group(2) else "firing"] += 1
    return found


def test_every_alert_has_a_firing_and_a_quiet_unit_test() -> None:
    alerts = {rule.name for rule in alert_rules()}
    cases = alert_cases()

    assert alerts, "no alerts read from the rules"
    assert set(cases) <= alerts, f"unit tests name alerts that do not exist: {set(cases) - alerts}"
    for alert in sorted(alerts):
        assert cases.get(alert, {}).get("firing", 0) >= 1, f"{alert}: no unit test shows it firing"
        assert cases.get(alert, {}).get("quiet", 0) >= 1, f"{alert}: no unit test shows it quiet"


def test_every_alert_has_a_severity_and_summary_description_and_runbook() -> None:
    for rule in alert_rules():
        assert re.search(r"^\s+severity:\s*(critical|warning)\s*$", rule.block, re.M), rule.name
        for annotation in ("summary", "description", "runbook"):
            assert re.search(rf"^\s+{annotation}:\s*\S", rule.block, re.M), f"{rule.name}: no {annotation}"


MUTATIONS = [
    # (what changes in hodei-alerts.yml, old text, new text): each must make a unit test fail.
    ("the error-ratio threshold doubles", ") > 0.05\n", ") > 0.10\n"),
    ("the error ratio's minimum traffic drops to 1", "[5m])) >= 10\n", "[5m])) >= 1\n"),
    ("the latency threshold drops to 1 ms", "[5m]))) > 2\n", "[5m]))) > 0.001\n"),
    ("the lost-worker threshold rises", 'lease_expired"}[10m])) >= 3\n', 'lease_expired"}[10m])) >= 5\n'),
    (
        "absent() looks at a misspelt job",
        'absent(up{job="hodei-scheduler"})',
        'absent(up{job="hodei-schedulers"})',
    ),
    ("the scheduler-down alert waits longer", "== 0\n        for: 1m\n", "== 0\n        for: 10m\n"),
    (
        "the failing-ticks threshold rises above one a second",
        'sweep_failures_total{job="hodei-scheduler"}[5m])) > 0.1\n',
        'sweep_failures_total{job="hodei-scheduler"}[5m])) > 2\n',
    ),
    ("a pool counts as saturated only above its max", ">= on (job, pool)\n", "> on (job, pool)\n"),
    (
        "a saturated pool alerts with nobody waiting",
        'waiting{job="hodei-scheduler"}) > 0\n',
        'waiting{job="hodei-scheduler"}) >= 0\n',
    ),
    (
        "the provisioning-failure threshold rises",
        'failures_total{job="hodei-control-plane"}[10m])) >= 3\n',
        'failures_total{job="hodei-control-plane"}[10m])) >= 12\n',
    ),
    (
        "a burst of provisioning failures counts as still failing",
        'failures_total{job="hodei-control-plane"}[2m])) > 0\n',
        'failures_total{job="hodei-control-plane"}[10m])) > 0\n',
    ),
    ("the acquire-wait threshold rises", "[10m]))) > 60\n", "[10m]))) > 300\n"),
    ("acquires that timed out no longer count as waits", 'result=~"bound|timeout"}', 'result="bound"}'),
]


def cases_of(alert: str, tests: str) -> str:
    """The unit-test file ``tests`` with only the test groups that evaluate ``alert`` (its header kept)."""
    header, *groups = re.split(r"(?m)^(?=  - interval:)", tests)
    return header + "".join(
        group for group in groups if re.search(rf"alertname: {re.escape(alert)}\s*$", group, re.M)
    )


def test_the_cases_of_an_alert_are_its_test_groups_and_only_they() -> None:
    tests = RULE_TESTS.read_text()
    for alert, counts in alert_cases().items():
        assert alert_cases_in(cases_of(alert, tests)) == {alert: counts}, alert


@pytest.mark.parametrize(("change", "old", "new"), MUTATIONS, ids=[m[0] for m in MUTATIONS])
def test_the_unit_tests_fail_when_an_alert_changes(
    promtool: str, tmp_path: Path, change: str, old: str, new: str
) -> None:
    rules = RULES.read_text()
    assert rules.count(old) == 1, f"the mutation {change!r} no longer applies to {RULES.name}"
    [alert] = [rule.name for rule in alert_rules() if old in rule.block + "\n"]
    (tmp_path / RULES.name).write_text(rules.replace(old, new))
    # Only the changed alert's own cases run (a promtool run of every case costs 1.5 s of CPU): the change
    # must be noticed by the tests of the alert it changes.
    (tmp_path / RULE_TESTS.name).write_text(cases_of(alert, RULE_TESTS.read_text()))

    assert run_promtool(promtool, "check", "rules", tmp_path / RULES.name).returncode == 0
    result = run_promtool(promtool, "test", "rules", tmp_path / RULE_TESTS.name)

    assert result.returncode != 0, f"no unit test of {alert} noticed that {change}"
    assert "FAILED" in result.stdout + result.stderr


# --- the dashboard ------------------------------------------------------------------------------------------


def test_the_dashboard_is_a_grafana_dashboard_on_a_prometheus_datasource_variable() -> None:
    board = dashboard()

    assert isinstance(board["schemaVersion"], int) and board["schemaVersion"] >= 36
    assert board["uid"] and board["title"]
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    for name, variable in variables.items():
        if variable["type"] == "query":
            assert variable["datasource"]["uid"] == "${datasource}", name
            assert check_promql_selector_jobs(variable["definition"]), name
    panel_ids = [panel["id"] for panel in all_panels(board)]
    assert len(panel_ids) == len(set(panel_ids)), "panel ids must be unique"
    for panel in all_panels(board):
        assert {"h", "w", "x", "y"} <= set(panel["gridPos"]), panel["title"]
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        assert panel["targets"], f"panel {panel['title']!r} has no query"
        for target in panel["targets"]:
            assert target["expr"].strip(), panel["title"]
            assert target["datasource"]["uid"] == "${datasource}", panel["title"]


def check_promql_selector_jobs(definition: str) -> bool:
    """A variable's query such as ``label_values(up{job="hodei-scheduler"}, instance)`` names a scrape job."""
    return any(label == "job" and value in SCRAPE_JOBS for label, _, value in MATCHER.findall(definition))


def test_every_dashboard_expression_is_valid_promql(promtool: str, tmp_path: Path) -> None:
    exprs = [as_promql(found.expr) for found in dashboard_exprs(dashboard())]

    result = check_promql(promtool, exprs, tmp_path)

    assert result.returncode == 0, result.stdout + result.stderr
    assert rules_found(result.stdout) == len(exprs) >= 20


def test_the_promql_check_fails_on_an_invalid_expression(promtool: str, tmp_path: Path) -> None:
    result = check_promql(
        promtool, ['sum(rate(hodei_registrations_total{job="hodei-control-plane"}[5m])'], tmp_path
    )

    assert result.returncode != 0
    assert "FAILED" in result.stdout + result.stderr


def test_the_dashboard_shows_every_metric_of_the_catalogue() -> None:
    used = {s.name for found in dashboard_exprs(dashboard()) for s in selectors(found.expr)}
    families = set(catalogue_jobs())

    def shown(family: str) -> bool:
        return any(name == family or name.startswith(family + "_") for name in used)

    assert sorted(f for f in families if not shown(f)) == []


def test_the_dashboard_covers_the_registration_flow_and_the_pool() -> None:
    titles = [str(panel["title"]).lower() for panel in all_panels(dashboard())]
    for topic in (
        "registrations by result",
        "error ratio",
        "latency",
        "attempts",
        "retries",
        "batch",
        "workers by status",
        "lost",
        "stream connects",
        "open streams",
        "admission rejections",
        "lease leader",
        "schedulers up",
        "pool size by status",
        "acquires waiting per pool",
        "acquire wait",
        "acquires by result",
        "assignments ended by outcome",
        "scale events by direction and reason",
        "provisioning failures",
    ):
        assert any(topic in title for title in titles), f"no panel about {topic!r}"
    for topic, expected in (("latency", {"0.5", "0.95", "0.99"}), ("acquire wait", {"0.5", "0.95"})):
        panel = next(p for p in all_panels(dashboard()) if topic in str(p["title"]).lower())
        quantiles = {re.search(r"histogram_quantile\(([\d.]+)", t["expr"]).group(1) for t in panel["targets"]}
        assert quantiles == expected, topic


def test_the_pool_size_panel_repeats_per_pool_stacks_the_statuses_and_draws_max_as_a_line() -> None:
    board = dashboard()
    panel = next(p for p in all_panels(board) if str(p["title"]).lower().startswith("pool size by status"))
    variables = {v["name"]: v for v in board["templating"]["list"]}

    assert panel["repeat"] == "pool" and variables["pool"]["multi"] is True
    assert panel["fieldConfig"]["defaults"]["custom"]["stacking"]["mode"] == "normal"
    legends = [t["legendFormat"] for t in panel["targets"]]
    assert legends == ["{{status}}", "max", "desired (autoscaler)"]
    unstacked = {
        o["matcher"]["options"]
        for o in panel["fieldConfig"]["overrides"]
        for prop in o["properties"]
        if prop == {"id": "custom.stacking", "value": {"mode": "none", "group": "A"}}
    }
    assert unstacked == {"max", "desired (autoscaler)"}


# --- every metric named exists in a live scrape ---------------------------------------------------------------


def test_the_live_scrape_has_every_family_of_the_catalogue_and_counts_what_happened(
    live_scrape: Scrape,
) -> None:
    assert set(catalogue_jobs()) <= set(live_scrape.families)
    assert live_scrape.value("hodei_registrations_total", result="success", worker_type="docker") == 4
    assert live_scrape.value("hodei_registrations_total", result="rejected", worker_type="docker") == 1
    # The 4 the adapter registered, and the pool's worker.
    assert live_scrape.value("hodei_scheduler_registrations_total", result="created") == 5
    assert live_scrape.value("hodei_scheduler_registrations_total", result="invalid") == 1
    assert live_scrape.value("hodei_registration_batch_size_count") == 1
    assert live_scrape.value("hodei_pool_workers", pool="builders", status="available") == 1
    assert live_scrape.value("hodei_pool_workers", pool="builders") == 1
    assert live_scrape.value("hodei_pool_max_workers", pool="builders") == 4
    assert live_scrape.value("hodei_pool_waiting", pool="builders") == 0
    assert live_scrape.value("hodei_acquire_wait_seconds_count", result="bound") == 1
    assert live_scrape.value("hodei_acquire_wait_seconds_count", result="timeout") == 1
    assert live_scrape.value("hodei_assignments_ended_total", outcome="failed") == 1
    assert live_scrape.value("hodei_assignments_ended_total") == 1


def test_every_metric_in_the_dashboard_exists_in_a_live_scrape(live_scrape: Scrape) -> None:
    found = {
        f"{p.where}: {problem}"
        for p in dashboard_exprs(dashboard())
        for problem in problems(p.expr, live_scrape)
    }

    assert sorted(found) == []


def test_every_metric_in_the_alert_rules_exists_in_a_live_scrape(live_scrape: Scrape) -> None:
    rules = read_rules(RULES.read_text())
    found = {f"rule {rule.name}: {problem}" for rule in rules for problem in problems(rule.expr, live_scrape)}

    assert rules
    assert sorted(found) == []


@pytest.mark.parametrize(
    ("expr", "culprit"),
    [
        (
            'rate(hodei_registrations_totl{job="hodei-control-plane"}[5m])',
            "hodei_registrations_totl is not in",
        ),
        ('sum(rate(hodei_registrations{job="hodei-control-plane"}[5m]))', "hodei_registrations is not in"),
        ('hodei_workers_bucket{job="hodei-scheduler"}', "hodei_workers_bucket is not in"),
        (
            'rate(hodei_heartbeat_lag_seconds_total{job="hodei-scheduler"}[5m])',
            "hodei_heartbeat_lag_seconds_total",
        ),
        ('max(hodei_workers{job="hodei-scheduler", state="lost"})', "has no label 'state'"),
        ('hodei_workers{job="hodei-scheduler", status="gone"}', "never takes the value 'gone'"),
        (
            'rate(hodei_registrations_total{job="hodei-control-plane", result=~"success|exausted"}[5m])',
            "never takes the value 'exausted'",
        ),
        ('hodei_workers{job="hodei-control-plane"}', "exported by job 'hodei-scheduler'"),
        ('up{job="hodei-schedulers"}', "none of the scrape jobs"),
        ("hodei_workers", 'select the scrape job with job="..."'),
        ('sum by (pool) (hodei_workers{job="hodei-scheduler"})', "groups by 'pool'"),
        ('histogram_quantile(0.5, sum by (le) (hodei_workers{job="hodei-scheduler"}))', "groups by le"),
    ],
)
def test_the_metric_check_catches_what_the_scrape_does_not_have(
    live_scrape: Scrape, expr: str, culprit: str
) -> None:
    found = problems(expr, live_scrape)

    assert any(culprit in problem for problem in found), found


def test_the_metric_check_passes_a_correct_expression(live_scrape: Scrape) -> None:
    expr = (
        'sum by (result) (rate(hodei_registrations_total{job="hodei-control-plane", result=~"success|exhausted"}[5m]))'
        " / ignoring (result) group_left"
        ' sum(rate(hodei_registration_duration_seconds_count{job="hodei-control-plane"}[5m]))'
        ' and on () up{job="hodei-scheduler", instance="scheduler-1:9464"} == 1'
    )

    assert problems(expr, live_scrape) == []
