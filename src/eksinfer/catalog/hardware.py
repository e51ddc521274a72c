"""GPU, EC2 instance and price-book records, built from the YAML files under `catalog/data/`."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from eksinfer.errors import ConfigError

# One TCP flow between two instances in a cluster placement group: "up to 10 Gbps" (5 Gbps outside one),
# AWS EC2 User Guide, "Amazon EC2 instance network bandwidth". NIXL without EFA falls back to UCX over TCP
# on the pod's ENA interface; the simulator prices such a KV transfer at this single-flow rate.
TCP_FLOW_GBPS = 10.0


@dataclass(frozen=True, slots=True)
class GpuSpec:
    """One GPU model. Bandwidths are GB/s; TFLOPS are dense (no sparsity)."""

    name: str
    memory_gib: float
    hbm_bandwidth_gbps: float
    bf16_tflops: float
    fp8_tflops: float | None
    nvlink_gbps: float  # per direction per GPU; 0 when GPUs talk over PCIe only
    pcie_gbps: float
    mig: bool
    mig_profiles: tuple[str, ...]
    source: str
    as_of: str
    fp4_tflops: float | None = None  # FP4 tensor cores (Blackwell): NVFP4 / MXFP4 W4A4 GEMMs

    @property
    def memory_bytes(self) -> float:
        return self.memory_gib * 2**30

    @property
    def interconnect_gbps(self) -> float:
        """GB/s one GPU moves to a peer inside a node (NVLink, else PCIe)."""
        return self.nvlink_gbps or self.pcie_gbps

    def mig_instances_per_gpu(self, profile: str) -> int:
        """How many instances of `profile` one GPU holds.

        A MIG GPU has 7 compute slices and 8 memory slices (NVIDIA MIG User Guide, "Terminology"); an
        `Ng.Mgb` profile takes N compute slices and M / (the full 7g profile's GB) x 8 memory slices, so it
        fits min(7 // N, 8 // memory slices) times. Two profiles with the same N differ by memory: B300's
        1g.34gb fits 7 times, its 1g.67gb 4 times (H100's 1g.10gb / 1g.20gb alike)."""
        return mig_instances(profile, self.mig_profiles)

    def tflops_for(self, precision: str) -> float:
        """Dense tensor-core rate for `precision`: FP8 / FP4 GEMMs where supported, else BF16 (W8A16 /
        W4A16)."""
        if precision == "fp4" and self.fp4_tflops:
            return self.fp4_tflops
        if precision == "fp8" and self.fp8_tflops:
            return self.fp8_tflops
        return self.bf16_tflops


@dataclass(frozen=True, slots=True)
class InstanceSpec:
    """One EC2 instance type with the price of the active price book (None: no on-demand price)."""

    type: str
    family: str
    gpu: str
    gpus: int
    vcpus: int
    memory_gib: float
    network_gbps: float
    efa_gbps: float
    price_per_hour_usd: float | None
    spot_discount: float  # fraction off on-demand (0.6 = 60 % cheaper), 0 when unknown
    price_date: str
    price_source: str
    region: str
    price_book: str = ""
    spot_date: str = ""  # date of the spot discount (spot prices move daily)
    capacity_block_usd: float | None = None  # effective hourly rate of a Capacity Block for ML, when known
    capacity_block_date: str = ""
    reserved_discount: float = 0.0  # fraction off on-demand of a commitment (RI / Savings Plan), 0: unknown
    reserved_date: str = ""
    reserved_term: str = ""  # what the commitment is, e.g. "1-year EC2 Instance Savings Plan, no upfront"

    def price(self, capacity_type: str) -> float | None:
        """USD per instance-hour: on-demand, spot (on-demand x (1 - discount)), capacity-block (the block's
        effective hourly rate) or reserved (on-demand x (1 - commitment discount)); None: not priced."""
        if capacity_type == "capacity-block":
            return self.capacity_block_usd
        if self.price_per_hour_usd is None:
            return None
        if capacity_type == "spot":
            return self.price_per_hour_usd * (1.0 - self.spot_discount)
        if capacity_type == "reserved":
            return (
                self.price_per_hour_usd * (1.0 - self.reserved_discount) if self.reserved_discount else None
            )
        return self.price_per_hour_usd


def mig_instances(profile: str, gpu_profiles: tuple[str, ...]) -> int:
    """Instances of `profile` one GPU holds, given the GPU's own profiles (the largest sets the memory of
    8 slices); with none known, only the compute slices count (7 // N)."""
    compute, memory = _mig_size(profile)
    fits = 7 // max(1, compute)
    full = max((_mig_size(p)[1] for p in gpu_profiles), default=0.0)
    if full > 0 and memory > 0:
        fits = min(fits, 8 // max(1, round(8 * memory / full)))
    return max(1, fits)


def _mig_size(profile: str) -> tuple[int, float]:
    """(compute slices, GB) of a MIG profile name like `1g.67gb` or `all-3g.40gb`; (0, 0) if unreadable."""
    compute, _, memory = profile.removeprefix("all-").partition(".")
    try:
        return int(compute.removesuffix("g")), float(memory.removesuffix("gb"))
    except ValueError:
        return 0, 0.0


def _num(entry: Mapping[str, Any], key: str, where: str) -> float:
    value = entry.get(key)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(f"{where}: expected a number for {key!r}, got {value!r}", field=key)
    return float(value)


def gpu_from_entry(name: str, entry: Mapping[str, Any]) -> GpuSpec:
    fp8 = entry.get("fp8_tflops")
    fp4 = entry.get("fp4_tflops")
    return GpuSpec(
        name=name,
        memory_gib=_num(entry, "memory_gib", name),
        hbm_bandwidth_gbps=_num(entry, "hbm_bandwidth_gbps", name),
        bf16_tflops=_num(entry, "bf16_tflops", name),
        fp8_tflops=None if fp8 is None else float(fp8),
        nvlink_gbps=_num(entry, "nvlink_gbps", name),
        pcie_gbps=_num(entry, "pcie_gbps", name),
        mig=bool(entry.get("mig", False)),
        mig_profiles=tuple(entry.get("mig_profiles") or ()),
        source=str(entry.get("source", "")),
        as_of=str(entry.get("as_of", "")),
        fp4_tflops=None if fp4 is None else float(fp4),
    )


def instance_from_entry(
    name: str, entry: Mapping[str, Any], prices: Mapping[str, Any], region: str | None = None
) -> InstanceSpec:
    """Join an instance's hardware with a price book (`on_demand`, `spot_discount` by type or family,
    `region_factors` by region and family: no factor, no price there; `regional_on_demand` by region and
    type: a price read in that region itself, for a type the book's own region has no row for)."""
    family = name.split(".")[0]
    home = str(prices.get("region", "us-east-1"))
    region = region or home
    on_demand = (prices.get("on_demand") or {}).get(name)
    if region != home:
        own = ((prices.get("regional_on_demand") or {}).get(region) or {}).get(name)
        if own is not None:
            on_demand = own
        elif on_demand is not None:
            factor = ((prices.get("region_factors") or {}).get(region) or {}).get(family)
            on_demand = None if factor is None else float(on_demand) * float(factor)
    if on_demand is not None and (
        isinstance(on_demand, bool) or not isinstance(on_demand, int | float) or on_demand <= 0
    ):
        raise ConfigError(
            f"on-demand price for {name} must be a number > 0, got {on_demand!r}", field="on_demand"
        )
    discount = _fraction(prices, "spot_discount", name, family)
    reserved = _fraction(prices, "reserved_discount", name, family)
    block = (prices.get("capacity_block") or {}).get(name) if region == home else None
    if block is not None and (isinstance(block, bool) or not isinstance(block, int | float) or block <= 0):
        raise ConfigError(
            f"capacity_block rate for {name} must be a number > 0, got {block!r}", field="capacity_block"
        )
    return InstanceSpec(
        type=name,
        family=family,
        gpu=str(entry["gpu"]),
        gpus=int(_num(entry, "gpus", name)),
        vcpus=int(_num(entry, "vcpus", name)),
        memory_gib=_num(entry, "memory_gib", name),
        network_gbps=_num(entry, "network_gbps", name),
        efa_gbps=_num(entry, "efa_gbps", name),
        price_per_hour_usd=None if on_demand is None else float(on_demand),
        spot_discount=discount,
        price_date=str(prices.get("as_of", "")),
        price_source=str(prices.get("source", "")),
        region=region,
        price_book=str(prices.get("name", "")),
        spot_date=str(prices.get("spot_as_of", prices.get("as_of", ""))) if discount else "",
        capacity_block_usd=None if block is None else float(block),
        capacity_block_date=str(prices.get("capacity_block_as_of", "")) if block is not None else "",
        reserved_discount=reserved,
        reserved_date=str(prices.get("reserved_as_of", "")) if reserved else "",
        reserved_term=str(prices.get("reserved_term", "")) if reserved else "",
    )


def _fraction(prices: Mapping[str, Any], key: str, name: str, family: str) -> float:
    """A per-type (else per-family) fraction off on-demand from a price book; 0 when it has none."""
    table = prices.get(key) or {}
    value = float(table.get(name, table.get(family, 0.0)))
    if not 0.0 <= value < 1.0:
        raise ConfigError(f"{key} for {name} must be in [0, 1), got {value}", field=key)
    return value
