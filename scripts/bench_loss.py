"""Benchmark the Prefix-RFT actor loss against verl's ``ppo_loss`` on one micro-batch.

Times forward + backward of the loss function alone (the model is not run: ``model_output`` holds
leaf log-probs/entropy in verl's nested layout) and reports the peak memory the call allocates:
``torch.cuda.max_memory_allocated`` on CUDA, the running sum of the torch profiler's CPU
allocation/free events on CPU.

    python scripts/bench_loss.py                        # 8 x 4096 response tokens, CPU
    python scripts/bench_loss.py --batch 16 --response-len 8192 --device cuda
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from tqdm import tqdm
from verl.utils import tensordict_utils as tu
from verl.workers.config import FSDPActorConfig
from verl.workers.utils.losses import ppo_loss

from prefix_rft.actor_loss import make_prefix_rft_loss_fn
from prefix_rft.config import from_dict


def make_inputs(
    batch: int, prompt_len: int, response_len: int, device: str, with_prefix: bool, seed: int = 0
):
    """(model_output, data) of one micro-batch, as verl's engine hands them to the loss function."""
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
    tensors = {
        "prompts": jag([torch.ones(prompt_len) for _ in lens], torch.int64),
        "responses": jag([torch.ones(n) for n in lens], torch.int64),
        "response_mask": jag([torch.ones(n) for n in lens], torch.int64),
        "old_log_probs": jag(old, torch.float32),
        "advantages": jag(
            [torch.full((n,), float(torch.randn(1, generator=g))) for n in lens], torch.float32
        ),
        "ref_log_prob": jag(
            [o + 0.1 * torch.randn(n, generator=g) for o, n in zip(old, lens, strict=True)], torch.float32
        ),
    }
    if with_prefix:  # every other sample is a hybrid rollout with a ~half-length demo prefix, top-20% kept
        prefix = [torch.arange(n) < (n // 2 if i % 2 == 0 else 0) for i, n in enumerate(lens)]
        tensors["prefix_mask"] = jag(prefix, torch.int64)
        tensors["prefix_keep_mask"] = jag(
            [p & (torch.rand(len(p), generator=g) < 0.2) for p in prefix], torch.int64
        )
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


def bench(name, loss_fn, args, with_prefix, device):
    def step():
        model_output, data, leaves = make_inputs(
            args.batch, args.prompt_len, args.response_len, device, with_prefix
        )
        if device == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        loss, _ = loss_fn(model_output=model_output, data=data)
        loss.backward()
        if device == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - t0

    for _ in range(args.warmup):
        step()
    times = [step() for _ in tqdm(range(args.repeats), desc=name, leave=False)]

    model_output, data, _ = make_inputs(args.batch, args.prompt_len, args.response_len, device, with_prefix)

    def once():
        loss, _ = loss_fn(model_output=model_output, data=data)
        loss.backward()

    if device == "cuda":
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        once()
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() - base
    else:
        peak = cpu_peak_bytes(once)
    return statistics.median(times) * 1e3, peak / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--batch", type=int, default=8, help="sequences in the micro-batch")
    parser.add_argument("--response-len", type=int, default=4096, help="max response tokens per sequence")
    parser.add_argument("--prompt-len", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()

    actor = dict(
        strategy="fsdp",
        rollout_n=8,
        ppo_micro_batch_size_per_gpu=1,
        entropy_coeff=0.001,
        use_kl_loss=True,
        kl_loss_coef=0.001,
    )
    prefix_cfg = from_dict({"num_prefixed": 1}, rollout_n=8)
    verl_fn = lambda **kw: ppo_loss(FSDPActorConfig(**actor), **kw)  # noqa: E731
    ours_fn = make_prefix_rft_loss_fn(FSDPActorConfig(**actor), prefix_cfg)

    rows = [
        ("verl ppo_loss (plain batch)", verl_fn, False),
        ("prefix_rft loss (plain batch)", ours_fn, False),
        ("prefix_rft loss (hybrid batch)", ours_fn, True),
    ]
    print(
        f"micro-batch {args.batch} x {args.response_len} response tokens (+{args.prompt_len} prompt), "
        f"device={args.device}, median of {args.repeats}"
    )
    results = {}
    for name, fn, with_prefix in rows:
        results[name] = bench(name, fn, args, with_prefix, args.device)
        ms, mib = results[name]
        print(f"  {name:34s} {ms:9.2f} ms   peak {mib:9.1f} MiB")
    base_ms, base_mib = results[rows[0][0]]
    ms, mib = results[rows[2][0]]
    print(f"ratio hybrid prefix_rft / verl: time x{ms / base_ms:.2f}, peak memory x{mib / base_mib:.2f}")


if __name__ == "__main__":
    main()
