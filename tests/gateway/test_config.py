"""Gateway YAML validation: defaults, overrides and one-line errors that name the field."""

from __future__ import annotations

from pathlib import Path

import pytest

from eksinfer.errors import ConfigError, UsageError
from eksinfer.gateway.config import load_config, parse_config, with_overrides


def test_defaults() -> None:
    config = load_config(None)
    assert config.server.port == 8000
    assert config.server.max_body_bytes == 8 * 1024 * 1024
    assert config.server.engine_keepalive_s < 5  # under uvicorn's (vLLM's) keep-alive timeout
    assert config.endpoints.static == []
    assert config.auth.load_keys() == frozenset()


@pytest.mark.parametrize(
    ("doc", "field"),
    [
        ({"server": {"port": 70000}}, "server.port"),
        ({"server": {"prot": 1}}, "server.prot"),
        ({"endpoints": {"static": [{"url": "10.0.0.1:8000"}]}}, "endpoints.static.0"),
        ({"endpoints": {"static": [{"pool": "a"}]}}, "endpoints.static.0.url"),
        ({"endpoints": {"kubernetes": {"namespace": "x"}}}, "endpoints.kubernetes.0.label_selector"),
        (
            {"endpoints": {"kubernetes": [{"namespace": "x", "label_selector": "a=b"}, {"namespace": "y"}]}},
            "endpoints.kubernetes.1.label_selector",
        ),
        ({"scrape": {"interval_s": 0}}, "scrape.interval_s"),
        ({"server": {"engine_keepalive_s": 0}}, "server.engine_keepalive_s"),
        ({"routing": {"preset": "nope"}}, "routing.preset"),
        ({"routing": {"tokenizer": {"mode": "x"}}}, "routing.tokenizer.mode"),
        ({"extra": 1}, "extra"),
    ],
)
def test_errors_name_the_field(doc: dict[str, object], field: str) -> None:
    from eksinfer.gateway.runtime import make_router

    # An unknown preset is found when the router builds its profiles, the rest when the file is parsed.
    with pytest.raises(UsageError) as info:
        make_router(parse_config(doc))
    assert str(info.value).startswith(field + ":")


def test_yaml_file_and_overrides(tmp_path: Path) -> None:
    path = tmp_path / "gateway.yaml"
    path.write_text(
        "server: {port: 9000}\n"
        "endpoints:\n  static:\n    - {url: 'http://a:8000/', pool: p1, kv_events: 'tcp://a:5557'}\n"
        "routing: {preset: load}\n"
    )
    config = load_config(path)
    assert config.server.port == 9000
    assert config.endpoints.static[0].kv_events == "tcp://a:5557"
    over = with_overrides(
        config, endpoints=["http://b:1/", "http://c:2|tcp://c:5557"], preset="round-robin", port=1
    )
    assert [(e.url, e.kv_events) for e in over.endpoints.static] == [
        ("http://b:1", None),
        ("http://c:2", "tcp://c:5557"),
    ]
    assert over.routing["preset"] == "round-robin"
    assert over.server.port == 1


def test_bad_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"--config: cannot read"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("server: [1,\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    bad.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="mapping at the top level"):
        load_config(bad)


def test_api_keys_file_and_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    keys = tmp_path / "keys"
    keys.write_text("# comment\nalpha\n\n beta \n")
    monkeypatch.setenv("GW_KEYS", "gamma,delta")
    config = parse_config({"auth": {"api_keys_file": str(keys), "api_keys_env": "GW_KEYS"}})
    assert config.auth.load_keys() == {"alpha", "beta", "gamma", "delta"}
    monkeypatch.setenv("GW_KEYS", " ")
    with pytest.raises(ConfigError, match=r"auth\.api_keys_env"):
        config.auth.load_keys()
    missing = parse_config({"auth": {"api_keys_file": str(tmp_path / "nope")}})
    with pytest.raises(ConfigError, match=r"auth\.api_keys_file"):
        missing.auth.load_keys()
