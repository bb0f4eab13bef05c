"""Checkpoints, architectures, merge methods and the in-place Merger."""
