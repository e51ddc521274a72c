"""The router: `Router` (router.py) composed of small parts, one job each (kv_feed, tokens, ledger, tasks)."""

from eksinfer.gateway.routing.router import Decision, NoEndpointError, Router

__all__ = ["Decision", "NoEndpointError", "Router"]
