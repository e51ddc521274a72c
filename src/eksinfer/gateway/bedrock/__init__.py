"""Amazon Bedrock as a gateway tier: OpenAI chat in, Bedrock Runtime Converse / ConverseStream out.

`config` (the pool's YAML section), `translate` (pure OpenAI <-> Converse mapping), `client` (botocore in a
bounded thread pool), `errors` (AWS error codes -> statuses and retry classes), `sse` (chunks -> SSE bytes).
Design notes: docs/bedrock.md.
"""
