"""Prefill/decode disaggregation in the gateway: the llm-d NIXL v2 request steps run from the proxy.

`config.PdProfile` is the per-model YAML (`disaggregation:`), `protocol` the wire rules (which fields each hop
carries), `coordinator.PdCoordinator` the hook the proxy calls before it posts to the chosen decode endpoint,
`answer` the rewrite of the decode answer's cached-token count, `metrics` what the hook reports.
"""
