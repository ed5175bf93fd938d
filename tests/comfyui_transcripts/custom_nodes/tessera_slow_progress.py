"""A ComfyUI custom node for recording transcripts: sleeps per step and reports progress as KSampler does.

Loaded by the real ComfyUI only (record.py links it into ComfyUI's custom_nodes); never imported by
Tessera's tests. `fail` raises inside the node, so the transcript holds a real `execution_error`.
"""

import time

import comfy.utils
from PIL import Image


class TesseraSlowProgress:
    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "image": ("IMAGE",),
                "steps": ("INT", {"default": 4, "min": 1, "max": 1000}),
                "seconds_per_step": ("FLOAT", {"default": 0.2, "min": 0.0, "max": 60.0, "step": 0.01}),
                "preview": ("BOOLEAN", {"default": True}),
                "fail": ("BOOLEAN", {"default": False}),
                "seed": ("INT", {"default": 0, "min": 0, "max": 2**48}),
            }
        }

    RETURN_TYPES = ("IMAGE",)
    FUNCTION = "run"
    CATEGORY = "tessera/testing"

    def run(self, image, steps, seconds_per_step, preview, fail, seed):
        bar = comfy.utils.ProgressBar(steps)
        for step in range(steps):
            time.sleep(seconds_per_step)
            if fail and step == steps // 2:
                raise RuntimeError("tessera test node failed on purpose")
            shown = ("JPEG", Image.new("RGB", (16, 16), (seed % 256, 0, 0)), 512) if preview else None
            bar.update_absolute(step + 1, steps, shown)
        return (image,)


NODE_CLASS_MAPPINGS = {"TesseraSlowProgress": TesseraSlowProgress}
NODE_DISPLAY_NAME_MAPPINGS = {"TesseraSlowProgress": "Tessera slow progress (test)"}
