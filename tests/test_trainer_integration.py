"""The Prefix-RFT trainer hooks against real verl 0.9.1 code paths.

* the ``prefix_rft`` estimator through verl's own ``compute_advantage_for_multi_trajectories``;
* the actor mini-batch replay and the entropy keep-mask on a realistic batch;
* a real TransferQueue (local Ray): agent-loop-shaped rows, verl's own padding to a multiple of the
  mini-batch, then the trainer's ``_neutralise_rollout_log_probs`` and ``_compute_advantage`` (which runs
  verl's ``PPOTrainer._compute_advantage`` inside) and the fields they write back;
* the metrics contract and the loss installation.
"""

from __future__ import annotations

import math
import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from conftest import compose_recipe as recipe_config
from tensordict import TensorDict

import prefix_rft.plugin  # noqa: F401  (registers the estimator and the agent loop)
from prefix_rft.advantage import prefix_rows
from prefix_rft.config import AdvantageConfig, EntropyClipConfig
from prefix_rft.core.entropy import minibatch_group_ids, num_kept
from prefix_rft.core.schedule import ratio_bounds
from prefix_rft.trainer import (
    METRIC_KEYS,
    MINIBATCH_FIELDS,
    PrefixRFTTrainer,
    actor_minibatch_group_ids,
    build_keep_mask,
    compute_prefix_metrics,
)
from prefix_rft.verl_config import validate_verl_config

N = 4  # rollouts per prompt in these tests


# ----------------------------------------------------------------------------- a realistic batch


def make_rows(num_prompts: int = 3, seed: int = 0) -> list[dict]:
    """Agent-loop-shaped rows: groups of N, session 0 prefixed, varied lengths, 0/1 scores."""
    g = torch.Generator().manual_seed(seed)
    rows = []
    for p in range(num_prompts):
        uid = f"uid{p}"
        for s in range(N):
            length = int(torch.randint(5, 12, (1,), generator=g))
            prefix_len = int(torch.randint(2, length - 1, (1,), generator=g)) if s == 0 else 0
            score = float(torch.randint(0, 2, (1,), generator=g))
            rm = torch.zeros(length)
            rm[-1] = score
            old = -torch.rand(length, generator=g) - 0.1
            rollout = old + 0.05 * torch.randn(length, generator=g)
            rollout[:prefix_len] = 0.0  # the agent loop writes 0.0 on demo tokens
            rows.append(
                {
                    "key": f"{uid}_{s}_0",
                    "uid": uid,
                    "prompts": torch.randint(3, 50, (4,), generator=g),
                    "responses": torch.randint(3, 50, (length,), generator=g),
                    "response_mask": torch.ones(length, dtype=torch.int64),
                    "rm_scores": rm,
                    "rollout_log_probs": rollout,
                    "prefix_mask": torch.tensor([1] * prefix_len + [0] * (length - prefix_len)),
                    "is_prefixed": torch.tensor(int(prefix_len > 0)),
                    "prefix_ratio": torch.tensor(0.5 if prefix_len else -1.0),
                    "prefix_len": torch.tensor(prefix_len),
                    "demo_missing": torch.tensor(0),
                    "demo_truncated": torch.tensor(int(p == 1 and s == 0)),
                    "num_turns": 2,
                    # computed by verl's old-log-prob pass, after padding (put separately below)
                    "_old": old,
                    "_entropy": torch.rand(length, generator=g) * 3,
                }
            )
    return rows


def padded(rows: list[dict], name: str) -> torch.Tensor:
    width = max(r[name].shape[0] for r in rows)
    return torch.stack(
        [torch.nn.functional.pad(r[name].float(), (0, width - r[name].shape[0])) for r in rows]
    )


# ----------------------------------------------------------------------------- advantage


@pytest.mark.parametrize("mode", ["group", "on_policy_baseline"])
def test_prefix_rft_estimator_through_verl(mode):
    """verl's compute path -> registered estimator: exact Dr.GRPO / prefix-aware values, no std division."""
    from verl.protocol import DataProto
    from verl.trainer.ppo.v1.utils import compute_advantage_for_multi_trajectories

    rows = make_rows()
    scores = torch.tensor([r["rm_scores"].sum().item() for r in rows])
    resp = padded(rows, "response_mask")
    data = DataProto.from_dict(
        tensors={"token_level_rewards": padded(rows, "rm_scores"), "response_mask": resp},
        non_tensors={"uid": np.array([r["uid"] for r in rows], dtype=object)},
    )
    is_prefixed = torch.tensor([int(r["is_prefixed"]) for r in rows])
    cfg = recipe_config(f"prefix_rft.advantage.mode={mode}")
    with prefix_rows(is_prefixed, AdvantageConfig(mode=mode)):
        out = compute_advantage_for_multi_trajectories(
            data,
            batch_keys=[r["key"] for r in rows],
            adv_estimator=cfg.algorithm.adv_estimator,
            num_repeat=N,
            norm_adv_by_std_in_grpo=True,
            config=cfg.algorithm,
        )
    expected = torch.zeros(len(rows))
    for p in range(len(rows) // N):
        grp = scores[p * N : (p + 1) * N]
        base = grp.mean() if mode == "group" else grp[1:].mean()  # session 0 is the prefixed one
        expected[p * N : (p + 1) * N] = grp - base
    torch.testing.assert_close(out.batch["advantages"], expected[:, None] * resp)
    torch.testing.assert_close(out.batch["returns"], out.batch["advantages"])


def test_dr_grpo_prefix_estimator_through_verl():
    """verl's compute path -> estimator with mode=dr_grpo_prefix: per-token values from prefix_len."""
    from verl.protocol import DataProto
    from verl.trainer.ppo.v1.utils import compute_advantage_for_multi_trajectories

    rows = make_rows()
    scores = torch.tensor([r["rm_scores"].sum().item() for r in rows])
    resp = padded(rows, "response_mask")
    data = DataProto.from_dict(
        tensors={"token_level_rewards": padded(rows, "rm_scores"), "response_mask": resp},
        non_tensors={"uid": np.array([r["uid"] for r in rows], dtype=object)},
    )
    is_prefixed = torch.tensor([int(r["is_prefixed"]) for r in rows])
    prefix_len = torch.tensor([int(r["prefix_len"]) for r in rows])
    cfg = recipe_config("prefix_rft.advantage.mode=dr_grpo_prefix")
    with prefix_rows(is_prefixed, AdvantageConfig(mode="dr_grpo_prefix"), prefix_len=prefix_len):
        out = compute_advantage_for_multi_trajectories(
            data,
            batch_keys=[r["key"] for r in rows],
            adv_estimator=cfg.algorithm.adv_estimator,
            num_repeat=N,
            norm_adv_by_std_in_grpo=True,
            config=cfg.algorithm,
        )
    expected = torch.zeros_like(resp)
    for i, r in enumerate(rows):
        p = i // N
        base = scores[p * N + 1 : (p + 1) * N].mean()  # session 0 is the prefixed one
        expected[i] = scores[i] - base
        if r["is_prefixed"]:
            expected[i, int(r["prefix_len"]) :] = scores[i]  # continuation: the raw reward
    assert is_prefixed.sum() > 0
    torch.testing.assert_close(out.batch["advantages"], expected * resp)
    with (
        prefix_rows(is_prefixed, AdvantageConfig(mode="dr_grpo_prefix")),
        pytest.raises(ValueError, match="prefix_len"),
    ):
        compute_prefix_rft_advantage_direct(rows)


def compute_prefix_rft_advantage_direct(rows):
    from prefix_rft.advantage import compute_prefix_rft_advantage

    resp = padded(rows, "response_mask")
    return compute_prefix_rft_advantage(resp, resp, index=np.array([r["uid"] for r in rows]))


def test_prefix_aware_needs_the_trainer_context():
    from prefix_rft.advantage import compute_prefix_rft_advantage

    with (
        prefix_rows(None, AdvantageConfig(mode="on_policy_baseline")),
        pytest.raises(ValueError, match="is_prefixed"),
    ):
        compute_prefix_rft_advantage(torch.ones(2, 3), torch.ones(2, 3), index=np.array(["a", "a"]))


# ----------------------------------------------------------------------------- mini-batches and keep-mask


def test_actor_minibatch_replay_no_shuffle_closed_form():
    """dp contiguous chunks, each cut in order: global mini-batch j = j-th local slice of every rank."""
    b, dp, mini = 48, 4, 16
    ids = actor_minibatch_group_ids(b, dp, mini, shuffle=False)
    rows = torch.arange(b)
    torch.testing.assert_close(ids, (rows % (b // dp)) // (mini // dp))
    torch.testing.assert_close(actor_minibatch_group_ids(b, 1, mini), minibatch_group_ids(b, mini))


def test_actor_minibatch_replay_shuffle_matches_verl_worker_split():
    """Same split as TrainingWorker.train_mini_batch: per rank, make_iterator(seed + rank, shuffle)."""
    from verl.utils import tensordict_utils as tu

    b, dp, mini, seed = 32, 2, 8, 7
    ids = actor_minibatch_group_ids(b, dp, mini, shuffle=True, seed=seed)
    counts = torch.bincount(ids)
    assert counts.tolist() == [mini] * (b // mini)
    for rank in range(dp):  # each rank contributes mini/dp rows to each global mini-batch
        local = ids[rank * b // dp : (rank + 1) * b // dp]
        assert torch.bincount(local).tolist() == [mini // dp] * (b // mini)
        chunk = TensorDict({"row": torch.arange(rank * b // dp, (rank + 1) * b // dp)}, batch_size=[b // dp])
        for j, mb in enumerate(
            tu.make_iterator(chunk, mini // dp, 1, seed=seed + rank, dataloader_kwargs={"shuffle": True})
        ):
            assert (ids[mb["row"]] == j).all()
    assert not torch.equal(ids, actor_minibatch_group_ids(b, dp, mini, shuffle=False))
    with pytest.raises(ValueError, match="mini-batches"):
        actor_minibatch_group_ids(30, 4, 8)


@pytest.mark.parametrize("scope", ["mini_batch", "batch"])
def test_keep_mask_realistic_batch(scope):
    rows = make_rows(num_prompts=4, seed=3)  # 16 rows
    prefix = padded(rows, "prefix_mask").long()
    entropy = padded(rows, "_entropy")
    groups = actor_minibatch_group_ids(len(rows), 2, 8)
    keep = build_keep_mask(entropy, prefix, EntropyClipConfig(top_ratio=0.2, scope=scope), groups)
    assert keep.dtype == torch.long
    assert not (keep.bool() & ~prefix.bool()).any(), "only demo-prefix tokens can be kept"
    for g in groups.unique() if scope == "mini_batch" else [None]:
        sel = groups == g if g is not None else torch.ones(len(rows), dtype=torch.bool)
        n_prefix = int(prefix[sel].sum())
        kept = keep[sel].bool()
        assert int(kept.sum()) == num_kept(n_prefix, 0.2) == math.ceil(0.2 * n_prefix)
        kept_e = entropy[sel][kept]
        dropped_e = entropy[sel][prefix[sel].bool() & ~kept]
        assert kept_e.min() >= dropped_e.max()
    # disabled: every demo token keeps its advantage
    off = build_keep_mask(entropy, prefix, EntropyClipConfig(enable=False), groups)
    torch.testing.assert_close(off, prefix)


# ----------------------------------------------------------------------------- metrics


def test_metrics_contract_values():
    rows = make_rows(num_prompts=2, seed=5)
    resp, prefix = padded(rows, "response_mask"), padded(rows, "prefix_mask")
    entropy = padded(rows, "_entropy")
    keep = build_keep_mask(entropy, prefix.long(), EntropyClipConfig(scope="batch"), None)
    scores = torch.tensor([r["rm_scores"].sum().item() for r in rows])
    is_pre = torch.tensor([int(r["is_prefixed"]) for r in rows])
    m = compute_prefix_metrics(
        response_mask=resp,
        prefix_mask=prefix,
        keep_mask=keep,
        entropy=entropy,
        scores=scores,
        is_prefixed=is_pre,
        prefix_ratio=torch.tensor([float(r["prefix_ratio"]) for r in rows]),
        demo_missing=torch.zeros(len(rows)),
        demo_truncated=torch.tensor([int(r["demo_truncated"]) for r in rows]),
        bounds=(0.3, 0.95),
    )
    assert set(m) == {f"prefix_rft/{k}" for k in METRIC_KEYS}
    assert all(math.isfinite(v) for v in m.values())
    assert m["prefix_rft/ratio_low"] == 0.3 and m["prefix_rft/ratio_mean"] == pytest.approx(0.5)
    assert m["prefix_rft/score_prefixed"] == pytest.approx(scores[is_pre.bool()].mean().item())
    assert m["prefix_rft/score_on_policy"] == pytest.approx(scores[~is_pre.bool()].mean().item())
    assert m["prefix_rft/prefix_token_frac"] == pytest.approx(float(prefix.sum() / resp.sum()))
    assert m["prefix_rft/kept_frac"] == pytest.approx(
        math.ceil(0.2 * prefix.sum().item()) / prefix.sum().item()
    )
    assert m["prefix_rft/entropy_prefix"] == pytest.approx(entropy[prefix.bool()].mean().item(), rel=1e-5)
    assert m["prefix_rft/demo_truncated"] == 1.0
    # an RFT batch (no prefix at all): every key still finite
    zero = compute_prefix_metrics(
        response_mask=resp,
        prefix_mask=torch.zeros_like(prefix),
        keep_mask=torch.zeros_like(prefix),
        entropy=entropy,
        scores=scores,
        is_prefixed=torch.zeros_like(is_pre),
        prefix_ratio=-torch.ones(len(rows)),
        demo_missing=torch.zeros(len(rows)),
        demo_truncated=torch.zeros(len(rows)),
        bounds=(0.05, 0.95),
    )
    assert all(math.isfinite(v) for v in zero.values()) and zero["prefix_rft/kept_frac"] == 0.0


# ----------------------------------------------------------------------------- loss installation


def test_loss_fn_binds_actor_and_prefix_config():
    from prefix_rft.actor_loss import prefix_rft_ppo_loss

    trainer = PrefixRFTTrainer.__new__(PrefixRFTTrainer)
    trainer.config = recipe_config("prefix_rft.loss.is_mode=luffy")
    trainer.prefix_cfg = validate_verl_config(trainer.config)
    fn = trainer.build_actor_loss_fn()
    assert fn.func is prefix_rft_ppo_loss
    assert fn.keywords["prefix_config"].loss.is_mode == "luffy"
    assert fn.keywords["config"].clip_ratio_c == 3.0 and fn.keywords["config"].entropy_coeff == 0.001


def test_external_lib_registers_and_plain_verl_import_stays_untouched():
    """verl's external_lib import registers the estimator and the agent loop; `import verl` alone does not
    import prefix_rft (no entry point taxes unrelated verl jobs)."""
    code = (
        "import sys, verl\nassert not any(m.startswith('prefix_rft') for m in sys.modules), 'imported'\n"
        "from verl.utils.import_utils import import_external_libs\n"
        "import_external_libs(['prefix_rft.plugin'])\n"
        "from verl.trainer.ppo.core_algos import ADV_ESTIMATOR_REGISTRY as R\n"
        "from verl.experimental.agent_loop.agent_loop import _agent_loop_registry as A\n"
        "print('prefix_rft' in R, 'prefix_rft_agent' in A)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.stdout.strip().splitlines()[-1] == "True True", out.stderr[-2000:]


# ----------------------------------------------------------------------------- TransferQueue round trip


@pytest.fixture(scope="module")
def transfer_queue():
    import ray
    import transfer_queue as tq
    from omegaconf import OmegaConf

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, ignore_reinit_error=True)
    tq.init(
        OmegaConf.create(
            {"backend": {"SimpleStorage": {"num_data_storage_units": 1, "total_storage_size": 10000}}}
        )
    )
    yield tq
    tq.close()
    ray.shutdown()


def _put_rollouts(tq, rows, partition="train"):
    """Write rows one by one as AgentLoopWorkerTQ does, then pad with verl's own helper (mini = 8 rows)."""
    from transfer_queue import KVBatchMeta
    from verl.trainer.ppo.padding_utils import upsample_batch_to_divisible_size
    from verl.utils.tensordict_utils import list_of_dict_to_tensordict

    for r in rows:
        field = {k: v for k, v in r.items() if k != "key" and not k.startswith("_")}
        tag = {
            "status": "success",
            "prompt_len": 4,
            "response_len": len(r["responses"]),
            "seq_len": 4 + len(r["responses"]),
            "global_steps": 3,
            "min_global_steps": 2,
            "max_global_steps": 2,
        }
        tq.kv_batch_put(
            keys=[r["key"]], partition_id=partition, fields=list_of_dict_to_tensordict([field]), tags=[tag]
        )
    meta = tq.kv_batch_put(
        keys=[r["key"] for r in rows],
        partition_id=partition,
        tags=[tq.kv_list(partition)[partition][r["key"]] for r in rows],
    )
    meta = KVBatchMeta(keys=meta.keys, tags=meta.tags, partition_id=partition, fields=meta.fields)
    meta = upsample_batch_to_divisible_size(meta, 8, eos_token_id=2)
    # verl's old-log-prob pass then writes old_log_probs and entropy for every row, padding included
    data = tq.kv_batch_get(keys=meta.keys, partition_id=partition, select_fields=["response_mask"])
    lens = data["response_mask"].offsets().diff().tolist()
    by_key = {r["key"]: r for r in rows}
    old = [by_key[k]["_old"] if k in by_key else torch.zeros(n) for k, n in zip(meta.keys, lens, strict=True)]
    ent = [
        by_key[k]["_entropy"] if k in by_key else torch.zeros(n) for k, n in zip(meta.keys, lens, strict=True)
    ]
    nested = lambda xs: torch.nested.as_nested_tensor(xs, layout=torch.jagged)  # noqa: E731
    return tq.kv_batch_put(
        keys=meta.keys,
        partition_id=partition,
        fields=TensorDict({"old_log_probs": nested(old), "entropy": nested(ent)}, batch_size=len(meta.keys)),
    )


def test_trainer_hooks_on_transfer_queue(transfer_queue):
    tq = transfer_queue
    rows = make_rows(num_prompts=3, seed=11)  # 12 real rows -> 16 with verl's padding
    batch = _put_rollouts(tq, rows)
    assert len(batch) == 16 and sum(t.get("is_padding", False) for t in batch.tags) == 4

    trainer = PrefixRFTTrainer.__new__(PrefixRFTTrainer)
    trainer.config = recipe_config(
        f"actor_rollout_ref.rollout.n={N}",
        "actor_rollout_ref.actor.ppo_mini_batch_size=2",
        "algorithm.rollout_correction.rollout_is=token",
    )
    trainer.prefix_cfg = validate_verl_config(trainer.config)
    trainer.global_steps = 3
    trainer.actor_rollout_wg = SimpleNamespace(_dispatch_info={"actor": [0, 1]})  # 2 data-parallel ranks
    # per-prompt guidance on (on_failure), as _next_train_batch would have left it: verl's prompt uid -> row id
    from prefix_rft.config import from_dict
    from prefix_rft.core.guidance import GuidanceTable

    trainer.guidance = GuidanceTable(from_dict({"guidance": {"mode": "on_failure"}}).guidance)
    trainer._guided_rows = {r["uid"]: f"row-{r['uid']}" for r in rows}

    metrics: dict = {}
    batch = trainer._neutralise_rollout_log_probs(batch, metrics)
    batch = trainer._compute_advantage(batch, metrics)
    assert {"prefix_mask", "prefix_keep_mask", "advantages", "rollout_is_weights"} <= set(batch.fields)

    out = tq.kv_batch_get(
        keys=batch.keys,
        partition_id="train",
        select_fields=[
            "response_mask",
            "prefix_mask",
            "prefix_keep_mask",
            "advantages",
            "rollout_log_probs",
            "old_log_probs",
            "rollout_is_weights",
            "entropy",
        ],
    )
    lens = out["response_mask"].offsets().diff()
    for name in ("prefix_mask", "prefix_keep_mask", "advantages", "rollout_is_weights"):
        assert torch.equal(out[name].offsets().diff(), lens), f"{name} not aligned with response_mask"
    resp = out["response_mask"].to_padded_tensor(0).bool()
    prefix = out["prefix_mask"].to_padded_tensor(0).bool()
    keep = out["prefix_keep_mask"].to_padded_tensor(0).bool()
    real = torch.tensor([not t.get("is_padding", False) for t in batch.tags])
    assert not prefix[~real].any() and not keep[~real].any(), "padding rows carry no demo tokens"

    # (c) rollout correction is neutral on demo tokens: behaviour log-prob = old log-prob, IS weight 1
    old, rollout = out["old_log_probs"].to_padded_tensor(0), out["rollout_log_probs"].to_padded_tensor(0)
    torch.testing.assert_close(rollout[prefix], old[prefix])
    torch.testing.assert_close(
        out["rollout_is_weights"].to_padded_tensor(0)[prefix], torch.ones(int(prefix.sum()))
    )
    by_key = {r["key"]: r for r in rows}
    for i, k in enumerate(batch.keys):
        if k in by_key:
            cont = ~by_key[k]["prefix_mask"].bool()
            torch.testing.assert_close(rollout[i, : lens[i]][cont], by_key[k]["rollout_log_probs"][cont])

    # (a) Dr.GRPO advantages, broadcast over the response; padding rows 0
    adv = out["advantages"].to_padded_tensor(0)
    for i, k in enumerate(batch.keys):
        if k not in by_key:
            assert not adv[i].any()
            continue
        uid = by_key[k]["uid"]
        grp = torch.tensor([r["rm_scores"].sum().item() for r in rows if r["uid"] == uid])
        expect = by_key[k]["rm_scores"].sum() - grp.mean()
        torch.testing.assert_close(adv[i, : lens[i]], expect.expand(int(lens[i])))

    # (b) keep-mask: top ceil(0.2 N) demo tokens of each actor mini-batch (2 ranks x 4 rows)
    groups = actor_minibatch_group_ids(16, 2, 8)
    entropy = out["entropy"].to_padded_tensor(0)
    for g in range(2):
        sel = groups == g
        n_prefix = int(prefix[sel].sum())
        assert int(keep[sel].sum()) == math.ceil(0.2 * n_prefix)
        assert entropy[sel][keep[sel]].min() >= entropy[sel][prefix[sel] & ~keep[sel]].max()
    assert not (keep & ~prefix).any() and not (prefix & ~resp).any()

    # (b') the replay record the actor loss checks: predicted mini-batch id, their count, the step
    replay = tq.kv_batch_get(keys=batch.keys, partition_id="train", select_fields=list(MINIBATCH_FIELDS))
    assert torch.equal(replay["prefix_rft_minibatch"].reshape(-1), groups)
    assert replay["prefix_rft_num_minibatches"].reshape(-1).tolist() == [2] * 16
    assert replay["prefix_rft_step"].reshape(-1).tolist() == [3] * 16

    # (f) the guidance table took one visit per prompt, from its real rows' scores (padding rows ignored)
    assert trainer._guided_rows == {} and len(trainer.guidance) == 3
    for uid in {r["uid"] for r in rows}:
        mine = [r for r in rows if r["uid"] == uid]
        on_policy = [float(r["rm_scores"].sum()) for r in mine if not int(r["is_prefixed"])]
        state = trainer.guidance.rows[f"row-{uid}"]
        assert state.visits == 1
        assert state.success == pytest.approx(sum(s >= 1.0 for s in on_policy) / len(on_policy))
    assert metrics["prefix_rft/guidance_prompts_seen"] == 3.0
    assert metrics["prefix_rft/guided_frac"] == pytest.approx(
        len({r["uid"] for r in rows if int(r["is_prefixed"])}) / 3
    )

    # (d) metrics
    assert {f"prefix_rft/{k}" for k in METRIC_KEYS} <= set(metrics)
    assert all(math.isfinite(metrics[f"prefix_rft/{k}"]) for k in METRIC_KEYS)
    low, high = ratio_bounds(3, trainer.prefix_cfg.ratio)
    assert metrics["prefix_rft/ratio_low"] == low and metrics["prefix_rft/ratio_high"] == high
    assert metrics["prefix_rft/prefixed_frac"] == pytest.approx(1 / N)
    assert metrics["prefix_rft/demo_truncated"] == 1.0
    assert metrics["prefix_rft/kept_tokens"] == float(keep.sum())
    assert any(k.startswith("rollout_corr/") for k in metrics)


def test_missing_prefix_fields_error_names_the_agent_loop(transfer_queue):
    tq = transfer_queue
    from verl.utils.tensordict_utils import list_of_dict_to_tensordict

    meta = tq.kv_batch_put(
        keys=["plain_0_0"],
        partition_id="plain",
        fields=list_of_dict_to_tensordict([{"response_mask": torch.ones(3, dtype=torch.int64)}]),
        tags=[{}],
    )
    trainer = PrefixRFTTrainer.__new__(PrefixRFTTrainer)
    with pytest.raises(RuntimeError, match="default_agent_loop=prefix_rft_agent"):
        trainer._compute_advantage(meta, {})


def test_all_prompts_filtered_as_too_long_names_max_prompt_length(tmp_path):
    from benchmarks.fixtures.tiny import build_tiny_tokenizer, synthetic_math_rows, write_parquet
    from prefix_rft.config import PrefixRFTConfigError

    train = write_parquet(synthetic_math_rows(4, split="train"), str(tmp_path / "train.parquet"))
    val = write_parquet(synthetic_math_rows(2, split="test", with_demos=False), str(tmp_path / "val.parquet"))
    trainer = PrefixRFTTrainer.__new__(PrefixRFTTrainer)
    trainer.config = recipe_config(
        f"data.train_files={train}",
        f"data.val_files={val}",
        "data.max_prompt_length=4",
        "data.train_batch_size=2",
        "data.dataloader_num_workers=0",
    )
    trainer.tokenizer, trainer.processor, trainer.trainer_mode = build_tiny_tokenizer(), None, "sync"
    with pytest.raises(
        PrefixRFTConfigError,
        match=r"gave 0 training rows: every prompt is longer than data\.max_prompt_length=4",
    ):
        trainer._init_dataloader()


def test_reward_timeouts_are_counted_per_step_from_reward_extra_info(transfer_queue):
    """``prefix_rft/reward_timeouts``: the reward's ``timeout`` flags of the step's real rows (before: named by
    the reward's docstring, emitted by nothing). verl keeps the reward dict per row in
    ``extra_fields["reward_extra_info"]``; padding rows copy a real row and are not counted."""
    from prefix_rft.trainer import REWARD_TIMEOUTS_METRIC, count_reward_timeouts

    rows = make_rows(num_prompts=3, seed=5)  # 12 real rows -> 16 with padding (copies of real rows)
    for i, row in enumerate(rows):
        timeout = int(i in (0, 1, 7))
        row["extra_fields"] = {
            "reward_extra_info": {"score": 0.0, "acc": False, "pred": "", "timeout": timeout}
        }
    batch = _put_rollouts(transfer_queue, rows, partition="timeouts")
    assert sum(t.get("is_padding", False) for t in batch.tags) == 4
    trainer = PrefixRFTTrainer.__new__(PrefixRFTTrainer)
    assert trainer._count_reward_timeouts(batch) == 3.0
    assert REWARD_TIMEOUTS_METRIC == "prefix_rft/reward_timeouts"
    assert count_reward_timeouts([1, 0, True, None, "x"]) == 2.0  # the colocated reward's plain column
    assert count_reward_timeouts([{"reward_extra_info": {"timeout": 1}}, {}], real=[False, True]) == 0.0
