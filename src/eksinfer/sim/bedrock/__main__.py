"""`python -m eksinfer.sim.bedrock`: the Bedrock Runtime stub on its own, for a gateway or botocore to call.

    python -m eksinfer.sim.bedrock --port 8089 --throttle-share 0.1 --first-token-s 0.76 --tokens-per-s 60
    # then: pools.bedrock.endpoint_url: http://127.0.0.1:8089 in the gateway YAML

Not an `eksinfer` subcommand: it is a test double, not something a deployment runs.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib

from eksinfer.sim.bedrock.stub import StubFaults, start_stub


def _share(value: str) -> float:
    try:
        share = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a number") from None
    if not 0.0 <= share <= 1.0:
        raise argparse.ArgumentTypeError("must be in [0, 1]")
    return share


def _seconds(value: str) -> float:
    try:
        seconds = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a number") from None
    if not 0.0 <= seconds <= 3600.0:
        raise argparse.ArgumentTypeError("must be in [0, 3600] seconds")
    return seconds


def _rate(value: str) -> float:
    try:
        rate = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a number") from None
    if not 0.0 <= rate <= 100_000.0:
        raise argparse.ArgumentTypeError("must be in [0, 100000] tokens/s")
    return rate


def _count(value: str) -> int:
    if not value.isdigit() or not 0 < int(value) <= 100_000:
        raise argparse.ArgumentTypeError("must be an integer in [1, 100000]")
    return int(value)


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m eksinfer.sim.bedrock", description=__doc__.splitlines()[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8089)
    p.add_argument("--output-tokens", type=_count, default=16, help="words per answer (before maxTokens)")
    p.add_argument("--models", default="", help="comma-separated model ids served; empty: any")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--first-token-s",
        type=_seconds,
        default=0.76,
        help="the service's time to the first token (Artificial Analysis, Bedrock Claude 3 Sonnet median)",
    )
    p.add_argument(
        "--tokens-per-s", type=_rate, default=60.0, help="output tokens per second after it; 0: unpaced"
    )
    p.add_argument("--latency-jitter", type=_share, default=0.2, help="per-request spread, +/- share")
    p.add_argument("--throttle-share", type=_share, default=0.0, help="429 ThrottlingException share")
    p.add_argument("--unavailable-share", type=_share, default=0.0, help="503 ServiceUnavailable share")
    p.add_argument("--first-event-delay-s", type=_seconds, default=0.0)
    p.add_argument("--token-delay-s", type=_seconds, default=0.0)
    p.add_argument("--break-share", type=_share, default=0.0, help="streams that break mid-way")
    p.add_argument("--break-after-events", type=_count, default=2)
    p.add_argument("--break-mode", choices=("exception", "reset"), default="exception")
    p.add_argument(
        "--no-prefill-models",
        default="",
        help="comma-separated model ids that refuse a conversation ending with an assistant message",
    )
    return p.parse_args(argv)


async def serve(args: argparse.Namespace) -> None:
    faults = StubFaults(
        throttle_share=args.throttle_share,
        unavailable_share=args.unavailable_share,
        first_event_delay_s=args.first_event_delay_s,
        token_delay_s=args.token_delay_s,
        break_share=args.break_share,
        break_after_events=args.break_after_events,
        break_mode=args.break_mode,
    )
    models = frozenset(m.strip() for m in args.models.split(",") if m.strip()) or None
    running = await start_stub(
        args.host,
        args.port,
        output_tokens=args.output_tokens,
        known_models=models,
        first_token_s=args.first_token_s,
        tokens_per_s=args.tokens_per_s,
        latency_jitter=args.latency_jitter,
        seed=args.seed,
        faults=faults,
        no_prefill_models=frozenset(m.strip() for m in args.no_prefill_models.split(",") if m.strip()),
    )
    print(f"Bedrock Runtime stub on {running.url}", flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        await running.stop()


def main(argv: list[str] | None = None) -> None:
    args = parse(argv)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(args))


if __name__ == "__main__":
    main()
