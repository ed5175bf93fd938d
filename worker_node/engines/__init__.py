"""Engines: the small interface every backend implements, and the registry of built-in ones."""

from __future__ import annotations

from worker_node.engines.base import Engine, EngineError, JobContext, JobInput, Output


def build(name: str) -> Engine:
    """Instantiate a built-in engine by name."""
    if name == "echo":
        from worker_node.engines.echo import EchoEngine

        return EchoEngine()
    if name == "espeak":
        from worker_node.engines.espeak import EspeakEngine

        return EspeakEngine()
    raise ValueError(f"unknown engine {name!r}; built in: echo, espeak")


__all__ = ["Engine", "EngineError", "JobContext", "JobInput", "Output", "build"]
