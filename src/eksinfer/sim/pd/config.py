"""`--kv-transfer-config`: vLLM's KVTransferConfig JSON, and the link the simulated KV transfer crosses.

Field names, defaults and roles are vLLM 0.32's (vllm/config/kv_transfer.py): `kv_connector`, `kv_role`
(kv_producer, kv_consumer, kv_both), `engine_id` (a random UUID when unset), `kv_connector_extra_config`,
`kv_load_failure_policy` ("fail" by default: a request whose KV cannot be pulled finishes with an error;
"recompute": it is prefilled locally). The simulator implements the NixlConnector only.

How long a prefill engine keeps blocks pinned for a decode engine that never pulls them: vLLM 0.32 grants a
lease of `kv_connector_extra_config.kv_lease_duration` seconds (30 by default) that the decode side renews
with heartbeats every lease / 6 s while its request waits (nixl/base_scheduler.py); older vLLM releases had
a fixed `VLLM_NIXL_ABORT_REQUEST_TIMEOUT` (480 s) instead. The simulator follows 0.32.
"""

from __future__ import annotations

import json
import math
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from eksinfer.errors import ConfigError

FLAG = "--kv-transfer-config"
KV_ROLES = ("kv_producer", "kv_consumer", "kv_both")
LINKS = ("nvlink", "efa", "tcp")
Link = Literal["nvlink", "efa", "tcp"]
DEFAULT_LEASE_S = 30.0  # vLLM 0.32 kv_lease_duration
SIDE_CHANNEL_PORT = 5600  # vLLM's VLLM_NIXL_SIDE_CHANNEL_PORT default
SIDE_CHANNEL_HOST = "localhost"  # vLLM's VLLM_NIXL_SIDE_CHANNEL_HOST default

# vLLM 0.32 KVTransferConfig fields: anything else is refused, as vLLM's config dataclass refuses it.
_FIELDS: dict[str, type | tuple[type, ...]] = {
    "kv_connector": str,
    "engine_id": (str, type(None)),
    "kv_buffer_device": str,
    "kv_role": str,
    "kv_port": int,
    "kv_connector_extra_config": dict,
    "kv_connector_module_path": (str, type(None)),
    "enable_permute_local_kv": bool,
    "kv_load_failure_policy": str,
}


@dataclass(frozen=True, slots=True)
class KvTransferConfig:
    """The parts of vLLM's KVTransferConfig the simulated NixlConnector reads."""

    kv_role: str = "kv_both"
    engine_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    kv_load_failure_policy: Literal["fail", "recompute"] = "fail"
    extra: Mapping[str, Any] = field(default_factory=dict)

    @property
    def lease_s(self) -> float:
        return float(self.extra.get("kv_lease_duration", DEFAULT_LEASE_S))

    @property
    def heartbeat_s(self) -> float:
        """vLLM: the decode side renews leases every lease // 6 seconds (at least 1 s here for whole leases;
        fractional leases, a simulator-only convenience for tests, renew at lease / 6)."""
        lease = self.lease_s
        return lease // 6 if lease >= 6 else lease / 6

    @property
    def lease_extension_s(self) -> float:
        """vLLM: a heartbeat moves the expiry to at least now + lease x 2/3."""
        return self.lease_s * 2 / 3

    @classmethod
    def from_json(cls, text: str) -> KvTransferConfig:
        """Parse the flag value; a ConfigError names the bad field."""
        try:
            raw = json.loads(text)
        except json.JSONDecodeError as err:
            raise ConfigError(f"not valid JSON: {err.msg}", field=FLAG) from err
        if not isinstance(raw, dict):
            raise ConfigError("must be a JSON object", field=FLAG)
        for key, value in raw.items():
            want = _FIELDS.get(key)
            if want is None:
                raise ConfigError(
                    f"unknown field (vLLM's KVTransferConfig has {', '.join(_FIELDS)})", field=f"{FLAG}.{key}"
                )
            if not isinstance(value, want) or (isinstance(value, bool) and want is int):
                raise ConfigError(f"bad value {value!r}", field=f"{FLAG}.{key}")
        connector = raw.get("kv_connector")
        if connector != "NixlConnector":
            msg = f"the simulator implements NixlConnector only, got {connector!r}"
            raise ConfigError(msg, field=f"{FLAG}.kv_connector")
        role = raw.get("kv_role")
        if role not in KV_ROLES:  # vLLM: "Please specify kv_role when kv_connector is set"
            raise ConfigError(f"must be one of {', '.join(KV_ROLES)}", field=f"{FLAG}.kv_role")
        policy = raw.get("kv_load_failure_policy", "fail")
        if policy not in ("fail", "recompute"):
            raise ConfigError("must be fail or recompute", field=f"{FLAG}.kv_load_failure_policy")
        extra = raw.get("kv_connector_extra_config") or {}
        lease = extra.get("kv_lease_duration", DEFAULT_LEASE_S)
        if isinstance(lease, bool) or not isinstance(lease, int | float) or not 0 < lease < math.inf:
            raise ConfigError(
                "must be a number of seconds > 0", field=f"{FLAG}.kv_connector_extra_config.kv_lease_duration"
            )
        engine_id = raw.get("engine_id") or str(uuid.uuid4())
        return cls(
            kv_role=role,
            engine_id=engine_id,
            kv_load_failure_policy="recompute" if policy == "recompute" else "fail",
            extra=dict(extra),
        )

    def for_replica(self, rank: int, replicas: int, role: str | None = None) -> KvTransferConfig:
        """Replica `rank`'s config in a many-engine process: its own engine id (vLLM suffixes the configured
        id with `_dp<rank>` for every engine of a data-parallel deployment) and, for split pools, its role."""
        from dataclasses import replace

        suffix = f"_dp{rank}" if replicas > 1 else ""
        return replace(self, engine_id=f"{self.engine_id}{suffix}", kv_role=role or self.kv_role)


@dataclass(frozen=True, slots=True)
class SideChannel:
    """Where an engine's NIXL side channel listens and what it advertises (vLLM: VLLM_NIXL_SIDE_CHANNEL_HOST,
    VLLM_NIXL_SIDE_CHANNEL_PORT + data-parallel rank). Port 0 binds a free port (tests)."""

    host: str = SIDE_CHANNEL_HOST
    port: int = SIDE_CHANNEL_PORT
