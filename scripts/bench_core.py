"""Benchmark the algorithm core against baselines in the same run (ratios, not absolute targets).

1. Entropy top-k selection (kthvalue, O(N); the recipe's ``select_demo_tokens`` with the default
   ``PrefixRFTConfig.entropy_clip``) vs a sort-based selection, on 1M and 8M tokens.
2. The per-token Prefix-RFT loss with every option on vs verl's ``compute_policy_loss_vanilla`` on the
   same 16 x 8192 inputs (forward + backward), both aggregated with verl's ``agg_loss`` (token-mean), as the
   actor loss does.

Usage: python scripts/bench_core.py [--device cpu|cuda] [--repeats N] [--threads N] [--quick]

``--quick`` (64K / 256K tokens, 4 x 1024 loss inputs, 3 repeats) only checks that it runs, in seconds.
The last lines are machine-readable, one figure a line: ``RESULT <name>=<value>`` with names
``selection_small_*`` / ``selection_large_*`` (1M / 8M tokens) and ``loss_*``, each ``_ours_ms``,
``_baseline_ms`` and ``_ratio`` (ours / baseline), plus ``selection_*_tokens``.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import time

import torch

from prefix_rft.config import PrefixRFTConfig
from prefix_rft.core.entropy import num_kept, select_demo_tokens

DEFAULTS = PrefixRFTConfig()


def _time_once(fn, device: str) -> float:
    if device == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    fn()
    if device == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def _compare(ours, baseline, repeats: int, device: str) -> tuple[float, float]:
    """Median seconds of ``ours`` and ``baseline``, run alternately so drifts in machine load hit both."""
    ours(), baseline()  # warm-up
    a, b = [], []
    for _ in range(repeats):
        a.append(_time_once(ours, device))
        b.append(_time_once(baseline, device))
    return statistics.median(a), statistics.median(b)


def sort_based_selection(entropy: torch.Tensor, prefix_mask: torch.Tensor, top_ratio: float) -> torch.Tensor:
    """Reference: full descending (stable) sort of the prefix entropies, keep the first ceil(k N)."""
    is_prefix = prefix_mask.bool()
    values = entropy[is_prefix]
    order = torch.sort(values, descending=True, stable=True).indices
    chosen = torch.zeros_like(values, dtype=torch.bool)
    chosen[order[: num_kept(values.numel(), top_ratio)]] = True
    keep = torch.zeros_like(is_prefix)
    keep[is_prefix] = chosen
    return keep


def bench_selection(
    device: str, repeats: int, sizes: tuple[int, int] = (1 << 20, 8 << 20)
) -> list[tuple[str, float, float]]:
    rows = []
    ecfg = DEFAULTS.entropy_clip
    k = ecfg.top_ratio
    for tokens in sizes:
        g = torch.Generator(device="cpu").manual_seed(0)
        entropy = torch.rand(tokens // 8192, 8192, generator=g).to(device)
        prefix = (torch.rand(tokens // 8192, 8192, generator=g) < 0.5).to(device)
        ours, ref = _compare(
            lambda e=entropy, p=prefix: select_demo_tokens(e, p, k, ecfg.selection),
            lambda e=entropy, p=prefix: sort_based_selection(e, p, k),
            repeats,
            device,
        )
        assert int(select_demo_tokens(entropy, prefix, k, ecfg.selection).sum()) == int(
            sort_based_selection(entropy, prefix, k).sum()
        )
        rows.append((f"entropy {ecfg.selection}-{k:.0%} on {tokens / 2**20:g}M tokens", ours, ref))
    return rows


def bench_loss(device: str, repeats: int, batch: int, seq: int) -> tuple[str, float, float]:
    from verl.trainer.ppo.core_algos import agg_loss, compute_policy_loss_vanilla

    from prefix_rft.core.loss import prefix_rft_token_loss

    class _Cfg(dict):  # the attributes compute_policy_loss_vanilla reads off an ActorConfig
        __getattr__ = dict.get

    cfg = _Cfg(
        clip_ratio=0.2, clip_ratio_low=0.2, clip_ratio_high=0.2, clip_ratio_c=3.0, global_batch_info={}
    )
    # every option on: LUFFY's shaping (unclipped, its resolved default) plus an SFT term, on the default config
    lcfg = dataclasses.replace(DEFAULTS.loss, is_mode="luffy", sft_coef=0.001)
    g = torch.Generator(device="cpu").manual_seed(0)
    log_prob = (torch.rand(batch, seq, generator=g) * -3).to(device)
    old = (log_prob.cpu() + torch.randn(batch, seq, generator=g) * 0.1).to(device)
    adv = torch.randn(batch, 1, generator=g).expand(batch, seq).contiguous().to(device)
    # boolean masks, as verl's ppo_loss and our actor loss pass them (data["response_mask"].to(bool))
    mask = torch.ones(batch, seq, dtype=torch.bool, device=device)
    prefix = torch.zeros(batch, seq, dtype=torch.bool, device=device)
    prefix[::8, : seq // 2] = True  # one hybrid rollout in 8, half of it demo tokens
    keep = (torch.rand(batch, seq, generator=g) < 0.2).to(device) & prefix
    weights = torch.rand(batch, seq, generator=g).to(device)

    def ours():
        lp = log_prob.clone().requires_grad_(True)
        mat, _ = prefix_rft_token_loss(
            lp,
            old,
            adv,
            mask,
            prefix,
            keep,
            clip_ratio_low=cfg.clip_ratio_low,
            clip_ratio_high=cfg.clip_ratio_high,
            clip_ratio_c=cfg.clip_ratio_c,
            is_mode=lcfg.is_mode,
            luffy_gamma=lcfg.luffy_gamma,
            sft_coef=lcfg.sft_coef,
            prefix_clip=lcfg.resolved_prefix_clip(),
            prefix_tokens=lcfg.prefix_tokens,
            rollout_is_weights=weights,
        )
        agg_loss(mat, mask, "token-mean").backward()

    def verl():
        lp = log_prob.clone().requires_grad_(True)
        loss, _ = compute_policy_loss_vanilla(
            old, lp, adv, mask, "token-mean", cfg, rollout_is_weights=weights
        )
        loss.backward()

    return (
        f"per-token loss fwd+bwd, {batch}x{seq}, all options on",
        *_compare(ours, verl, repeats, device),
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--seq", type=int, default=8192)
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch's default)")
    parser.add_argument("--quick", action="store_true", help="smoke size: checks it runs, in seconds")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    sizes = (1 << 20, 8 << 20)
    if args.quick:
        sizes, args.repeats, args.batch, args.seq = (1 << 16, 1 << 18), 3, 4, 1024
    rows = bench_selection(args.device, args.repeats, sizes) + [
        bench_loss(args.device, args.repeats, args.batch, args.seq)
    ]
    print(
        f"device={args.device} torch={torch.__version__} threads={torch.get_num_threads()} (median of {args.repeats})"
    )
    print(f"{'benchmark':<48} {'ours (ms)':>10} {'baseline (ms)':>14} {'ratio':>7}")
    for name, ours, ref in rows:
        print(f"{name:<48} {ours * 1e3:>10.2f} {ref * 1e3:>14.2f} {ours / ref:>7.2f}")
    print("baselines: sort-based selection; verl compute_policy_loss_vanilla (+ backward)")
    for key, (_, ours, ref) in zip(("selection_small", "selection_large", "loss"), rows, strict=True):
        print(f"RESULT {key}_ours_ms={ours * 1e3:.4f}")
        print(f"RESULT {key}_baseline_ms={ref * 1e3:.4f}")
        print(f"RESULT {key}_ratio={ours / ref:.4f}")
    for key, tokens in zip(("selection_small", "selection_large"), sizes, strict=True):
        print(f"RESULT {key}_tokens={tokens}")


if __name__ == "__main__":
    main()
