"""The LoRA adapters one simulated engine serves, and vLLM 0.32's runtime load / unload routes.

`--lora-modules` adapters are loaded at start; with `VLLM_ALLOW_RUNTIME_LORA_UPDATING` set (as vLLM reads
it), `POST /v1/load_lora_adapter` and `POST /v1/unload_lora_adapter` change the set while serving. The checks,
messages and statuses are vLLM's (`entrypoints/openai/models/serving.py`, captured in
tests/sim/data/vllm-0.32-leftovers.json): a success is a plain-text 200 body with no content type; a
loaded adapter gets the next integer id (reloading in place keeps its id) and appears in `/v1/models`
(parent: the base model, `max_model_len: null`); requests may name it as `model`, and while they run or
wait it is listed in `vllm:lora_requests_info`, which the gateway's lora-affinity scorer reads.

The simulator loads no weights: a local path (absolute, or starting with `.` or `~`) must exist, anything
else is taken as a hub id that "downloads"; a missing local path gets vLLM's 404 with the path hidden as
vLLM's error sanitiser hides it.
"""

from __future__ import annotations

import itertools
import os
import re
from collections.abc import KeysView, Mapping
from typing import Any

from eksinfer.sim import protocol as p

_PATHS = (
    re.compile(r"/(?:home|usr|opt|var|tmp|root|lib|mnt|srv)(?:/[\w.\-]+)+"),
    re.compile(r"(?:/[\w\-]+)+/[\w\-]+\.\w+"),
)


def _sanitize(message: str) -> str:
    """vLLM's `sanitize_message`: file paths in error messages become `<path>`."""
    for pattern in _PATHS:
        message = pattern.sub("<path>", message)
    return message.strip()


def _invalid(message: str, status: int = 400) -> p.ApiError:
    return p.ApiError(status, message, type_="InvalidUserInput" if status == 400 else "NotFoundError")


class LoraRegistry:
    """Adapter name -> (integer id, path) of one engine; ids count up from 1 as vLLM's do."""

    def __init__(self, base_names: tuple[str, ...], static: Mapping[str, str]) -> None:
        self.base_names = base_names
        self._ids = itertools.count(1)
        self.adapters: dict[str, tuple[int, str]] = {
            name: (next(self._ids), path) for name, path in static.items()
        }

    @property
    def names(self) -> KeysView[str]:
        """A live view: request validation sees adapters loaded later."""
        return self.adapters.keys()

    def path(self, name: str) -> str | None:
        entry = self.adapters.get(name)
        return entry[1] if entry else None

    def id(self, name: str) -> int | None:
        entry = self.adapters.get(name)
        return entry[0] if entry else None

    def load(self, body: dict[str, Any]) -> str:
        missing = [f for f in ("lora_name", "lora_path") if f not in body]
        if missing:
            raise p.missing_fields(body, missing)
        name, path = body["lora_name"], body["lora_path"]
        if not isinstance(name, str) or not isinstance(path, str):
            raise p.ApiError(400, "lora_name and lora_path must be strings", type_="Bad Request")
        inplace = bool(body.get("load_inplace", False))
        if not name or not path:
            raise _invalid("Both 'lora_name' and 'lora_path' must be provided.")
        if name in self.base_names:
            raise _invalid(f"The lora adapter '{name}' conflicts with a served base model.")
        if not inplace and name in self.adapters:
            raise _invalid(
                f"The lora adapter '{name}' has already been loaded. If you want to load the adapter in "
                "place, set 'load_inplace' to True."
            )
        local = path.startswith(("/", ".", "~"))
        if local and not os.path.isdir(os.path.expanduser(path)):
            raise _invalid(_sanitize(f"Loading lora {name} failed: No adapter found for {path}"), 404)
        lora_id = self.adapters[name][0] if name in self.adapters else next(self._ids)
        self.adapters[name] = (lora_id, path)
        return f"Success: LoRA adapter '{name}' added successfully."

    def unload(self, body: dict[str, Any]) -> str:
        if "lora_name" not in body:
            raise p.missing_fields(body, ["lora_name"])
        name = body["lora_name"]
        if not name:
            raise _invalid("'lora_name' needs to be provided to unload a LoRA adapter.")
        if name not in self.adapters:
            raise _invalid(f"The lora adapter '{name}' cannot be found.", 404)
        del self.adapters[name]
        return f"Success: LoRA adapter '{name}' removed successfully."
