"""Integration tests of the ``prefix_rft_agent`` loop with verl 0.9.1's real agent-loop classes.

The LLM server is a stand-in with verl's ``generate`` signature returning ``TokenOutput`` (recording
every call); the tokenizer is the tiny locally built one. The v1 TransferQueue postprocess of verl is
run for real, with only the final ``tq.async_kv_batch_put`` replaced by a recorder.
"""

from __future__ import annotations

import asyncio
import copy

import pytest
import torch
from omegaconf import OmegaConf
from verl.experimental.agent_loop.agent_loop import DictConfigWrap, _agent_loop_registry
from verl.experimental.agent_loop.single_turn_agent_loop import SingleTurnAgentLoop
from verl.trainer.ppo.v1 import agent_loop_tq
from verl.utils.dataset.rl_dataset import RLHFDataset
from verl.utils.tensordict_utils import list_of_dict_to_tensordict
from verl.workers.rollout.replica import TokenOutput

from benchmarks.fixtures.tiny import CHAT_TEMPLATE, build_tiny_tokenizer, synthetic_math_rows
from prefix_rft.agent_loop import DEMO_CACHE, PrefixRFTAgentLoop, row_uid
from prefix_rft.config import from_dict
from prefix_rft.core.schedule import sample_prefix_ratio
from prefix_rft.core.splice import splice_prefix

RESPONSE_LENGTH = 40
SAMPLING = dict(temperature=1.0, top_p=1.0, top_k=-1, repetition_penalty=1.0, logprobs=True)


class RecordingServer:
    """Stand-in for verl's LLMServerClient: continues any prompt with a canned answer, within max_tokens."""

    def __init__(self, tokenizer):
        self.answer = tokenizer.encode(" So the answer is 12.", add_special_tokens=False) + [
            tokenizer.eos_token_id
        ]
        self.calls: list[dict] = []

    async def generate(self, request_id, *, prompt_ids, sampling_params, **kwargs) -> TokenOutput:
        self.calls.append(dict(prompt_ids=list(prompt_ids), sampling_params=dict(sampling_params), **kwargs))
        ids = self.answer[: sampling_params.get("max_tokens", RESPONSE_LENGTH)]
        return TokenOutput(
            token_ids=ids,
            log_probs=[-0.25 - 0.01 * i for i in range(len(ids))],
            num_preempted=0,
            extra_fields={"min_global_steps": 6, "max_global_steps": 6},
        )


@pytest.fixture(scope="module")
def tokenizer(tiny_tokenizer):
    return tiny_tokenizer


@pytest.fixture(autouse=True)
def fresh_cache():
    DEMO_CACHE.clear()
    yield
    DEMO_CACHE.clear()


def trainer_config(prefix_rft=None, n=4, use_v1=True):
    block = {"num_prefixed": 1, "seed": 7} if prefix_rft is None else prefix_rft
    cfg = {
        "actor_rollout_ref": {
            "rollout": {
                "n": n,
                "prompt_length": 128,
                "response_length": RESPONSE_LENGTH,
                "calculate_log_probs": True,
            }
        },
        "trainer": {"use_v1": use_v1},
        "data": {"apply_chat_template_kwargs": {}},
    }
    if block is not False:
        cfg["prefix_rft"] = block
    return OmegaConf.create(cfg)


def make_loop(cls, config, tokenizer, server):
    return cls(
        trainer_config=DictConfigWrap(config),
        server_manager=server,
        tokenizer=tokenizer,
        processor=None,
        dataset_cls=RLHFDataset,
        data_config=DictConfigWrap(config.data),
    )


def request(row, *, session_id, step=10, uid="uuid-from-verl"):
    """The kwargs verl's v1 AgentLoopWorkerTQ passes to ``run`` for one session of a dataset row."""
    kwargs = dict(row)
    kwargs["raw_prompt"] = kwargs.pop("prompt")
    kwargs.update(
        index=torch.tensor(row["extra_info"]["index"]),
        uid=uid,
        session_id=session_id,
        global_steps=step,
        tools_kwargs={},
        interaction_kwargs={},
    )
    return kwargs


@pytest.fixture(scope="module")
def rows():
    return synthetic_math_rows(4, seed=0)


def expected_prefix(tokenizer, row, step, session_id, config):
    cfg = from_dict(config.prefix_rft, rollout_n=config.actor_rollout_ref.rollout.n)
    demo_ids = tokenizer.encode(row["demonstrations"][0], add_special_tokens=False) + [tokenizer.eos_token_id]
    ratio = sample_prefix_ratio(
        step,
        cfg.ratio,
        seed=cfg.seed,
        uid=row_uid(request(row, session_id=session_id)),
        sample_index=session_id,
    )
    return (
        demo_ids,
        ratio,
        splice_prefix(demo_ids, ratio, RESPONSE_LENGTH, min_prefix_tokens=cfg.ratio.min_prefix_tokens),
    )


def test_registered_under_its_name():
    assert _agent_loop_registry["prefix_rft_agent"] == {
        "_target_": "prefix_rft.agent_loop.PrefixRFTAgentLoop"
    }


async def test_hybrid_session_starts_with_the_demo_prefix(tokenizer, rows):
    config = trainer_config()
    server = RecordingServer(tokenizer)
    out = await make_loop(PrefixRFTAgentLoop, config, tokenizer, server).run(
        dict(SAMPLING), **request(rows[0], session_id=0)
    )

    demo_ids, ratio, splice = expected_prefix(tokenizer, rows[0], 10, 0, config)
    n_prefix = len(splice.prefix_ids)
    assert 0 < n_prefix < len(demo_ids) - 1 and not splice.truncated
    assert out.response_ids[:n_prefix] == demo_ids[:n_prefix]
    assert out.response_ids[n_prefix:] == server.answer
    assert out.prefix_mask == [1] * n_prefix + [0] * len(server.answer)
    assert out.response_mask == [1] * len(out.response_ids)
    assert out.response_logprobs[:n_prefix] == [0.0] * n_prefix
    assert out.response_logprobs[n_prefix:] == pytest.approx(
        [-0.25 - 0.01 * i for i in range(len(server.answer))]
    )
    assert (out.is_prefixed, out.prefix_len, out.demo_missing, out.demo_truncated) == (1, n_prefix, 0, 0)
    assert out.prefix_ratio == pytest.approx(ratio)

    # one server call: the chat prompt + the prefix, asking only for the remaining budget
    (call,) = server.calls
    chat = tokenizer.apply_chat_template(rows[0]["prompt"], add_generation_prompt=True, tokenize=True)
    chat = list(chat["input_ids"]) if hasattr(chat, "keys") else list(chat)
    assert out.prompt_ids == chat
    assert call["prompt_ids"] == chat + demo_ids[:n_prefix]
    assert call["sampling_params"]["max_tokens"] == RESPONSE_LENGTH - n_prefix
    assert {k: v for k, v in call["sampling_params"].items() if k != "max_tokens"} == SAMPLING


async def test_prefix_draw_depends_on_row_step_and_session_not_on_verl_uid(tokenizer, rows):
    wide = {"schedule": "const", "low_start": 0.1, "high": 0.9}
    config = trainer_config({"num_prefixed": 3, "seed": 7, "ratio": wide})

    async def prefix(step, session_id, uid, row=rows[1]):
        DEMO_CACHE.clear()
        out = await make_loop(PrefixRFTAgentLoop, config, tokenizer, RecordingServer(tokenizer)).run(
            dict(SAMPLING), **request(row, session_id=session_id, step=step, uid=uid)
        )
        return out.response_ids[: out.prefix_len]

    first = await prefix(3, 0, "a")
    assert await prefix(3, 0, "another-uuid") == first  # verl's per-step uuid does not matter
    draws = {tuple(await prefix(step, s, "a")) for step in (3, 4) for s in (0, 1, 2)}
    assert len(draws) > 1
    ratios = {
        sample_prefix_ratio(
            3,
            from_dict(config.prefix_rft).ratio,
            seed=7,
            uid=row_uid(request(r, session_id=0)),
            sample_index=0,
        )
        for r in rows
    }
    assert len(ratios) == len(rows)  # rows get their own draws (row_uid differs per row)


async def test_whole_demo_makes_no_server_call(tokenizer, rows):
    const_one = {"schedule": "const", "low_start": 1.0, "low_end": 1.0, "high": 1.0}
    config = trainer_config({"num_prefixed": 1, "ratio": const_one})
    server = RecordingServer(tokenizer)
    out = await make_loop(PrefixRFTAgentLoop, config, tokenizer, server).run(
        dict(SAMPLING), **request(rows[2], session_id=0)
    )
    demo_ids = tokenizer.encode(rows[2]["demonstrations"][0], add_special_tokens=False) + [
        tokenizer.eos_token_id
    ]
    assert len(demo_ids) < RESPONSE_LENGTH
    assert server.calls == []
    assert out.response_ids == demo_ids and out.response_ids[-1] == tokenizer.eos_token_id
    assert out.prefix_mask == [1] * len(demo_ids) and out.response_mask == [1] * len(demo_ids)
    assert out.response_logprobs == [0.0] * len(demo_ids)
    assert (out.prefix_len, out.prefix_ratio, out.demo_truncated) == (len(demo_ids), 1.0, 0)
    assert out.extra_fields["min_global_steps"] == out.extra_fields["max_global_steps"] == 9  # step 10 - 1


async def test_long_demo_is_truncated_to_the_budget(tokenizer, rows):
    row = copy.deepcopy(rows[0])
    row["demonstrations"] = [" ".join([row["demonstrations"][0]] * 6)]
    config = trainer_config(
        {"num_prefixed": 1, "ratio": {"schedule": "const", "low_start": 0.95, "high": 0.95}}
    )
    server = RecordingServer(tokenizer)
    out = await make_loop(PrefixRFTAgentLoop, config, tokenizer, server).run(
        dict(SAMPLING), **request(row, session_id=0)
    )
    demo_ids = tokenizer.encode(row["demonstrations"][0], add_special_tokens=False)
    assert int(0.95 * len(demo_ids)) > RESPONSE_LENGTH
    assert server.calls == []
    assert out.response_ids == demo_ids[:RESPONSE_LENGTH]
    assert (out.prefix_len, out.demo_truncated, sum(out.prefix_mask)) == (RESPONSE_LENGTH, 1, RESPONSE_LENGTH)


async def test_demo_tokenized_once_per_row(tokenizer, rows):
    config = trainer_config({"num_prefixed": 4, "seed": 7})
    # the n sessions of a row run concurrently in one worker (verl's _run_prompt): one shared encode
    outs = await asyncio.gather(
        *[
            make_loop(PrefixRFTAgentLoop, config, tokenizer, RecordingServer(tokenizer)).run(
                dict(SAMPLING), **request(rows[3], session_id=s)
            )
            for s in range(4)
        ]
    )
    assert DEMO_CACHE.encodes == 1
    await make_loop(PrefixRFTAgentLoop, config, tokenizer, RecordingServer(tokenizer)).run(
        dict(SAMPLING), **request(rows[3], session_id=0, step=11)
    )
    # a row comes back only after an epoch: the cache keeps the current step's rows, nothing older
    assert DEMO_CACHE.encodes == 2 and len(DEMO_CACHE) == 1
    assert all(o.is_prefixed == 1 for o in outs)


async def test_demo_cache_holds_only_the_current_step(tokenizer, rows):
    config = trainer_config({"num_prefixed": 1, "seed": 7})
    for step in (5, 6):
        for row in rows:
            await make_loop(PrefixRFTAgentLoop, config, tokenizer, RecordingServer(tokenizer)).run(
                dict(SAMPLING), **request(row, session_id=0, step=step)
            )
        assert len(DEMO_CACHE) == len(rows)  # step 6 dropped step 5's entries
    assert DEMO_CACHE.encodes == 2 * len(rows)


def chat_prompt(tokenizer, row):
    chat = tokenizer.apply_chat_template(row["prompt"], add_generation_prompt=True, tokenize=True)
    return list(chat["input_ids"]) if hasattr(chat, "keys") else list(chat)


@pytest.mark.parametrize(("rollout_name", "headroom"), [("vllm", 0), ("sglang", 1)])
async def test_prefix_is_capped_so_the_context_window_leaves_room_to_generate(
    tokenizer, rows, rollout_name, headroom
):
    row = copy.deepcopy(rows[0])
    row["demonstrations"] = [" ".join([row["demonstrations"][0]] * 6)]
    config = trainer_config(
        {"num_prefixed": 1, "ratio": {"schedule": "const", "low_start": 0.9, "high": 0.9}}
    )
    prompt_len = len(chat_prompt(tokenizer, row))
    config.actor_rollout_ref.rollout.max_model_len = prompt_len + 12
    config.actor_rollout_ref.rollout.name = rollout_name
    server = RecordingServer(tokenizer)
    out = await make_loop(PrefixRFTAgentLoop, config, tokenizer, server).run(
        dict(SAMPLING), **request(row, session_id=0)
    )
    # window - prompt = 12 - headroom tokens of room; the prefix leaves exactly one for the policy
    assert out.prefix_len == 11 - headroom and out.demo_truncated == 1
    (call,) = server.calls
    assert len(call["prompt_ids"]) == prompt_len + 11 - headroom
    assert call["sampling_params"]["max_tokens"] == 1
    assert len(out.prompt_ids) + len(out.response_ids) <= prompt_len + 12 - headroom


class EmptyContinuationServer(RecordingServer):
    """Returns no tokens and ``log_probs=[]`` (a clamped max_tokens of 0), or ``[]`` log-probs only."""

    def __init__(self, tokenizer, tokens=()):
        super().__init__(tokenizer)
        self.tokens = list(tokens)

    async def generate(self, request_id, *, prompt_ids, sampling_params, **kwargs) -> TokenOutput:
        self.calls.append(dict(prompt_ids=list(prompt_ids), sampling_params=dict(sampling_params)))
        return TokenOutput(token_ids=self.tokens, log_probs=[], num_preempted=0, extra_fields={})


async def test_empty_continuation_keeps_log_probs_when_requested(tokenizer, rows):
    config = trainer_config()
    out = await make_loop(PrefixRFTAgentLoop, config, tokenizer, EmptyContinuationServer(tokenizer)).run(
        dict(SAMPLING), **request(rows[0], session_id=0)
    )
    assert out.prefix_len > 0 and out.response_ids[out.prefix_len :] == []
    assert out.response_logprobs == [0.0] * out.prefix_len  # present, like its siblings', not None
    no_lp = await make_loop(PrefixRFTAgentLoop, config, tokenizer, EmptyContinuationServer(tokenizer)).run(
        {**SAMPLING, "logprobs": False}, **request(rows[0], session_id=0)
    )
    assert no_lp.response_logprobs is None


async def test_log_prob_length_mismatch_is_an_error(tokenizer, rows):
    server = EmptyContinuationServer(tokenizer, tokens=[5, 6, 7])
    with pytest.raises(RuntimeError, match="returned 3 tokens but 0 log-probs"):
        await make_loop(PrefixRFTAgentLoop, trainer_config(), tokenizer, server).run(
            dict(SAMPLING), **request(rows[0], session_id=0)
        )


@pytest.mark.parametrize(
    "bad",
    [7, 3.5, b"bytes", [1, 2], {"role": "assistant"}, {"content": 5}, [[None]], True, torch.tensor([1, 2])],
)
async def test_unusable_demo_values_count_as_missing_never_raise(tokenizer, rows, bad):
    from prefix_rft.agent_loop import extract_demos

    assert extract_demos(bad) == []
    row = copy.deepcopy(rows[0])
    row["demonstrations"] = bad
    server = RecordingServer(tokenizer)
    out = await make_loop(PrefixRFTAgentLoop, trainer_config(), tokenizer, server).run(
        dict(SAMPLING), **request(row, session_id=0)
    )
    assert (out.is_prefixed, out.prefix_len, out.demo_missing) == (0, 0, 1)
    assert out.response_ids == server.answer  # an ordinary rollout


@pytest.mark.parametrize("case", ["validation_split", "no_demo", "empty_demo", "later_session"])
async def test_unprefixed_requests_match_verl_single_turn(tokenizer, rows, case):
    row = copy.deepcopy(rows[1])
    session_id = 0
    if case == "validation_split":
        row["extra_info"]["split"] = "test"  # even with a demo column present
    elif case == "no_demo":
        row.pop("demonstrations")
    elif case == "empty_demo":
        row["demonstrations"] = ["  "]
    else:
        session_id = 1  # num_prefixed = 1: sessions 1.. are on-policy
    config = trainer_config()
    ours_server, verl_server = RecordingServer(tokenizer), RecordingServer(tokenizer)
    ours = await make_loop(PrefixRFTAgentLoop, config, tokenizer, ours_server).run(
        dict(SAMPLING), **request(row, session_id=session_id)
    )
    ref = await make_loop(SingleTurnAgentLoop, config, tokenizer, verl_server).run(
        dict(SAMPLING), **request(row, session_id=session_id)
    )

    for name in (
        "prompt_ids",
        "response_ids",
        "response_mask",
        "response_logprobs",
        "num_turns",
        "extra_fields",
        "multi_modal_data",
        "routed_experts",
    ):
        assert getattr(ours, name) == getattr(ref, name), name
    assert ours.metrics.num_preempted == ref.metrics.num_preempted
    assert ours_server.calls == verl_server.calls
    assert ours.prefix_mask == [0] * len(ref.response_ids)
    expected_missing = int(case in ("no_demo", "empty_demo"))
    assert (ours.is_prefixed, ours.prefix_len, ours.prefix_ratio, ours.demo_missing) == (
        0,
        0,
        -1.0,
        expected_missing,
    )


async def test_reasoning_tag_is_not_doubled(rows):
    tok = build_tiny_tokenizer()
    tok.chat_template = CHAT_TEMPLATE.replace(
        "'<|im_start|>assistant\n'", "'<|im_start|>assistant\n<think>\n'"
    )
    row = copy.deepcopy(rows[0])
    row["demonstrations"] = ["<think>\n" + row["demonstrations"][0] + "</think> 12"]
    const_one = {"schedule": "const", "low_start": 1.0, "low_end": 1.0, "high": 1.0}
    out = await make_loop(
        PrefixRFTAgentLoop, trainer_config({"ratio": const_one}), tok, RecordingServer(tok)
    ).run(dict(SAMPLING), **request(row, session_id=0))
    assert tok.decode(out.prompt_ids).endswith("<think>\n")
    text = tok.decode(out.prompt_ids + out.response_ids)
    assert text.count("<think>") == 1 and text.count("</think>") == 1
    assert out.response_ids == tok.encode(
        row["demonstrations"][0][len("<think>\n") :], add_special_tokens=False
    ) + [tok.eos_token_id]


async def test_v1_transfer_queue_fields_align_with_response_mask(tokenizer, rows, monkeypatch):
    """Run verl's own v1 postprocess; the stored prefix_mask pads exactly like response_mask."""
    put = []

    async def record_put(keys, fields, tags, partition_id):
        put.append((keys, fields, tags, partition_id))

    monkeypatch.setattr(agent_loop_tq.tq, "async_kv_batch_put", record_put)
    worker = object.__new__(agent_loop_tq.AgentLoopWorkerTQ.__ray_metadata__.modified_class)
    worker.reward_loop_worker_handles, worker.distillation_enabled = None, False
    worker.processor, worker.tokenizer = None, tokenizer

    config = trainer_config({"num_prefixed": 2, "seed": 7})
    for session_id in range(4):
        kwargs = request(rows[0], session_id=session_id)
        out = await make_loop(PrefixRFTAgentLoop, config, tokenizer, RecordingServer(tokenizer)).run(
            dict(SAMPLING), **kwargs
        )
        await worker._agent_loop_postprocess(out, False, **kwargs)

    assert [p[0] for p in put] == [[f"uuid-from-verl_{s}_0"] for s in range(4)]
    rows_td = [p[1] for p in put]
    for td in rows_td:
        assert td["prefix_mask"].dtype == torch.int64
        assert td["prefix_mask"].shape == td["response_mask"].shape == td["responses"].shape
        assert td["prefix_len"].shape == (1,) and td["prefix_ratio"].dtype == torch.float32
        assert int(td["prefix_mask"].sum()) == int(td["prefix_len"])
    assert [int(td["is_prefixed"]) for td in rows_td] == [1, 1, 0, 0]

    # what the actor gets: TransferQueue stacks the per-sample rows into jagged tensors
    batch = list_of_dict_to_tensordict(
        [{k: td[k][0] for k in ("responses", "response_mask", "prefix_mask", "prefix_len")} for td in rows_td]
    )
    assert batch["prefix_mask"].is_nested and batch["response_mask"].is_nested
    padded = batch.to_padded_tensor()
    lens = batch["responses"].offsets().diff()
    for i, length in enumerate(lens.tolist()):
        assert padded["response_mask"][i, length:].sum() == 0 and padded["prefix_mask"][i, length:].sum() == 0
        n_prefix = int(padded["prefix_len"][i])
        assert padded["prefix_mask"][i, :n_prefix].tolist() == [1] * n_prefix
        assert padded["prefix_mask"][i, n_prefix:].sum() == 0
    assert bool((padded["prefix_mask"] <= padded["response_mask"]).all())


async def test_config_errors_are_clear(tokenizer):
    with pytest.raises(ValueError, match="prefix_rft:"):
        make_loop(PrefixRFTAgentLoop, trainer_config(False), tokenizer, RecordingServer(tokenizer))
    with pytest.raises(ValueError, match="use_v1"):
        make_loop(PrefixRFTAgentLoop, trainer_config(use_v1=False), tokenizer, RecordingServer(tokenizer))
    with pytest.raises(ValueError, match="num_prefixed"):
        make_loop(
            PrefixRFTAgentLoop,
            trainer_config({"num_prefixed": 5}, n=4),
            tokenizer,
            RecordingServer(tokenizer),
        )


async def test_demo_fraction_rows_without_demos_are_plain_rl_and_not_missing(tokenizer):
    """demos10 preset: rows failing keeps_demo get no prefix on the designated session, their prompt kept."""
    from prefix_rft.core.schedule import keeps_demo

    rows = synthetic_math_rows(40, seed=1)
    config = trainer_config({"num_prefixed": 1, "seed": 7, "demo_fraction": 0.5})
    kept = [keeps_demo(row_uid(request(r, session_id=0)), seed=7, fraction=0.5) for r in rows]
    assert 0 < sum(kept) < len(rows)
    for row, keep in zip(rows[:8], kept[:8], strict=True):
        server = RecordingServer(tokenizer)
        out = await make_loop(PrefixRFTAgentLoop, config, tokenizer, server).run(
            dict(SAMPLING), **request(row, session_id=0)
        )
        assert (out.is_prefixed, out.demo_missing) == (int(keep), 0)
        if not keep:
            assert out.response_ids == server.answer and out.prefix_mask == [0] * len(server.answer)
            assert server.calls[0]["prompt_ids"] == out.prompt_ids  # the prompt alone, as plain RL


async def test_demo_key_reads_the_weak_demo_column(tokenizer, rows):
    """weak_demos preset: the prefix comes from prefix_rft.demo_key's column, not `demonstrations`."""
    row = dict(rows[0], weak_demonstrations=["Weak solution: 6 + 6 = 12. \\boxed{12}"])
    config = trainer_config({"num_prefixed": 1, "seed": 7, "demo_key": "weak_demonstrations"})
    out = await make_loop(PrefixRFTAgentLoop, config, tokenizer, RecordingServer(tokenizer)).run(
        dict(SAMPLING), **request(row, session_id=0)
    )
    weak = tokenizer.encode(row["weak_demonstrations"][0], add_special_tokens=False)
    assert out.is_prefixed == 1 and out.response_ids[: out.prefix_len] == weak[: out.prefix_len]
    strong = tokenizer.encode(rows[0]["demonstrations"][0], add_special_tokens=False)
    assert weak[: out.prefix_len] != strong[: out.prefix_len]


async def test_val_seed_reaches_the_server_on_validation_requests_only(tokenizer, rows):
    config = trainer_config({"num_prefixed": 1, "seed": 7, "val_seed": 3})
    server = RecordingServer(tokenizer)
    loop = make_loop(PrefixRFTAgentLoop, config, tokenizer, server)
    val_row = {**rows[1], "extra_info": {**rows[1]["extra_info"], "split": "test"}}
    val_row.pop("demonstrations", None)
    for session in (0, 1, 0):
        await loop.run(dict(SAMPLING), **request(val_row, session_id=session))
    await loop.run(dict(SAMPLING), **request(rows[0], session_id=1))  # a training request
    seeds = [call["sampling_params"].get("seed") for call in server.calls]
    assert seeds[0] is not None and seeds[0] == seeds[2] != seeds[1]  # per (row, sample), stable
    assert seeds[3] is None  # training sampling is left to the engine's stream
    rest = {k: v for k, v in server.calls[0]["sampling_params"].items() if k not in ("seed", "max_tokens")}
    assert rest == {k: v for k, v in SAMPLING.items() if k != "max_tokens"}  # nothing else changed
