"""The CPU platform plugin: what it registers with verl, and that it switches on only when asked."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

from verl_cpu.patches import _dedupe_backend


@pytest.mark.parametrize(
    ("backend", "expected"),
    [
        ("cpu:gloo,cpu:gloo", "gloo"),
        ("cpu:gloo, cpu:gloo", "gloo"),
        ("cpu:gloo,cuda:nccl", "cpu:gloo,cuda:nccl"),  # a real GPU backend string is untouched
        ("gloo", "gloo"),
        ("nccl", "nccl"),
        (None, None),
    ],
)
def test_dedupe_backend(backend, expected):
    assert _dedupe_backend(backend) == expected


def test_platform_never_auto_detected_and_device_module_answers_verl_calls():
    from verl_cpu.platform import PlatformCPU

    p = PlatformCPU()
    assert p.is_platform_available(use_smi_check=True) is False
    assert (p.device_name, p.communication_backend_name(), p.ray_resource_name()) == ("cpu", "gloo", "GPU")
    mod = p.device_module
    free, total = mod.mem_get_info()
    assert 0 < free <= total
    assert mod.max_memory_allocated() == 0 and mod.empty_cache() is None
    state = mod.get_rng_state()
    import torch

    a = torch.rand(3)
    mod.set_rng_state(state)
    assert torch.equal(a, torch.rand(3)), "get/set_rng_state must round-trip the CPU generator"


def _run(code: str, **env_overrides: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("VERL_PLATFORM", "VERL_USE_EXTERNAL_MODULES")}
    env.update(env_overrides)
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], env=env, capture_output=True, text=True, timeout=180
    )


def test_cpu_mode_registers_engine_rollout_and_gloo_group():
    res = _run(
        """
        import os, torch, torch.distributed as dist
        import verl
        from verl.utils.device import get_device_name, get_device_id, get_nccl_backend
        from verl.utils.distributed import initialize_global_process_group_ray
        from verl.workers.engine.base import EngineRegistry
        from verl.workers.rollout.base import _ROLLOUT_REGISTRY
        print(get_device_name(), get_device_id(), get_nccl_backend())
        print(EngineRegistry.get_engine_cls("language_model", "fsdp2").__name__)
        print(("hf_cpu", "async") in _ROLLOUT_REGISTRY)
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT="29533", RANK="0", WORLD_SIZE="1")
        initialize_global_process_group_ray()  # verl's own call: "cpu:gloo,cpu:gloo"
        t = torch.ones(2); dist.all_reduce(t); print(dist.get_backend(), t.tolist())
        print(dist.init_process_group.verl_cpu_patch)
        """,
        VERL_PLATFORM="cpu",
        VERL_USE_EXTERNAL_MODULES="verl_cpu.plugin",
    )
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stdout.split("\n")[:5] == [
        "cpu cpu gloo",
        "FSDPEngineWithLMHead",
        "True",
        "gloo [1.0, 1.0]",
        "True",
    ]


def test_plugin_without_verl_platform_changes_nothing():
    res = _run(
        """
        import torch.distributed as dist
        import verl
        from verl.plugin.platform import PlatformRegistry, get_platform
        print("cpu" in PlatformRegistry.registered_names(), get_platform().device_name)
        print(not hasattr(dist.init_process_group, "verl_cpu_patch"))
        """,
        VERL_USE_EXTERNAL_MODULES="verl_cpu.plugin",
    )
    assert res.returncode == 0, res.stderr[-3000:]
    registered, device = res.stdout.split("\n")[0].split()
    assert registered == "True" and device != "cpu"
    assert res.stdout.split("\n")[1] == "True", "torch.distributed must not be patched outside CPU mode"


def test_verl_platform_cpu_without_plugin_fails_loudly():
    res = _run(
        """
        import verl
        from verl.plugin.platform import get_platform
        get_platform()
        """,
        VERL_PLATFORM="cpu",
        VERL_USE_EXTERNAL_PLUGINS="none",
    )
    assert res.returncode != 0
    assert "Unknown platform 'cpu'" in res.stderr
