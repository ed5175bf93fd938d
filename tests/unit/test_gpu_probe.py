"""Reading a GPU's state from nvidia-smi's CSV (NVML is read the same way where installed)."""

from __future__ import annotations

import shutil

import pytest

from worker_node import gpu

SMI = """0, NVIDIA H100 80GB HBM3, 81559, 1024, 80535, 37
1, NVIDIA H100 80GB HBM3, 81559, [N/A], 80535, 0
"""


def test_the_worker_reads_its_own_gpu_from_nvidia_smi() -> None:
    assert gpu.parse_smi(SMI, 0) == {
        "index": 0,
        "name": "NVIDIA H100 80GB HBM3",
        "memory_total_mib": 81559,
        "memory_used_mib": 1024,
        "memory_free_mib": 80535,
        "utilization_percent": 37,
        "source": "nvidia-smi",
    }
    assert gpu.parse_smi(SMI, 1) is None  # a field it cannot read: no figures rather than wrong ones
    assert gpu.parse_smi(SMI, 2) is None and gpu.parse_smi("", None) is None


@pytest.mark.skipif(shutil.which("nvidia-smi") is None, reason="no NVIDIA GPU on this machine")
def test_a_real_gpu_is_read() -> None:
    state = gpu.probe(0)
    assert state is not None and state["memory_total_mib"] > 0 and 0 <= state["utilization_percent"] <= 100


def test_no_gpu_means_no_figures(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(shutil, "which", lambda _name: None)
    monkeypatch.setattr(gpu, "_nvml", lambda _index: None)
    assert gpu.probe(None) is None


def test_image_size_offered_follows_gpu_memory() -> None:
    assert gpu.max_resolution_for(8 * 1024) == 1024  # an 8 GB card
    assert gpu.max_resolution_for(16 * 1024) == 1536
    assert gpu.max_resolution_for(24 * 1024) == 2048
    assert gpu.max_resolution_for(80 * 1024) is None  # an H100: no limit


def test_a_worker_with_a_small_gpu_says_so_in_its_heartbeat() -> None:
    from worker_node.engines.comfyui import ComfyUIEngine
    from worker_node.service import Worker

    worker = Worker(nats_url="nats://unused", worker_id="small", engines=[ComfyUIEngine("http://127.0.0.1:1")])
    worker.gpu_state = {"memory_total_mib": 12 * 1024}
    assert worker.status().max_resolution == 1536
    worker.max_resolution = 2048  # the operator knows better
    assert worker.status().max_resolution == 2048
