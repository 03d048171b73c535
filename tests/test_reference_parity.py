"""One actor update through verl's real actor path equals the independent reference's (benchmarks/reference_grpo.py).

The project side is verl 0.9.1's own actor worker, in one CPU process (no Ray): the recipe yaml composed
with the CPU overrides, ``ActorRolloutRefWorker(role="actor").init_model()`` (FSDP2 engine, gloo group of
one rank), the project's loss installed as the trainer does (``make_prefix_rft_loss_fn`` via
``set_loss_fn``), then the trainer's steps on a fixed batch: ``compute_log_prob`` (old log-probs and
entropy), verl's ``compute_advantage_for_multi_trajectories`` with the ``prefix_rft`` estimator, the
keep-mask (``build_keep_mask`` over ``actor_minibatch_group_ids``) and ``update_actor`` with the extra
info of ``PPOTrainer._update_actor``: verl forms the 2 mini-batches, packs each into dynamic micro-batches
(the recipe's ``use_dynamic_bsz``; ``ppo_max_token_len_per_gpu=64`` against ~240 tokens per mini-batch: 4
or more micro-batches, each normalised by the mini-batch's global counts) and steps the optimiser once per
mini-batch. It runs in a subprocess because verl picks its device platform at import time
(``VERL_PLATFORM=cpu``). The reference computes the same update with its own forward, advantages,
keep-mask and loss formula, in this process.

Settings: fp32 (``fsdp_config.mixed_precision`` fp32: verl's default would run the actor in bf16),
seq-mean-token-sum-norm with ``loss_scale_factor`` = max response length, clip 0.2, dual clip 3, rollout
temperature 0.7, plain SGD (lr 1, no weight decay, grad clip 1e9: the parameter change is the gradient,
so a wrong scale fails), no entropy bonus, no KL. The old log-probs are each side's own pre-update
forward plus the same fixed offset per token, so that ratios straddle the clip range (and the dual clip)
in both mini-batches; with the exact old log-probs the first mini-batch has ratio 1 everywhere.

Compared: the old log-probs, entropy and advantages each side computed; every parameter tensor's change
over the step and each mini-batch's gradient (relative error <= 1e-4, see :func:`relative_errors`); the
keep-mask, against the rule by hand. Negative controls (one advantage's sign flipped, the normaliser
halved, on the reference side) must be off by more than 1e-2.
"""

from __future__ import annotations

import importlib.util
import math
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
CONFIG_DIR = REPO / "recipe" / "prefix_rft" / "config"
N = 4  # rollouts per prompt
PROMPTS = 4  # 16 rows, 2 mini-batches of 2 prompts (8 rows)
MAX_RESPONSE = 16  # data.max_response_length = loss_scale_factor
TEMPERATURE = 0.7
LR = 1.0
TOL = 1e-4
# demo-prefix lengths of the hybrid rows (session 0 of each prompt): mini-batch 1 holds 7 + 9 = 16 demo
# tokens (ceil(0.2 * 16) = 4 kept), mini-batch 2 holds 4 + 6 = 10 (0.2 * 10 = 2.0000000000000004: 2 kept)
HYBRID_PREFIX = (7, 9, 4, 6)
KEPT_BY_HAND = (4, 2)
REWARDS = ((1, 0, 0, 1), (0, 0, 0, 1), (1, 1, 1, 1), (0, 1, 0, 0))


def overrides(model_dir: str) -> list[str]:
    """The recipe yaml, the CPU overrides of benchmarks.launch, and this test's exact settings."""
    a = "actor_rollout_ref"
    return [
        f"{a}.model.path={model_dir}",
        f"+{a}.model.override_config.attn_implementation=sdpa",
        f"{a}.model.use_remove_padding=False",
        f"{a}.model.enable_gradient_checkpointing=False",
        f"{a}.actor.strategy=fsdp2",
        f"{a}.actor.use_torch_compile=False",
        f"{a}.actor.fsdp_config.use_torch_compile=False",
        f"+{a}.actor.fsdp_config.mixed_precision={{param_dtype:fp32,reduce_dtype:fp32,buffer_dtype:fp32}}",
        f"{a}.rollout.n={N}",
        f"{a}.rollout.temperature={TEMPERATURE}",
        f"{a}.actor.ppo_mini_batch_size={PROMPTS // 2}",
        f"{a}.actor.ppo_max_token_len_per_gpu=64",
        f"{a}.rollout.log_prob_max_token_len_per_gpu=64",
        f"data.max_response_length={MAX_RESPONSE}",
        f"{a}.actor.optim.optimizer=SGD",
        f"{a}.actor.optim.lr={LR}",
        f"{a}.actor.optim.weight_decay=0.0",
        f"{a}.actor.optim.clip_grad=1e9",
        f"{a}.actor.entropy_coeff=0.0",
        f"{a}.actor.calculate_entropy=false",
    ]


def load_reference():
    """benchmarks/reference_grpo.py as a module (benchmarks/ is not an installed package)."""
    spec = importlib.util.spec_from_file_location("reference_grpo", REPO / "benchmarks" / "reference_grpo.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["reference_grpo"] = module
    spec.loader.exec_module(module)
    return module


# ----------------------------------------------------------------------------- the fixed batches


def make_case(tokenizer, hybrid: bool, seed: int) -> dict:
    """Hand-built rollouts: chat prompts of the arith task, random response tokens (the hybrid rows start
    with the task's worked demonstration), fixed 0/1 rewards, and a fixed per-token old log-prob offset."""
    from benchmarks.fixtures import arith
    from benchmarks.fixtures.base_model import render_prompt

    g = torch.Generator().manual_seed(seed)
    specials = set(tokenizer.all_special_ids)
    vocab = [t for t in range(len(tokenizer)) if t not in specials]
    rows = arith.rows(2, PROMPTS, seed=seed, split="train")
    case = {k: [] for k in ("prompt_ids", "response_ids", "prefix_len", "rewards", "uids", "delta")}
    for p, row in enumerate(rows):
        prompt = tokenizer(render_prompt(tokenizer, row["prompt"][0]["content"]), add_special_tokens=False)
        demo = tokenizer(row["demonstrations"][0], add_special_tokens=False)["input_ids"]
        for s in range(N):
            n_prefix = HYBRID_PREFIX[p] if hybrid and s == 0 else 0
            length = int(torch.randint(max(5, n_prefix + 2), MAX_RESPONSE + 1, (1,), generator=g))
            rest = [vocab[int(i)] for i in torch.randint(len(vocab), (length - n_prefix,), generator=g)]
            if s % 2:
                rest[-1] = tokenizer.eos_token_id
            delta = (torch.rand(length, generator=g) - 0.5).tolist()  # ratios in [0.61, 1.65]
            delta[length // 2] = -1.5  # ratio 4.5: the dual clip when A < 0
            case["prompt_ids"].append(prompt["input_ids"])
            case["response_ids"].append(demo[:n_prefix] + rest)
            case["prefix_len"].append(n_prefix)
            case["rewards"].append(float(REWARDS[p][s]))
            case["uids"].append(f"uid{p}")
            case["delta"].append(delta)
    return case


# ----------------------------------------------------------------------------- the verl side (subprocess)


def _nested(rows, dtype):
    return torch.nested.as_nested_tensor([torch.as_tensor(r, dtype=dtype) for r in rows], layout=torch.jagged)


def _full(t: torch.Tensor) -> torch.Tensor:
    """The whole tensor of an FSDP2 (DTensor) parameter or gradient."""
    return t.full_tensor() if hasattr(t, "full_tensor") else t


def _snapshot(named: dict, attr: str | None = None) -> dict[str, torch.Tensor]:
    """A copy of every (whole) parameter, or of its ``attr`` (``grad``)."""
    return {k: _full(p if attr is None else getattr(p, attr)).detach().clone() for k, p in named.items()}


def _padded(nested: torch.Tensor) -> torch.Tensor:
    return nested.to_padded_tensor(0.0) if nested.is_nested else nested


def verl_side(spec_path: str, out_path: str) -> None:
    """Run the trainer's actor steps on each case with verl's real actor worker; save what they produced."""
    import numpy as np
    from hydra import compose, initialize_config_dir
    from verl.protocol import DataProto
    from verl.trainer.ppo.v1.utils import compute_advantage_for_multi_trajectories
    from verl.utils import tensordict_utils as tu
    from verl.utils.config import omega_conf_to_dataclass
    from verl.workers.engine_workers import ActorRolloutRefWorker
    from verl.workers.utils.padding import response_from_nested, response_to_nested

    import prefix_rft.plugin  # noqa: F401  (registers the prefix_rft estimator)
    from prefix_rft.actor_loss import make_prefix_rft_loss_fn
    from prefix_rft.advantage import prefix_rows
    from prefix_rft.config import from_dict
    from prefix_rft.trainer import actor_minibatch_group_ids, build_keep_mask, minibatch_replay_fields

    spec = torch.load(spec_path)
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base=None):
        cfg = compose(config_name="prefix_rft_trainer", overrides=overrides(spec["model_dir"]))
    arr, n = cfg.actor_rollout_ref, cfg.actor_rollout_ref.rollout.n
    prefix_cfg = from_dict(cfg.prefix_rft, n)
    results = {}
    for step, (name, case) in enumerate(spec["cases"].items(), start=1):
        worker = ActorRolloutRefWorker(config=arr, role="actor")
        worker.init_model()
        # what PrefixRFTTrainer._setup installs (build_actor_loss_fn)
        worker.set_loss_fn(make_prefix_rft_loss_fn(omega_conf_to_dataclass(arr.actor), prefix_cfg))
        rows = len(case["prompt_ids"])

        def rollout_fields(case=case):
            """The fields the agent loop puts to TransferQueue (verl's agent_loop_tq)."""
            seqs = [p + r for p, r in zip(case["prompt_ids"], case["response_ids"], strict=True)]
            masks = [[1] * len(r) for r in case["response_ids"]]
            return {
                "prompts": _nested(case["prompt_ids"], torch.int64),
                "responses": _nested(case["response_ids"], torch.int64),
                "input_ids": _nested(seqs, torch.int64),
                "position_ids": _nested([list(range(len(s))) for s in seqs], torch.int64),
                "response_mask": _nested(masks, torch.int64),
                "loss_mask": _nested(masks, torch.int64),
            }

        # 1. old log-probs and entropy (PPOTrainer._compute_old_log_prob)
        data = tu.get_tensordict(rollout_fields())
        tu.assign_non_tensor(
            data, calculate_entropy=True, compute_loss=False, temperature=arr.rollout.temperature
        )
        out = worker.compute_log_prob(data)
        response_mask = rollout_fields()["response_mask"]
        old = _padded(response_from_nested(out["log_probs"], response_mask))
        entropy = _padded(response_from_nested(out["entropy"], response_mask))
        resp = _padded(response_mask).float()

        # 2. advantages: verl's compute path into the prefix_rft estimator (PrefixRFTTrainer._compute_advantage)
        lengths = resp.sum(-1).long()
        token_rewards = torch.zeros_like(resp)
        token_rewards[torch.arange(rows), lengths - 1] = torch.tensor(case["rewards"])
        prefix_len = torch.tensor(case["prefix_len"])
        sessions = [i % n for i in range(rows)]
        with prefix_rows((prefix_len > 0).long(), prefix_cfg.advantage, prefix_len=prefix_len):
            adv = compute_advantage_for_multi_trajectories(
                DataProto.from_dict(
                    tensors={"token_level_rewards": token_rewards, "response_mask": resp},
                    non_tensors={"uid": np.array(case["uids"], dtype=object)},
                ),
                batch_keys=[f"{u}_{s}_0" for u, s in zip(case["uids"], sessions, strict=True)],
                adv_estimator=cfg.algorithm.adv_estimator,
                num_repeat=n,
                norm_adv_by_std_in_grpo=cfg.algorithm.norm_adv_by_std_in_grpo,
                config=cfg.algorithm,
            ).batch["advantages"]

        # 3. the entropy keep-mask over the actor's mini-batches
        mini_rows = arr.actor.ppo_mini_batch_size * n
        groups = actor_minibatch_group_ids(
            rows, 1, mini_rows, shuffle=bool(arr.actor.shuffle), seed=int(arr.actor.data_loader_seed)
        )
        prefix = (torch.arange(resp.shape[1])[None, :] < prefix_len[:, None]).long() * resp.long()
        keep = build_keep_mask(entropy, prefix, prefix_cfg.entropy_clip, groups)

        # 4. the update (PPOTrainer._update_actor)
        delta = torch.zeros_like(old)
        for i, d in enumerate(case["delta"]):
            delta[i, : len(d)] = torch.tensor(d)
        data = tu.get_tensordict(
            {
                **rollout_fields(),
                "old_log_probs": response_to_nested(old + delta, response_mask),
                "entropy": response_to_nested(entropy, response_mask),
                "advantages": response_to_nested(adv, response_mask),
                "prefix_mask": response_to_nested(prefix, response_mask),
                "prefix_keep_mask": response_to_nested(keep, response_mask),
                **minibatch_replay_fields(groups, step),
            }
        )
        tu.assign_non_tensor(
            data,
            calculate_entropy=bool(arr.actor.calculate_entropy or arr.actor.entropy_coeff != 0.0),
            distillation_use_topk=False,
            distillation_only=False,
            global_batch_size=mini_rows,
            mini_batch_size=mini_rows,
            epochs=arr.actor.ppo_epochs,
            seed=arr.actor.data_loader_seed,
            dataloader_kwargs={"shuffle": arr.actor.shuffle},
            temperature=arr.rollout.temperature,
        )
        named = dict(worker.actor.engine.module.named_parameters())
        grads = []  # each mini-batch's gradient, as the optimiser steps on it (an observer: changes nothing)
        worker.actor.engine.optimizer.register_step_pre_hook(
            lambda *_, grads=grads, named=named: grads.append(_snapshot(named, "grad"))
        )
        metrics = worker.update_actor(data)["metrics"]
        params = _snapshot(named)
        results[name] = {
            "old_log_probs": old * resp,
            "entropy": entropy * resp,
            "advantages": adv,
            "keep": keep,
            "params": params,
            "grads": grads,
            "kept_demo_tokens": [float(v) for v in metrics["prefix_rft/kept_demo_tokens"]],
        }
    torch.save(results, out_path)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ----------------------------------------------------------------------------- the comparison


@pytest.fixture(scope="module")
def parity(tmp_path_factory):
    """Build the tiny model and both batches, run verl's actor on them once, load the reference."""
    from benchmarks.fixtures.tiny import build_tiny_model, build_tiny_tokenizer

    root = tmp_path_factory.mktemp("parity")
    tokenizer = build_tiny_tokenizer()
    model_dir = build_tiny_model(str(root / "model"), tokenizer=tokenizer, seed=0)
    cases = {
        "rft": make_case(tokenizer, hybrid=False, seed=1),
        "hybrid": make_case(tokenizer, hybrid=True, seed=2),
    }
    torch.save({"model_dir": model_dir, "cases": cases}, root / "spec.pt")
    env = dict(os.environ)
    env.update(
        VERL_PLATFORM="cpu",
        VERL_USE_EXTERNAL_MODULES="verl_cpu.plugin",
        PYTHONPATH=os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(_free_port()),
        RANK="0",
        WORLD_SIZE="1",
        LOCAL_RANK="0",
        LOCAL_WORLD_SIZE="1",
        OMP_NUM_THREADS="1",
        TOKENIZERS_PARALLELISM="false",
    )
    start = time.monotonic()
    res = subprocess.run(
        [sys.executable, __file__, str(root / "spec.pt"), str(root / "verl.pt")],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-4000:]
    print(f"verl actor subprocess: {time.monotonic() - start:.1f}s")
    verl = torch.load(root / "verl.pt")
    return {"model_dir": model_dir, "cases": cases, "verl": verl, "ref": load_reference(), "memo": {}}


def reference_update(parity, name, *, flip_row=None, scale=1.0):
    """The reference's update of ``name`` on a fresh copy of the initial weights (SGD, lr ``LR``), memoised.

    ``flip_row`` flips the sign of that row's advantage and ``scale`` multiplies the normaliser: the
    negative controls. Returns the parameter changes, each mini-batch's gradients, the keep-mask, the
    pre-update log-probs and entropy, the advantages, the response mask and the clip fraction.
    """
    key = (name, flip_row, scale)
    if key in parity["memo"]:
        return parity["memo"][key]
    from transformers import AutoModelForCausalLM

    ref, case = parity["ref"], parity["cases"][name]
    model = AutoModelForCausalLM.from_pretrained(
        parity["model_dir"], dtype=torch.float32, attn_implementation="sdpa"
    )
    init = {k: p.detach().clone() for k, p in model.named_parameters()}
    batch = ref.Batch(
        prompt_ids=case["prompt_ids"],
        response_ids=case["response_ids"],
        prefix_len=case["prefix_len"],
        rewards=torch.tensor(case["rewards"]),
        groups=torch.arange(len(case["prompt_ids"])) // N,
        truncated=[False] * len(case["prompt_ids"]),
    )
    with torch.no_grad():
        old, entropy, mask = ref.forward_logp(model, batch, TEMPERATURE)
    delta = torch.zeros_like(old)
    for i, d in enumerate(case["delta"]):
        delta[i, : len(d)] = torch.tensor(d)
    adv = ref.advantages(batch.rewards, batch.groups)
    used = adv.clone()
    if flip_row is not None:
        used[flip_row] = -used[flip_row]
    optimizer = torch.optim.SGD(model.parameters(), lr=LR)
    named = dict(model.named_parameters())
    grads = []
    optimizer.register_step_pre_hook(lambda *_: grads.append({k: p.grad.clone() for k, p in named.items()}))
    keep, clipfrac = ref.ppo_update(
        model, optimizer, batch, old + delta * mask, entropy, used, temperature=TEMPERATURE,
        loss_scale_factor=MAX_RESPONSE * scale, num_mini_batches=2, grad_clip=None,
    )  # fmt: skip
    out = {
        "change": {k: p.detach() - init[k] for k, p in model.named_parameters()},
        "grads": grads,
        "final": {k: p.detach().clone() for k, p in model.named_parameters()},
        "init": init,
        "keep": keep,
        "old": old,
        "entropy": entropy,
        "adv": adv,
        "delta": delta,
        "mask": mask,
        "clipfrac": clipfrac,
    }
    parity["memo"][key] = out
    return out


def relative_errors(parity, name, ref_out) -> dict[str, dict[str, float]]:
    """Relative errors per parameter tensor, verl's actor against the reference.

    ``update``: ``||d_verl - d_ref|| / ||d_ref||`` of the change over the step (2 SGD steps), elementwise
    differences within 2 fp32 ulps of the weight discounted; ``update_raw``: the same without the discount;
    ``grad``: the same of each mini-batch's gradient (the larger of the two), as the optimiser got it.

    The discount: both sides store fp32 weights, so a change that differs by a last bit of the weight is
    rounding, not another update. A layer-norm weight near 1.0 has an ulp of 1.2e-7 against a change of about
    1e-3 per element, so one flipped last bit is already 1e-4 of it (the gradients carry no such floor).
    """
    got = parity["verl"][name]
    assert set(got["params"]) == set(ref_out["change"]), "verl and the reference see other parameters"
    assert len(got["grads"]) == len(ref_out["grads"]) == 2, "one optimiser step per mini-batch"
    errors = {"update": {}, "update_raw": {}, "grad": {}}
    for k, d_ref in ref_out["change"].items():
        diff = (got["params"][k] - ref_out["init"][k] - d_ref).abs()
        ulp = torch.nextafter(ref_out["final"][k].abs(), torch.tensor(math.inf)) - ref_out["final"][k].abs()
        norm = float(d_ref.norm())
        errors["update"][k] = float((diff - 2 * ulp).clamp(min=0).norm()) / norm
        errors["update_raw"][k] = float(diff.norm()) / norm
        errors["grad"][k] = max(
            float((g_verl[k] - g_ref[k]).norm()) / float(g_ref[k].norm())
            for g_verl, g_ref in zip(got["grads"], ref_out["grads"], strict=True)
        )
    return errors


def check_inputs(parity, name, ref_out):
    """Both sides saw the same old log-probs, entropy and advantages (each computed its own)."""
    got = parity["verl"][name]
    width = ref_out["old"].shape[1]
    torch.testing.assert_close(got["old_log_probs"][:, :width].float(), ref_out["old"], atol=2e-5, rtol=0)
    torch.testing.assert_close(got["entropy"][:, :width].float(), ref_out["entropy"], atol=2e-5, rtol=0)
    torch.testing.assert_close(
        got["advantages"][:, :width].float(), ref_out["adv"][:, None] * ref_out["mask"]
    )


@pytest.mark.parametrize("name", ["rft", "hybrid"])
def test_actor_update_matches_the_reference(parity, name):
    ref_out = reference_update(parity, name)
    check_inputs(parity, name, ref_out)
    # the fixed old log-prob offsets exercise the clip, and the dual clip (ratio exp(1.5) > 3 where A < 0)
    assert ref_out["clipfrac"] > 0.1
    first = slice(0, N * PROMPTS // 2)
    ratio = torch.exp(-ref_out["delta"][first]) * ref_out["mask"][first]
    assert ((ratio > 3.0) & (ref_out["adv"][first, None] < 0)).any()
    errors = relative_errors(parity, name, ref_out)
    for kind, errs in errors.items():
        worst = max(errs, key=errs.get)
        print(f"{name}: max relative error of the {kind} {errs[worst]:.2e} ({worst})")
    for kind in ("update", "grad"):
        worst = max(errors[kind], key=errors[kind].get)
        assert errors[kind][worst] <= TOL, (
            f"{kind} of {worst}: relative error {errors[kind][worst]:.2e} > {TOL}"
        )


def test_keep_mask_matches_the_paper_rule(parity):
    ref_out = reference_update(parity, "hybrid")
    verl_keep = parity["verl"]["hybrid"]["keep"].bool()
    width = ref_out["keep"].shape[1]
    assert torch.equal(verl_keep[:, :width], ref_out["keep"]), "project and reference keep other demo tokens"
    assert not verl_keep[:, width:].any()
    rows = N * PROMPTS // 2
    kept = [int(ref_out["keep"][m * rows : (m + 1) * rows].sum()) for m in range(2)]
    assert tuple(kept) == KEPT_BY_HAND
    # the actor's own count: each mini-batch reports its total times the number of mini-batches, and the
    # trainer logs the mean over mini-batches (reduce_metrics), i.e. the step's total
    reported = parity["verl"]["hybrid"]["kept_demo_tokens"]
    assert reported == [2.0 * k for k in KEPT_BY_HAND] and sum(reported) / len(reported) == sum(KEPT_BY_HAND)
    # the kept tokens are the highest-entropy demo tokens of their mini-batch
    for m in range(2):
        sl = slice(m * rows, (m + 1) * rows)
        prefix_len = torch.tensor(parity["cases"]["hybrid"]["prefix_len"][sl])
        prefix = torch.arange(width)[None, :] < prefix_len[:, None]
        ent, keep = ref_out["entropy"][sl], ref_out["keep"][sl]
        assert ent[keep].min() > ent[prefix & ~keep].max()


@pytest.mark.parametrize("control", ["flipped_advantage", "halved_normaliser"])
def test_negative_control_fails_the_comparison(parity, control):
    """A one-row sign error, or a 2x normaliser error, on the reference side is far outside the tolerance."""
    if control == "flipped_advantage":
        ref_out = reference_update(parity, "hybrid", flip_row=1)
    else:
        ref_out = reference_update(parity, "hybrid", scale=0.5)
    errors = relative_errors(parity, "hybrid", ref_out)
    for kind in ("update", "grad"):
        print(f"{control}: max relative error of the {kind} {max(errors[kind].values()):.2e}")
        assert max(errors[kind].values()) > 1e-2


if __name__ == "__main__":  # the verl side, run by the `parity` fixture
    verl_side(sys.argv[1], sys.argv[2])
