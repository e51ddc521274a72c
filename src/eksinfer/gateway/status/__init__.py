"""The gateway's status page: `/status` (plain HTML, a small inline script) polls `/status.json`, built by
`board.StatusBoard` from the endpoints' live state and a short rolling window of finished requests."""
