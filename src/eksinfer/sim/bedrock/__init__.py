"""A local stand-in for Amazon Bedrock Runtime that speaks its wire protocol, for tests and benchmarks.

`eventstream` encodes `application/vnd.amazon.eventstream` frames; `stub` serves Converse (JSON) and
ConverseStream (event-stream frames) with AWS error shapes and fault injection. Real botocore reaches it
through `endpoint_url`. Run it alone with `python -m eksinfer.sim.bedrock --port 8089`.
"""

from eksinfer.sim.bedrock.stub import BedrockStub, StubFaults, start_stub

__all__ = ["BedrockStub", "StubFaults", "start_stub"]
