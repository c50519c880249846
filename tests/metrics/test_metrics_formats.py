"""`GET /metrics` content negotiation on a real 2-node cluster, checked with the official Python
client's two parsers: the Prometheus text format 0.0.4 (no Accept header, `*/*`, `text/plain`)
with `prometheus_client.parser`, OpenMetrics 1.0.0 (Prometheus's own Accept header, or
`application/openmetrics-text`) with `prometheus_client.openmetrics.parser`, which refuses a
text without `# EOF`. Both answers carry the same series, and every family keeps its type
(a counter whose `# TYPE` line did not name its `_total` samples would parse as `unknown`)."""

from __future__ import annotations

import shutil
import sys
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.openmetrics.parser import (
    text_string_to_metric_families as parse_openmetrics,
)
from prometheus_client.parser import text_string_to_metric_families as parse_text

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "clients/python/src"))
sys.path.insert(0, str(ROOT / "clients/python/tests"))

from cluster import Cluster, agentmesh_bin  # noqa: E402

PROMETHEUS_ACCEPT = (
    "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;"
    "q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1"
)
TEXT = "text/plain; version=0.0.4; charset=utf-8"
OPENMETRICS = "application/openmetrics-text; version=1.0.0; charset=utf-8"
CALLS = 3


@pytest.fixture(scope="module")
def mesh():
    if not Path(agentmesh_bin()).exists():
        pytest.fail(f"agentmesh binary not found at {agentmesh_bin()}")
    d = Path(tempfile.mkdtemp(prefix="agentmesh-metrics-"))
    c = Cluster(d)
    try:
        c.node(["echo"])
        c.node(["other"])
        c.converge()
        caller = c.client(1)
        for _ in range(CALLS):
            caller.call("echo", {"q": 1})
        with pytest.raises(Exception):
            caller.call("no.such.capability", {"q": 1})
        yield c
    finally:
        c.close()
        shutil.rmtree(d, ignore_errors=True)


def scrape(api: str, accept: str | None) -> tuple[str, str]:
    req = urllib.request.Request(f"{api}/metrics")
    if accept is not None:
        req.add_header("Accept", accept)
    with urllib.request.urlopen(req, timeout=10) as r:
        return r.headers["content-type"], r.read().decode()


def families(parse, text: str) -> dict:
    return {f.name: f for f in parse(text)}


def series(fams: dict) -> set:
    return {
        (s.name, tuple(sorted(s.labels.items())))
        for f in fams.values()
        for s in f.samples
        if not s.name.endswith("_created")
    }


#: The type a family has in the text format for its OpenMetrics type.
TEXT_TYPE = {"info": "gauge", "stateset": "gauge", "gaugehistogram": "unknown"}


@pytest.mark.parametrize("accept", [None, "*/*", "text/plain", "text/plain;version=0.0.4"])
def test_default_is_the_prometheus_text_format(mesh, accept):
    ctype, text = scrape(mesh.nodes[1]["api"], accept)
    assert ctype == TEXT
    assert "# EOF" not in text and "# UNIT" not in text
    fams = families(parse_text, text)
    calls = fams["agentmesh_calls"]
    assert calls.type == "counter", calls
    ok = [
        s
        for s in calls.samples
        if s.name == "agentmesh_calls_total" and s.labels.get("capability") == "echo"
    ]
    assert [s.value for s in ok] == [CALLS], calls.samples
    assert fams["agentmesh_call_duration_seconds"].type == "histogram"
    assert fams["agentmesh_build_info"].type == "gauge"
    refusals = fams["agentmesh_routing_refusals"]
    assert refusals.type == "counter"
    assert any(s.labels.get("reason") == "no_capability" for s in refusals.samples)


@pytest.mark.parametrize("accept", [PROMETHEUS_ACCEPT, "application/openmetrics-text"])
def test_openmetrics_when_asked(mesh, accept):
    ctype, text = scrape(mesh.nodes[1]["api"], accept)
    assert ctype == OPENMETRICS
    assert text.endswith("# EOF\n")
    fams = families(parse_openmetrics, text)
    assert fams["agentmesh_calls"].type == "counter"
    assert fams["agentmesh_build_info"].type == "gauge"


def test_both_formats_carry_the_same_series_and_types(mesh):
    api = mesh.nodes[1]["api"]
    _, om = scrape(api, PROMETHEUS_ACCEPT)
    _, txt = scrape(api, None)
    om_f, txt_f = families(parse_openmetrics, om), families(parse_text, txt)
    assert series(om_f) == series(txt_f)
    for name, f in om_f.items():
        text_name = name + "_info" if f.type == "info" else name
        want = TEXT_TYPE.get(f.type, f.type)
        assert txt_f[text_name].type == want, (name, f.type, txt_f[text_name].type)
    calls = lambda fams: {  # noqa: E731
        tuple(sorted(s.labels.items())): s.value
        for s in fams["agentmesh_calls"].samples
        if s.name == "agentmesh_calls_total"
    }
    assert calls(om_f) == calls(txt_f) and calls(om_f)
