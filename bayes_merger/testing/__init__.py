"""Test doubles shared by the tests and the demo: a fake A1111 server, tiny models."""
