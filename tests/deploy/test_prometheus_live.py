"""The rendered recording rules, alerts and dashboard against a real Prometheus (Debian's `prometheus`
package, as scripts/ensure-deb.sh installs it) scraping an `eksinfer up`-style stack on 127.0.0.1: two
simulated engines (one `eksinfer sim` process each, so that one can be stalled alone) behind the gateway,
wired by the same `gateway_config` that `eksinfer up` uses.

What is faked, and why: there is no Kubernetes here, so no Prometheus operator turns the rendered PodMonitor
and ServiceMonitor into scrape jobs. The test writes the scrape configuration the operator would generate:
the engines' targets carry the pod labels the PodMonitor copies (`app_kubernetes_io_instance`,
`eksinfer_io_role`, `eksinfer_io_pool`, plus `namespace` and `pod`), and the gateway's job is named after its
Service with `honor_labels`, as the rendered ServiceMonitor asks. The rules are the rendered PrometheusRule's
group, unchanged except for durations: the group's interval (30 s) becomes 1 s and each alert's `for:` (2 to
30 minutes) becomes `FOR_S`, so that an alert fires within seconds. That keeps every expression as rendered:
the `for:` only delays firing, and the 5-minute `rate()` windows need two samples, which 1 s scrapes give
within seconds.

The plan has its Bedrock tier (as `eksinfer plan` gives Qwen3-32B), so the rendered gateway config carries
the cascade [default, bedrock] and the rules and dashboard their cascade row. The gateway takes the rendered
`pools` and `models` sections unchanged except two fields: the model name (the simulator's) and the Bedrock
pool's `endpoint_url`, which points botocore at the Bedrock stub (`python -m eksinfer.sim.bedrock`, one more
process; AWS is not reachable here, and the credentials are fake: the stub ignores SigV4). The fallback panels
have data only once a request has passed a tier over, so the test drives one: requests whose prompt plus
`max_tokens` exceed the default pool's context window (`max_context_tokens`, the plan's max_model_len) go
to Bedrock (`fallbacks_total{reason="context_too_long"}`), enough of them for the share answered by Bedrock
to pass 25% and EksinferBedrockFallbackSustained to fire.

The fault is a stalled engine (SIGSTOP, as a hung process or a GPU stuck in a collective looks from outside):
its /metrics stops answering, `up` goes to 0, EksinferEngineDown fires; SIGCONT resolves it.

A second fault makes three long requests queue on engine 0 (which runs one sequence at a time): the engines'
TTFT P99 goes over the 2 s target and EksinferTTFTAboveTarget fires. It does not resolve within a test: its
5-minute `rate()` window keeps the slow observations for 5 minutes.

Not checked here: the GPU panel and `eksinfer:gpu_utilization:avg` (dcgm-exporter needs NVIDIA GPUs), and the
queue and KV hit-rate alerts firing (10 and 15 minute conditions over 5 to 10 minute windows); promtool covers
them with synthetic series (tests/deploy/promtool/alerts_test.yaml).
"""

from __future__ import annotations

import functools
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import yaml

from eksinfer.deploy.render import build_tree
from eksinfer.lifecycle import PARENT_ENV
from eksinfer.stack import StackOptions, gateway_config, sim_command
from tests.deploy import plans
from tests.gateway.test_up import REPLAY_OFFSET, free_block
from tests.waiting import until_sync

PROMETHEUS = shutil.which("prometheus")
# 50 to 100 s on a shared 2-core machine: its own target (`make test-prometheus` sets the variable).
ENABLED = os.environ.get("EKSINFER_PROMETHEUS") == "1"
pytestmark = [
    pytest.mark.slow,
    pytest.mark.timeout(240),
    pytest.mark.skipif(not ENABLED, reason="live Prometheus tier: run `make test-prometheus`"),
    pytest.mark.skipif(
        PROMETHEUS is None,
        reason="prometheus not installed (run scripts/ensure-deb.sh or apt-get install prometheus)",
    ),
]

# tier1-auto-mode (namespace inference, deployment qwen3-32b, shared prompts: KV hit-rate alert on) with the
# Bedrock tier `eksinfer plan` gives it
PLAN = functools.partial(plans.tier1, "auto-mode", fallback=plans.QWEN_BEDROCK)
FALLBACKS = 24  # requests sent to Bedrock after the first (whose series appears at 1: rate() cannot see it)
# botocore's credential chain fenced in to fake keys: no files, no instance metadata (the stub ignores SigV4)
AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "AKIAEKSINFERTEST0001",
    "AWS_SECRET_ACCESS_KEY": "eksinferTestSecretKey0000000000000000001",
    "AWS_CONFIG_FILE": "/nonexistent/eksinfer-test-aws-config",
    "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent/eksinfer-test-aws-credentials",
    "AWS_EC2_METADATA_DISABLED": "true",
}
FOR_S = 3
EVAL_S = 1
WAIT_S = 60.0  # generous: Prometheus and three Python processes start on a busy 2-core machine
# Dashboard panels and recording rules that need data this stack cannot produce, with the reason.
NEEDS_GPU = "dcgm-exporter's DCGM_FI_PROF_SM_ACTIVE needs an NVIDIA GPU"
NO_DATA_PANELS = {"GPU utilisation (SM active)": NEEDS_GPU}
NO_DATA_RULES = {"eksinfer:gpu_utilization:avg": NEEDS_GPU}
# Recording rules that must be above zero under load (rates, latencies); ratios may be 0.
POSITIVE_RULES = {
    "eksinfer:ttft_seconds:p99",
    "eksinfer:tpot_seconds:p99",
    "eksinfer:tpot_seconds:mean",
    "eksinfer:generation_tokens:rate5m",
    "eksinfer:gateway_requests:rate5m",
    "eksinfer:gateway_ttft_seconds:p99",
    "eksinfer:gateway_scheduling_seconds:p99",
    "eksinfer:gateway_generation_tokens:rate5m",
    "eksinfer:gateway_pool_requests:rate5m",
    "eksinfer:gateway_pool_ttft_seconds:p99",
    "eksinfer:gateway_fallbacks:rate5m",
    "eksinfer:gateway_managed_share:ratio5m",
}


def _rendered() -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """The PrometheusRule, the dashboard and the gateway's YAML config, as `render` writes them."""
    tree = build_tree(PLAN())
    [rule] = [o for o in tree.objects.values() if o["kind"] == "PrometheusRule"]
    [dash] = [json.loads(text) for path, text in tree.files.items() if path.startswith("dashboards/")]
    [cm] = [
        o
        for o in tree.objects.values()
        if o["kind"] == "ConfigMap" and o["metadata"]["name"].endswith("-gateway")
    ]
    return rule, dash, yaml.safe_load(cm["data"]["gateway.yaml"])


def _cascade_sections(rendered: dict[str, Any], model: str, bedrock_url: str) -> dict[str, Any]:
    """The rendered `pools` and `models`, for the simulator's model name and with Bedrock at the stub."""
    pools = {name: dict(pool) for name, pool in rendered["pools"].items()}
    [route] = rendered["models"].values()
    for pool in pools.values():
        if pool["kind"] == "bedrock":
            [model_id] = pool["models"].values()
            pool["models"] = {model: model_id}
            pool["endpoint_url"] = bedrock_url
    return {"pools": pools, "models": {model: route}}


def _context_window(sections: dict[str, Any]) -> int:
    [window] = [p["max_context_tokens"] for p in sections["pools"].values() if p["kind"] == "vllm"]
    assert isinstance(window, int)
    return window


def _fast_rules(rule: dict[str, Any]) -> dict[str, Any]:
    """The rendered group with test durations; expressions untouched."""
    groups = []
    for group in rule["spec"]["groups"]:
        rules = [{**r, "for": f"{FOR_S}s"} if "alert" in r else r for r in group["rules"]]
        groups.append({**group, "interval": f"{EVAL_S}s", "rules": rules})
    return {"groups": groups}


def _scrape_config(ns: str, name: str, engines: list[int], gateway: int) -> dict[str, Any]:
    """What the Prometheus operator would generate from the rendered PodMonitor and ServiceMonitor."""
    engine_targets = [
        {
            "targets": [f"127.0.0.1:{port}"],
            "labels": {
                "namespace": ns,
                "pod": f"{name}-engine-{i}",
                "app_kubernetes_io_instance": name,
                "eksinfer_io_role": "engine",
                "eksinfer_io_pool": "default",
            },
        }
        for i, port in enumerate(engines)
    ]
    gateway_targets = [
        {"targets": [f"127.0.0.1:{gateway}"], "labels": {"namespace": ns, "pod": f"{name}-gw"}}
    ]
    timing = {"scrape_interval": f"{EVAL_S}s", "scrape_timeout": "500ms"}
    return {
        "global": {**timing, "evaluation_interval": f"{EVAL_S}s"},
        "rule_files": ["rules.yaml"],
        "scrape_configs": [
            {"job_name": f"{ns}/{name}-engines", **timing, "static_configs": engine_targets},
            {
                "job_name": f"{name}-gateway",
                **timing,
                "honor_labels": True,
                "static_configs": gateway_targets,
            },
        ],
    }


@contextmanager
def _process(
    cmd: list[str], log: Path, env: dict[str, str] | None = None
) -> Iterator[subprocess.Popen[bytes]]:
    with log.open("wb") as sink:
        proc = subprocess.Popen(
            cmd,
            stdout=sink,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {}), PARENT_ENV: str(os.getpid())},
        )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGCONT)  # a stopped process cannot act on SIGTERM
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _listens(url: str, proc: subprocess.Popen[bytes], log: Path) -> bool:
    assert proc.poll() is None, log.read_text(errors="replace")[-2000:]
    try:
        httpx.get(url, timeout=1.0)
    except httpx.HTTPError:
        return False
    return True


def _answers(url: str, proc: subprocess.Popen[bytes], log: Path) -> bool:
    assert proc.poll() is None, log.read_text(errors="replace")[-2000:]
    try:
        return httpx.get(url, timeout=1.0).status_code == 200
    except httpx.HTTPError:
        return False


class PromApi:
    """Prometheus' own HTTP API: instant queries and the alerts list."""

    def __init__(self, base: str) -> None:
        self.base = base

    def query(self, expr: str) -> list[dict[str, Any]]:
        r = httpx.get(self.base + "/api/v1/query", params={"query": expr}, timeout=10)
        body = r.json()
        assert body["status"] == "success", (expr, body)
        result: list[dict[str, Any]] = body["data"]["result"]
        return result

    def alerts(self, name: str) -> list[dict[str, Any]]:
        body = httpx.get(self.base + "/api/v1/alerts", timeout=10).json()
        return [a for a in body["data"]["alerts"] if a["labels"]["alertname"] == name]


def _queue_behind_each_other(api: PromApi, engine_port: int, model: str) -> float:
    """TTFT fault: three long answers at once to engine 0 (one sequence at a time) wait about 2.5 and 5 s for
    their first token, which puts the engines' TTFT P99 over the 2 s target; EksinferTTFTAboveTarget fires.
    Sent to the engine directly, since the gateway would spread them. Resolving is not waited for: the rule
    reads a 5-minute rate() window, which keeps these observations for 5 minutes. Returns seconds to fire."""
    assert api.alerts("EksinferTTFTAboveTarget") == []  # quiet under the earlier light load
    sent = time.monotonic()  # for the printed report only
    client = openai.OpenAI(base_url=f"http://127.0.0.1:{engine_port}/v1", api_key="none", max_retries=0)

    def long_answer(i: int) -> int:
        answer = client.completions.create(
            model=model, prompt=f"story {i}", max_tokens=300, extra_body={"ignore_eos": True}
        )
        assert answer.usage is not None
        return answer.usage.completion_tokens

    with ThreadPoolExecutor(3) as pool:
        assert list(pool.map(long_answer, range(3))) == [300] * 3
    client.close()

    def firing() -> list[dict[str, Any]]:
        return [a for a in api.alerts("EksinferTTFTAboveTarget") if a["state"] == "firing"]

    until_sync(firing, WAIT_S, "EksinferTTFTAboveTarget fires")
    [alert] = firing()
    assert alert["labels"]["eksinfer_io_role"] == "engine"
    assert float(alert["value"]) > 2.0
    return time.monotonic() - sent


def _scalar(api: PromApi, expr: str) -> float:
    result = api.query(expr)
    return float(result[0]["value"][1]) if result else math.nan


def _load(gateway: int, model: str, requests: int) -> None:
    """Chat requests sharing a system prompt (so prefix hits happen), half of them streamed."""
    client = openai.OpenAI(base_url=f"http://127.0.0.1:{gateway}/v1", api_key="none", max_retries=0)
    system = "You are a careful assistant that answers briefly and cites sources. " * 12
    for i in range(requests):
        messages: Any = [{"role": "system", "content": system}, {"role": "user", "content": f"question {i}"}]
        if i % 2:
            stream = client.chat.completions.create(model=model, messages=messages, max_tokens=6, stream=True)
            texts = [c.choices[0].delta.content for c in stream if c.choices]  # read to the end
            assert any(texts)
        else:
            answer = client.chat.completions.create(model=model, messages=messages, max_tokens=6)
            assert answer.choices[0].message.content
    client.close()


def _too_long_for_the_pool(gateway: int, model: str, window: int, count: int) -> None:
    """Chat requests whose `max_tokens` alone passes the default pool's context window: Bedrock answers."""
    client = openai.OpenAI(base_url=f"http://127.0.0.1:{gateway}/v1", api_key="none", max_retries=0)
    for i in range(count):
        raw = client.chat.completions.with_raw_response.create(
            model=model, messages=[{"role": "user", "content": f"a long story {i}"}], max_tokens=window + 1
        )
        assert raw.headers["x-eksinfer-pool"] == "bedrock"
        assert raw.parse().choices[0].message.content
    client.close()


def _labels(api: PromApi, expr: str, *names: str) -> set[tuple[str, ...]]:
    return {tuple(s["metric"].get(n, "") for n in names) for s in api.query(expr)}


def test_rules_alerts_and_panels_on_a_live_prometheus(tmp_path: Path) -> None:
    assert PROMETHEUS is not None
    rule, dash, rendered_gateway = _rendered()
    ns, name = rule["metadata"]["namespace"], rule["metadata"]["labels"]["app.kubernetes.io/instance"]
    sim_base, kv_base, gw_port, prom_port = free_block(2), free_block(2, REPLAY_OFFSET), free_block(1), 0
    prom_port = free_block(1)
    stub_port = free_block(1)
    opts = StackOptions(replicas=2, port=gw_port, sim_port=sim_base, kv_events_port=kv_base)
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump(_fast_rules(rule), sort_keys=False))
    config = _scrape_config(ns, name, [sim_base, sim_base + 1], gw_port)
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config, sort_keys=False))
    with ExitStack() as stack:
        engines = []
        for i in range(2):  # one process per engine: `eksinfer up` runs them in one, which cannot stall alone
            # engine 0 runs one sequence at a time, so that long requests queue behind each other (TTFT fault)
            extra = ("--max-num-seqs", "1") if i == 0 else ()
            one = StackOptions(replicas=1, sim_port=sim_base + i, kv_events_port=kv_base + i, sim_args=extra)
            log = tmp_path / f"sim{i}.log"
            proc = stack.enter_context(_process(sim_command(one), log))
            engines.append(proc)
            url = f"http://127.0.0.1:{sim_base + i}/health"
            until_sync(lambda u=url, p=proc, f=log: _answers(u, p, f), WAIT_S, f"engine {i} healthy")
        stub_cmd = [sys.executable, "-m", "eksinfer.sim.bedrock", "--port", str(stub_port)]
        stub_log = tmp_path / "bedrock.log"
        stub = stack.enter_context(_process(stub_cmd, stub_log))
        # the stub has no health route: any answer (its 404 JSON) says it listens
        stub_url = f"http://127.0.0.1:{stub_port}"
        until_sync(lambda: _listens(stub_url, stub, stub_log), WAIT_S, "Bedrock stub listening")
        sim_models = httpx.get(f"http://127.0.0.1:{sim_base}/v1/models", timeout=5).json()["data"]
        sections = _cascade_sections(rendered_gateway, sim_models[0]["id"], stub_url)
        window = _context_window(sections)
        config = {**gateway_config(opts).model_dump(mode="json"), **sections}
        (tmp_path / "gateway.json").write_text(json.dumps(config))
        gw_log = tmp_path / "gateway.log"
        gw_cmd = [
            sys.executable,
            "-m",
            "eksinfer.cli.main",
            "gateway",
            "--config",
            str(tmp_path / "gateway.json"),
        ]
        gateway = stack.enter_context(_process(gw_cmd, gw_log, AWS_ENV))
        gw_ready = f"http://127.0.0.1:{gw_port}/ready"
        until_sync(lambda: _answers(gw_ready, gateway, gw_log), WAIT_S, "gateway ready")
        prom_cmd = [PROMETHEUS, f"--config.file={tmp_path / 'prometheus.yml'}"]
        prom_cmd += [
            f"--storage.tsdb.path={tmp_path / 'data'}",
            f"--web.listen-address=127.0.0.1:{prom_port}",
        ]
        prom_log = tmp_path / "prometheus.log"
        prom = stack.enter_context(_process(prom_cmd, prom_log))
        base = f"http://127.0.0.1:{prom_port}"
        until_sync(lambda: _answers(base + "/-/ready", prom, prom_log), WAIT_S, "prometheus ready")
        api = PromApi(base)

        model = httpx.get(f"http://127.0.0.1:{gw_port}/v1/models", timeout=5).json()["data"][0]["id"]
        # Two scrapes of every target before and after the load, so that every rate() has its two samples.
        until_sync(lambda: len(api.query("count_over_time(up[1m]) >= 2")) == 3, WAIT_S, "two scrapes each")
        assert api.alerts("EksinferEngineDown") == []
        _load(gw_port, model, 24)
        # Generated tokens, gateway vs engines, read back from Prometheus once the last scrape has them: the
        # gateway counts half of the answers from usage, half from SSE events (gateway/usage.py); the same.
        engine_q, gateway_q = (
            "sum(vllm:generation_tokens_total)",
            "sum(eksinfer_gateway_generation_tokens_total)",
        )
        until_sync(lambda: _scalar(api, engine_q) == 24 * 6, WAIT_S, "engines generated 24 x 6 tokens")
        expected = 24 * 6
        until_sync(lambda: _scalar(api, gateway_q) == expected, WAIT_S, f"gateway counted {expected}")
        print(f"generated tokens: engines {_scalar(api, engine_q):g}, gateway {_scalar(api, gateway_q):g}")

        # The fallback: one request too long for the default pool, then, once Prometheus holds its series
        # (a counter's first sample is invisible to rate()), FALLBACKS more.
        _too_long_for_the_pool(gw_port, model, window, 1)
        bedrock_q = 'eksinfer_gateway_requests_total{pool="bedrock"}'
        until_sync(lambda: _scalar(api, f"sum({bedrock_q})") == 1, WAIT_S, "Bedrock's first answer scraped")
        _too_long_for_the_pool(gw_port, model, window, FALLBACKS)

        records = [r["record"] for g in rule["spec"]["groups"] for r in g["rules"] if "record" in r]

        def produced(record: str) -> bool:
            values = [float(s["value"][1]) for s in api.query(record)]
            if not values or not all(math.isfinite(v) for v in values):
                return False
            return all(v > 0 for v in values) if record in POSITIVE_RULES else True

        for record in records:
            if record in NO_DATA_RULES:
                assert api.query(record) == [], record
                continue
            until_sync(lambda r=record: produced(r), WAIT_S, f"recording rule {record} has values")
        seen = {r: [round(float(x["value"][1]), 4) for x in api.query(r)] for r in records}
        print("\nrecording rules:", json.dumps(seen))
        ratio = float(api.query("eksinfer:kv_cache_hit_ratio")[0]["value"][1])
        predicted = float(api.query("eksinfer:gateway_predicted_hit_ratio")[0]["value"][1])
        assert 0 < ratio <= 1  # the shared system prompt hits the engines' prefix cache
        assert 0 < predicted <= 1  # and the router predicted it
        errors = float(api.query("eksinfer:gateway_errors:ratio5m")[0]["value"][1])
        assert errors == 0
        # The cascade, per pool: both tiers answered and have a TTFT; the default pool was passed over for
        # context length only; Bedrock's share is a share.
        assert _labels(api, "eksinfer:gateway_pool_requests:rate5m", "pool") == {("default",), ("bedrock",)}
        assert _labels(api, "eksinfer:gateway_pool_ttft_seconds:p99", "pool") == {("default",), ("bedrock",)}
        fallbacks = _labels(api, "eksinfer:gateway_fallbacks:rate5m", "pool", "reason")
        assert fallbacks == {("default", "context_too_long")}
        share = _scalar(api, "eksinfer:gateway_managed_share:ratio5m")
        assert 0.25 < share < 1  # FALLBACKS of about 24 + FALLBACKS + 1 requests, less what rate() cannot see

        empty = []
        for panel in dash["panels"]:
            for target in panel.get("targets", []):  # a row has none
                if not api.query(target["expr"]):
                    empty.append(panel["title"])
        assert sorted(set(empty)) == sorted(NO_DATA_PANELS), empty
        assert any(p["type"] == "row" for p in dash["panels"])  # the cascade row was checked too

        # More than a quarter answered by Bedrock: the sustained-fallback alert fires (for: FOR_S here).
        def bedrock_firing() -> list[dict[str, Any]]:
            return [a for a in api.alerts("EksinferBedrockFallbackSustained") if a["state"] == "firing"]

        fallback_sent = time.monotonic()  # for the printed report only
        until_sync(bedrock_firing, WAIT_S, "EksinferBedrockFallbackSustained fires")
        [alert] = bedrock_firing()
        assert (alert["labels"]["model"], alert["labels"]["severity"]) == (model, "warning")
        bedrock_fired_s = time.monotonic() - fallback_sent

        # Fault: engine 0 stalls. Its scrape times out, up == 0, and the alert fires for that pod only.
        os.kill(engines[0].pid, signal.SIGSTOP)
        stalled_at = time.monotonic()  # for the printed report only

        def firing() -> list[dict[str, Any]]:
            return [a for a in api.alerts("EksinferEngineDown") if a["state"] == "firing"]

        until_sync(lambda: firing(), WAIT_S, "EksinferEngineDown fires")
        [alert] = firing()
        assert alert["labels"]["pod"] == f"{name}-engine-0"
        assert alert["labels"]["severity"] == "critical"
        fired_s = time.monotonic() - stalled_at
        os.kill(engines[0].pid, signal.SIGCONT)
        resumed_at = time.monotonic()
        until_sync(lambda: api.alerts("EksinferEngineDown") == [], WAIT_S, "EksinferEngineDown resolves")
        resolved_s = time.monotonic() - resumed_at
        ttft_fired_s = _queue_behind_each_other(api, sim_base, model)
        print(
            f"EksinferEngineDown (for: {FOR_S}s, eval {EVAL_S}s): fired {fired_s:.1f} s after SIGSTOP, "
            f"resolved {resolved_s:.1f} s after SIGCONT; panels without data: {empty}; "
            f"EksinferTTFTAboveTarget fired {ttft_fired_s:.1f} s after the long requests were sent; "
            f"EksinferBedrockFallbackSustained fired {bedrock_fired_s:.1f} s after the fallbacks (share "
            f"answered by Bedrock {share:.2f})"
        )
