"""Talking to an AUTOMATIC1111-compatible WebUI, and the payloads it renders."""
