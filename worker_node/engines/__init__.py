"""Engines: the small interface every backend implements, and the registry of built-in ones."""

from __future__ import annotations

import os
from pathlib import Path

from worker_node.engines.base import Engine, EngineError, JobContext, JobInput, Output

BUILT_IN = (
    "echo",
    "diagnostic-image",
    "diagnostic-video",
    "piper",
    "espeak",
    "pocketsphinx",
    "llama-cpp",
    "comfyui",
    "openai",
    "kobold",
    "whisper",
    "tts-http",
)


def _required(variable: str, engine: str) -> str:
    value = os.environ.get(variable)
    if not value:
        raise ValueError(f"the {engine} engine needs {variable} (docs/engines.md)")
    return value


def build(name: str) -> Engine:
    """Instantiate a built-in engine by name; HTTP engines read their server from the environment."""
    if name == "echo":
        from worker_node.engines.echo import EchoEngine

        return EchoEngine()
    if name in ("diagnostic-image", "diagnostic-video"):
        from worker_node.engines.diagnostic import DiagnosticImageEngine, DiagnosticVideoEngine

        return DiagnosticImageEngine() if name == "diagnostic-image" else DiagnosticVideoEngine()
    if name == "piper":
        from worker_node.engines.piper import PiperEngine

        return PiperEngine()
    if name == "espeak":
        from worker_node.engines.espeak import EspeakEngine

        return EspeakEngine()
    if name == "pocketsphinx":
        from worker_node.engines.pocketsphinx_stt import PocketSphinxEngine

        return PocketSphinxEngine()
    if name == "llama-cpp":
        from worker_node.engines.llama_cpp import LlamaCppEngine

        path = os.environ.get("TESSERA_LLAMA_MODEL")
        return LlamaCppEngine(
            Path(path) if path else None, prompt_format=os.environ.get("TESSERA_LLAMA_FORMAT") or "completion"
        )
    if name == "comfyui":
        from worker_node.engines.comfyui import ComfyUIEngine
        from worker_node.engines.llm_http import model_map

        checkpoints = os.environ.get("TESSERA_COMFYUI_MODELS")
        return ComfyUIEngine(
            _required("TESSERA_COMFYUI_URL", name),
            model_map(checkpoints) if checkpoints else None,
            templates_dir=os.environ.get("TESSERA_COMFYUI_TEMPLATES"),
            slots=int(os.environ.get("TESSERA_COMFYUI_SLOTS") or 1),
        )
    if name in ("whisper", "tts-http"):
        from worker_node.engines.llm_http import model_map
        from worker_node.engines.speech_http import SpeechEngine, WhisperEngine

        prefix = "TESSERA_WHISPER" if name == "whisper" else "TESSERA_TTS"
        url, models = _required(f"{prefix}_URL", name), model_map(_required(f"{prefix}_MODELS", name))
        api = os.environ.get(f"{prefix}_API") or "openai"
        slots = int(os.environ.get(f"{prefix}_SLOTS") or 2)
        key = os.environ.get(f"{prefix}_API_KEY")
        if name == "whisper":
            return WhisperEngine(url, models, api=api, slots=slots, api_key=key)
        return SpeechEngine(
            url, models, api=api, slots=slots, api_key=key, default_voice=os.environ.get("TESSERA_TTS_VOICE")
        )
    if name in ("openai", "kobold"):
        from worker_node.engines.llm_http import KoboldEngine, OpenAIChatEngine, model_map

        prefix = f"TESSERA_{name.upper()}"
        url, models = _required(f"{prefix}_URL", name), model_map(_required(f"{prefix}_MODELS", name))
        slots = int(os.environ.get(f"{prefix}_SLOTS") or (4 if name == "openai" else 1))
        if name == "openai":
            return OpenAIChatEngine(url, models, api_key=os.environ.get("TESSERA_OPENAI_API_KEY"), slots=slots)
        return KoboldEngine(url, models, slots=slots, stream=os.environ.get("TESSERA_KOBOLD_STREAM", "1") != "0")
    raise ValueError(f"unknown engine {name!r}; built in: {', '.join(BUILT_IN)}")


__all__ = ["Engine", "EngineError", "JobContext", "JobInput", "Output", "build"]
