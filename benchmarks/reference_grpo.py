"""A minimal, independent Dr.GRPO / Prefix-RFT reference loop (cleanrl-style, one file, torch + transformers).

It shares no rollout, advantage or loss code with the project (nothing from ``prefix_rft.core``,
``prefix_rft.actor_loss``, ``prefix_rft.advantage``, ``prefix_rft.agent_loop``, ``prefix_rft.trainer``, nor
the recipe): only the task rows (``benchmarks.fixtures.arith``; for ``--benchmark`` the learning benchmark's
row lists and settings, ``benchmarks.learning.train_rows`` / ``val_rows`` / ``SETTINGS``, data only) and
the cached base model (``benchmarks.fixtures.base_model``). ``tests/test_reference_parity.py`` checks that
one actor update of verl's real actor path with the project's loss equals :func:`ppo_update` here.

The objective, written out by hand (verl's ``loss_agg_mode=seq-mean-token-sum-norm``, the recipe's Dr.GRPO):
for a PPO mini-batch of ``S`` responses, ``loss = sum over response tokens of the dual-clip PPO term /
(loss_scale_factor * S)``, ``loss_scale_factor`` = the response budget. Log-probs (old and new) are those
of ``softmax(logits / temperature)`` at the rollout temperature, as verl's actor computes both. The old
log-probs come from a separate forward of the policy before the update (verl's ``old_log_probs``), not
from the sampler.

CLI (RFT from the cached base model, avg@4 and greedy accuracy every 4 steps)::

    python benchmarks/reference_grpo.py --lr 3e-5 --steps 16 --seed 0 --batch-size 8 --n 8 \\
        --max-new-tokens 64 --train-level 2 --eval-rows 128 --out curve.json

The learning benchmark's RFT arm at its exact sizes (:func:`run_benchmark_arm`; the tuned settings of
``benchmarks.learning`` once its sweeps are done, else its ``SETTINGS`` with ``rl_lr = --lr``), written to
``docs/results/learning/reference/rft_seed<seed>.json`` unless ``--out`` (an existing file is kept unless
``--force``)::

    python benchmarks/reference_grpo.py --benchmark --seed 0
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]


@dataclass
class Batch:
    """A batch of rollouts: token ids per row, demo-prefix length, reward and prompt group."""

    prompt_ids: list[list[int]]
    response_ids: list[list[int]]  # demo prefix (if any) + generated continuation (eos included if emitted)
    prefix_len: list[int]
    rewards: torch.Tensor  # [B] float
    groups: torch.Tensor  # [B] long: index of the prompt
    truncated: list[bool]

    def rows(self, sl: slice) -> Batch:
        """The rows ``sl`` of the batch (a PPO mini-batch)."""
        return Batch(
            self.prompt_ids[sl], self.response_ids[sl], self.prefix_len[sl], self.rewards[sl],
            self.groups[sl], self.truncated[sl],
        )  # fmt: skip

    def prefix_mask(self, width: int) -> torch.Tensor:
        """``[B, width]`` bool, True on demo-prefix tokens."""
        return torch.arange(width)[None, :] < torch.tensor(self.prefix_len)[:, None]


def render(tokenizer, content: str) -> list[int]:
    """Token ids of the chat-formatted user turn plus the assistant header (the RL prompt)."""
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": content}], tokenize=False, add_generation_prompt=True
    )
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def last_boxed(text: str) -> str | None:
    """Content of the last ``\\boxed{...}`` of ``text`` (braces matched), or None."""
    start = text.rfind("\\boxed{")
    if start < 0:
        return None
    depth, i = 1, start + len("\\boxed{")
    for j in range(i, len(text)):
        depth += {"{": 1, "}": -1}.get(text[j], 0)
        if depth == 0:
            return text[i:j]
    return None


def score(text: str, ground_truth: str) -> float:
    """1.0 when the last ``\\boxed{}`` equals the ground truth (exact, after strip), else 0.0."""
    got = last_boxed(text)
    return float(got is not None and got.strip() == str(ground_truth).strip())


@torch.no_grad()
def sample(model, tokenizer, prompt_ids_list, n, max_new_tokens, temperature, generator, prefix_ids=None):
    """Sample ``n`` responses per prompt from ``softmax(logits / temperature)`` (greedy when 0).

    Batched with left padding, an attention mask, position ids and a KV cache; a row stops at eos or when
    its response (demo prefix + continuation) reaches ``max_new_tokens``. ``prefix_ids[i]`` (or None): demo
    tokens appended to prompt ``i`` for the FIRST of its ``n`` samples (a hybrid rollout: the policy
    continues the demo). Returns one dict per sample, prompt-major: ``response_ids`` (prefix +
    continuation), ``prefix_len``, ``logp`` (the sampler's log-probs; 0.0 on demo tokens) and ``truncated``.
    """
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    starts, prefixes = [], []
    for i, p in enumerate(prompt_ids_list):
        for j in range(n):
            pre = (
                list(prefix_ids[i]) if prefix_ids is not None and prefix_ids[i] is not None and j == 0 else []
            )
            starts.append(list(p) + pre)
            prefixes.append(pre)
    b, width = len(starts), max(map(len, starts))
    ids = torch.full((b, width), pad, dtype=torch.long)
    mask = torch.zeros((b, width), dtype=torch.long)
    for r, s in enumerate(starts):
        ids[r, width - len(s) :], mask[r, width - len(s) :] = torch.tensor(s), 1
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    out = model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True)
    budget = max_new_tokens - torch.tensor([len(p) for p in prefixes])
    gen = torch.full((b, max_new_tokens), pad, dtype=torch.long)
    logp = torch.zeros((b, max_new_tokens))
    length = torch.zeros(b, dtype=torch.long)
    done, hit_eos = budget <= 0, torch.zeros(b, dtype=torch.bool)
    next_pos = pos[:, -1] + 1
    for t in range(max_new_tokens):
        lp = torch.log_softmax(out.logits[:, -1].float() / (temperature if temperature > 0 else 1.0), -1)
        if temperature > 0:
            tok = torch.multinomial(lp.exp(), 1, generator=generator).squeeze(-1)
        else:
            tok = lp.argmax(-1)
        tok = torch.where(done, pad, tok)
        gen[:, t], logp[:, t] = tok, lp.gather(-1, tok[:, None]).squeeze(-1)
        length += (~done).long()
        hit_eos |= ~done & (tok == eos)
        done = done | (tok == eos) | (length >= budget)
        if bool(done.all()):
            break
        mask = torch.cat([mask, torch.ones((b, 1), dtype=torch.long)], dim=1)
        out = model(
            input_ids=tok[:, None], attention_mask=mask, position_ids=next_pos[:, None],
            past_key_values=out.past_key_values, use_cache=True,
        )  # fmt: skip
        next_pos = next_pos + 1
    return [
        {
            "response_ids": prefixes[r] + gen[r, : length[r]].tolist(),
            "prefix_len": len(prefixes[r]),
            "logp": [0.0] * len(prefixes[r]) + logp[r, : length[r]].tolist(),
            "truncated": not bool(hit_eos[r]),
        }
        for r in range(b)
    ]


def forward_logp(model, batch: Batch, temperature: float):
    """Per-response-token ``log pi(token)`` and entropy of ``softmax(logits / temperature)``, ``[B, T]``.

    One forward over right-padded prompt+response rows (position ids ``0..L-1``); the logits at position
    ``t - 1`` score token ``t``. Returns ``(logp, entropy, mask)``; both are 0 where ``mask`` is 0.
    """
    resp_len = [len(r) for r in batch.response_ids]
    b, width = len(resp_len), max(resp_len)
    seqs = [p + r for p, r in zip(batch.prompt_ids, batch.response_ids, strict=True)]
    total = max(map(len, seqs))
    ids = torch.zeros((b, total), dtype=torch.long)
    attn = torch.zeros((b, total), dtype=torch.long)
    for r, s in enumerate(seqs):
        ids[r, : len(s)], attn[r, : len(s)] = torch.tensor(s), 1
    pos = torch.arange(total).expand(b, total)
    logits = model(input_ids=ids, attention_mask=attn, position_ids=pos).logits.float() / temperature
    at = torch.tensor([[len(p) - 1 + j for j in range(width)] for p in batch.prompt_ids]).clamp(max=total - 1)
    logprobs = torch.log_softmax(logits.gather(1, at[..., None].expand(-1, -1, logits.shape[-1])), -1)
    targets = torch.tensor([r + [0] * (width - len(r)) for r in batch.response_ids])
    mask = (torch.arange(width)[None, :] < torch.tensor(resp_len)[:, None]).float()
    logp = logprobs.gather(-1, targets[..., None]).squeeze(-1) * mask
    entropy = -(logprobs.exp() * logprobs).sum(-1) * mask
    return logp, entropy, mask


def advantages(rewards: torch.Tensor, group_ids: torch.Tensor) -> torch.Tensor:
    """Dr.GRPO: ``r - mean(rewards of the same prompt)``, no std division; one value per row."""
    adv = torch.zeros_like(rewards, dtype=torch.float32)
    for g in group_ids.unique():
        rows = group_ids == g
        adv[rows] = rewards[rows].float() - rewards[rows].float().mean()
    return adv


def keep_mask(entropy: torch.Tensor, prefix_mask: torch.Tensor, top_ratio: float = 0.2) -> torch.Tensor:
    """Demo tokens of a mini-batch that keep their advantage (paper sec. 3: top-k% by entropy).

    ``k = ceil(top_ratio * N)`` of the ``N`` demo tokens (``top_ratio * N`` rounded to 9 decimals first, so
    0.2 * 10 keeps 2), the highest-entropy ones; ties go to the earlier token in row-major order (a stable
    sort). ``entropy`` is the old policy's. Generated tokens are never in the mask (they always keep theirs).
    """
    flat = prefix_mask.bool().flatten()
    n = int(flat.sum())
    k = min(n, math.ceil(round(top_ratio * n, 9)))
    where = flat.nonzero().flatten()  # row-major positions of the demo tokens
    order = torch.argsort(-entropy.flatten()[where].double(), stable=True)
    keep = torch.zeros_like(flat)
    keep[where[order[:k]]] = True
    return keep.view_as(prefix_mask)


def policy_loss(logp, old_logp, adv, mask, clip=0.2, dual_clip=3.0, loss_scale_factor=1.0):
    """Dual-clip PPO summed over tokens, divided by ``loss_scale_factor * number of sequences``.

    Per token, with ``r = exp(logp - old_logp)``: ``l = max(-A r, -A clip(r, 1-clip, 1+clip))``, and for
    ``A < 0`` additionally ``l = min(l, -A * dual_clip)``. ``adv`` and ``mask`` are ``[S, T]``. Returns
    ``(loss, clipfrac)``: the fraction of response tokens where the clipped term is the larger one.
    """
    ratio = torch.exp(logp - old_logp)
    unclipped, clipped = -adv * ratio, -adv * ratio.clamp(1 - clip, 1 + clip)
    surrogate = torch.maximum(unclipped, clipped)
    surrogate = torch.where(adv < 0, torch.minimum(surrogate, -adv * dual_clip), surrogate)
    loss = (surrogate * mask).sum() / (loss_scale_factor * logp.shape[0])
    return loss, float(((clipped > unclipped).float() * mask).sum() / mask.sum())


def ppo_update(model, optimizer, batch, old_logp, entropy, adv, *, temperature, loss_scale_factor,
               num_mini_batches=2, top_ratio=0.2, clip=0.2, dual_clip=3.0, grad_clip=1.0,
               stats=None):  # fmt: skip
    """One PPO epoch over the batch, cut in order into ``num_mini_batches`` mini-batches (one step each).

    ``old_logp`` / ``entropy`` (``[B, T]``) come from the pre-update forward; ``adv`` is ``[B]``. In each
    mini-batch, demo tokens outside :func:`keep_mask` get advantage 0 (they stay in the sum and in no count:
    the normaliser is the number of sequences). Returns the keep-mask ``[B, T]`` and the mean clip fraction.
    With a dict ``stats``, appends to ``stats["ppo_kl"]`` each mini-batch's ``old_logp - logp`` token mean at
    its update forward (before its step: verl's ``actor/ppo_kl``).
    """
    size = len(batch.prompt_ids) // num_mini_batches
    keep_all = torch.zeros(old_logp.shape, dtype=torch.bool)
    clipfrac = []
    for m in range(num_mini_batches):
        sl = slice(m * size, (m + 1) * size)
        mini = batch.rows(sl)
        logp, _, mask = forward_logp(model, mini, temperature)
        width = mask.shape[1]
        prefix = mini.prefix_mask(width) & mask.bool()
        keep = keep_mask(entropy[sl, :width], prefix, top_ratio)
        keep_all[sl, :width] = keep
        adv_tok = torch.where(prefix & ~keep, 0.0, adv[sl, None].expand(-1, width))
        loss, frac = policy_loss(
            logp, old_logp[sl, :width], adv_tok, mask, clip, dual_clip, loss_scale_factor
        )
        if stats is not None:
            kl = ((old_logp[sl, :width] - logp.detach()) * mask).sum() / mask.sum()
            stats.setdefault("ppo_kl", []).append(float(kl))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        optimizer.step()
        clipfrac.append(frac)
    return keep_all, sum(clipfrac) / len(clipfrac)


def train_step(model, optimizer, tokenizer, rows, *, n, max_new_tokens, temperature, generator,
               prefix_ratio=0.0, top_ratio=0.2, num_mini_batches=2):  # fmt: skip
    """Rollouts for ``rows`` (hybrid: with ``prefix_ratio > 0`` the first of the ``n`` samples of a prompt
    continues ``round(prefix_ratio * len(demo))`` demo tokens), rewards, Dr.GRPO advantages, one PPO epoch.

    Returns metrics: mean reward of the on-policy rollouts, KL(old || new) on the batch after the update (k3
    estimator, token mean), verl's ``actor/ppo_kl`` (mean over mini-batches of ``old - new`` log-prob at the
    update forward), old-policy entropy (token mean, and ``entropy_agg``: aggregated as verl's
    ``actor/entropy`` is, per-response sums / ``max_new_tokens``, averaged over responses), fraction of
    responses at the length cap, clip fraction, mean response length.
    """
    prompts = [render(tokenizer, r["prompt"][0]["content"]) for r in rows]
    prefixes = None
    if prefix_ratio > 0:
        demos = [tokenizer(r["demonstrations"][0], add_special_tokens=False)["input_ids"] for r in rows]
        prefixes = [(d + [tokenizer.eos_token_id])[: round(prefix_ratio * (len(d) + 1))] for d in demos]
    model.eval()
    out = sample(model, tokenizer, prompts, n, max_new_tokens, temperature, generator, prefixes)
    texts = tokenizer.batch_decode([o["response_ids"] for o in out], skip_special_tokens=True)
    truths = [r["reward_model"]["ground_truth"] for r in rows for _ in range(n)]
    batch = Batch(
        prompt_ids=[prompts[i // n] for i in range(len(out))],
        response_ids=[o["response_ids"] for o in out],
        prefix_len=[o["prefix_len"] for o in out],
        rewards=torch.tensor([score(t, g) for t, g in zip(texts, truths, strict=True)]),
        groups=torch.arange(len(out)) // n,
        truncated=[o["truncated"] for o in out],
    )
    with torch.no_grad():
        old_logp, entropy, mask = forward_logp(model, batch, temperature)
    adv = advantages(batch.rewards, batch.groups)
    model.train()
    stats: dict = {}
    _, clipfrac = ppo_update(
        model, optimizer, batch, old_logp, entropy, adv, temperature=temperature,
        loss_scale_factor=max_new_tokens, num_mini_batches=num_mini_batches, top_ratio=top_ratio,
        stats=stats,
    )  # fmt: skip
    with torch.no_grad():
        new_logp, _, _ = forward_logp(model, batch, temperature)
    log_ratio = (new_logp - old_logp) * mask
    k3 = ((log_ratio.exp() - 1) - log_ratio) * mask
    on_policy = torch.tensor(batch.prefix_len) == 0
    return {
        "reward": float(batch.rewards[on_policy].mean()),
        "kl": float(k3.sum() / mask.sum()),
        "ppo_kl": sum(stats["ppo_kl"]) / len(stats["ppo_kl"]),
        "entropy": float((entropy * mask).sum() / mask.sum()),
        "entropy_agg": float((entropy * mask).sum(-1).mean() / max_new_tokens),
        "len_cap_frac": sum(batch.truncated) / len(batch.truncated),
        "clipfrac": clipfrac,
        "response_len": float(mask.sum(-1).mean()),
    }


@torch.no_grad()
def evaluate(model, tokenizer, rows, n=4, temperature=0.6, seed=0, max_new_tokens=64, chunk=64):
    """avg@n and pass@n accuracy (seeded sampling at ``temperature``; pass@n: the fraction of problems with at
    least one of the ``n`` samples right) and greedy accuracy on ``rows``."""
    model.eval()
    generator = torch.Generator().manual_seed(seed)
    hits, greedy = [], []
    for i in range(0, len(rows), chunk):
        part = rows[i : i + chunk]
        prompts = [render(tokenizer, r["prompt"][0]["content"]) for r in part]
        for k, temp in ((n, temperature), (1, 0.0)):
            out = sample(model, tokenizer, prompts, k, max_new_tokens, temp, generator)
            texts = tokenizer.batch_decode([o["response_ids"] for o in out], skip_special_tokens=True)
            truths = [r["reward_model"]["ground_truth"] for r in part for _ in range(k)]
            (hits if k == n else greedy).extend(score(t, g) for t, g in zip(texts, truths, strict=True))
    solved = [max(hits[i : i + n]) for i in range(0, len(hits), n)]  # samples are prompt-major
    return {
        f"avg@{n}": sum(hits) / len(hits),
        f"pass@{n}": sum(solved) / len(solved),
        "greedy": sum(greedy) / len(greedy),
    }


#: The benchmark's results (committed), one JSON per seed.
BENCH_OUT = REPO / "docs" / "results" / "learning" / "reference"


def run_benchmark_arm(settings: dict, seed: int, out: Path, *, threads: int = 1, log=print) -> dict:
    """The learning benchmark's RFT arm (``benchmarks.learning``) with this loop, at its exact sizes.

    ``settings`` is the benchmark's (``rl_lr`` set). Training: ``steps`` steps of ``batch_size`` prompts x
    ``rollout_n`` rollouts at temperature 1.0, the rows of ``train_rows(settings)`` read in order (step ``k``
    uses rows ``[(k-1)*b : k*b]`` modulo their number), ``batch_size // mini_batch_size`` PPO mini-batches,
    ``max_response_length`` tokens (also the loss normaliser), AdamW at ``rl_lr`` (weight decay 0.01), grad
    clip 1.0, clip 0.2, dual clip 3, no entropy bonus, no KL. Evaluation on ``val_rows(settings, "test")``, per
    level, at step 0, every ``test_freq`` steps and at the end: avg@``val_n`` (and pass@``val_n``) at
    ``val_temperature`` with a generator seeded by ``val_seed`` afresh for each level and evaluation (the same
    checkpoint always gets the same number), and greedy. Writes the result JSON to ``out`` and returns it;
    ``train_s`` is the training steps' time alone, ``eval_s`` each evaluation's per level.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from benchmarks import learning as L
    from benchmarks.fixtures.base_model import build_base_model

    assert settings["rl_lr"] is not None, "settings without rl_lr (the sweep's choice)"
    assert settings["entropy_coeff"] == 0.0, "this loop has no entropy bonus"
    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    t0 = time.monotonic()
    model_dir = build_base_model(REPO / "outputs" / "learning_base")  # the benchmark's (cached) base model
    start = time.monotonic()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, attn_implementation="sdpa")
    optimizer = torch.optim.AdamW(model.parameters(), lr=settings["rl_lr"], weight_decay=0.01)
    rows = L.train_rows(settings)
    levels = [str(lv) for lv in settings["eval_levels"]]
    val = {lv: L.val_rows(settings, "test", levels=[int(lv)]) for lv in levels}
    b, n, steps = settings["batch_size"], settings["rollout_n"], settings["steps"]
    budget = settings["max_response_length"]
    num_mini = b // settings["mini_batch_size"]
    generator = torch.Generator().manual_seed(seed)
    acc, pass_k, greedy, eval_s, train = [], [], [], [], []
    health: dict[str, list] = {k: [] for k in ("ppo_kl", "reward_on_policy", "entropy", "clip_frac_len")}

    def log_eval(step: int) -> None:
        res, secs = {}, {}
        for lv in levels:
            t = time.monotonic()
            res[lv] = evaluate(
                model,
                tokenizer,
                val[lv],
                n=settings["val_n"],
                temperature=settings["val_temperature"],
                seed=settings["val_seed"],
                max_new_tokens=budget,
            )
            secs[lv] = time.monotonic() - t
        acc.append([step, {lv: r[f"avg@{settings['val_n']}"] for lv, r in res.items()}])
        pass_k.append([step, {lv: r[f"pass@{settings['val_n']}"] for lv, r in res.items()}])
        greedy.append([step, {lv: r["greedy"] for lv, r in res.items()}])
        eval_s.append([step, secs])
        log(json.dumps({"step": step, "avg": acc[-1][1], "greedy": greedy[-1][1], "eval_s": secs}))

    log_eval(0)
    train_s = 0.0
    for step in range(1, steps + 1):
        t = time.monotonic()
        batch_rows = [rows[i % len(rows)] for i in range((step - 1) * b, step * b)]
        m = train_step(
            model, optimizer, tokenizer, batch_rows, n=n, max_new_tokens=budget, temperature=1.0,
            generator=generator, num_mini_batches=num_mini,
        )  # fmt: skip
        train_s += time.monotonic() - t
        train.append({"step": step, **m, "train_s": train_s})
        for name, key in (("ppo_kl", "ppo_kl"), ("reward_on_policy", "reward"), ("entropy", "entropy_agg"),
                          ("clip_frac_len", "len_cap_frac")):  # fmt: skip
            health[name].append([step, m[key]])
        log(json.dumps(train[-1]))
        if step % settings["test_freq"] == 0 or step == steps:
            log_eval(step)
    result = {
        "arm": "reference_rft",
        "seed": seed,
        "acc": acc,
        "pass_at_k": pass_k,
        "greedy": greedy,
        "health": health,
        "train": train,
        "wall_s": time.monotonic() - start,
        "train_s": train_s,
        "eval_s": eval_s,
        "base_build_s": start - t0,
        "threads": threads,
        "settings_rl_lr": settings["rl_lr"],
        # the pipeline's RFT run of this seed under these settings: docs/results/learning/<group>/rft_seed<s>.json
        "pipeline_group": L.Run("matrix", "rft", seed, settings).group,
        "settings": settings,
        "model_dir": os.path.relpath(model_dir, REPO),
    }
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps(result, indent=1))
    tmp.replace(out)
    return result


def main(argv=None) -> dict:
    """CLI: RFT (or hybrid with ``--prefix-ratio``) from the cached base model; writes a JSON curve.
    ``--benchmark``: the learning benchmark's RFT arm (:func:`run_benchmark_arm`); only ``--seed``, ``--lr``
    (when the benchmark's sweeps are unfinished), ``--threads``, ``--out`` and ``--force`` apply."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from benchmarks.fixtures import arith
    from benchmarks.fixtures.base_model import build_base_model

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--lr", type=float, default=3e-5)
    ap.add_argument("--steps", type=int, default=16)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--batch-size", type=int, default=8, help="prompts per step")
    ap.add_argument("--n", type=int, default=8, help="rollouts per prompt")
    ap.add_argument("--max-new-tokens", type=int, default=64, help="response budget (= loss_scale_factor)")
    ap.add_argument("--temperature", type=float, default=1.0, help="rollout temperature")
    ap.add_argument(
        "--prefix-ratio", type=float, default=0.0, help="0 = RFT; else one hybrid rollout per prompt"
    )
    ap.add_argument("--train-level", type=int, default=2)
    ap.add_argument("--eval-rows", type=int, default=128)
    ap.add_argument("--eval-every", type=int, default=4)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--base-root", default=str(REPO / "outputs" / "learning_base"))
    ap.add_argument("--out", help="result JSON (required without --benchmark)")
    ap.add_argument("--benchmark", action="store_true", help="the learning benchmark's RFT arm, its sizes")
    ap.add_argument("--force", action="store_true", help="with --benchmark: rerun even if --out exists")
    args = ap.parse_args(argv)
    if args.benchmark:
        from benchmarks import learning as L

        settings = L.tuned_settings() or {**L.SETTINGS, "rl_lr": args.lr}
        out = Path(args.out or BENCH_OUT / f"rft_seed{args.seed}.json")
        if out.exists() and not args.force:
            print(f"{out} exists (--force reruns it)")
            return json.loads(out.read_text())
        return run_benchmark_arm(settings, args.seed, out, threads=args.threads)
    if args.out is None:
        ap.error("--out is required without --benchmark")

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    build_start = time.monotonic()
    model_dir = build_base_model(args.base_root)  # cached; its build time is reported apart
    build_s, start = time.monotonic() - build_start, time.monotonic()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, attn_implementation="sdpa")
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.01)
    train_rows = arith.rows(args.train_level, args.steps * args.batch_size, seed=0, split="train")
    eval_rows = arith.rows(args.train_level, args.eval_rows, seed=0, split="eval")
    generator = torch.Generator().manual_seed(args.seed)
    curve, train = [], []

    def log_eval(step):  # the same sampling seed at every evaluation: common random numbers across steps
        curve.append({"step": step, **evaluate(model, tokenizer, eval_rows, seed=args.seed + 1000)})
        print(json.dumps(curve[-1]), flush=True)

    log_eval(0)
    for step in range(1, args.steps + 1):
        rows = train_rows[(step - 1) * args.batch_size : step * args.batch_size]
        metrics = train_step(
            model, optimizer, tokenizer, rows, n=args.n, max_new_tokens=args.max_new_tokens,
            temperature=args.temperature, generator=generator, prefix_ratio=args.prefix_ratio,
        )  # fmt: skip
        train.append({"step": step, **metrics, "wall_s": time.monotonic() - start})
        print(json.dumps(train[-1]), flush=True)
        if step % args.eval_every == 0 or step == args.steps:
            log_eval(step)
    result = {"args": vars(args), "model_dir": model_dir, "eval": curve, "train": train}
    result.update(wall_s=time.monotonic() - start, base_build_s=build_s)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
