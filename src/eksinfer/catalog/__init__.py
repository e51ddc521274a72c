"""Catalogs of models, GPUs and EC2 instances (data in `catalog/data/`, each entry with source and date).

    get_model("llama-3.1-8b") -> ModelSpec        load_model_config(Path) -> ModelSpec
    get_gpu("h100") -> GpuSpec                     get_instance("p5.48xlarge", prices=None) -> InstanceSpec
    list_models(), list_gpus(), list_instances(prices=None)
    mig_instances_per_gpu("B300", "1g.67gb") -> 4

`prices` is a price-book name (`aws-2026-08`, the default because it is the newest dated book, or
`reference`, the 2025 book kept for comparison) or a path to a YAML overrides file (`on_demand: {type: usd}`,
`spot_discount: {type-or-family: fraction}`, `as_of`, `source`, `base`, and the commitment prices
`capacity_block: {type: usd}` / `reserved_discount: {type-or-family: fraction}` with their `*_as_of`,
`*_source` and `reserved_term`) applied on top of a book. `region`
prices an instance in another region by the book's per-family factor; a family the book has no factor for
there is not offered (no price). A type the book's own region has no row for may still be priced in another
region from that region's own row (`regional_on_demand: {region: {type: usd}}`): p6-b300 in us-west-2.
"""

from __future__ import annotations

import functools
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from eksinfer.catalog.hardware import (
    GpuSpec,
    InstanceSpec,
    gpu_from_entry,
    instance_from_entry,
    mig_instances,
)
from eksinfer.catalog.models import ModelSpec, load_model_config, parse_hf_config
from eksinfer.errors import ConfigError, UnknownNameError

__all__ = [
    "DEFAULT_REGION",
    "PRICE_BOOKS",
    "GpuSpec",
    "InstanceSpec",
    "ModelSpec",
    "default_price_book",
    "get_gpu",
    "get_instance",
    "get_model",
    "list_gpus",
    "list_instances",
    "list_models",
    "load_model_config",
    "load_price_book",
    "mig_instances_per_gpu",
    "price_regions",
]

PRICE_BOOKS = ("aws-2026-08", "reference")
# Commitment prices an overrides file may add (docs/planner.md, "Capacity Blocks and reserved pricing"): the
# shipped books carry none, because AWS publishes no current public figure for them that we could date.
COMMITMENT_KEYS = (
    "capacity_block", "capacity_block_as_of", "capacity_block_source",
    "reserved_discount", "reserved_as_of", "reserved_source", "reserved_term",
)  # fmt: skip
DEFAULT_REGION = "us-east-1"


@functools.cache
def _data(name: str) -> dict[str, Any]:
    text = resources.files("eksinfer.catalog").joinpath("data", name).read_text(encoding="utf-8")
    loaded = yaml.safe_load(text)
    assert isinstance(loaded, dict), name
    return loaded


@functools.cache
def _models() -> dict[str, ModelSpec]:
    out: dict[str, ModelSpec] = {}
    for model_id, entry in _data("models.yaml").items():
        published = entry.get("published_params_b") or {}
        out[model_id] = parse_hf_config(
            entry["config"],
            model_id=model_id,
            hf_id=entry["hf_id"],
            hf_variants=entry.get("hf_variants") or {},
            published_total_params_b=float(published.get("total", 0.0)),
            published_active_params_b=float(published.get("active", 0.0)),
            source=str(entry["source"]),
            as_of=str(entry["as_of"]),
        )
    return out


@functools.cache
def _gpus() -> dict[str, GpuSpec]:
    return {name.lower(): gpu_from_entry(name, entry) for name, entry in _data("gpus.yaml").items()}


def list_models() -> list[str]:
    return list(_models())


def get_model(model_id: str) -> ModelSpec:
    """A catalog model by its lower-case id; an unknown id raises UnknownNameError with close names."""
    models = _models()
    spec = models.get(model_id.strip().lower())
    if spec is None:
        raise UnknownNameError("model", model_id, list(models), field="--model")
    return spec


def list_gpus() -> list[str]:
    return [gpu.name for gpu in _gpus().values()]


def get_gpu(name: str) -> GpuSpec:
    """A GPU by name, case-insensitive; `A100` alone means the 80 GB part."""
    key = name.strip().lower()
    gpus = _gpus()
    aliases = {"a100": "a100-80gb", "a100-80": "a100-80gb", "a100-40": "a100-40gb", "h100-sxm": "h100"}
    spec = gpus.get(aliases.get(key, key))
    if spec is None:
        raise UnknownNameError("GPU", name, [g.name for g in gpus.values()], field="gpu")
    return spec


def mig_instances_per_gpu(gpu: str, profile: str) -> int:
    """Instances of a MIG `profile` (`1g.67gb` or `all-1g.67gb`) one `gpu` holds; for a GPU the catalog does
    not know, only its compute slices count (7 // N)."""
    try:
        profiles = get_gpu(gpu).mig_profiles
    except UnknownNameError:
        profiles = ()
    return mig_instances(profile, profiles)


@functools.cache
def default_price_book() -> str:
    """The newest dated book: a plan should not price today's nodes at last year's rates."""
    return max(PRICE_BOOKS, key=lambda name: str(_data(f"prices-{name}.yaml")["as_of"]))


def load_price_book(prices: str | Path | None = None) -> dict[str, Any]:
    """A named price book, or a book (`base`, default the newest) with an overrides file applied on top."""
    if prices is None or str(prices) in PRICE_BOOKS:
        return _data(f"prices-{prices or default_price_book()}.yaml")
    return _with_overrides(str(prices))


def price_regions(prices: str | Path | None = None) -> list[str]:
    """Regions a book prices: its own plus those it has factors or regional rows for."""
    book = load_price_book(prices)
    out = [str(book.get("region", DEFAULT_REGION)), *(book.get("region_factors") or {})]
    return out + [r for r in book.get("regional_on_demand") or {} if r not in out]


@functools.cache
def _with_overrides(path: str) -> dict[str, Any]:
    from eksinfer import untrusted

    if not Path(path).exists():
        raise ConfigError(
            f"no such price book or file {path!r} (books: {', '.join(PRICE_BOOKS)})", field="--prices"
        )
    text = untrusted.read_text(Path(path), field="--prices")
    try:
        loaded = untrusted.load_yaml(text, where=path, field="--prices") or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"cannot read {path!r}: {str(err).splitlines()[0]}", field="--prices") from err
    if not isinstance(loaded, dict):
        raise ConfigError(f"{path!r} must be a mapping", field="--prices")
    unknown = set(loaded) - {
        "name", "region", "as_of", "source", "base", "on_demand", "spot_discount", "spot_as_of",
        "spot_source", "region_factors", "regional_on_demand", *COMMITMENT_KEYS,
    }  # fmt: skip
    if unknown:
        raise ConfigError(f"unknown keys {sorted(unknown)} in {path!r}", field="--prices")
    base = dict(load_price_book(str(loaded.get("base", default_price_book()))))
    for key in ("on_demand", "spot_discount", "region_factors", "capacity_block", "reserved_discount"):
        extra = loaded.get(key) or {}
        if not isinstance(extra, dict):
            raise ConfigError(f"{key} must be a mapping in {path!r}", field="--prices")
        base[key] = {**(base.get(key) or {}), **extra}
    regional = loaded.get("regional_on_demand") or {}
    if not isinstance(regional, dict) or not all(isinstance(v, dict) for v in regional.values()):
        raise ConfigError(
            f"regional_on_demand must map regions to {{type: usd}} in {path!r}", field="--prices"
        )
    merged = dict(base.get("regional_on_demand") or {})
    for region, rows in regional.items():
        merged[region] = {**(merged.get(region) or {}), **rows}
    base["regional_on_demand"] = merged
    for key in ("name", "region", "as_of", "source", "spot_as_of", "spot_source", *COMMITMENT_KEYS):
        if key in ("capacity_block", "reserved_discount"):
            continue
        if key in loaded:
            base[key] = loaded[key]
    base.setdefault("source", path)
    return base


def _check_region(prices: str | Path | None, region: str | None) -> None:
    known = price_regions(prices)
    if region is not None and region not in known:
        raise UnknownNameError("region", region, known, field="--region")


def list_instances(prices: str | Path | None = None, region: str | None = None) -> list[InstanceSpec]:
    _check_region(prices, region)
    book = load_price_book(prices)
    entries = _data("instances.yaml")
    return [
        instance_from_entry(name, entry, book, region)
        for name, entry in entries.items()
        if not name.startswith("_")
    ]


def get_instance(
    instance_type: str, prices: str | Path | None = None, region: str | None = None
) -> InstanceSpec:
    """An EC2 instance type (exact name, case-insensitive) priced from `prices` in `region`."""
    _check_region(prices, region)
    entries = {k: v for k, v in _data("instances.yaml").items() if not k.startswith("_")}
    key = instance_type.strip().lower()
    if key not in entries:
        raise UnknownNameError("instance type", instance_type, list(entries), field="instance")
    return instance_from_entry(key, entries[key], load_price_book(prices), region)
