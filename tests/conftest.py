"""Shared test settings: every test runs on loopback with no network and no GPU."""
