"""Which optional extra provides a third-party module, so a command run without it says what to install.

The base install plans and renders; the gateway, simulator, load generator, plots and manifest checks each
come with an extra (pyproject.toml), which keeps a gateway image free of matplotlib and schema bundles.
"""

from __future__ import annotations

# top-level module -> the extra that installs it
PROVIDED_BY = {
    "aiohttp": "gateway",
    "httptools": "gateway",
    "prometheus_client": "gateway",
    "zmq": "gateway",
    "uvloop": "gateway",
    "matplotlib": "plots",
    "jsonschema": "deploy",
    "kubernetes_validate": "deploy",
    "kubernetes": "doctor",
    "tokenizers": "tokenizers",
    "jinja2": "tokenizers",
}


# subcommand -> the extras it runs on (a module several extras share is named after the command's)
FOR_COMMAND = {
    "gateway": "gateway",
    "sim": "sim",
    "bench": "bench,plots",
    "up": "gateway,sim",
    "lint": "deploy",
    "doctor": "doctor",
}


def missing_extra_hint(err: ModuleNotFoundError, command: str | None = None) -> str | None:
    """One line naming the extra to install, or None when the module is not one of ours to explain."""
    top = (err.name or "").split(".", 1)[0]
    if top not in PROVIDED_BY:
        return None
    extra = FOR_COMMAND.get(command or "", PROVIDED_BY[top])
    return f"this command needs the optional module {top!r}: pip install 'eksinfer[{extra}]'"
