"""What a worker says about its GPU in each heartbeat: name, memory, utilisation.

NVML through `nvidia-ml-py` when it is installed (the `gpu` extra); otherwise `nvidia-smi`; on a
machine with neither, nothing. A worker started with `--gpu N` reports GPU N. NVML numbers GPUs
the way nvidia-smi does, whatever CUDA_VISIBLE_DEVICES says.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import subprocess
from typing import Any

log = logging.getLogger(__name__)

SMI_FIELDS = ("index", "name", "memory.total", "memory.used", "memory.free", "utilization.gpu")


def parse_smi(output: str, index: int | None) -> dict[str, Any] | None:
    """One GPU's line of `nvidia-smi --query-gpu=<SMI_FIELDS> --format=csv,noheader,nounits`."""
    for line in output.strip().splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) != len(SMI_FIELDS):
            continue
        if index is not None and parts[0] != str(index):
            continue
        try:
            return {
                "index": int(parts[0]),
                "name": parts[1],
                "memory_total_mib": int(float(parts[2])),
                "memory_used_mib": int(float(parts[3])),
                "memory_free_mib": int(float(parts[4])),
                "utilization_percent": int(float(parts[5])),
                "source": "nvidia-smi",
            }
        except ValueError:  # "[N/A]" and the like
            return None
    return None


def _nvml(index: int) -> dict[str, Any] | None:
    try:
        import pynvml  # from nvidia-ml-py
    except ImportError:
        return None
    try:
        pynvml.nvmlInit()
        try:
            handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            memory = pynvml.nvmlDeviceGetMemoryInfo(handle)
            name = pynvml.nvmlDeviceGetName(handle)
            return {
                "index": index,
                "name": name.decode() if isinstance(name, bytes) else name,
                "memory_total_mib": memory.total // 2**20,
                "memory_used_mib": memory.used // 2**20,
                "memory_free_mib": memory.free // 2**20,
                "utilization_percent": pynvml.nvmlDeviceGetUtilizationRates(handle).gpu,
                "source": "nvml",
            }
        finally:
            pynvml.nvmlShutdown()
    except pynvml.NVMLError as exc:
        log.debug("NVML could not read GPU %d: %s", index, exc)
        return None


def _smi(index: int) -> dict[str, Any] | None:
    binary = shutil.which("nvidia-smi")
    if binary is None:
        return None
    try:
        result = subprocess.run(
            [binary, f"--query-gpu={','.join(SMI_FIELDS)}", "--format=csv,noheader,nounits"],
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        )
    except (subprocess.SubprocessError, OSError) as exc:
        log.debug("nvidia-smi failed: %s", exc)
        return None
    return parse_smi(result.stdout, index)


def probe(index: int | None) -> dict[str, Any] | None:
    """The GPU's state now, or None when there is no GPU to read."""
    which = 0 if index is None else index
    return _nvml(which) or _smi(which)


async def probe_async(index: int | None) -> dict[str, Any] | None:
    """`probe` off the event loop: NVML and nvidia-smi can take tens of milliseconds."""
    return await asyncio.to_thread(probe, index)


def max_resolution_for(memory_total_mib: int) -> int | None:
    """The largest image side a GPU of this memory is offered (None: no limit): a conservative
    guess for SDXL/FLUX-class models, which an operator overrides with --max-resolution."""
    for limit_mib, side in ((10 * 1024, 1024), (20 * 1024, 1536), (40 * 1024, 2048)):
        if memory_total_mib < limit_mib:
            return side
    return None
