"""Training curves of a Prefix-RFT run from verl's metric logs.

    python -m prefix_rft.plot RUN_LOG --out DIR [--smooth K]

RUN_LOG is
- the jsonl that verl's ``file`` logger writes (``trainer.logger=['console','file']``; one line per
  ``Tracking.log`` call: ``{"step": N, "data": {"metric/name": value, ...}}``, at
  ``$VERL_FILE_LOGGER_PATH`` or ``$VERL_FILE_LOGGER_ROOT/<project_name>/<experiment_name>.jsonl``,
  default root ``.``), or
- a tensorboard event directory (``trainer.logger=['tensorboard']``, ``$TENSORBOARD_DIR`` or
  ``tensorboard_log/<project>/<experiment>``); needs the ``tensorboard`` package.

One PNG per panel (see :data:`PANELS`) plus ``overview.png``; a panel whose metrics are absent from
the log is skipped with a printed note. Validation curves (``val-core/<data_source>/.../mean@N``) go
in ``validation.png``.
"""

from __future__ import annotations

import argparse
import glob
import json
import math
import os
import sys
from collections import defaultdict

Series = dict[str, list[tuple[int, float]]]

PANELS: list[tuple[str, str, list[tuple[str, str]], str, bool]] = [
    # (file stem, title, [(metric, label)], y label, smoothed with --smooth)
    (
        "scores",
        "Reward: prefixed vs on-policy rollouts",
        [
            ("prefix_rft/score_prefixed", "prefixed (demo prefix + continuation)"),
            ("prefix_rft/score_on_policy", "on-policy"),
        ],
        "mean score",
        True,
    ),
    (
        "ratio_schedule",
        "Prefix-ratio schedule",
        [
            ("prefix_rft/ratio_low", "lower bound low_t"),
            ("prefix_rft/ratio_high", "upper bound"),
            ("prefix_rft/ratio_mean", "mean sampled ratio"),
        ],
        "prefix ratio",
        False,
    ),
    (
        "entropy",
        "Entropy: demo-prefix vs generated tokens",
        [
            ("prefix_rft/entropy_prefix", "demo-prefix tokens"),
            ("prefix_rft/entropy_continuation", "generated (continuation) tokens"),
        ],
        "mean token entropy",
        True,
    ),
    (
        "kept_frac",
        "Demo tokens kept by entropy clipping",
        [
            ("prefix_rft/kept_frac", "kept / demo-prefix tokens"),
            ("prefix_rft/prefix_token_frac", "demo-prefix / response tokens"),
        ],
        "fraction",
        True,
    ),
    (
        "guidance",
        "Per-prompt guidance",
        [
            ("prefix_rft/guided_frac", "prompts guided"),
            ("prefix_rft/prompt_ratio_mean", "per-prompt ratio: mean"),
            ("prefix_rft/prompt_ratio_p10", "per-prompt ratio: p10"),
            ("prefix_rft/prompt_ratio_p90", "per-prompt ratio: p90"),
        ],
        "fraction / ratio",
        False,
    ),
    (
        "demo_tokens",
        "Demo tokens trained",
        [("prefix_rft/demo_tokens_trained", "demo tokens with a gradient")],
        "tokens per step",
        True,
    ),
    (
        "response_length",
        "Response length",
        [
            ("response_length/mean", "response (all rollouts)"),
            ("prefix_rft/continuation_length", "continuation of prefixed rollouts"),
        ],
        "tokens",
        True,
    ),
]


def _number(v) -> float | None:
    if isinstance(v, bool):
        return float(v)
    if isinstance(v, (int, float)) and math.isfinite(v):
        return float(v)
    if isinstance(v, list) and v and all(isinstance(x, (int, float)) for x in v):
        return float(sum(v) / len(v))
    return None


def read_jsonl(path: str) -> Series:
    """verl file-logger lines ``{"step": N, "data": {...}}`` (or flat ``{"step": N, "metric": v}``) -> series."""
    series: Series = defaultdict(list)
    with open(path) as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                print(f"note: {path}:{lineno} is not JSON (a line cut off by a crash?), skipped")
                continue
            step = rec.get("step")
            data = rec.get("data", {k: v for k, v in rec.items() if k != "step"})
            if not isinstance(step, int) or not isinstance(data, dict):
                continue
            for key, value in data.items():
                x = _number(value)
                if x is not None:
                    series[key].append((step, x))
    return _dedupe(series)


def read_tensorboard(log_dir: str) -> Series:
    """Scalars of every event file under ``log_dir`` (needs the ``tensorboard`` package)."""
    try:
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    except ImportError as e:
        raise RuntimeError(
            "reading tensorboard logs needs `pip install tensorboard`; or log with "
            "trainer.logger=['console','file'] and pass the jsonl"
        ) from e
    series: Series = defaultdict(list)
    run_dirs = sorted(
        {
            os.path.dirname(f)
            for f in glob.glob(os.path.join(log_dir, "**", "events.out.tfevents.*"), recursive=True)
        }
    )
    for d in run_dirs:
        acc = EventAccumulator(d, size_guidance={"scalars": 0})
        acc.Reload()
        for tag in acc.Tags().get("scalars", []):
            series[tag].extend((e.step, float(e.value)) for e in acc.Scalars(tag))
    return _dedupe(series)


def _dedupe(series: Series) -> Series:
    """Sort by step; a step logged twice (e.g. after a resume) keeps its last value."""
    out = {}
    for key, points in series.items():
        by_step = {}
        for step, v in points:
            by_step[step] = v
        out[key] = sorted(by_step.items())
    return out


def read_log(path: str) -> Series:
    """A jsonl file, a tensorboard event dir, or a directory holding one jsonl file."""
    if os.path.isfile(path):
        if os.path.basename(path).startswith("events.out.tfevents"):
            return read_tensorboard(os.path.dirname(path))
        return read_jsonl(path)
    if os.path.isdir(path):
        if glob.glob(os.path.join(path, "**", "events.out.tfevents.*"), recursive=True):
            return read_tensorboard(path)
        jsonls = sorted(glob.glob(os.path.join(path, "*.jsonl")))
        if len(jsonls) == 1:
            return read_jsonl(jsonls[0])
        raise FileNotFoundError(
            f"{path}: expected tensorboard event files or exactly one .jsonl, found {jsonls}"
        )
    raise FileNotFoundError(f"{path}: no such file or directory")


def smooth(values: list[float], k: int) -> list[float]:
    """Trailing moving average over ``k`` points (k <= 1: unchanged)."""
    if k <= 1:
        return list(values)
    out, acc = [], 0.0
    for i, v in enumerate(values):
        acc += v
        if i >= k:
            acc -= values[i - k]
        out.append(acc / min(i + 1, k))
    return out


def _draw(ax, series: Series, metrics: list[tuple[str, str]], title: str, ylabel: str, k: int) -> None:
    for key, label in metrics:
        if key not in series:
            continue
        steps = [step for step, _ in series[key]]
        vals = [v for _, v in series[key]]
        marker = "o" if len(steps) <= 30 else None  # sparse curves (validation) show their points
        (line,) = ax.plot(steps, smooth(vals, k), label=label, linewidth=1.6, marker=marker, markersize=3)
        if k > 1:
            ax.plot(steps, vals, color=line.get_color(), alpha=0.25, linewidth=0.8)
    ax.set_title(title)
    ax.set_xlabel("training step")
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # steps are whole numbers
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)


def validation_metrics(series: Series) -> list[tuple[str, str]]:
    """``val-core/<source>/<var>/mean@N`` curves (verl's main validation metric per data source)."""
    keys = sorted(k for k in series if k.startswith("val-core/") and "/mean@" in k)
    return [(k, k[len("val-core/") :]) for k in keys]


def plot_run(log: str, out_dir: str, smooth_k: int = 1) -> list[str]:
    """Write the panels' PNGs (and ``overview.png``) to ``out_dir``; return the paths written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series = read_log(log)
    os.makedirs(out_dir, exist_ok=True)
    available = []
    for stem, title, metrics, ylabel, smoothed in PANELS:
        have = [m for m, _ in metrics if m in series]
        miss = [m for m, _ in metrics if m not in series]
        if not have:
            print(f"note: skipping {stem}.png: none of {[m for m, _ in metrics]} in {log}")
            continue
        if miss:
            print(f"note: {stem}.png without {miss} (not in the log)")
        available.append((stem, title, metrics, ylabel, smooth_k if smoothed else 1))
    val = validation_metrics(series)
    if val:
        available.append(("validation", "Validation accuracy", val, "score", 1))
    else:
        print("note: no val-core/*/mean@N metrics: validation.png skipped")
    written = []
    for stem, title, metrics, ylabel, k in available:
        fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=120)
        _draw(ax, series, metrics, title, ylabel, k)
        fig.tight_layout()
        path = os.path.join(out_dir, f"{stem}.png")
        fig.savefig(path)
        plt.close(fig)
        written.append(path)
    if available:
        cols = 2
        rows = math.ceil(len(available) / cols)
        fig, axes = plt.subplots(rows, cols, figsize=(12, 3.8 * rows), dpi=100, squeeze=False)
        for ax, (_stem, title, metrics, ylabel, k) in zip(axes.flat, available, strict=False):
            _draw(ax, series, metrics, title, ylabel, k)
        for ax in list(axes.flat)[len(available) :]:
            ax.axis("off")
        fig.tight_layout()
        path = os.path.join(out_dir, "overview.png")
        fig.savefig(path)
        plt.close(fig)
        written.append(path)
    return written


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m prefix_rft.plot",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("log", help="verl file-logger jsonl, or a tensorboard event directory")
    p.add_argument("--out", required=True, help="output directory for the PNGs")
    p.add_argument(
        "--smooth", type=int, default=1, help="moving-average window in steps (raw curve kept faint)"
    )
    args = p.parse_args(argv)
    if args.smooth < 1:
        p.error(f"--smooth must be a window of >= 1 steps (1 = no smoothing), got {args.smooth}")
    try:
        written = plot_run(args.log, args.out, args.smooth)
    except (FileNotFoundError, RuntimeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    for path in written:
        print(f"wrote {path}")
    if not written:
        print("error: no known metric found in the log", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
