"""Long speech for the tests: an espeak-ng sentence repeated to the length wanted, as a WAV file.

PocketSphinx decodes this at about a third of real time on a development machine here (120 s of
audio took 37 s), holding the GIL throughout: the load that once got a worker declared lost.
"""

from __future__ import annotations

import io
import wave

SENTENCE = (
    "please call stella ask her to bring these things with her from the store. "
    "six spoons of fresh snow peas, five thick slabs of blue cheese, and maybe a snack for her brother bob."
)


def speech_wav(seconds: float) -> bytes:
    """`seconds` of synthetic speech, 16-bit mono at espeak-ng's own rate."""
    import numpy as np

    from worker_node.engines.espeak import _Espeak

    espeak = _Espeak.get()
    sentence = np.frombuffer(espeak.synthesize(SENTENCE, "en-us", 160), dtype="<i2")
    frames = int(seconds * espeak.rate)
    samples = np.tile(sentence, frames // len(sentence) + 1)[:frames]
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(espeak.rate)
        wav.writeframes(samples.tobytes())
    return buffer.getvalue()
