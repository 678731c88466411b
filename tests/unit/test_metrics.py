"""The metrics module's parts that need no server: the ``metrics_listen`` key, the
admission API the queueing code feeds, and the import order the multiprocess mode needs."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, Counter, Gauge

from proxy import metrics
from proxy.config import ConfigError, from_mapping
from proxy.metrics_http import exposition
from tests.scrape import Scrape

REPO = Path(__file__).resolve().parents[2]


def value(name: str, **labels: str) -> float:
    return Scrape(exposition({"unit-q", "unit-a", "unit-b"}).decode()).get(name, **labels)


@pytest.mark.parametrize(("raw", "listen"), [
    pytest.param("127.0.0.1:9464", "127.0.0.1:9464", id="ipv4"),
    pytest.param("0.0.0.0:9100", "0.0.0.0:9100", id="all-interfaces"),
    pytest.param("[::1]:9464", "[::1]:9464", id="ipv6"),
    pytest.param("localhost:9464", "localhost:9464", id="hostname"),
])  # fmt: skip
def test_metrics_listen_takes_host_and_port(raw: str, listen: str) -> None:
    assert from_mapping({"metrics_listen": raw}).metrics.listen == listen


@pytest.mark.parametrize("raw", [
    pytest.param("9464", id="no-host"),
    pytest.param("127.0.0.1", id="no-port"),
    pytest.param("127.0.0.1:0", id="port-zero"),
    pytest.param("127.0.0.1:70000", id="port-too-big"),
    pytest.param("127.0.0.1:http", id="port-not-a-number"),
    pytest.param("[::1]", id="ipv6-no-port"),
    pytest.param(9464, id="not-a-string"),
])  # fmt: skip
def test_a_bad_metrics_listen_is_named(raw: object) -> None:
    with pytest.raises(ConfigError, match="metrics_listen"):
        from_mapping({"metrics_listen": raw})


def test_without_metrics_listen_metrics_are_on_the_main_port() -> None:
    assert from_mapping({}).metrics.listen == ""


def test_the_admission_api_shows_queued_requests_waits_and_rejections() -> None:
    queued = {"model": "unit:1b", "backend": "unit-q"}
    with metrics.Queued("unit:1b", "unit-q"):
        assert value("ollama_proxy_queued_requests", **queued) == 1
    assert value("ollama_proxy_queued_requests", **queued) == 0
    waits = value("ollama_proxy_queue_wait_seconds_count", **queued)
    metrics.queue_wait("unit:1b", "unit-q", 0.25)
    assert value("ollama_proxy_queue_wait_seconds_count", **queued) == waits + 1
    assert value("ollama_proxy_queue_wait_seconds_bucket", **queued, le="0.25") >= 1
    before = value("ollama_proxy_rejected_requests_total", backend="unit-q", reason="queue_timeout")
    metrics.rejected("unit-q", "queue_timeout")
    assert value("ollama_proxy_rejected_requests_total", backend="unit-q", reason="queue_timeout") == before + 1


def test_in_flight_moves_with_a_failover_and_ends_with_the_request() -> None:
    on = {"model": "unit:1b"}
    with metrics.Inflight("unit:1b", "unit-a") as inflight:
        inflight.move("unit-b")
        assert value("ollama_proxy_inflight_requests", **on, backend="unit-a") == 0
        assert value("ollama_proxy_inflight_requests", **on, backend="unit-b") == 1
    inflight.move("unit-c")  # a late move (the request has ended) counts nothing
    assert [value("ollama_proxy_inflight_requests", **on, backend=b) for b in ("unit-a", "unit-b", "unit-c")] == [0, 0, 0]


@pytest.mark.parametrize(("name", "labels", "number", "shown"), [
    pytest.param("ollama_proxy_backend_up", {"backend": "kept"}, 1, True, id="a-configured-backends-health"),
    pytest.param("ollama_proxy_backend_up", {"backend": "gone"}, 1, False, id="a-removed-backends-health"),
    pytest.param("ollama_proxy_backend_up", {"backend": "gone"}, 0, False, id="a-removed-backend-that-was-down"),
    pytest.param("ollama_proxy_inflight_requests", {"model": "m", "backend": "gone"}, 2, True, id="still-in-flight"),
    pytest.param("ollama_proxy_inflight_requests", {"model": "m", "backend": "gone"}, 0, False, id="in-flight-ended"),
    pytest.param("ollama_proxy_queued_requests", {"model": "m", "backend": "gone"}, 0, False, id="queue-ended"),
    pytest.param("ollama_proxy_queued_requests", {"model": "m", "backend": "kept"}, 0, True, id="a-configured-queue"),
    pytest.param("ollama_proxy_rejected_requests", {"backend": "gone", "reason": "queue_full"}, 3, True,
                 id="a-counter-stays"),
])  # fmt: skip
def test_a_scrape_shows_per_backend_gauges_only_for_configured_backends(
    name: str, labels: dict[str, str], number: float, shown: bool
) -> None:
    registry = CollectorRegistry()
    kind = Counter if name.endswith("rejected_requests") else Gauge
    series = kind(name, "test", tuple(labels), registry=registry)
    series.labels(**labels).inc(number)
    kept = [(s.name, s.labels) for f in metrics.Current(registry, {"kept"}).collect() for s in f.samples]
    assert ((name + ("_total" if kind is Counter else ""), labels) in kept) is shown


@pytest.mark.parametrize(("reason", "label"), [
    pytest.param("unload", "unload", id="ollama-stop"),
    pytest.param("keep_alive 0", "unload", id="keep-alive-0"),
    pytest.param("keep_alive expired", "expired", id="idle"),
    pytest.param("making room for other:1b", "evicted", id="evicted"),
    pytest.param("shutdown", "shutdown", id="shutdown"),
    pytest.param("exited", "exited", id="crashed"),
])  # fmt: skip
def test_unload_reasons_are_a_few_fixed_words(reason: str, label: str) -> None:
    before = value("ollama_proxy_model_unloads_total", model="unit:1b", reason=label)
    metrics.model_unloaded("unit:1b", reason)
    assert value("ollama_proxy_model_unloads_total", model="unit:1b", reason=label) == before + 1


def test_the_supervisor_can_set_the_multiprocess_directory_before_prometheus_client_loads() -> None:
    """prometheus-client picks in-memory or per-process-file values when it is imported,
    so the CLI and the supervisor must not import it before proxy/workers.py sets
    PROMETHEUS_MULTIPROC_DIR."""
    code = "import sys, proxy.__main__, proxy.workers; print('prometheus_client' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "False"


def test_every_series_is_documented() -> None:
    text = (REPO / "docs" / "metrics.md").read_text()
    collectors = [v for v in vars(metrics).values() if hasattr(v, "_name") and hasattr(v, "_type")]
    assert len(collectors) >= 16
    for collector in collectors:
        suffix = "_total" if collector._type == "counter" else ""
        assert f"`{collector._name}{suffix}`" in text, collector._name
