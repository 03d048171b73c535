"""Tests of the ``hf_cpu`` rollout backend (verl_cpu/rollout*.py) with the tiny local model.

The tiny model's random init is near-uniform and (with tied embeddings) greedily repeats one token, so
the tests scramble its weights (N(0, 0.3)) to get varied, seed-determined outputs.
"""

from __future__ import annotations

import asyncio
import inspect
import itertools
import threading

import pytest
import torch

from benchmarks.fixtures.tiny import build_tiny_model, build_tiny_tokenizer
from verl_cpu.rollout import (
    ROLLOUT_NAME,
    HFCPUEngineArgs,
    HFCPUReplica,
    HFCPUServer,
    HFCPUServerAdapter,
    load_hf_model,
    server_actor_name,
)
from verl_cpu.rollout_engine import (
    GenerationRequest,
    HFGenerationEngine,
    SamplingSpec,
    apply_top_k_top_p,
    parse_sampling_params,
)

PROMPTS = ["What is 3 + 4?", "hi", "We add 2 and 5: 2 + 5 = 7. So"]


def scramble(model: torch.nn.Module, seed: int, std: float = 0.3) -> torch.nn.Module:
    """Re-draw every matrix of ``model`` from N(0, std) with ``seed`` (in place)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, p in sorted(model.named_parameters()):
            if p.dim() > 1:
                p.copy_(torch.randn(p.shape, generator=gen) * std)
    return model


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> str:
    return build_tiny_model(str(tmp_path_factory.mktemp("tiny_model")), tokenizer=build_tiny_tokenizer())


@pytest.fixture(scope="module")
def tokenizer(model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(model_dir)


def fresh_model(model_dir: str, seed: int = 0) -> torch.nn.Module:
    return scramble(load_hf_model(model_dir, HFCPUEngineArgs()), seed)


@pytest.fixture()
def model(model_dir):
    return fresh_model(model_dir, seed=0)


@pytest.fixture(scope="module")
def prompt_ids(tokenizer) -> list[list[int]]:
    return [tokenizer.encode(p) for p in PROMPTS]


def hf_greedy(model, prompt: list[int], max_new_tokens: int, eos_token_id=None) -> list[int]:
    """transformers' own greedy ``generate`` (the reference)."""
    with torch.no_grad():
        out = model.generate(
            torch.tensor([prompt]),
            attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
            max_new_tokens=max_new_tokens,
            do_sample=False,
            eos_token_id=eos_token_id,
            pad_token_id=0,
        )
    return out[0, len(prompt) :].tolist()


def forward_logits(model, prompt: list[int], response: list[int]) -> torch.Tensor:
    """Logits [len(response), V] that predicted each response token (one full forward pass)."""
    ids = torch.tensor([prompt + response])
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0].float()
    return logits[len(prompt) - 1 : len(prompt) + len(response) - 1]


def make_engine(model, eos=(10_000,), mode="processed_logprobs") -> HFGenerationEngine:
    return HFGenerationEngine(model, eos_token_ids=eos, pad_token_id=0, logprobs_mode=mode, seed=0)


def rollout_config(**engine_kwargs):
    from verl.workers.config import RolloutConfig

    return RolloutConfig(
        name=ROLLOUT_NAME,
        tensor_model_parallel_size=1,
        prompt_length=64,
        response_length=12,
        engine_kwargs={ROLLOUT_NAME: engine_kwargs},
    )


class _LocalMethod:
    def __init__(self, fn):
        self.fn = fn

    def remote(self, *args, **kwargs):
        result = self.fn(*args, **kwargs)
        if inspect.isawaitable(result):
            return asyncio.ensure_future(result)
        future = asyncio.get_running_loop().create_future()
        future.set_result(result)
        return future


class LocalActor:
    """In-process stand-in for a Ray actor handle: ``handle.method.remote(...)`` returns an awaitable."""

    def __init__(self, obj):
        self._obj = obj

    def __getattr__(self, name):
        return _LocalMethod(getattr(self._obj, name))


# ------------------------------------------------------------------------------------- registration
def test_verl_registries_resolve_hf_cpu():
    from verl.workers.rollout.base import get_rollout_class
    from verl.workers.rollout.replica import get_rollout_replica_class

    assert get_rollout_class(ROLLOUT_NAME, "async") is HFCPUServerAdapter
    assert get_rollout_replica_class(ROLLOUT_NAME) is HFCPUReplica
    from verl.workers.rollout.base import _ROLLOUT_REGISTRY
    from verl.workers.rollout.replica import RolloutReplicaRegistry

    assert {"vllm", "sglang", "trtllm", ROLLOUT_NAME} <= set(
        RolloutReplicaRegistry._registry
    )  # built-ins kept
    assert _ROLLOUT_REGISTRY[(ROLLOUT_NAME, "async")] == "verl_cpu.rollout.HFCPUServerAdapter"
    with pytest.raises(ValueError, match="Unknown rollout mode"):
        get_rollout_replica_class("hf_cpu_typo")


def test_server_actor_name_matches_adapter_lookup():
    adapter = HFCPUServerAdapter(rollout_config(), None, None, replica_rank=3)
    assert server_actor_name(3) == "hf_cpu_server_3_0"
    assert adapter.replica_rank == 3 and adapter.is_leader_rank


def test_engine_kwargs_from_hydra_config_and_unknown_knob_error():
    from omegaconf import OmegaConf
    from verl.utils.config import omega_conf_to_dataclass
    from verl.workers.config import RolloutConfig

    cfg = OmegaConf.create(
        {
            "name": ROLLOUT_NAME,
            "engine_kwargs": {"vllm": {}, ROLLOUT_NAME: {"num_threads": 2, "batch_wait_ms": 0}},
        }
    )
    args = HFCPUEngineArgs.from_rollout_config(omega_conf_to_dataclass(cfg, dataclass_type=RolloutConfig))
    assert args == HFCPUEngineArgs(num_threads=2, batch_wait_ms=0)
    assert HFCPUEngineArgs.from_rollout_config(rollout_config()) == HFCPUEngineArgs()
    with pytest.raises(ValueError, match=r"engine_kwargs.hf_cpu keys \['batch_wait'\]"):
        HFCPUEngineArgs.from_rollout_config(rollout_config(batch_wait=3))


# --------------------------------------------------------------------------------- sampling params
def test_parse_sampling_params_defaults_and_clamping():
    spec = parse_sampling_params(
        {"temperature": 0.7, "top_p": 0.9, "top_k": -1, "repetition_penalty": 1.0, "logprobs": True},
        default_max_tokens=12,
        max_possible_tokens=100,
    )
    assert spec == SamplingSpec(max_tokens=12, temperature=0.7, top_p=0.9, top_k=-1, logprobs=True)
    assert (
        parse_sampling_params({"max_tokens": 500}, default_max_tokens=12, max_possible_tokens=30).max_tokens
        == 30
    )
    assert (
        parse_sampling_params({"max_new_tokens": 0}, default_max_tokens=12, max_possible_tokens=30).max_tokens
        == 1
    )
    spec = parse_sampling_params(
        {"stop_token_ids": [5, 6]}, default_max_tokens=4, max_possible_tokens=9, defaults={"ignore_eos": True}
    )
    assert spec.stop_token_ids == (5, 6) and spec.ignore_eos and not spec.logprobs and not spec.greedy
    assert parse_sampling_params({"temperature": 0}, default_max_tokens=4, max_possible_tokens=9).greedy


@pytest.mark.parametrize(
    ("params", "match"),
    [
        ({"repetition_penalty": 1.2}, "repetition_penalty"),
        ({"n": 2}, "'n'"),
        ({"stop": ["\n"]}, "'stop'"),
        ({"beam_width": 2}, "beam_width"),
        ({"top_p": 0.0}, "top_p"),
        ({"temperature": -1.0}, "temperature"),
        ({"top_k": -5}, "top_k"),
    ],
)
def test_parse_sampling_params_rejects_what_it_cannot_honour(params, match):
    with pytest.raises(ValueError, match=match):
        parse_sampling_params(params, default_max_tokens=4, max_possible_tokens=9)


def test_parse_sampling_params_no_room_for_generation():
    with pytest.raises(ValueError, match="max_model_len"):
        parse_sampling_params({}, default_max_tokens=4, max_possible_tokens=0)


def test_top_k_top_p_masks_hand_computed():
    probs = torch.tensor([[0.5, 0.3, 0.15, 0.05]])
    logits = probs.log()
    inf = float("-inf")

    def kept(k, p):
        out = apply_top_k_top_p(logits, torch.tensor([k]), torch.tensor([p]))
        return (out[0] != inf).tolist()

    assert kept(-1, 1.0) == [True, True, True, True]
    assert kept(2, 1.0) == [True, True, False, False]
    assert kept(-1, 0.7) == [True, True, False, False]  # 0.5 + 0.3 >= 0.7
    assert kept(-1, 0.85) == [True, True, True, False]  # 0.5 + 0.3 < 0.85 <= 0.95
    assert kept(-1, 1e-6) == [True, False, False, False]  # at least the most likely token
    assert kept(3, 0.7) == [True, True, False, False]
    ties = apply_top_k_top_p(torch.tensor([[1.0, 1.0, 0.0]]), torch.tensor([1]), torch.tensor([1.0]))
    assert (ties[0] != inf).tolist() == [True, True, False]  # ties with the k-th logit are kept (vLLM)
    # kept logits are unchanged
    out = apply_top_k_top_p(logits, torch.tensor([2]), torch.tensor([1.0]))
    assert torch.equal(out[0, :2], logits[0, :2])


# ----------------------------------------------------------------------------------------- engine
def test_greedy_matches_transformers_generate_and_honours_max_tokens(model, prompt_ids):
    engine = make_engine(model)
    for max_tokens in (1, 9):
        requests = [
            GenerationRequest(p, SamplingSpec(max_tokens=max_tokens, temperature=0.0)) for p in prompt_ids
        ]
        results = engine.generate_batch(requests)
        for prompt, result in zip(prompt_ids, results, strict=True):
            assert result.token_ids == hf_greedy(model, prompt, max_tokens)
            assert result.finish_reason == "length" and result.log_probs is None


def test_stops_at_eos_and_stop_token_ids(model, prompt_ids):
    prompt = prompt_ids[0]
    reference = hf_greedy(model, prompt, 10)
    eos = reference[4]
    cut = reference.index(eos) + 1  # the first occurrence, EOS included in the output
    assert cut < 10

    result = make_engine(model, eos=(eos,)).generate_batch(
        [GenerationRequest(prompt, SamplingSpec(10, 0.0))]
    )[0]
    assert result.token_ids == reference[:cut] and result.finish_reason == "stop"
    assert result.token_ids == hf_greedy(model, prompt, 10, eos_token_id=eos)

    ignore = SamplingSpec(10, 0.0, ignore_eos=True)
    result = make_engine(model, eos=(eos,)).generate_batch([GenerationRequest(prompt, ignore)])[0]
    assert result.token_ids == reference and result.finish_reason == "length"

    stop = SamplingSpec(10, 0.0, stop_token_ids=(eos,))
    result = make_engine(model).generate_batch([GenerationRequest(prompt, stop)])[0]
    assert result.token_ids == reference[:cut] and result.finish_reason == "stop"


@pytest.mark.parametrize(
    ("mode", "temperature", "top_k", "top_p"),
    [
        ("processed_logprobs", 1.0, -1, 1.0),
        ("processed_logprobs", 0.7, -1, 1.0),
        ("processed_logprobs", 1.3, 20, 0.9),
        ("processed_logprobs", 0.0, -1, 1.0),
        ("raw_logprobs", 0.7, 20, 0.9),
    ],
)
def test_logprobs_equal_forward_log_softmax(model, prompt_ids, mode, temperature, top_k, top_p):
    engine = make_engine(model, mode=mode)
    spec = SamplingSpec(
        max_tokens=8, temperature=temperature, top_k=top_k, top_p=top_p, logprobs=True, seed=7
    )
    results = engine.generate_batch([GenerationRequest(p, spec) for p in prompt_ids])
    for prompt, result in zip(prompt_ids, results, strict=True):
        assert len(result.log_probs) == len(result.token_ids) == 8
        logits = forward_logits(model, prompt, result.token_ids)
        if mode == "raw_logprobs" or temperature == 0.0:
            expected_dist = torch.log_softmax(logits, dim=-1)
        else:
            scaled = logits / temperature
            masked = apply_top_k_top_p(
                scaled, torch.full((len(logits),), top_k), torch.full((len(logits),), top_p)
            )
            expected_dist = torch.log_softmax(masked, dim=-1)
        expected = expected_dist.gather(1, torch.tensor(result.token_ids).unsqueeze(1)).squeeze(1)
        assert torch.isfinite(expected).all()  # every sampled token is inside the top-k / top-p set
        torch.testing.assert_close(torch.tensor(result.log_probs), expected, atol=1e-4, rtol=0)


def test_sampling_is_seeded_and_tiny_top_p_or_top_k_one_is_greedy(model, prompt_ids):
    engine = make_engine(model)
    prompt = prompt_ids[1]
    greedy = hf_greedy(model, prompt, 10)

    def sample(**kw):
        spec = SamplingSpec(max_tokens=10, **kw)
        return engine.generate_batch([GenerationRequest(prompt, spec)])[0].token_ids

    assert sample(temperature=1.0, top_p=1e-6, seed=1) == greedy
    assert sample(temperature=5.0, top_k=1, seed=2) == greedy
    hot_a, hot_b = sample(temperature=3.0, seed=3), sample(temperature=3.0, seed=3)
    assert hot_a == hot_b  # same seed, same sample
    assert len({tuple(sample(temperature=3.0, seed=s)) for s in range(4)}) > 1
    assert hot_a != greedy


@pytest.mark.parametrize(
    ("temperature", "top_k", "top_p", "expected"),
    [
        (2.0, -1, 1.0, [0.379, 0.294, 0.207, 0.120]),  # softmax(log p / 2) = sqrt(p) / sum sqrt(p)
        (2.0, 2, 1.0, [0.563, 0.437, 0.0, 0.0]),
        (1.0, -1, 0.7, [0.625, 0.375, 0.0, 0.0]),
    ],
)
def test_sampling_frequencies_follow_tempered_masked_softmax(model, temperature, top_k, top_p, expected):
    engine = make_engine(model)
    n = 4000
    logits = torch.tensor([[0.5, 0.3, 0.15, 0.05]]).log().expand(n, 4)
    spec = SamplingSpec(max_tokens=1, temperature=temperature, top_k=top_k, top_p=top_p)
    requests = [GenerationRequest([1], spec, generator=engine.make_generator(seed)) for seed in range(n)]
    tokens, _ = engine.sample(logits, requests)
    freq = torch.bincount(tokens, minlength=4).float() / n
    torch.testing.assert_close(freq, torch.tensor(expected), atol=0.03, rtol=0)


def test_token_ids_beyond_the_tokenizer_vocab_are_never_sampled(model, prompt_ids):
    engine = HFGenerationEngine(model, eos_token_ids=(10_000,), pad_token_id=0, seed=0, vocab_size=50)
    spec = SamplingSpec(max_tokens=20, temperature=5.0, logprobs=True)
    results = engine.generate_batch([GenerationRequest(p, spec) for p in prompt_ids])
    tokens = [t for r in results for t in r.token_ids]
    assert max(tokens) < 50 and len(set(tokens)) > 5
    assert all(lp > float("-inf") for r in results for lp in r.log_probs)


def test_left_padded_batch_equals_sequential(model, prompt_ids):
    engine = make_engine(model)
    specs = [SamplingSpec(max_tokens=n, temperature=0.0, logprobs=True) for n in (3, 9, 6)]
    batched = engine.generate_batch([GenerationRequest(p, s) for p, s in zip(prompt_ids, specs, strict=True)])
    for prompt, spec, result in zip(prompt_ids, specs, batched, strict=True):
        alone = engine.generate_batch([GenerationRequest(prompt, spec)])[0]
        assert result.token_ids == alone.token_ids
        torch.testing.assert_close(
            torch.tensor(result.log_probs), torch.tensor(alone.log_probs), atol=1e-5, rtol=0
        )


def test_weight_loading_errors_name_the_weight(model, model_dir):
    engine = make_engine(model)
    engine.begin_weight_update()
    with pytest.raises(KeyError, match="model.nope.weight"):
        engine.load_weights([("model.nope.weight", torch.zeros(1))])
    with pytest.raises(ValueError, match="model.norm.weight"):
        engine.load_weights([("model.norm.weight", torch.zeros(3))])
    engine.begin_weight_update()
    engine.load_weights([("model.norm.weight", torch.ones(64))])
    with pytest.raises(RuntimeError, match="stale"):
        engine.finish_weight_update()


# ----------------------------------------------------------------------------------------- server
async def test_server_batches_concurrent_requests_like_sequential(model, tokenizer, prompt_ids):
    server = HFCPUServer(rollout_config(batch_wait_ms=200), model=model, tokenizer=tokenizer)
    params = {"temperature": 0.0, "top_p": 1.0, "top_k": -1, "logprobs": True, "max_tokens": 7}
    outs = await asyncio.gather(
        *[
            server.generate(prompt_ids=p, sampling_params=dict(params), request_id=f"r{i}")
            for i, p in enumerate(prompt_ids)
        ]
    )
    assert server.num_batches == 1
    for prompt, out in zip(prompt_ids, outs, strict=True):
        assert out.token_ids == hf_greedy(model, prompt, 7)
        assert len(out.log_probs) == 7 and out.stop_reason == "completed"
    sequential = [
        await server.generate(prompt_ids=p, sampling_params=dict(params), request_id="s") for p in prompt_ids
    ]
    assert server.num_batches == 1 + len(prompt_ids)
    assert [o.token_ids for o in sequential] == [o.token_ids for o in outs]


async def test_server_defaults_eos_and_response_length_from_configs(model, tokenizer, prompt_ids):
    server = HFCPUServer(rollout_config(batch_wait_ms=0), model=model, tokenizer=tokenizer)
    assert server.engine.eos_token_ids == {tokenizer.eos_token_id}
    greedy = {"temperature": 0, "ignore_eos": True}
    out = await server.generate(prompt_ids=prompt_ids[0], sampling_params=greedy, request_id="x")
    assert len(out.token_ids) == 12  # max_tokens defaults to rollout.response_length
    assert out.log_probs is None and out.extra_fields["global_steps"] is None
    out = await server.generate(prompt_ids=prompt_ids[0], sampling_params={"temperature": 0}, request_id="x")
    assert out.token_ids == hf_greedy(model, prompt_ids[0], 12, eos_token_id=tokenizer.eos_token_id)
    with pytest.raises(ValueError, match="repetition_penalty"):
        await server.generate(prompt_ids=[1, 2], sampling_params={"repetition_penalty": 1.1}, request_id="y")
    with pytest.raises(NotImplementedError, match="text-only"):
        await server.generate(prompt_ids=[1, 2], sampling_params={}, request_id="z", image_data=["img"])


async def test_weight_update_through_adapter_changes_greedy_output(model_dir, tokenizer, prompt_ids):
    from verl.workers.config import CheckpointEngineConfig

    server = HFCPUServer(
        rollout_config(batch_wait_ms=0), model=fresh_model(model_dir, 0), tokenizer=tokenizer
    )
    config = rollout_config()
    object.__setattr__(config, "checkpoint_engine", CheckpointEngineConfig(update_weights_bucket_megabytes=0))
    adapter = HFCPUServerAdapter(config, None, None, replica_rank=0, server_handle=LocalActor(server))
    greedy = {"temperature": 0.0, "max_tokens": 8}
    before = await server.generate(prompt_ids=prompt_ids[0], sampling_params=dict(greedy), request_id="a")

    new_model = fresh_model(model_dir, seed=1)
    await adapter.release()
    assert server.is_sleeping
    await adapter.resume(tags=["weights"])
    await adapter.update_weights(iter(list(new_model.state_dict().items())), global_steps=5)
    await adapter.resume(tags=["kv_cache"])
    after = await server.generate(prompt_ids=prompt_ids[0], sampling_params=dict(greedy), request_id="b")

    assert after.token_ids == hf_greedy(new_model, prompt_ids[0], 8)
    assert after.token_ids != before.token_ids
    assert after.extra_fields["global_steps"] == 5 and not server.is_sleeping

    partial = [(k, v) for k, v in new_model.state_dict().items() if "layers.1." not in k]
    with pytest.raises(RuntimeError, match="layers.1"):
        await adapter.update_weights(iter(partial), global_steps=6)
    with pytest.raises(NotImplementedError, match="lora.merge"):
        await adapter.update_weights(iter([]), peft_config={"r": 8})


async def test_abort_returns_partial_outputs_and_resume_admits_again(model, tokenizer, prompt_ids):
    server = HFCPUServer(rollout_config(batch_wait_ms=0), model=model, tokenizer=tokenizer)
    long = {"temperature": 0.0, "max_tokens": 2000, "ignore_eos": True}
    decoding = threading.Event()  # set by the model's 3rd forward: the prefill and a decode step are done
    calls = itertools.count(1)

    def count_forward(*_) -> None:  # a forward hook that returns None leaves the output as it is
        if next(calls) >= 3:
            decoding.set()

    hook = model.register_forward_hook(count_forward)
    try:
        task = asyncio.ensure_future(
            server.generate(prompt_ids=prompt_ids[0], sampling_params=long, request_id="l")
        )
        # abort mid-generation (on a loaded machine the first token can take seconds)
        assert await asyncio.to_thread(decoding.wait, 120)
        result = await server.abort_all_requests()
        out = await task
    finally:
        hook.remove()
        if not task.done():  # the test failed before the abort: stop the 2000-token generation anyway
            await server.abort_all_requests()
            await task
    assert result["aborted_count"] == 1
    assert out.stop_reason == "aborted" and 0 < len(out.token_ids) < 2000

    rejected = await server.abort_all_requests(reject_request=True)
    assert rejected["aborted_count"] == 0
    out = await server.generate(prompt_ids=prompt_ids[1], sampling_params={"max_tokens": 3}, request_id="r")
    assert out.stop_reason == "aborted" and out.token_ids == []
    await server.resume_generation()
    out = await server.generate(prompt_ids=prompt_ids[1], sampling_params={"max_tokens": 3}, request_id="r2")
    assert out.stop_reason == "completed" and len(out.token_ids) == 3


# --------------------------------------------------------------- verl's client / agent-loop interface
async def test_verl_llm_server_client_drives_the_server(model, tokenizer, prompt_ids):
    from omegaconf import OmegaConf
    from verl.workers.rollout.llm_server import LLMServerClient
    from verl.workers.rollout.router import GlobalRequestLoadBalancer

    server = HFCPUServer(rollout_config(batch_wait_ms=0), model=model, tokenizer=tokenizer)
    balancer = LocalActor(GlobalRequestLoadBalancer(servers={"hf_cpu://local/0": LocalActor(server)}))
    trainer_config = OmegaConf.create({"actor_rollout_ref": {"rollout": {"name": ROLLOUT_NAME}}})
    client = LLMServerClient(config=trainer_config, load_balancer_handle=balancer)
    params = {"temperature": 0.0, "top_p": 1.0, "top_k": -1, "repetition_penalty": 1.0, "logprobs": True}
    out = await client.generate(
        "req-1", prompt_ids=prompt_ids[2], sampling_params={**params, "max_tokens": 6}, priority=0
    )
    assert out.token_ids == hf_greedy(model, prompt_ids[2], 6)
    logits = forward_logits(model, prompt_ids[2], out.token_ids)
    expected = torch.log_softmax(logits, -1).gather(1, torch.tensor(out.token_ids)[:, None]).squeeze(1)
    torch.testing.assert_close(torch.tensor(out.log_probs), expected, atol=1e-4, rtol=0)
    assert out.extra_fields["min_global_steps"] is None


async def test_verl_single_turn_agent_loop_runs_on_hf_cpu(model, tokenizer):
    """verl's own SingleTurnAgentLoop -> LLMServerClient -> HFCPUServer, as in a training step."""
    from omegaconf import OmegaConf
    from verl.experimental.agent_loop.agent_loop import DictConfigWrap, ToolListWrap
    from verl.experimental.agent_loop.single_turn_agent_loop import SingleTurnAgentLoop
    from verl.utils.dataset.rl_dataset import RLHFDataset
    from verl.workers.rollout.llm_server import LLMServerClient
    from verl.workers.rollout.router import GlobalRequestLoadBalancer

    server = HFCPUServer(rollout_config(batch_wait_ms=0), model=model, tokenizer=tokenizer)
    balancer = LocalActor(GlobalRequestLoadBalancer(servers={"hf_cpu://local/0": LocalActor(server)}))
    trainer_config = OmegaConf.create(
        {
            "actor_rollout_ref": {
                "rollout": {"name": ROLLOUT_NAME, "prompt_length": 64, "response_length": 12}
            },
            "data": {},
        }
    )
    client = LLMServerClient(config=trainer_config, load_balancer_handle=balancer)
    loop = SingleTurnAgentLoop(
        trainer_config=DictConfigWrap(trainer_config),
        server_manager=client,
        tokenizer=tokenizer,
        processor=None,
        dataset_cls=RLHFDataset,
        data_config=DictConfigWrap(trainer_config.data),
        hf_model_type="qwen2",
        tools=ToolListWrap([]),
    )
    messages = [{"role": "user", "content": "What is 3 + 4?"}]
    sampling = {"temperature": 1.0, "top_p": 1.0, "top_k": -1, "repetition_penalty": 1.0, "logprobs": True}
    out = await loop.run(dict(sampling), raw_prompt=messages)

    expected_prompt = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert out.prompt_ids == tokenizer.encode(expected_prompt)
    assert 1 <= len(out.response_ids) <= 12 and out.response_mask == [1] * len(out.response_ids)
    assert len(out.response_logprobs) == len(out.response_ids)
    logits = forward_logits(model, out.prompt_ids, out.response_ids)
    expected = torch.log_softmax(logits, -1).gather(1, torch.tensor(out.response_ids)[:, None]).squeeze(1)
    torch.testing.assert_close(torch.tensor(out.response_logprobs), expected, atol=1e-4, rtol=0)


def test_ray_replica_launch_and_weight_sync(model_dir, prompt_ids):
    """The real Ray path: HFCPUReplica launches a named server actor; the adapter finds it by name and
    syncs new weights over Ray; generation then follows the new weights."""
    import ray
    from omegaconf import OmegaConf
    from verl.workers.rollout.replica import RolloutMode

    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    replica_rank = 7  # avoid clashing with a trainer's replica 0 if Ray is shared
    config = rollout_config(num_threads=1)
    try:

        async def scenario():
            replica = HFCPUReplica(
                replica_rank=replica_rank,
                config=config,
                model_config=OmegaConf.create({"path": model_dir}),
                gpus_per_node=1,
            )
            replica.rollout_mode = RolloutMode.HYBRID
            await replica.launch_servers()
            assert replica.server_address.endswith(server_actor_name(replica_rank))
            adapter = HFCPUServerAdapter(config, None, None, replica_rank=replica_rank)
            new_model = fresh_model(model_dir, seed=1)
            await replica.sleep()
            await adapter.resume(tags=["weights"])
            await adapter.update_weights(iter(new_model.state_dict().items()), global_steps=3)
            await replica.wake_up()
            out = await replica.server_handle.generate.remote(
                prompt_ids=prompt_ids[0], sampling_params={"temperature": 0, "max_tokens": 6}, request_id="x"
            )
            ray.kill(replica.server_handle)
            return out, hf_greedy(new_model, prompt_ids[0], 6)

        out, expected = asyncio.run(scenario())
    finally:
        if started:
            ray.shutdown()
    assert out.token_ids == expected
    assert out.extra_fields["global_steps"] == 3
