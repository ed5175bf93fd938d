"""Word error rate of the offline speech-to-text (PocketSphinx) on sentences spoken by Piper.

Each sentence is synthesised by the Piper engine (the default offline TTS, voice "joe"),
transcribed by the PocketSphinx engine, and scored: WER = (substitutions + deletions + insertions)
/ reference words, from a plain edit distance over lower-cased words without punctuation. Prints
each sentence's WER and transcript, then the overall WER (errors over all reference words).

    python bench/stt_wer.py [--speed 175]
"""

from __future__ import annotations

import argparse
import asyncio
import re
import sys
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from worker_node.engines.base import JobContext, JobInput
from worker_node.engines.piper import PiperEngine
from worker_node.engines.pocketsphinx_stt import PocketSphinxEngine

SENTENCES = (
    "The quick brown fox jumps over the lazy dog.",
    "Please call Stella and ask her to bring these things with her from the store.",
    "The weather today is sunny with a light breeze from the west.",
    "I would like to book a table for two at seven o'clock tonight.",
    "Turn left at the next corner and the station is on your right.",
    "She sells sea shells by the sea shore every summer morning.",
    "Our meeting has been moved to Thursday afternoon at three.",
    "Can you send me the report before the end of the week?",
)


def words(text: str) -> list[str]:
    return re.sub(r"[^a-z' ]", " ", text.lower()).split()


def edit_distance(reference: list[str], hypothesis: list[str]) -> int:
    """Substitutions + deletions + insertions that turn `reference` into `hypothesis`."""
    previous = list(range(len(hypothesis) + 1))
    for i, ref in enumerate(reference, 1):
        current = [i]
        for j, hyp in enumerate(hypothesis, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (ref != hyp)))
        previous = current
    return previous[-1]


async def no_progress(_fraction: float | None, _message: str | None, _partial: str | None) -> None:
    return None


async def main(speed: int) -> None:
    tts, stt = PiperEngine(), PocketSphinxEngine()
    errors = total = 0
    try:
        for sentence in SENTENCES:
            job = JobInput(uuid.uuid4(), 1, "tts", "piper-joe", {"prompt": sentence, "speed": speed})
            [audio] = await tts.run(job, JobContext(no_progress))
            wav = audio.data or b""

            async def fetch(_name: str, wav: bytes = wav) -> bytes:
                return wav

            params = {"input": {"object": "bench", "content_type": "audio/wav"}}
            [text] = await stt.run(
                JobInput(uuid.uuid4(), 1, "stt", "pocketsphinx-en", params), JobContext(no_progress, fetch)
            )
            reference, hypothesis = words(sentence), words(text.text or "")
            distance = edit_distance(reference, hypothesis)
            errors, total = errors + distance, total + len(reference)
            print(f"WER {distance / len(reference):6.1%}  {sentence}\n             heard: {text.text}")
    finally:
        await tts.close()
        await stt.close()
    print(f"overall WER {errors / total:.1%} ({errors} errors in {total} words, {len(SENTENCES)} sentences)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--speed", type=int, default=175, help="Piper's pace, words per minute")
    asyncio.run(main(parser.parse_args().speed))
