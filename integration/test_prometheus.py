"""Observability for real: a Prometheus server (Debian's ``prometheus``) scrapes the gateway.

After a few requests, Prometheus' own query API must return the gateway's request, token and
latency series and the engine's gauges relabelled by engine, all with the scrape's job label.
.ci/run installs the package when it is missing; without the binary this module is skipped.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from .conftest import Process

pytestmark = pytest.mark.skipif(
    shutil.which("prometheus") is None, reason="needs the prometheus binary (.ci/run installs it)"
)

#: Series a dashboard of the gateway relies on (name -> a label it must carry).
EXPECTED = {
    "lorax_request_total": "route",
    "lorax_output_tokens_total": "adapter",
    "lorax_request_duration_seconds_bucket": "le",
    "lorax_time_to_first_token_seconds_count": "job",
    "lorax_requests_in_flight": "job",
    "lorax_engine_kv_blocks_used": "engine",
    "lorax_engine_kv_blocks_free": "engine",
}


@pytest.fixture(scope="module")
def prometheus(gateway: Process, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Process]:
    tmp = tmp_path_factory.mktemp("prometheus")
    target = gateway.url.removeprefix("http://")
    config = tmp / "prometheus.yml"
    config.write_text(
        "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n"
        "scrape_configs:\n"
        f"  - job_name: lorax-gateway\n    static_configs:\n      - targets: ['{target}']\n"
    )
    proc = Process(
        [
            "prometheus",
            f"--config.file={config}",
            f"--storage.tsdb.path={tmp / 'data'}",
            "--web.listen-address=127.0.0.1:{port}",
        ],
        tmp / "prometheus.log",
        health_path="/-/ready",  # answers 200 once Prometheus serves queries
    )
    yield proc.start()
    proc.stop()


def _query(prom: Process, expr: str) -> list[dict[str, Any]]:
    r = httpx.get(f"{prom.url}/api/v1/query", params={"query": expr}, timeout=10)
    r.raise_for_status()
    return r.json()["data"]["result"]


def test_prometheus_scrapes_the_expected_series(gateway: Process, prometheus: Process) -> None:
    for _ in range(3):
        r = httpx.post(
            f"{gateway.url}/generate",
            json={"inputs": "Hello", "parameters": {"max_new_tokens": 4}},
            timeout=60,
        )
        assert r.status_code == 200, r.text
    deadline = time.monotonic() + 60
    missing = dict(EXPECTED)
    while missing and time.monotonic() < deadline:
        for name, label in list(missing.items()):
            result = _query(prometheus, f'{name}{{job="lorax-gateway"}}')
            if result and all(label in series["metric"] for series in result):
                del missing[name]
        time.sleep(0.5)
    assert not missing, f"series not scraped: {missing}"
    (up,) = _query(prometheus, 'up{job="lorax-gateway"}')
    assert up["value"][1] == "1"
    served = _query(prometheus, 'sum(lorax_request_total{route="generate",outcome="success"})')
    assert float(served[0]["value"][1]) >= 3
