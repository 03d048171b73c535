"""The verl changes proposed in docs/UPSTREAM.md still apply to the pinned verl, and do what they say.

``docs/verl_patches/policy_loss_batch_fields.patch`` lets a registered policy loss read extra batch fields.
The project does not need it (it runs on unpatched verl 0.9.1); these tests keep the proposal honest: the
patch applies to the installed verl's files, and a copy of verl with it applied, imported in a subprocess,
passes the fields to the loss, leaves the registered losses' results unchanged, and lets the Prefix-RFT policy
term run as a registered policy loss inside verl's own ``ppo_loss``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PATCH = ROOT / "docs" / "verl_patches" / "policy_loss_batch_fields.patch"
PINNED_VERL = "0.9.1"


def _installed_verl() -> Path:
    import verl

    return Path(verl.__file__).resolve().parent


def _patched_paths(patch: Path) -> list[str]:
    """The repository paths (``verl/...``) the patch changes."""
    paths = re.findall(r"^\+\+\+ b/(\S+)", patch.read_text(), flags=re.MULTILINE)
    assert paths and all(p.startswith("verl/") for p in paths), paths
    return paths


def _link_entries(dst_dir: Path, src_dir: Path) -> None:
    """Make ``dst_dir`` a real folder of symlinks to ``src_dir``'s entries (bytecode caches left out)."""
    if dst_dir.is_symlink():
        dst_dir.unlink()
    dst_dir.mkdir(parents=True, exist_ok=True)
    for entry in src_dir.iterdir():
        target = dst_dir / entry.name
        if entry.name != "__pycache__" and not (target.exists() or target.is_symlink()):
            target.symlink_to(entry)


def _shadow_verl(dest: Path, paths: list[str]) -> Path:
    """A ``verl`` package under ``dest``: real copies of ``paths``, symlinks to the installed verl for the rest."""
    for path in paths:
        src, dst = _installed_verl(), dest / "verl"
        _link_entries(dst, src)
        for part in Path(path).parts[1:-1]:
            src, dst = src / part, dst / part
            _link_entries(dst, src)
        copy = dst / Path(path).name
        copy.unlink()
        shutil.copyfile(src / copy.name, copy)
    return dest


def _git_apply(cwd: Path, *flags: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["git", "apply", *flags, str(PATCH)], cwd=cwd, capture_output=True, text=True, timeout=60
    )


def test_patch_applies_to_the_pinned_verl(tmp_path):
    assert version("verl") == PINNED_VERL
    paths = _patched_paths(PATCH)
    assert paths == ["verl/trainer/ppo/core_algos.py", "verl/workers/utils/losses.py"]
    for path in paths:
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(_installed_verl() / Path(path).relative_to("verl"), tmp_path / path)
    out = _git_apply(tmp_path, "--check", "-v")
    assert out.returncode == 0, out.stderr
    # and the patch is not already in the installed verl (it would then apply in reverse)
    assert _git_apply(tmp_path, "--check", "--reverse").returncode != 0


PROBE = r'''
import json, sys
import torch
from verl.utils import tensordict_utils as tu
from verl.workers.config import FSDPActorConfig
from verl.workers.utils.losses import ppo_loss

def nested(rows, dtype):
    return torch.nested.as_nested_tensor([torch.as_tensor(r, dtype=dtype) for r in rows], layout=torch.jagged)

def batch():
    """Three sequences (prompt 2 tokens, responses 4/6/3), the first two with demo prefixes."""
    g = torch.Generator().manual_seed(0)
    lens, prefix = [4, 6, 3], [[1, 1, 0, 0], [1, 1, 1, 0, 0, 0], [0, 0, 0]]
    keep = [[1, 0, 0, 0], [0, 1, 1, 0, 0, 0], [0, 0, 0]]
    old = [(-torch.rand(n, generator=g, dtype=torch.float64) * 2).tolist() for n in lens]
    total = [2 + n for n in lens]
    lp = [torch.rand(t, generator=g, dtype=torch.float64) * -2 for t in total]
    ent = [torch.rand(t, generator=g, dtype=torch.float64) * 3 for t in total]
    offsets = torch.tensor([0] + torch.cumsum(torch.tensor(total), 0).tolist())
    model_output = {
        "log_probs": torch.nested.nested_tensor_from_jagged(torch.cat(lp).requires_grad_(), offsets),
        "entropy": torch.nested.nested_tensor_from_jagged(torch.cat(ent), offsets),
    }
    tensors = {
        "input_ids": nested([[7] * t for t in total], torch.int64),
        "prompts": nested([[7, 7]] * 3, torch.int64),
        "responses": nested([[9] * n for n in lens], torch.int64),
        "response_mask": nested([[1] * n for n in lens], torch.int64),
        "old_log_probs": nested(old, torch.float64),
        "advantages": nested([[a] * n for a, n in zip([1.0, -0.5, 0.7], lens)], torch.float64),
        "ref_log_prob": nested([[-1.0] * n for n in lens], torch.float64),
        "prefix_mask": nested(prefix, torch.int64),
        "prefix_keep_mask": nested(keep, torch.int64),
    }
    info = dict(dp_size=1, batch_num_tokens=sum(lens), global_batch_size=3)
    return model_output, tu.get_tensordict(tensors, non_tensor_dict=info)

def actor(loss_mode="vanilla"):
    return FSDPActorConfig(strategy="fsdp", rollout_n=1, ppo_micro_batch_size_per_gpu=1, entropy_coeff=0.01,
                           use_kl_loss=True, kl_loss_coef=0.1, policy_loss={"loss_mode": loss_mode})

out = {"vanilla": ppo_loss(actor(), *batch())[0].item()}
if sys.argv[1] == "patched":
    import verl
    from verl.trainer.ppo.core_algos import agg_loss, register_policy_loss
    from prefix_rft.actor_loss import demo_keep_mask, prefix_rft_ppo_loss, token_loss
    from prefix_rft.config import from_dict

    out["verl_file"] = verl.__file__
    prefix_cfg = from_dict({"num_prefixed": 1, "loss": {"entropy_bonus_on_prefix": True}}, rollout_n=8)
    seen = {}

    @register_policy_loss("prefix_rft", batch_fields=("prefix_mask", "prefix_keep_mask", "not_in_batch"))
    def prefix_rft_policy_loss(old_log_prob, log_prob, advantages, response_mask, loss_agg_mode, config,
                               rollout_is_weights=None, batch=None, entropy=None):
        """The Prefix-RFT policy term as a registered policy loss (possible only with the patch)."""
        seen.update(fields=sorted(batch), entropy_shape=list(entropy.shape), mask_shape=list(response_mask.shape))
        prefix_mask = batch["prefix_mask"].bool() & response_mask
        keep = demo_keep_mask(prefix_mask, batch["prefix_keep_mask"].bool(), entropy, None, prefix_cfg.entropy_clip)
        fields = {"old_log_probs": old_log_prob, "advantages": advantages, "rollout_is_weights": rollout_is_weights}
        loss_mat, _ = token_loss(log_prob, fields, response_mask, prefix_mask, keep, config, prefix_cfg.loss)
        return agg_loss(loss_mat=loss_mat, loss_mask=response_mask, loss_agg_mode=loss_agg_mode,
                        **config.global_batch_info), {}

    out["registered"] = ppo_loss(actor("prefix_rft"), *batch())[0].item()
    out["seen"] = seen
    out["ours"] = prefix_rft_ppo_loss(actor(), *batch(), prefix_config=prefix_cfg)[0].item()
print("RESULT " + json.dumps(out))
'''


def _probe(mode: str, pythonpath: Path | None) -> dict:
    env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1")
    if pythonpath is not None:
        env["PYTHONPATH"] = os.pathsep.join([str(pythonpath), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    out = subprocess.run(
        [sys.executable, "-c", PROBE, mode], capture_output=True, text=True, timeout=300, env=env, cwd=ROOT
    )
    assert out.returncode == 0, out.stderr[-3000:]
    line = [ln for ln in out.stdout.splitlines() if ln.startswith("RESULT ")][-1]
    return json.loads(line[len("RESULT ") :])


def test_patched_ppo_loss_hands_the_batch_fields_to_a_registered_policy_loss(tmp_path):
    shadow = _shadow_verl(tmp_path, _patched_paths(PATCH))
    out = _git_apply(shadow)
    assert out.returncode == 0, out.stderr
    plain = _probe("unpatched", None)
    patched = _probe("patched", shadow)
    assert Path(patched["verl_file"]).parent == shadow / "verl"  # the patched copy was imported
    # losses registered without batch_fields are called as before: vanilla's value is unchanged
    assert patched["vanilla"] == plain["vanilla"]
    # the requested fields present in the batch, padded like response_mask, and the current entropy
    assert patched["seen"]["fields"] == ["prefix_keep_mask", "prefix_mask"]
    assert patched["seen"]["entropy_shape"] == patched["seen"]["mask_shape"] == [3, 6]
    # the Prefix-RFT policy term inside verl's ppo_loss equals prefix_rft_ppo_loss (entropy bonus and KL
    # over every response token, i.e. entropy_bonus_on_prefix=true and prefix_tokens=train)
    assert patched["registered"] == pytest.approx(patched["ours"], abs=1e-12)
    assert patched["registered"] != pytest.approx(patched["vanilla"], abs=1e-6)  # demo tokens were masked
