"""Per-prompt guidance (``prefix_rft.guidance``): the controllers on hand-built visit sequences, their invariants
over random ones, the table's exact save / restore, the config's refusals, and the driver -> agent-loop chain
(the trainer's decision for a row reaches verl's agent loop and decides the tokens of its hybrid session)."""

from __future__ import annotations

import json
import uuid

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from prefix_rft.config import GuidanceConfig, PrefixRFTConfigError, from_dict
from prefix_rft.core.guidance import (
    Decision,
    GuidanceTable,
    PromptState,
    adaptive_ratio,
    decide,
    running_success,
    success_rate,
    update,
)


def cfg(**kw) -> GuidanceConfig:
    return from_dict({"guidance": kw}).guidance


# ----------------------------------------------------------------------------- controllers, by hand


def test_adaptive_controller_step_by_step():
    """target 0.5, eta 0.2, init 0.5: a failed hybrid rollout adds 0.1, a success removes 0.1, clipped."""
    c = cfg(mode="adaptive")
    s = PromptState()
    assert decide(s, c, low_t=0.9) == Decision(True, 0.5)  # cold start: guided at init_ratio
    steps = [
        # (on-policy scores, hybrid scores) -> (S, r, decision at the next visit)
        (([0, 0, 0], [0]), (0.0, 0.6, Decision(True, 0.6))),  # all fail: longer prefix
        (([0, 0, 0], [0]), (0.0, 0.7, Decision(True, 0.7))),
        (([0, 1, 0], [1]), (1 / 3, 0.6, Decision(True, 0.6))),  # hybrid success: shorter
        (([1, 0, 1], [1]), (2 / 3, 0.5, Decision(False))),  # S >= target: the policy solves it alone
        (([1, 1, 1, 1], []), (1.0, 0.4, Decision(False))),  # unguided visit: the on-policy success moves r
        (([0, 0, 0, 0], []), (0.0, 0.5, Decision(True, 0.5))),  # fails again: guided at its own ratio
    ]
    for visit, ((on, hy), (S, r, nxt)) in enumerate(steps, start=1):
        s = update(s, c, on, hy)
        assert s.visits == visit
        assert s.success == pytest.approx(S, abs=1e-12), f"visit {visit}"
        assert s.ratio == pytest.approx(r, abs=1e-12), f"visit {visit}"
        d = decide(s, c, low_t=0.9)
        assert d.guided == nxt.guided and (d.ratio or 0.0) == pytest.approx(nxt.ratio or 0.0, abs=1e-12)


def test_adaptive_ratio_is_clipped_and_capped_by_the_schedule():
    c = cfg(mode="adaptive", init_ratio=0.9, step_size=0.5)
    s = update(PromptState(), c, [0, 0], [0])  # 0.9 + 0.25 -> max_ratio 0.95
    assert s.ratio == 0.95
    s = update(PromptState(ratio=0.1), c, [0, 0], [1])  # 0.1 - 0.25 -> 0
    assert s.ratio == 0.0 and decide(s, c, 0.9) == Decision(False)  # ratio 0: no prefix even when failing
    capped = cfg(mode="adaptive", cap_by_schedule=True)
    assert decide(PromptState(ratio=0.7, success=0.0, visits=1), capped, low_t=0.3) == Decision(True, 0.3)
    assert decide(PromptState(ratio=0.7, success=0.0, visits=1), capped, low_t=0.0) == Decision(False)
    assert adaptive_ratio(0.5, 0.25, target=0.75, step_size=0.4, max_ratio=0.95) == pytest.approx(0.7)


def test_successes_step_the_ratio_to_exactly_zero():
    """0.5 - 5 x 0.1 is 2.8e-17 in floating point; the rounded controller reaches 0 and stops guiding."""
    c = cfg(mode="adaptive")
    s = PromptState(visits=1, success=0.0, ratio=0.5)
    for _ in range(5):
        s = update(s, c, [0, 0, 0], [1])
    assert s.ratio == 0.0 and decide(s, c, 0.9) == Decision(False)


def test_on_failure_guides_only_while_the_policy_fails():
    c = cfg(mode="on_failure")
    s = PromptState()
    assert decide(s, c, 0.5) == Decision(True, None)  # cold start: guided, ratio from the schedule
    s = update(s, c, [0, 0, 0, 0, 0, 0, 0], [1])
    assert (s.success, s.ratio, s.last_hybrid_success) == (0.0, None, 1.0)
    assert decide(s, c, 0.5) == Decision(True, None)
    s = update(s, c, [0, 0, 1, 0, 0, 0, 0], [1])  # one on-policy success: S = 1/7 > 0
    assert decide(s, c, 0.5) == Decision(False)
    # a running rate with a threshold: S = 0.5 * 1/7 + 0.5 * 0 = 1/14 <= 0.1 -> guided again
    c2 = cfg(mode="on_failure", threshold=0.1, success_ema=0.5)
    s2 = update(update(PromptState(), c2, [0, 0, 1, 0, 0, 0, 0], []), c2, [0] * 7, [])
    assert s2.success == pytest.approx(1 / 14) and decide(s2, c2, 0.5).guided


def test_cold_start_skip_and_success_score():
    skip = cfg(mode="on_failure", cold_start="skip")
    assert decide(PromptState(), skip, 0.5) == Decision(False)
    assert decide(update(PromptState(), skip, [0, 0], []), skip, 0.5) == Decision(True, None)
    adaptive_skip = cfg(mode="adaptive", cold_start="skip")
    assert decide(PromptState(), adaptive_skip, 0.5) == Decision(False)
    # a partial score (e.g. a format bonus) is not a success unless success_score says so
    assert success_rate([0.1, 1.0, 0.5], 1.0) == pytest.approx(1 / 3)
    assert success_rate([0.1, 1.0, 0.5], 0.5) == pytest.approx(2 / 3)
    assert success_rate([], 1.0) is None
    assert running_success(None, None, 0.5) is None and running_success(0.4, None, 0.5) == 0.4


def test_schedule_mode_guides_every_prompt_at_a_schedule_draw():
    assert decide(PromptState(success=1.0, visits=3), cfg(), 0.5) == Decision(True, None)


# ----------------------------------------------------------------------------- invariants, random visits

visit = st.tuples(
    st.lists(st.sampled_from([0.0, 0.5, 1.0]), max_size=8), st.lists(st.sampled_from([0.0, 1.0]), max_size=2)
)


@settings(max_examples=200, deadline=None)
@given(
    visits=st.lists(visit, min_size=1, max_size=20),
    mode=st.sampled_from(["on_failure", "adaptive"]),
    target=st.floats(0.05, 0.95),
    step=st.floats(0.01, 1.0),
    ema=st.floats(0.05, 1.0),
    cap=st.booleans(),
    low_t=st.floats(0.0, 0.95),
)
def test_state_stays_in_range_and_round_trips_exactly(visits, mode, target, step, ema, cap, low_t):
    c = cfg(mode=mode, target=target, step_size=step, success_ema=ema, cap_by_schedule=cap)
    table = GuidanceTable(c)
    for i, (on, hy) in enumerate(visits):
        row = f"{i % 3}:row"
        d = table.decide(row, low_t)
        if d.ratio is not None:
            assert d.guided and 0.0 < d.ratio <= (min(c.max_ratio, low_t) if cap else c.max_ratio)
        s = table.update(row, on, hy)
        assert s.success is None or 0.0 <= s.success <= 1.0
        assert mode != "adaptive" or 0.0 <= s.ratio <= c.max_ratio
    assert sum(s.visits for s in table.rows.values()) == len(visits)
    # what a checkpoint holds (JSON on disk) restores the exact table and the exact decisions
    restored = GuidanceTable(c)
    restored.load_state_dict(json.loads(json.dumps(table.state_dict())))
    assert restored.rows == table.rows
    assert all(restored.decide(r, low_t) == table.decide(r, low_t) for r in table.rows)


def test_load_refuses_an_unknown_state_version():
    with pytest.raises(ValueError, match="guidance state version 99"):
        GuidanceTable(cfg(mode="adaptive")).load_state_dict({"version": 99, "rows": {}})


# ----------------------------------------------------------------------------- config


@pytest.mark.parametrize(
    "block,key",
    [
        ({"mode": "bread"}, "prefix_rft.guidance.mode='bread'"),
        ({"mode": "adaptive", "target": 1.0}, "prefix_rft.guidance.target=1.0"),
        ({"mode": "adaptive", "target": 0.0}, "prefix_rft.guidance.target=0.0"),
        ({"mode": "on_failure", "threshold": -0.1}, "prefix_rft.guidance.threshold=-0.1"),
        ({"threshold": 1.0}, "prefix_rft.guidance.threshold=1.0"),
        ({"cold_start": "always"}, "prefix_rft.guidance.cold_start='always'"),
        ({"success_ema": 0.0}, "prefix_rft.guidance.success_ema=0.0"),
        ({"step_size": 0}, "prefix_rft.guidance.step_size=0"),
        ({"init_ratio": 0.99}, "prefix_rft.guidance.init_ratio=0.99"),
        ({"max_ratio": 1.5}, "prefix_rft.guidance.max_ratio=1.5"),
        ({"cap_by_schedule": "yes"}, "prefix_rft.guidance.cap_by_schedule='yes'"),
        ({"success_score": "1"}, "prefix_rft.guidance.success_score='1'"),
    ],
)
def test_bad_guidance_values_name_the_key(block, key):
    with pytest.raises(PrefixRFTConfigError) as err:
        from_dict({"guidance": block}, rollout_n=8)
    assert key in str(err.value) and "expected" in str(err.value)


def test_guidance_needs_a_hybrid_rollout():
    with pytest.raises(PrefixRFTConfigError, match=r"prefix_rft\.guidance\.mode='adaptive'.*num_prefixed"):
        from_dict({"num_prefixed": 0, "guidance": {"mode": "adaptive"}}, rollout_n=8)


def test_guidance_needs_an_on_policy_rollout():
    with pytest.raises(PrefixRFTConfigError, match=r"num_prefixed=4 equals actor_rollout_ref\.rollout\.n=4"):
        from_dict({"num_prefixed": 4, "guidance": {"mode": "on_failure"}}, rollout_n=4)
    assert (
        from_dict({"num_prefixed": 4}, rollout_n=4).guidance.mode == "schedule"
    )  # the paper's mode allows it


def _recipe(*overrides):
    from conftest import compose_recipe

    return compose_recipe(*overrides)


def test_recipe_refuses_dynamic_sampling_with_guidance():
    from prefix_rft.verl_config import validate_verl_config

    with pytest.raises(PrefixRFTConfigError, match=r"algorithm\.filter_groups\.enable=True is incompatible"):
        validate_verl_config(_recipe("+preset=on_failure", "algorithm.filter_groups.enable=true"))
    assert validate_verl_config(_recipe("algorithm.filter_groups.enable=true")).guidance.mode == "schedule"


def test_recipe_refuses_a_bad_target_at_start_up():
    """The whole recipe, composed as a launch composes it, fails validation naming the key."""
    from prefix_rft.verl_config import validate_verl_config

    config = _recipe("+preset=adaptive", "prefix_rft.guidance.target=1.5")
    with pytest.raises(PrefixRFTConfigError, match=r"prefix_rft\.guidance\.target=1\.5"):
        validate_verl_config(config)


# ----------------------------------------------------------------------------- driver -> agent loop


def _dataloader_batch(rows, tokenizer, tmp_path):
    """A training batch exactly as verl's trainer fetches it (RLHFDataset + collate_fn + uid + TensorDict)."""
    from omegaconf import OmegaConf
    from verl.utils import tensordict_utils as tu
    from verl.utils.dataset.rl_dataset import RLHFDataset, collate_fn

    from benchmarks.fixtures.tiny import write_parquet

    path = write_parquet(rows, str(tmp_path / "train.parquet"))
    dataset = RLHFDataset(
        data_files=[path], tokenizer=tokenizer, config=OmegaConf.create({"max_prompt_length": 128})
    )
    batch = collate_fn([dataset[i] for i in range(len(rows))])
    batch["uid"] = np.array([str(uuid.uuid4()) for _ in rows], dtype=object)
    return tu.get_tensordict(batch)


def _manager_requests(batch):
    """What verl's AgentLoopWorkerTQ.generate_sequences hands each row's sessions (its own loop, restated)."""
    import torch
    from tensordict import NonTensorData, NonTensorStack

    out = []
    for i in range(len(batch)):
        prompt = {}
        for k, v in batch.items():
            if isinstance(v, torch.Tensor):
                prompt[k] = v[i]
            elif isinstance(v, NonTensorStack):
                prompt[k] = v[i].data
            elif isinstance(v, NonTensorData):
                prompt[k] = v.data
        out.append(prompt)
    return out


async def test_a_prompt_the_policy_solves_gets_no_prefix_through_the_agent_loop(tmp_path, monkeypatch):
    """Driver table -> batch fields -> verl's request kwargs -> prefix_rft_agent: token-level outcome per row."""
    from test_agent_loop import RESPONSE_LENGTH, SAMPLING, RecordingServer, make_loop, trainer_config
    from verl.trainer.ppo.v1.trainer_base import PPOTrainer

    from benchmarks.fixtures.tiny import build_tiny_tokenizer, synthetic_math_rows
    from prefix_rft.agent_loop import DEMO_CACHE, GUIDED_FIELD, PrefixRFTAgentLoop, row_uid
    from prefix_rft.core.splice import splice_prefix
    from prefix_rft.trainer import PrefixRFTTrainer

    tokenizer = build_tiny_tokenizer()
    rows = synthetic_math_rows(3, seed=3)
    batch = _dataloader_batch(rows, tokenizer, tmp_path)
    block = {"num_prefixed": 1, "seed": 7, "guidance": {"mode": "adaptive"}}
    prefix_cfg = from_dict(block, rollout_n=4)

    trainer = object.__new__(PrefixRFTTrainer)  # the driver's guidance state, without Ray or workers
    trainer.prefix_cfg, trainer.global_steps, trainer._guided_rows = prefix_cfg, 5, {}
    trainer.guidance = GuidanceTable(prefix_cfg.guidance)
    requests = _manager_requests(batch)
    ids = [row_uid(r) for r in requests]  # the agent loop's row id of each request
    trainer.guidance.update(ids[0], [1, 1, 1], [1])  # solved by the policy alone: S = 1 >= target
    trainer.guidance.update(ids[1], [0, 0, 0], [0])  # failing: guided at 0.5 + 0.1
    # row 2 never seen: cold start, guided at init_ratio

    monkeypatch.setattr(PPOTrainer, "_next_train_batch", lambda self, num_prompts=None: batch)
    sent = _manager_requests(trainer._next_train_batch())
    assert [int(r[GUIDED_FIELD]) for r in sent] == [0, 1, 1]
    assert trainer._guided_rows == {str(r["uid"]): i for r, i in zip(sent, ids, strict=True)}

    DEMO_CACHE.clear()
    config = trainer_config(block)
    for req, expected_ratio in zip(sent, [None, 0.6, 0.5], strict=True):
        server = RecordingServer(tokenizer)
        kwargs = {**req, "session_id": 0, "global_steps": 5}
        out = await make_loop(PrefixRFTAgentLoop, config, tokenizer, server).run(dict(SAMPLING), **kwargs)
        if expected_ratio is None:
            assert (out.is_prefixed, out.demo_missing, out.prefix_len) == (0, 0, 0)
            assert out.prefix_mask == [0] * len(out.response_ids) and out.response_ids == server.answer
            assert server.calls[0]["prompt_ids"] == out.prompt_ids  # the prompt alone
        else:
            demo = tokenizer.encode(req["demonstrations"][0], add_special_tokens=False) + [
                tokenizer.eos_token_id
            ]
            splice = splice_prefix(
                demo, expected_ratio, RESPONSE_LENGTH, min_prefix_tokens=prefix_cfg.ratio.min_prefix_tokens
            )
            n = len(splice.prefix_ids)
            assert out.prefix_ratio == pytest.approx(expected_ratio) and out.prefix_len == n > 0
            assert out.response_ids[:n] == demo[:n] and out.prefix_mask == [1] * n + [0] * (
                len(out.response_ids) - n
            )
            assert server.calls[0]["prompt_ids"] == out.prompt_ids + demo[:n]
    DEMO_CACHE.clear()


def test_driver_update_attributes_every_scored_prompt_to_its_row():
    import torch

    from prefix_rft.trainer import PrefixRFTTrainer

    prefix_cfg = from_dict({"guidance": {"mode": "on_failure"}}, rollout_n=3)
    trainer = object.__new__(PrefixRFTTrainer)
    trainer.prefix_cfg, trainer.guidance = prefix_cfg, GuidanceTable(prefix_cfg.guidance)
    trainer._guided_rows = {"u1": "0:a", "u2": "1:b"}
    metrics: dict = {}
    prompts = ["u1", "u1", "u1", "u2", "u2", "u2"]
    scores = torch.tensor([1.0, 0.0, 0.0, 0.0, 0.0, 0.0])
    is_prefixed = torch.tensor([1, 0, 0, 1, 0, 0])
    trainer._update_guidance(prompts, scores, is_prefixed, metrics)
    assert trainer.guidance.rows["0:a"] == PromptState(visits=1, success=0.0, last_hybrid_success=1.0)
    assert trainer.guidance.rows["1:b"] == PromptState(visits=1, success=0.0, last_hybrid_success=0.0)
    assert trainer._guided_rows == {}
    assert metrics["prefix_rft/guidance_prompts_seen"] == 2.0
    with pytest.raises(RuntimeError, match="prompt u3 was scored but never went through _next_train_batch"):
        trainer._update_guidance(["u3"], torch.tensor([0.0]), torch.tensor([0]), metrics)


def test_guidance_metrics_per_prompt():
    import torch

    from prefix_rft.trainer import PROMPT_METRIC_KEYS, compute_guidance_metrics

    prompts = ["a", "a", "b", "b", "c", "c"]
    is_prefixed = torch.tensor([1, 0, 0, 0, 1, 1])
    ratio = torch.tensor([0.6, -1.0, -1.0, -1.0, 0.2, 0.4])
    m = compute_guidance_metrics(prompts, is_prefixed, ratio)
    keys = {f"prefix_rft/{k}" for k in PROMPT_METRIC_KEYS if k != "demo_tokens_trained"}
    assert set(m) == keys == set(compute_guidance_metrics([], torch.tensor([]), torch.tensor([])))
    per_prompt = [0.6, 0.0, 0.3]
    assert m["prefix_rft/guided_frac"] == pytest.approx(2 / 3)
    assert m["prefix_rft/prompt_ratio_mean"] == pytest.approx(0.3)
    assert m["prefix_rft/prompt_ratio_p10"] == pytest.approx(np.quantile(per_prompt, 0.1))
    assert m["prefix_rft/prompt_ratio_p90"] == pytest.approx(np.quantile(per_prompt, 0.9))


def test_driver_never_guides_a_row_it_cannot_prefix_and_schedule_mode_adds_nothing(tmp_path, monkeypatch):
    from verl.trainer.ppo.v1.trainer_base import PPOTrainer

    from benchmarks.fixtures.tiny import build_tiny_tokenizer, synthetic_math_rows
    from prefix_rft.agent_loop import GUIDE_RATIO_FIELD, GUIDED_FIELD
    from prefix_rft.trainer import PrefixRFTTrainer

    rows = synthetic_math_rows(3, seed=4)
    rows[1]["demonstrations"] = ["   "]  # no usable demo: the agent loop could not prefix it
    batch = _dataloader_batch(rows, build_tiny_tokenizer(), tmp_path)
    monkeypatch.setattr(PPOTrainer, "_next_train_batch", lambda self, num_prompts=None: batch.clone())
    trainer = object.__new__(PrefixRFTTrainer)
    trainer.global_steps, trainer._guided_rows = 1, {}

    trainer.prefix_cfg = from_dict({"guidance": {"mode": "on_failure"}}, rollout_n=4)
    trainer.guidance = GuidanceTable(trainer.prefix_cfg.guidance)
    out = trainer._next_train_batch()
    assert out[GUIDED_FIELD].tolist() == [1, 0, 1] and out[GUIDE_RATIO_FIELD].tolist() == [-1.0, -1.0, -1.0]

    trainer.prefix_cfg, trainer.guidance, trainer._guided_rows = from_dict({}, rollout_n=4), None, {}
    out = trainer._next_train_batch()
    assert set(out.keys()) == set(batch.keys()) and trainer._guided_rows == {}  # the paper's mode: untouched
