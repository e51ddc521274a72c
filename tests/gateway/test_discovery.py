"""Kubernetes discovery against a fake API server.

No Kubernetes API server runs here, so a small aiohttp app speaks the part of its protocol the gateway uses:
`GET /api/v1/namespaces/{ns}/pods?labelSelector=...` (PodList with metadata.resourceVersion) and the same path
with `watch=1&resourceVersion=RV` (newline-delimited JSON watch events, ERROR with code 410 when RV is gone).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiohttp import web

from eksinfer.errors import ConfigError
from eksinfer.gateway.config import KubernetesDiscovery, parse_config
from eksinfer.gateway.discovery import KubernetesWatcher, pod_spec
from eksinfer.gateway.endpoints import EndpointRegistry
from eksinfer.gateway.runtime import build_runtime
from tests.gateway.test_proxy_fakes import FakeEngine, RoundRobinRouter
from tests.local_http import serve
from tests.waiting import until

pytestmark = pytest.mark.timeout(30)
TOKEN = "sa-token-123"


def pod(name: str, ip: str, *, ready: bool = True, rv: int = 1, phase: str = "Running") -> dict[str, Any]:
    return {
        "metadata": {"name": name, "namespace": "llm", "resourceVersion": str(rv), "labels": {"app": "vllm"}},
        "status": {
            "phase": phase,
            "podIP": ip,
            "conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
        },
    }


@dataclass
class FakeApiServer:
    pods: list[dict[str, Any]] = field(default_factory=list)
    list_rv: int = 10
    events: asyncio.Queue[dict[str, Any] | None] = field(default_factory=asyncio.Queue)
    lists: int = 0
    watch_rvs: list[str] = field(default_factory=list)
    bad_auth: int = 0
    selector: str = "app=vllm"
    url: str = ""
    runner: web.AppRunner | None = None

    async def start(self) -> FakeApiServer:
        app = web.Application()
        app.add_routes([web.get("/api/v1/namespaces/{ns}/pods", self._pods)])
        self.runner, self.url = await serve(app)
        return self

    async def _pods(self, request: web.Request) -> web.StreamResponse:
        if request.headers.get("Authorization") != f"Bearer {TOKEN}":
            self.bad_auth += 1
            return web.json_response({"kind": "Status", "code": 401}, status=401)
        assert request.match_info["ns"] == "llm"
        assert request.query["labelSelector"] == self.selector
        if request.query.get("watch") != "1":
            self.lists += 1
            doc = {"kind": "PodList", "metadata": {"resourceVersion": str(self.list_rv)}, "items": self.pods}
            return web.json_response(doc)
        self.watch_rvs.append(request.query["resourceVersion"])
        resp = web.StreamResponse(headers={"Content-Type": "application/json"})
        await resp.prepare(request)
        while (event := await self.events.get()) is not None:  # None: the server ends this watch
            await resp.write(json.dumps(event).encode() + b"\n")
            if event["type"] == "ERROR":
                break  # the API server ends a watch after an ERROR event
        await resp.write_eof()
        return resp


@pytest.fixture
async def api() -> AsyncIterator[FakeApiServer]:
    server = await FakeApiServer().start()
    yield server
    assert server.runner is not None
    await server.runner.cleanup()


def discovery(
    api: FakeApiServer, tmp_path: Path, port: int = 8000, pool: str = "default"
) -> KubernetesDiscovery:
    token = tmp_path / "token"
    token.write_text(TOKEN + "\n")
    return KubernetesDiscovery(
        namespace="llm",
        label_selector=api.selector,
        pool=pool,
        port=port,
        kv_events_port=5557,
        api_server=api.url,
        token_file=token,
        ca_file=tmp_path / "no-ca.crt",
    )


def test_pod_spec_rules(tmp_path: Path) -> None:
    config = KubernetesDiscovery(namespace="n", label_selector="a=b", port=9000, kv_events_port=5557)
    spec = pod_spec(pod("a", "10.0.0.1"), config)
    assert spec is not None
    assert (spec.url, spec.kv_events, spec.id) == (
        "http://10.0.0.1:9000",
        "tcp://10.0.0.1:5557",
        "10.0.0.1:9000",
    )
    assert pod_spec(pod("a", "10.0.0.1", ready=False), config) is None
    assert pod_spec(pod("a", "10.0.0.1", phase="Pending"), config) is None
    assert pod_spec(pod("a", ""), config) is None
    deleting = pod("a", "10.0.0.1")
    deleting["metadata"]["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    assert pod_spec(deleting, config) is None
    v6 = pod_spec(pod("a", "fd00::1"), config)
    assert v6 is not None
    assert v6.url == "http://[fd00::1]:9000"


async def test_list_watch_resume_and_relist_on_410(api: FakeApiServer, tmp_path: Path) -> None:
    api.pods = [pod("p1", "10.0.0.1"), pod("p2", "10.0.0.2", ready=False)]
    registry = EndpointRegistry()
    watcher = KubernetesWatcher(discovery(api, tmp_path), registry)
    task = asyncio.create_task(watcher.run())
    try:
        await until(lambda: len(api.watch_rvs) == 1)
        assert [s.id for s in registry.all()] == ["10.0.0.1:8000"]
        assert api.watch_rvs == ["10"]
        await api.events.put({"type": "ADDED", "object": pod("p3", "10.0.0.3", rv=11)})
        await api.events.put({"type": "MODIFIED", "object": pod("p2", "10.0.0.2", rv=12)})
        await api.events.put({"type": "DELETED", "object": pod("p1", "10.0.0.1", rv=13)})
        await api.events.put({"type": "BOOKMARK", "object": {"metadata": {"resourceVersion": "15"}}})
        await until(lambda: watcher.events == 4)
        assert sorted(s.id for s in registry.all()) == ["10.0.0.2:8000", "10.0.0.3:8000"]
        await api.events.put({"type": "MODIFIED", "object": pod("p3", "10.0.0.3", ready=False, rv=16)})
        await until(lambda: watcher.events == 5)
        assert [s.id for s in registry.all()] == ["10.0.0.2:8000"]
        await api.events.put(None)  # the server closes the watch: resume from the last RV seen
        await until(lambda: len(api.watch_rvs) == 2)
        assert api.watch_rvs[1] == "16"
        api.pods = [pod("p4", "10.0.0.4")]
        api.list_rv = 30
        await api.events.put({"type": "ERROR", "object": {"kind": "Status", "code": 410, "reason": "Gone"}})
        await until(lambda: len(api.watch_rvs) == 3)
        assert api.lists == 2
        assert api.watch_rvs[2] == "30"
        assert [s.id for s in registry.all()] == ["10.0.0.4:8000"]
        assert api.bad_auth == 0
    finally:
        task.cancel()
        await api.events.put(None)


async def test_gateway_follows_pods(api: FakeApiServer, tmp_path: Path) -> None:
    engine = await FakeEngine().start()
    port = int(engine.url.rsplit(":", 1)[1])
    api.pods = [pod("p1", "127.0.0.1")]
    config = parse_config({"server": {"host": "127.0.0.1", "port": 0}, "scrape": {"interval_s": 0.05}})
    config = config.model_copy(
        update={
            "endpoints": config.endpoints.model_copy(update={"kubernetes": [discovery(api, tmp_path, port)]})
        }
    )
    router = RoundRobinRouter()
    runtime = build_runtime(config, router=router)
    await runtime.start()
    try:
        assert await runtime.wait_ready(3.0)
        assert router.added == [(f"127.0.0.1:{port}", "tcp://127.0.0.1:5557")]
        url = f"http://127.0.0.1:{runtime.port}/v1/completions"
        async with httpx.AsyncClient() as client:
            assert (await client.post(url, json={"model": "tiny", "prompt": "x"})).status_code == 200
            await api.events.put({"type": "DELETED", "object": pod("p1", "127.0.0.1", rv=11)})
            await until(lambda: not runtime.registry.all())
            assert router.removed == [f"127.0.0.1:{port}"]
            r = await client.post(url, json={"model": "tiny", "prompt": "x"})
            assert r.status_code == 404  # no endpoint left serves any model
    finally:
        await api.events.put(None)
        await runtime.stop()
        await engine.stop()


async def test_two_selectors_and_static_endpoints_keep_their_own(tmp_path: Path) -> None:
    """Each watcher changes only its own pods: a relist on one selector leaves the static endpoint and the
    other selector's pods alone (a hybrid plan: a cloud pool and an on-prem pool)."""
    cloud = await FakeApiServer(selector="app=vllm,pool=cloud").start()
    onprem = await FakeApiServer(selector="app=vllm,pool=onprem").start()
    cloud.pods = [pod("c1", "10.0.0.1"), pod("c2", "10.0.0.2")]
    onprem.pods = [pod("o1", "192.168.0.1")]
    config = parse_config(
        {
            "server": {"host": "127.0.0.1", "port": 0},
            "endpoints": {
                "static": [{"url": "http://127.0.0.9:8000", "pool": "reserve"}],
                "kubernetes": [
                    discovery(cloud, tmp_path, pool="cloud").model_dump(),
                    discovery(onprem, tmp_path, pool="onprem").model_dump(),
                ],
            },
        }
    )
    runtime = build_runtime(config, router=RoundRobinRouter())
    await runtime.start()

    def pools() -> dict[str, str]:
        return {s.id: s.pool for s in runtime.registry.all()}

    try:
        await until(lambda: len(cloud.watch_rvs) == 1 and len(onprem.watch_rvs) == 1)
        assert pools() == {
            "127.0.0.9:8000": "reserve",
            "10.0.0.1:8000": "cloud",
            "10.0.0.2:8000": "cloud",
            "192.168.0.1:8000": "onprem",
        }
        cloud.pods = [pod("c2", "10.0.0.2")]  # c1 went away while the watch was down: a relist finds out
        await cloud.events.put({"type": "ERROR", "object": {"kind": "Status", "code": 410, "reason": "Gone"}})
        await until(lambda: cloud.lists == 2)
        await until(lambda: "10.0.0.1:8000" not in pools())
        assert pools() == {
            "127.0.0.9:8000": "reserve",
            "10.0.0.2:8000": "cloud",
            "192.168.0.1:8000": "onprem",
        }
        await onprem.events.put({"type": "DELETED", "object": pod("o1", "192.168.0.1", rv=11)})
        await until(lambda: "192.168.0.1:8000" not in pools())
        assert pools() == {"127.0.0.9:8000": "reserve", "10.0.0.2:8000": "cloud"}
    finally:
        for api in (cloud, onprem):
            await api.events.put(None)
        await runtime.stop()
        for api in (cloud, onprem):
            assert api.runner is not None
            await api.runner.cleanup()


async def test_outside_a_cluster_without_api_server_is_a_config_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    config = parse_config(
        {
            "server": {"host": "127.0.0.1", "port": 0},
            "endpoints": {"kubernetes": {"namespace": "llm", "label_selector": "app=vllm"}},
        }
    )
    runtime = build_runtime(config, router=RoundRobinRouter())
    with pytest.raises(ConfigError, match=r"^endpoints\.kubernetes\.0\.api_server: not running in a cluster"):
        await runtime.start()


async def test_a_pod_with_a_deletion_timestamp_drains(api: FakeApiServer, tmp_path: Path) -> None:
    """Spot interruption: the pod gets a deletionTimestamp and keeps running for its grace period. It takes
    no new request (they go to the static engine) and finishes the one in flight; then it is removed."""
    pod_engine = await FakeEngine().start()
    other = await FakeEngine().start()
    port = int(pod_engine.url.rsplit(":", 1)[1])
    api.pods = [pod("p1", "127.0.0.1")]
    config = parse_config(
        {
            "server": {"host": "127.0.0.1", "port": 0},
            "endpoints": {"static": [{"url": other.url, "pool": "static"}]},
            "scrape": {"interval_s": 0.05},
            "resilience": {"health_checks": {"enabled": False}, "slow_start_s": 0, "stall_after_s": 0},
        }
    )
    config = config.model_copy(
        update={
            "endpoints": config.endpoints.model_copy(update={"kubernetes": [discovery(api, tmp_path, port)]})
        }
    )
    runtime = build_runtime(config, router=RoundRobinRouter())
    await runtime.start()
    pod_id = f"127.0.0.1:{port}"
    try:
        await until(
            lambda: len(runtime.registry.all()) == 2 and all(s.models for s in runtime.registry.all())
        )
        hold = asyncio.Event()
        pod_engine.behaviour.hold = hold
        url = f"http://127.0.0.1:{runtime.port}/v1/completions"
        async with httpx.AsyncClient(timeout=20) as client:
            in_flight: asyncio.Task[httpx.Response] | None = None
            while in_flight is None:  # round robin: send until one request is held on the pod
                task = asyncio.create_task(client.post(url, json={"model": "tiny", "prompt": "x"}))
                await until(
                    lambda t=task: t.done() or pod_engine.held == 1,  # type: ignore[misc]
                    what="request answered or held",
                )
                if pod_engine.held == 1:
                    in_flight = task
            deleting = pod("p1", "127.0.0.1", rv=11)
            deleting["metadata"]["deletionTimestamp"] = "2026-12-03T15:00:00Z"
            await api.events.put({"type": "MODIFIED", "object": deleting})
            await until(lambda: runtime.registry.draining(pod_id), what="pod draining")
            before = pod_engine.requests
            for _ in range(4):
                r = await client.post(url, json={"model": "tiny", "prompt": "x"})
                assert r.status_code == 200
            assert pod_engine.requests == before  # no new request on the draining pod
            assert pod_id in {s.id for s in runtime.registry.all()}
            hold.set()
            assert (await in_flight).status_code == 200  # the one in flight finished
            gone = pod("p1", "127.0.0.1", rv=12, phase="Succeeded")
            gone["metadata"]["deletionTimestamp"] = "2026-12-03T15:00:00Z"
            await api.events.put({"type": "MODIFIED", "object": gone})
            await until(lambda: pod_id not in {s.id for s in runtime.registry.all()}, what="pod removed")
            assert not runtime.registry.draining(pod_id)
    finally:
        await api.events.put(None)
        await runtime.stop()
        await pod_engine.stop()
        await other.stop()


def test_pod_spec_of_a_terminating_pod(tmp_path: Path) -> None:
    config = KubernetesDiscovery(namespace="n", label_selector="a=b", port=9000)
    deleting = pod("a", "10.0.0.1", ready=False)
    deleting["metadata"]["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    spec = pod_spec(deleting, config, terminating=True)
    assert spec is not None
    assert spec.id == "10.0.0.1:9000"  # unready as it stops, still drained
    assert pod_spec(pod("a", "10.0.0.1"), config, terminating=True) is None  # not terminating
