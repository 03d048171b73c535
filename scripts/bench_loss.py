"""Benchmark the Prefix-RFT actor loss against verl's ``ppo_loss`` on the same micro-batch.

Times forward + backward of the loss function alone (the model is not run: ``model_output`` holds
leaf log-probs/entropy in verl's nested layout) and reports the peak memory the call allocates:
``torch.cuda.max_memory_allocated`` on CUDA, the running sum of the torch profiler's CPU
allocation/free events on CPU. Two pairs, each timed alternately in the same run:

- hybrid: a micro-batch as the Prefix-RFT trainer hands it to the actor (``num_prefixed`` of every
  ``rollout_n`` rows start from a demo prefix; ``prefix_mask`` and the entropy ``prefix_keep_mask``
  written by :func:`prefix_rft.trainer.build_keep_mask`, int64 jagged like every TransferQueue field):
  ``prefix_rft_ppo_loss`` (the default ``num_prefixed``) vs verl's ``ppo_loss`` on that same micro-batch
  (``ppo_loss`` ignores the two prefix fields);
- plain: the same micro-batch without prefix fields: ``prefix_rft_ppo_loss`` with ``num_prefixed=0``
  (it hands the batch to ``ppo_loss``) vs ``ppo_loss``.

Both use the recipe's loss settings plus the KL loss (every term on): token-mean, entropy bonus 0.001,
dual clip c=3, entropy clipping as ``PrefixRFTConfig.entropy_clip`` defaults it.
The last lines are machine-readable, one figure a line: ``RESULT <name>=<value>``.

    python scripts/bench_loss.py --threads 1            # 8 x 4096 response tokens, CPU (make bench)
    python scripts/bench_loss.py --quick                # 8 x 256, a few repeats: seconds
    python scripts/bench_loss.py --batch 16 --response-len 8192 --device cuda
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from verl.utils import tensordict_utils as tu
from verl.workers.config import FSDPActorConfig
from verl.workers.utils.losses import ppo_loss

from prefix_rft.actor_loss import make_prefix_rft_loss_fn
from prefix_rft.config import PrefixRFTConfig, from_dict
from prefix_rft.trainer import build_keep_mask

ROLLOUT_N = 8
NUM_PREFIXED = PrefixRFTConfig().num_prefixed


def make_inputs(
    batch: int, prompt_len: int, response_len: int, device: str, with_prefix: bool, prefix_cfg, seed: int = 0
):
    """(model_output, data, leaves) of one micro-batch, as verl's engine hands them to the loss function.

    Row ``i`` belongs to rollout group ``i // ROLLOUT_N`` and is a hybrid rollout when
    ``i % ROLLOUT_N < NUM_PREFIXED`` (the agent loop's layout), with a demo prefix of half its response.
    """
    g = torch.Generator().manual_seed(seed)
    lens = [response_len - int(torch.randint(0, response_len // 4, (1,), generator=g)) for _ in range(batch)]
    seq_total = sum(prompt_len + n for n in lens)
    lp = (-torch.rand(seq_total, generator=g)).to(device).requires_grad_(True)
    ent = (torch.rand(seq_total, generator=g) * 2).to(device).requires_grad_(True)
    offsets = torch.tensor([0] + [prompt_len + n for n in lens]).cumsum(0).to(device)
    model_output = {
        "log_probs": torch.nested.nested_tensor_from_jagged(lp, offsets),
        "entropy": torch.nested.nested_tensor_from_jagged(ent, offsets),
    }

    def jag(rows, dtype):
        return torch.nested.as_nested_tensor([r.to(dtype) for r in rows], layout=torch.jagged).to(device)

    old = [-torch.rand(n, generator=g) for n in lens]
    group_adv = torch.randn(batch, generator=g)
    tensors = {
        "prompts": jag([torch.ones(prompt_len) for _ in lens], torch.int64),
        "responses": jag([torch.ones(n) for n in lens], torch.int64),
        "response_mask": jag([torch.ones(n) for n in lens], torch.int64),
        "old_log_probs": jag(old, torch.float32),
        "advantages": jag([torch.full((n,), float(group_adv[i])) for i, n in enumerate(lens)], torch.float32),
        "ref_log_prob": jag(
            [o + 0.1 * torch.randn(n, generator=g) for o, n in zip(old, lens, strict=True)], torch.float32
        ),
    }
    if with_prefix:
        width = max(lens)
        resp = torch.zeros(batch, width, dtype=torch.long)
        prefix = torch.zeros(batch, width, dtype=torch.long)
        for i, n in enumerate(lens):
            resp[i, :n] = 1
            if i % ROLLOUT_N < NUM_PREFIXED:
                prefix[i, : n // 2] = 1
        old_entropy = torch.rand(batch, width, generator=g) * 2  # what old_log_prob wrote to TransferQueue
        keep = build_keep_mask(
            old_entropy, prefix, prefix_cfg.entropy_clip, torch.zeros(batch, dtype=torch.long)
        )
        tensors["prefix_mask"] = jag([prefix[i, :n] for i, n in enumerate(lens)], torch.int64)
        tensors["prefix_keep_mask"] = jag([keep[i, :n] for i, n in enumerate(lens)], torch.int64)
    info = dict(dp_size=1, batch_num_tokens=sum(lens), global_batch_size=batch)
    return model_output, tu.get_tensordict(tensors, non_tensor_dict=info), (lp, ent)


def cpu_peak_bytes(fn) -> int:
    """Peak of live CPU tensor bytes allocated while ``fn`` runs (profiler alloc/free events, in order)."""
    with torch.profiler.profile(
        activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True
    ) as prof:
        fn()
    events = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
    live = peak = 0
    for e in sorted(events, key=lambda e: e.start_ns()):
        live += e.nbytes()  # > 0 allocation, < 0 free
        peak = max(peak, live)
    return peak


def _call(loss_fn, inputs):
    model_output, data, _ = inputs
    loss, _ = loss_fn(model_output=model_output, data=data)
    loss.backward()


def _time(loss_fn, inputs, device: str) -> float:
    if device == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    _call(loss_fn, inputs)
    if device == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def _peak_mib(loss_fn, inputs, device: str) -> float:
    if device == "cuda":
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        _call(loss_fn, inputs)
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() - base
    else:
        peak = cpu_peak_bytes(lambda: _call(loss_fn, inputs))
    return peak / 2**20


def compare(ours, baseline, make, args) -> tuple[float, float, float, float]:
    """(ours ms, baseline ms, ours peak MiB, baseline peak MiB); timed alternately on fresh inputs."""
    a, b = [], []
    for i in range(args.warmup + args.repeats):
        ta = _time(ours, make(), args.device)
        tb = _time(baseline, make(), args.device)
        if i >= args.warmup:
            a.append(ta)
            b.append(tb)
    return (
        statistics.median(a) * 1e3,
        statistics.median(b) * 1e3,
        _peak_mib(ours, make(), args.device),
        _peak_mib(baseline, make(), args.device),
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--batch", type=int, default=8, help="sequences in the micro-batch")
    parser.add_argument("--response-len", type=int, default=4096, help="max response tokens per sequence")
    parser.add_argument("--prompt-len", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch's default)")
    parser.add_argument(
        "--quick", action="store_true", help="smoke size (8 x 256, 3 repeats): checks it runs, in seconds"
    )
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.quick:
        args.response_len, args.prompt_len, args.repeats, args.warmup = 256, 32, 3, 1

    actor = dict(
        strategy="fsdp",
        rollout_n=ROLLOUT_N,
        ppo_micro_batch_size_per_gpu=1,
        entropy_coeff=0.001,
        use_kl_loss=True,
        kl_loss_coef=0.001,
        clip_ratio_c=3.0,
    )
    hybrid_cfg = from_dict({"num_prefixed": NUM_PREFIXED}, rollout_n=ROLLOUT_N)
    plain_cfg = from_dict({"num_prefixed": 0}, rollout_n=ROLLOUT_N)
    verl_fn = lambda **kw: ppo_loss(FSDPActorConfig(**actor), **kw)  # noqa: E731
    pairs = [
        ("hybrid", make_prefix_rft_loss_fn(FSDPActorConfig(**actor), hybrid_cfg), True),
        ("plain", make_prefix_rft_loss_fn(FSDPActorConfig(**actor), plain_cfg), False),
    ]
    print(
        f"micro-batch {args.batch} x {args.response_len} response tokens (+{args.prompt_len} prompt), "
        f"{NUM_PREFIXED} hybrid rollout in {ROLLOUT_N}, device={args.device}, threads={torch.get_num_threads()}, "
        f"median of {args.repeats}"
    )
    print(f"  {'pair':8s} {'prefix_rft ms':>14s} {'verl ms':>9s} {'prefix_rft MiB':>15s} {'verl MiB':>9s}")
    results = {}
    for name, ours_fn, with_prefix in pairs:

        def make(with_prefix=with_prefix):
            return make_inputs(
                args.batch, args.prompt_len, args.response_len, args.device, with_prefix, hybrid_cfg
            )

        ours_ms, base_ms, ours_mib, base_mib = compare(ours_fn, verl_fn, make, args)
        print(f"  {name:8s} {ours_ms:14.2f} {base_ms:9.2f} {ours_mib:15.2f} {base_mib:9.2f}")
        results.update(
            {
                f"{name}_prefix_rft_ms": ours_ms,
                f"{name}_verl_ms": base_ms,
                f"{name}_prefix_rft_peak_mib": ours_mib,
                f"{name}_verl_peak_mib": base_mib,
                f"{name}_time_ratio": ours_ms / base_ms,
                f"{name}_peak_ratio": ours_mib / base_mib,
            }
        )
    print("ratios are prefix_rft / verl ppo_loss on the same micro-batch")
    for key, value in results.items():
        print(f"RESULT {key}={value:.4f}")


if __name__ == "__main__":
    main()
