"""The only monkeypatches of the CPU path, each where verl 0.9.1 offers no hook.

Applied by ``verl_cpu.plugin`` and only when ``VERL_PLATFORM=cpu``. Every patch is idempotent and
names the verl file/line it works around.
"""

from __future__ import annotations

import functools

import torch
import torch.distributed

_APPLIED: set[str] = set()


def _dedupe_backend(backend: str | None) -> str | None:
    """``"cpu:gloo,cpu:gloo"`` -> ``"gloo"``; any other backend string is returned unchanged."""
    if not isinstance(backend, str) or "," not in backend:
        return backend
    parts = [p.strip() for p in backend.split(",") if p.strip()]
    pairs = {tuple(p.split(":", 1)) for p in parts if ":" in p}
    if len(pairs) == 1 and len(parts) > 1:
        return next(iter(pairs))[1]
    return backend


def patch_gloo_backend_string() -> None:
    """Make ``torch.distributed.init_process_group`` accept verl's duplicated CPU backend string.

    Works around ``verl.utils.distributed.initialize_global_process_group_ray`` (called from
    ``verl.workers.engine_workers.TrainingWorker.__init__``) and ``initialize_global_process_group``: verl builds
    ``f"cpu:gloo,{get_device_name()}:{get_nccl_backend()}"``, which on the CPU platform is
    ``"cpu:gloo,cpu:gloo"`` and torch rejects it ("Duplicate device type cpu"). The platform API has no
    hook for the backend string, so we collapse an all-identical list to its single backend (``gloo``).
    """
    if "gloo_backend" in _APPLIED:
        return
    original = torch.distributed.init_process_group

    @functools.wraps(original)
    def init_process_group(backend=None, *args, **kwargs):
        return original(_dedupe_backend(backend), *args, **kwargs)

    init_process_group.verl_cpu_patch = True  # marker: tests and debugging can tell it is ours
    torch.distributed.init_process_group = init_process_group
    torch.distributed.distributed_c10d.init_process_group = init_process_group
    _APPLIED.add("gloo_backend")


def apply_cpu_patches() -> None:
    """Apply every CPU workaround (idempotent)."""
    patch_gloo_backend_string()
