"""End to end: a real Prometheus server scrapes a real ``hodei scheduler serve`` and evaluates the real alert rules.

The scheduler runs with ``--metrics-listen``; Prometheus (Debian's prometheus package) runs on a free loopback
port with a private storage directory, a 1 s scrape and evaluation interval, job ``hodei-scheduler`` and
``deploy/prometheus/hodei-alerts.yml`` as it is. The test first shows the registration-errors alert quiet
while every registration succeeds, then sends registrations that the scheduler refuses as invalid and waits,
through Prometheus' HTTP API, for the alert to go pending (its ``for`` is minutes; pending is enough). Every
wait is on a condition with a deadline. Prometheus and the scheduler are stopped by their PIDs and
Prometheus' directory is removed at the end.

Without the ``prometheus`` binary the test is skipped, or fails when ``CI`` is ``true``.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import grpc
import pytest

from hodei._infra.fixtures import skip_or_fail_for_missing
from hodei.transport._codec import pb, pb_grpc
from tests.helpers import free_port

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "deploy" / "prometheus" / "hodei-alerts.yml"
DASHBOARD = ROOT / "deploy" / "grafana" / "hodei-registration.json"
HODEI = shutil.which("hodei") or str(Path(sys.executable).parent / "hodei")

JOB = "hodei-scheduler"
ERRORS_ALERT = "HodeiRegistrationErrorRatioHigh"
START_TIMEOUT = 30.0  # seconds for a process to be ready
ALERT_TIMEOUT = 40.0  # seconds for Prometheus to scrape and evaluate its way to a verdict
POLL = 0.1  # seconds between two looks at a condition
POOLS = '[pools.builders]\nprovider = "process"\nmax = 2\n\n[pools.builders.template]\ncpu_cores = 1\n'

T = TypeVar("T")


def wait_until(
    what: str, probe: Callable[[], T | None], *, timeout: float, on_timeout: Callable[[], str]
) -> T:
    """Call ``probe`` until it returns something other than None and return that; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        found = probe()
        if found is not None:
            return found
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout} s\n{on_timeout()}")
        time.sleep(POLL)


def tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return f"({path.name}: nothing written)"


def stop(process: subprocess.Popen[bytes], *, sig: int = signal.SIGTERM, timeout: float = 15.0) -> None:
    """Stop a process this test started, by its PID: ``sig``, then SIGKILL if it outlives ``timeout``."""
    if process.poll() is None:
        os.kill(process.pid, sig)
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.kill(process.pid, signal.SIGKILL)
            process.wait(timeout=timeout)


# --- hodei scheduler serve --metrics-listen -------------------------------------------------------------------


@dataclass(frozen=True)
class ServedScheduler:
    process: subprocess.Popen[bytes]
    target: str  # gRPC HOST:PORT
    metrics: str  # HOST:PORT of /metrics


@contextlib.contextmanager
def scheduler_serve(directory: Path) -> Iterator[ServedScheduler]:
    """``hodei scheduler serve`` with its gRPC service and its metrics on free loopback ports (port 0; the
    bound addresses are read from what it prints). Its output goes to files, never to a pipe that could fill."""
    stdout, stderr = directory / "scheduler.out", directory / "scheduler.err"
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")} | {"NO_COLOR": "1"}
    command = [HODEI, "scheduler", "serve", "--store", "memory", "--listen", "127.0.0.1:0"]
    command += ["--metrics-listen", "127.0.0.1:0"]
    with stdout.open("wb") as out, stderr.open("wb") as err:
        process = subprocess.Popen(command, stdout=out, stderr=err, env=env)
    try:

        def addresses() -> tuple[str, str] | None:
            printed = stdout.read_text(errors="replace")
            grpc_address = re.search(r"hodei scheduler listening on (\S+)", printed)
            metrics_url = re.search(r"metrics on http://(\S+)/metrics", printed)
            if grpc_address and metrics_url:
                return grpc_address.group(1), metrics_url.group(1)
            if process.poll() is not None:
                raise AssertionError(
                    f"hodei scheduler serve exited with {process.returncode}:\n{printed}\n{tail(stderr)}"
                )
            return None

        target, metrics = wait_until(
            "hodei scheduler serve printing its addresses",
            addresses,
            timeout=START_TIMEOUT,
            on_timeout=lambda: stdout.read_text() + tail(stderr),
        )
        yield ServedScheduler(process, target, metrics)
    finally:
        stop(process)


# --- a private Prometheus server -------------------------------------------------------------------------------


class PrometheusServer:
    """``prometheus`` on 127.0.0.1:``port``, its storage, configuration and log in ``directory``."""

    def __init__(self, binary: str, directory: Path, config: dict[str, Any]) -> None:
        self.directory = directory
        self.log = directory / "prometheus.log"
        config_file = directory / "prometheus.yml"
        config_file.write_text(json.dumps(config, indent=2))  # JSON is YAML
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None
        for _ in range(5):  # another process may take the free port before Prometheus binds it
            self.port = free_port()
            with self.log.open("wb") as log:
                self.process = subprocess.Popen(
                    [
                        binary,
                        f"--config.file={config_file}",
                        f"--storage.tsdb.path={directory / 'data'}",
                        f"--web.listen-address=127.0.0.1:{self.port}",
                        "--storage.tsdb.retention.time=1h",
                        "--log.level=info",
                    ],
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
            try:
                ready = self._wait_ready()
            except BaseException:
                stop(self.process)
                raise
            if ready:
                return
            stop(self.process)
            if "address already in use" not in self.log.read_text(errors="replace"):
                raise AssertionError(f"prometheus did not start:\n{tail(self.log)}")
        raise AssertionError(f"prometheus found no free port:\n{tail(self.log)}")

    def _wait_ready(self) -> bool:
        assert self.process is not None
        process = self.process

        def ready() -> bool | None:
            if process.poll() is not None:
                return False
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/-/ready", timeout=2) as response:
                    return True if response.status == 200 else None
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                return None

        return wait_until("prometheus ready", ready, timeout=START_TIMEOUT, on_timeout=lambda: tail(self.log))

    def stop(self) -> None:
        """Stop the server by its PID (SIGTERM: it closes its storage) and wait for it to exit."""
        if self.process is not None:
            stop(self.process)

    def __enter__(self) -> PrometheusServer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def api(self, path: str, **params: str) -> Any:
        """GET /api/v1/``path``; returns ``data`` of a successful answer, fails the test on an error."""
        url = f"http://127.0.0.1:{self.port}/api/v1/{path}"
        if params:
            url += "?" + urllib.parse.urlencode(params)
        try:
            with urllib.request.urlopen(url, timeout=10) as response:
                answer = json.load(response)
        except urllib.error.HTTPError as error:
            raise AssertionError(f"GET {url}: {error.code} {error.read().decode(errors='replace')}") from None
        assert answer["status"] == "success", answer
        return answer["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        data = self.api("query", query=expr)
        assert data["resultType"] == "vector", data
        result: list[dict[str, Any]] = data["result"]
        return result

    def rules(self) -> dict[str, dict[str, Any]]:
        """The alerting rules Prometheus loaded, by name (with the name of their group under ``group``)."""
        return {
            rule["name"]: rule | {"group": group["name"]}
            for group in self.api("rules", type="alert")["groups"]
            for rule in group["rules"]
        }

    def alert_state(self, name: str) -> str:
        """``inactive``, ``pending`` or ``firing``: the state of alerting rule ``name`` at its last evaluation."""
        state: str = self.rules()[name]["state"]
        return state


def parse_time(text: str) -> datetime:
    """An RFC 3339 time as Prometheus writes it (nanoseconds, Z) as an aware datetime."""
    match = re.fullmatch(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(\.\d+)?(Z|[+-]\d\d:\d\d)", text)
    assert match, text
    fraction = (match.group(2) or ".0")[:7]
    zone = "+00:00" if match.group(3) == "Z" else match.group(3)
    return datetime.fromisoformat(match.group(1) + fraction + zone)


@pytest.fixture
def prometheus_binary() -> str:
    path = shutil.which("prometheus")
    if path is None:
        skip_or_fail_for_missing(
            "the prometheus server is needed: install Debian's prometheus package (tools/ensure-prometheus.sh "
            "does it when run as root)"
        )
    return path


@pytest.fixture
def work_directory() -> Iterator[Path]:
    """A fresh directory for the scheduler's output and Prometheus' configuration, storage and log; removed at
    the end (pytest's tmp_path would keep Prometheus' storage around)."""
    directory = Path(tempfile.mkdtemp(prefix="hodei-prometheus-e2e-"))
    try:
        yield directory
    finally:
        shutil.rmtree(directory, ignore_errors=True)


# --- registrations ----------------------------------------------------------------------------------------------


def valid_request(n: int) -> pb.RegisterWorkerRequest:
    return pb.RegisterWorkerRequest(
        worker_id=f"e2e-worker-{n}",
        capabilities=pb.WorkerCapabilities(cpu_cores=2, memory_mb=4096),
        metadata=pb.WorkerMetadata(worker_type="docker", labels={}),
    )


def invalid_request(n: int) -> pb.RegisterWorkerRequest:
    """Refused by the scheduler as invalid (a worker id with a space, no capabilities)."""
    return pb.RegisterWorkerRequest(worker_id=f"e2e invalid {n}")


class Registrations:
    """Registrations sent to the scheduler with the raw stub, so that invalid data reaches the scheduler (the
    hodei client would refuse it before any call)."""

    def __init__(self, target: str) -> None:
        self._channel = grpc.insecure_channel(target)
        self._stub = pb_grpc.SchedulerServiceStub(self._channel)
        self._sent = 0
        self.refused = 0

    def close(self) -> None:
        self._channel.close()

    def apply_pools(self, text: str) -> None:
        """Declare pools on the scheduler, so that its pools' series exist for the dashboard's queries."""
        self._stub.ApplyPools(pb.ApplyPoolsRequest(source="pools.toml", text=text), timeout=10)

    def send(self, *, valid: int = 0, invalid: int = 0) -> None:
        for _ in range(valid):
            self._sent += 1
            response = self._stub.RegisterWorker(valid_request(self._sent), timeout=10)
            assert response.status == pb.REGISTRATION_STATUS_SUCCESS
        for _ in range(invalid):
            self._sent += 1
            with pytest.raises(grpc.RpcError) as raised:
                self._stub.RegisterWorker(invalid_request(self._sent), timeout=10)
            assert raised.value.code() is grpc.StatusCode.INVALID_ARGUMENT
            self.refused += 1


def dashboard_exprs() -> list[tuple[str, str]]:
    """(panel title, expression) of every query of the dashboard, Grafana's variables given values."""
    board = json.loads(DASHBOARD.read_text())
    found = []
    for panel in board["panels"] + [p for row in board["panels"] for p in row.get("panels", [])]:
        for target in panel.get("targets", []):
            expr = target["expr"].replace("$__rate_interval", "1m")
            expr = expr.replace("$scheduler", ".*").replace("$control_plane", ".*").replace("$pool", ".*")
            found.append((panel["title"], expr))
    return found


@pytest.mark.timeout(150)  # generous: a wait that gives up first says what it waited for
def test_prometheus_scrapes_a_live_scheduler_and_the_registration_errors_alert_goes_pending(
    prometheus_binary: str, work_directory: Path
) -> None:
    with scheduler_serve(work_directory) as scheduler:
        config = {
            "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(RULES)],
            "scrape_configs": [{"job_name": JOB, "static_configs": [{"targets": [scheduler.metrics]}]}],
        }
        with (
            PrometheusServer(prometheus_binary, work_directory, config) as prometheus,
            contextlib.closing(Registrations(scheduler.target)) as registrations,
        ):

            def logs() -> str:
                return (
                    f"{ERRORS_ALERT}: {prometheus.rules().get(ERRORS_ALERT)}\n--- prometheus ---\n"
                    f"{tail(prometheus.log)}\n--- scheduler ---\n{tail(work_directory / 'scheduler.err')}"
                )

            registrations.apply_pools(POOLS)
            # Prometheus loaded the real rule file: every alert, with its severity and annotations.
            rules = prometheus.rules()
            assert ERRORS_ALERT in rules
            assert set(rules) == set(re.findall(r"^\s*- alert:\s*(\S+)", RULES.read_text(), re.M))
            for name, rule in rules.items():
                assert rule["labels"].get("severity") in {"critical", "warning"}, name
                assert {"summary", "description", "runbook"} <= set(rule["annotations"]), name

            # The scheduler is scraped: up == 1.
            up = wait_until(
                f'up{{job="{JOB}"}} == 1',
                lambda: prometheus.query(f'up{{job="{JOB}"}} == 1') or None,
                timeout=START_TIMEOUT,
                on_timeout=logs,
            )
            assert [series["metric"]["instance"] for series in up] == [scheduler.metrics]

            # Healthy traffic: enough registrations for the alert's minimum, none refused. Once Prometheus has
            # evaluated the rule on that data, the alert is inactive.
            def enough_traffic_seen() -> datetime | None:
                registrations.send(valid=5)
                seen = prometheus.query(
                    f'sum(increase(hodei_scheduler_registrations_total{{job="{JOB}"}}[5m])) >= 10'
                )
                return datetime.now(UTC) if seen else None

            seen_at = wait_until(
                "Prometheus seeing 10 registrations",
                enough_traffic_seen,
                timeout=ALERT_TIMEOUT,
                on_timeout=logs,
            )
            quiet = wait_until(
                "an evaluation of the rules after that",
                lambda: (
                    rule
                    if parse_time((rule := prometheus.rules()[ERRORS_ALERT])["lastEvaluation"]) > seen_at
                    else None
                ),
                timeout=ALERT_TIMEOUT,
                on_timeout=logs,
            )
            assert quiet["health"] == "ok", quiet
            assert quiet["state"] == "inactive", quiet

            # Failures: registrations the scheduler refuses as invalid, until the alert goes pending (or firing).
            def alert_raised() -> dict[str, Any] | None:
                registrations.send(valid=1, invalid=4)
                alerts = prometheus.api("alerts")["alerts"]
                raised = [a for a in alerts if a["labels"]["alertname"] == ERRORS_ALERT]
                return raised[0] if raised and raised[0]["state"] in {"pending", "firing"} else None

            alert = wait_until(
                f"{ERRORS_ALERT} pending or firing", alert_raised, timeout=ALERT_TIMEOUT, on_timeout=logs
            )
            assert alert["labels"] == {"alertname": ERRORS_ALERT, "job": JOB, "severity": "warning"}
            assert re.search(r"refuse \d+(\.\d+)?% of worker registrations", alert["annotations"]["summary"])
            assert registrations.refused > 0
            assert prometheus.query(
                f'sum(hodei_scheduler_registrations_total{{job="{JOB}", result="invalid"}}) > 0'
            ), "the scheduler's invalid registrations are not in Prometheus"

            # Every rule evaluates without error, and none but the errors alert is raised by a healthy scheduler
            # (a single scheduler on its own registry is its lease leader, for example). A scrape that timed
            # out on a loaded machine makes HodeiSchedulerDown pending, rightly: it is let off only then.
            rules = prometheus.rules()
            assert {name: rule["health"] for name, rule in rules.items()} == dict.fromkeys(rules, "ok")
            others = {name: rule["state"] for name, rule in rules.items() if name != ERRORS_ALERT}
            if not prometheus.query(f'min_over_time(up{{job="{JOB}"}}[5m]) == 1'):
                del others["HodeiSchedulerDown"]
            assert others == dict.fromkeys(others, "inactive")

            # Every dashboard query runs on the live data, and those about the scheduler alone show something
            # (waiting for it, should the last scrape have failed and left the series stale).
            for title, expr in dashboard_exprs():
                result = prometheus.query(expr)
                if set(re.findall(r'job="([^"]+)"', expr)) == {JOB} and not result:
                    wait_until(
                        f"dashboard panel {title!r} showing the live scheduler: {expr}",
                        lambda expr=expr: prometheus.query(expr) or None,
                        timeout=ALERT_TIMEOUT,
                        on_timeout=logs,
                    )
        assert prometheus.process is not None and prometheus.process.returncode is not None
    assert scheduler.process.returncode == 0, tail(work_directory / "scheduler.err")
