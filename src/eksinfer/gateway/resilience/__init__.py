"""The gateway's resilience layer: what to do when an engine, a pool or a whole tier fails.

    errors.py    the three error classes (retryable, fall-back-worthy, terminal) and the one classifier
    config.py    the `resilience:` section of the gateway YAML
    policy.py    retries: exponential backoff with jitter, and the gateway-wide retry budget
    outlier.py   per-endpoint passive health: ejection after consecutive failures, slow start on return
    breaker.py   per-pool circuit breaker: closed, open, half-open with one trial request
    health.py    active health checks (GET /health) beside the passive ones
    cascade.py   per-model ordered tiers of pools, and why a pool is skipped (shedding, context, circuit)
    prefill.py   an engine's prefill time per uncached prompt token, from its own vLLM histograms
    stream.py    the streaming commit point, text already sent, and the continuation request

Everything here is synchronous bookkeeping over injected clocks and random generators, except the health
checker's background loop; the proxy (`gateway/proxy.py`) calls it.
"""
