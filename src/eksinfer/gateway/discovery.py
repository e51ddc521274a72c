"""Where the engines are: a static list, or Kubernetes pods kept current with a list + watch over HTTP.

The Kubernetes protocol used (https://kubernetes.io/docs/reference/using-api/api-concepts/#efficient-detection-of-changes):
1. list `GET /api/v1/namespaces/{ns}/pods?labelSelector=...` -> a PodList with `metadata.resourceVersion`;
2. watch the same path with `watch=1&resourceVersion=RV&allowWatchBookmarks=true`: newline-delimited JSON
   events `{"type": ADDED|MODIFIED|DELETED|BOOKMARK|ERROR, "object": ...}`, each advancing RV;
3. when the server ends the watch, watch again from the last RV; on `410 Gone` (RV too old), list again.
A pod is an endpoint while it has an IP, is Running, has condition Ready=True and no deletionTimestamp. A pod
that gets a deletionTimestamp while it runs is drained (no new requests, those in flight finish) and removed
when it stops running or is deleted.
In a cluster the service-account token and CA bundle are read from their standard paths; the token is
re-read on every list because the kubelet rotates it.
"""

from __future__ import annotations

import asyncio
import logging
import os
import ssl
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
import msgspec

from eksinfer.errors import ConfigError
from eksinfer.gateway.config import EndpointsConfig, KubernetesDiscovery
from eksinfer.gateway.endpoints import EndpointRegistry, EndpointSpec

log = logging.getLogger(__name__)

WATCH_TIMEOUT_S = 300  # server-side watch length; the API server's default maximum is 30 to 60 minutes
BACKOFF_S = (0.2, 0.5, 1.0, 2.0, 5.0)


def static_specs(config: EndpointsConfig) -> list[EndpointSpec]:
    return [
        EndpointSpec(url=e.url.rstrip("/"), pool=e.pool, kv_events=e.kv_events, models=tuple(e.models))
        for e in config.static
    ]


def pod_spec(
    pod: Mapping[str, Any], config: KubernetesDiscovery, *, terminating: bool = False
) -> EndpointSpec | None:
    """The endpoint a pod stands for, or None when it should not take traffic. With `terminating`, the
    endpoint of a pod that is being deleted but still runs (to drain it), else None."""
    meta = pod.get("metadata") or {}
    status = pod.get("status") or {}
    ip = status.get("podIP")
    if not ip or bool(meta.get("deletionTimestamp")) != terminating or status.get("phase") != "Running":
        return None
    conditions = status.get("conditions") or []
    ready = any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)
    if not ready and not terminating:  # a terminating pod turns unready as it stops; it still drains
        return None
    host = f"[{ip}]" if ":" in ip else ip
    kv = f"tcp://{host}:{config.kv_events_port}" if config.kv_events_port else None
    return EndpointSpec(url=f"http://{host}:{config.port}", pool=config.pool, kv_events=kv)


class _Gone(Exception):
    """The resourceVersion is too old: list again."""


class KubernetesWatcher:
    """Keeps the registry's share of this selector equal to its ready pods; runs until cancelled."""

    def __init__(
        self, config: KubernetesDiscovery, registry: EndpointRegistry, where: str = "endpoints.kubernetes.0"
    ) -> None:
        self._config = config
        self._where = where  # the config path named in errors
        self._registry = registry
        self._pods: dict[str, EndpointSpec] = {}
        self.lists = 0
        self.events = 0

    def api_url(self) -> str:
        """The API server's base URL; ConfigError outside a cluster without `api_server`."""
        if self._config.api_server:
            return self._config.api_server.rstrip("/")
        host = os.environ.get("KUBERNETES_SERVICE_HOST")
        port = os.environ.get("KUBERNETES_SERVICE_PORT", "443")
        if not host:
            raise ConfigError(
                "not running in a cluster (KUBERNETES_SERVICE_HOST unset); set api_server",
                field=f"{self._where}.api_server",
            )
        return f"https://{host}:{port}"

    def _path(self) -> str:
        ns = quote(self._config.namespace, safe="")
        return f"/api/v1/namespaces/{ns}/pods?labelSelector={quote(self._config.label_selector, safe='')}"

    def _ssl(self) -> ssl.SSLContext | None:
        ca = self._config.ca_file
        return ssl.create_default_context(cafile=str(ca)) if ca.is_file() else None

    async def _headers(self) -> dict[str, str]:
        token_file: Path = self._config.token_file
        token = await asyncio.to_thread(_read_token, token_file)
        return {"Authorization": f"Bearer {token}"} if token else {}

    async def run(self) -> None:
        base = self.api_url() + self._path()
        ssl_ctx = await asyncio.to_thread(self._ssl)
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=5, sock_read=WATCH_TIMEOUT_S + 30)
        failures = 0
        async with aiohttp.ClientSession(timeout=timeout) as session:
            while True:
                try:
                    headers = await self._headers()
                    rv = await self._list(session, base, headers, ssl_ctx)
                    failures = 0
                    while True:
                        rv = await self._watch(session, base, headers, ssl_ctx, rv)
                except _Gone:
                    log.info("watch resourceVersion expired; listing pods again")
                except (aiohttp.ClientError, TimeoutError, ValueError, msgspec.DecodeError) as err:
                    delay = BACKOFF_S[min(failures, len(BACKOFF_S) - 1)]
                    failures += 1
                    log.warning("kubernetes discovery failed (%s); retrying in %.1f s", err, delay)
                    await asyncio.sleep(delay)

    async def _list(
        self,
        session: aiohttp.ClientSession,
        base: str,
        headers: dict[str, str],
        ssl_ctx: ssl.SSLContext | None,
    ) -> str:
        async with session.get(base, headers=headers, ssl=ssl_ctx if ssl_ctx else True) as resp:
            if resp.status != 200:
                raise ValueError(f"pod list returned HTTP {resp.status}")
            doc = msgspec.json.decode(await resp.read())
        self.lists += 1
        old, self._pods = self._pods, {}
        draining: list[EndpointSpec] = []
        for pod in doc.get("items") or []:
            key = _pod_key(pod)
            spec = pod_spec(pod, self._config)
            if spec is None and old.get(key) is not None:
                spec = pod_spec(pod, self._config, terminating=True)
                if spec is not None and spec == old[key]:
                    draining.append(spec)
                else:
                    spec = None
            if spec is not None:
                self._pods[key] = spec
        # Only this watcher's own pods change: static endpoints and other selectors' pods stay.
        for key, spec in old.items():
            if self._pods.get(key) != spec:
                self._registry.remove(spec.id)
        for key, spec in self._pods.items():
            if old.get(key) != spec:
                self._registry.add(spec)
        for spec in draining:
            self._registry.drain(spec.id)
        return str((doc.get("metadata") or {}).get("resourceVersion", ""))

    async def _watch(
        self,
        session: aiohttp.ClientSession,
        base: str,
        headers: dict[str, str],
        ssl_ctx: ssl.SSLContext | None,
        rv: str,
    ) -> str:
        """One watch request; returns the last resourceVersion seen when the server ends it."""
        url = f"{base}&watch=1&allowWatchBookmarks=true&timeoutSeconds={WATCH_TIMEOUT_S}&resourceVersion={rv}"
        async with session.get(url, headers=headers, ssl=ssl_ctx if ssl_ctx else True) as resp:
            if resp.status == 410:
                raise _Gone
            if resp.status != 200:
                raise ValueError(f"pod watch returned HTTP {resp.status}")
            async for line in resp.content:
                if line.strip():
                    rv = self._apply(msgspec.json.decode(line), rv)
        return rv

    def _apply(self, event: dict[str, Any], rv: str) -> str:
        kind = event.get("type")
        obj = event.get("object") or {}
        if kind == "ERROR":
            if obj.get("code") == 410:
                raise _Gone
            raise ValueError(f"watch error: {obj.get('message', obj)}")
        self.events += 1
        new_rv = str((obj.get("metadata") or {}).get("resourceVersion", rv))
        if kind == "BOOKMARK":
            return new_rv
        key = _pod_key(obj)
        old = self._pods.get(key)
        spec = pod_spec(obj, self._config) if kind in ("ADDED", "MODIFIED") else None
        # Deleted but still running (Spot interruption, consolidation, rollout): drain now, remove later.
        terminating = kind == "MODIFIED" and spec is None and old is not None
        if terminating and pod_spec(obj, self._config, terminating=True) == old:
            assert old is not None
            self._registry.drain(old.id)
            return new_rv
        if old is not None and old != spec:
            del self._pods[key]
            self._registry.remove(old.id)
        if spec is not None and old != spec:
            self._pods[key] = spec
            self._registry.add(spec)
        return new_rv


def _pod_key(pod: Mapping[str, Any]) -> str:
    meta = pod.get("metadata") or {}
    return f"{meta.get('namespace', '')}/{meta.get('name', '')}"


def _read_token(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8").strip()
    except OSError:
        return ""
