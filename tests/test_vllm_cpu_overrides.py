"""The vLLM-on-CPU adaptations (``make test-vllm``) stay in the CPU launcher: the hf_cpu path and the GPU
launchers are unchanged."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks.launch import CPU_OVERRIDES, VLLM_CPU_OVERRIDES, cpu_overrides

ROOT = Path(__file__).resolve().parents[1]


def test_default_is_the_hf_cpu_path_unchanged():
    assert cpu_overrides() == CPU_OVERRIDES
    assert "actor_rollout_ref.rollout.name=hf_cpu" in cpu_overrides()


def test_vllm_swaps_only_the_rollout_and_adds_the_cpu_adaptations():
    ov = cpu_overrides("vllm")
    names = [o for o in ov if o.startswith("actor_rollout_ref.rollout.name=")]
    assert names == ["actor_rollout_ref.rollout.name=vllm"]
    assert [o for o in ov if o not in VLLM_CPU_OVERRIDES] == [
        o for o in CPU_OVERRIDES if not o.startswith("actor_rollout_ref.rollout.name=")
    ]
    assert "+actor_rollout_ref.rollout.enable_sleep_mode=False" in ov
    assert any("worker_extension_cls=verl_cpu.vllm_worker.VLLMCPUWorkerExtension" in o for o in ov)
    with pytest.raises(ValueError, match="hf_cpu"):
        cpu_overrides("sglang")


def test_gpu_launchers_use_none_of_the_cpu_adaptations():
    for script in sorted((ROOT / "scripts").glob("run_*.sh")):
        text = script.read_text()
        assert "vllm_worker" not in text and "VLLM_CPU" not in text and "enable_sleep_mode=False" not in text
