"""Training data: LUFFY's OpenR1-Math-46k (the paper's data) or any problem/solution/answer dataset, as
verl RL parquet with a demonstration column.

Pipeline (each step reported in the closing :class:`PrepareReport`):
convert rows (bad rows reported by index and skipped) -> drop demos longer than ``max_demo_tokens`` ->
take ``val_size`` rows out as a validation split (demos removed) -> subsample the rest -> validate
against the data contract -> write ``train.parquet`` (+ ``val.parquet``), ``sft_train.parquet`` (the same
training prompts and demonstrations for verl's SFT trainer, :mod:`prefix_rft.data.sft`) and
``prepare_report.json``.
"""

from __future__ import annotations

import json
import math
import os
import random
import re
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from tqdm.auto import tqdm

from prefix_rft.data.contract import DEMO_KEY, INSTRUCTION, validate_parquet, validate_rows
from prefix_rft.data.sources import load_rows, write_parquet

OPENR1_HF_ID = "Elliott/Openr1-Math-46k-8192"
"""LUFFY's 46k OpenR1-Math subset with one DeepSeek-R1 trace per problem (the paper's training data)."""

OPENR1_COLUMNS = ("prompt", "target", "reward_model")
"""Columns of the OpenR1 source schema that :func:`convert_openr1_row` reads."""

_INSTRUCTION_PRESENT = re.compile(r"final answer (?:with)?in\s*\\+boxed", re.IGNORECASE)


class RowError(ValueError):
    """A source row cannot be converted; the message names the field."""


def with_instruction(problem: str) -> str:
    """``problem`` + newline + :data:`INSTRUCTION`, unless the problem already asks for a boxed answer."""
    problem = problem.strip()
    if _INSTRUCTION_PRESENT.search(problem):
        return problem
    return f"{problem}\n{INSTRUCTION}"


def _as_text(value: Any, what: str, numbers: bool = True) -> str:
    """``value`` as non-empty text; a number becomes its digits only when ``numbers`` (answers, not solutions).

    ``None`` is a missing value; a present value of another type is reported as ill-typed, with its type.
    """
    if value is None:
        raise RowError(f"{what} is missing")
    if isinstance(value, bool) or (not numbers and isinstance(value, (int, float))):
        raise RowError(f"{what} must be a string, got {type(value).__name__} {value!r}")
    if isinstance(value, float) and not math.isfinite(value):
        raise RowError(f"{what} is {value!r}, not a number a reward can check (store answers as strings)")
    if isinstance(value, float) and abs(value) >= 2**53:
        raise RowError(
            f"{what} is the float {value!r}, too large to be exact (it would be written as "
            f"{int(value) if value.is_integer() else value}); store answers as strings"
        )
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, (int, float)):
        value = str(value)
    if not isinstance(value, str):
        raise RowError(f"{what} must be a string, got {type(value).__name__}")
    if not value.strip():
        raise RowError(f"{what} is empty")
    if numbers and value.strip().lower() in NON_ANSWERS:
        raise RowError(f"{what} is {value.strip()!r}, not an answer a reward can check")
    return value


NON_ANSWERS = frozenset({"nan", "+nan", "-nan", "none", "null"})
"""Answer texts that are missing values written as text (``\\boxed{nan}`` would score as correct)."""


def _row(
    problem: str,
    answer: str,
    demos: list[str] | None,
    *,
    data_source: str,
    index: int,
    extra: Mapping[str, Any] | None = None,
    demo_key: str = DEMO_KEY,
) -> dict:
    row = {
        "data_source": data_source,
        "prompt": [{"role": "user", "content": with_instruction(problem)}],
        "ability": "math",
        "reward_model": {"ground_truth": answer.strip(), "style": "rule"},
        "extra_info": {"index": index, "split": "train", **(dict(extra) if extra else {})},
    }
    if demos is not None:
        row[demo_key] = list(demos)
    return row


# ---------------------------------------------------------------------------- converters


def convert_openr1_row(src: Mapping[str, Any], index: int, demo_key: str = DEMO_KEY) -> dict:
    """One ``Elliott/Openr1-Math-46k-8192`` row -> our row.

    Source schema: ``prompt`` = [system (LUFFY's prompt, dropped), user (the bare problem)],
    ``target`` = [{"role": "assistant", "content": R1 trace}], ``reward_model.ground_truth``.
    The prompt becomes the user turn + :data:`INSTRUCTION` (not added twice), no system turn
    (the authors' ``luffy_train.py`` does the same); the demonstration is ``target[0].content``.
    """
    prompt = src.get("prompt")
    if isinstance(prompt, Mapping):
        prompt = [prompt]
    if not isinstance(prompt, list) or not prompt:
        raise RowError("prompt must be a non-empty list of {role, content} messages")
    users = [m for m in prompt if isinstance(m, Mapping) and m.get("role") == "user"]
    if not users:
        raise RowError("prompt has no user turn")
    problem = _as_text(users[0].get("content"), "prompt user content")
    target = src.get("target")
    if isinstance(target, Mapping):
        target = [target]
    if not isinstance(target, list) or not target or not isinstance(target[0], Mapping):
        raise RowError("target must be a non-empty list of {role, content} messages (the R1 trace)")
    demo = _as_text(target[0].get("content"), "target[0].content", numbers=False)
    rm = src.get("reward_model")
    if not isinstance(rm, Mapping):
        raise RowError("reward_model must be a mapping with ground_truth")
    answer = _as_text(rm.get("ground_truth"), "reward_model.ground_truth")
    extra = src.get("extra_info") if isinstance(src.get("extra_info"), Mapping) else {}
    keep = {"source_index": extra["index"]} if isinstance(extra.get("index"), int) else {}
    data_source = (
        src.get("data_source")
        if isinstance(src.get("data_source"), str) and src.get("data_source")
        else "openr1_math"
    )
    return _row(problem, answer, [demo], data_source=data_source, index=index, extra=keep, demo_key=demo_key)


def _boxed_answer(text: str) -> str | None:
    from prefix_rft.reward import last_boxed

    return last_boxed(text, max_chars=max(len(text), 1))


def convert_generic_rows(
    rows: list[dict],
    *,
    problem_key: str,
    solution_key: str | None,
    answer_key: str,
    data_source: str,
    answer_from_solution: bool = False,
    demo_key: str = DEMO_KEY,
    dropped: Counter | None = None,
    bad: list | None = None,
) -> list[dict]:
    """Rows with named problem / solution / answer columns -> our rows, grouping rows of the same problem.

    The solution column may hold a string or a list of strings (several demonstrations); several rows
    with the same problem text merge into one row with all their (distinct) demonstrations. A row whose
    answer disagrees with the first row of its problem is skipped (``answer_conflict``).
    ``solution_key=None`` writes rows without demonstrations (plain RFT data).
    """
    dropped = dropped if dropped is not None else Counter()
    bad = bad if bad is not None else []
    groups: dict[str, dict] = {}
    for i, src in enumerate(tqdm(rows, desc="convert", unit="row", mininterval=1.0)):
        try:
            problem = _as_text(src.get(problem_key), f"problem column {problem_key!r}")
            demos: list[str] = []
            if solution_key is not None:
                sol = src.get(solution_key)
                if hasattr(sol, "tolist") and not isinstance(sol, str):
                    sol = sol.tolist()
                items = sol if isinstance(sol, list) else [sol]
                if not items:
                    raise RowError(f"solution column {solution_key!r} is an empty list (no demonstration)")
                demos = [_as_text(s, f"solution column {solution_key!r}", numbers=False) for s in items]
        except RowError as e:
            dropped["bad_field"] += 1
            bad.append((i, str(e)))
            continue
        raw_answer = src.get(answer_key)
        if (raw_answer is None or raw_answer == "") and answer_from_solution and demos:
            raw_answer = _boxed_answer(demos[0])
        try:
            answer = _as_text(raw_answer, f"answer column {answer_key!r}")
        except RowError as e:
            fix = (
                "the first solution has no \\boxed{} either; fill the answer"
                if answer_from_solution
                else "fill it or pass --answer-from-solution"
            )
            dropped["missing_answer"] += 1
            bad.append((i, f"{e}; {fix}"))
            continue
        key = problem.strip()
        group = groups.get(key)
        if group is None:
            groups[key] = {"problem": problem, "answer": answer.strip(), "demos": demos, "first": i}
            continue
        if group["answer"] != answer.strip():
            dropped["answer_conflict"] += 1
            bad.append(
                (
                    i,
                    f"answer {answer!r} differs from {group['answer']!r} of row {group['first']} "
                    f"(same problem)",
                )
            )
            continue
        dropped["merged_into_earlier_row"] += 1
        group["demos"].extend(d for d in demos if d not in group["demos"])
    out = []
    for g in groups.values():
        out.append(
            _row(
                g["problem"],
                g["answer"],
                g["demos"] if solution_key is not None else None,
                data_source=data_source,
                index=len(out),
                extra={"source_index": g["first"]},
                demo_key=demo_key,
            )
        )
    return out


# ---------------------------------------------------------------------------- report


@dataclass
class PrepareReport:
    """What a preparation run read, dropped and wrote."""

    rows_in: int = 0
    rows_written: int = 0
    val_rows: int = 0
    dropped: Counter = field(default_factory=Counter)
    bad_rows: list = field(default_factory=list)  # (source index, reason)
    demos_dropped_too_long: int = 0
    demo_token_percentiles: dict | None = None
    outputs: dict = field(default_factory=dict)

    def render(self, max_bad: int = 20) -> str:
        lines = [
            f"rows in: {self.rows_in}",
            f"rows written: {self.rows_written} train" + (f" + {self.val_rows} val" if self.val_rows else ""),
        ]
        if self.dropped:
            lines.append("dropped: " + ", ".join(f"{k}={v}" for k, v in sorted(self.dropped.items())))
        else:
            lines.append("dropped: none")
        if self.demos_dropped_too_long:
            lines.append(f"demonstrations dropped as too long: {self.demos_dropped_too_long}")
        if self.demo_token_percentiles:
            lines.append(
                "demo length (tokens): "
                + ", ".join(f"{k}={v:.0f}" for k, v in self.demo_token_percentiles.items())
            )
        for idx, reason in self.bad_rows[:max_bad]:
            lines.append(f"  skipped source row {idx}: {reason}")
        if len(self.bad_rows) > max_bad:
            lines.append(f"  ... and {len(self.bad_rows) - max_bad} more (see prepare_report.json)")
        for name, path in self.outputs.items():
            lines.append(f"wrote {name}: {path}")
        return "\n".join(lines)

    def to_json(self) -> dict:
        return {
            "rows_in": self.rows_in,
            "rows_written": self.rows_written,
            "val_rows": self.val_rows,
            "dropped": dict(self.dropped),
            "bad_rows": [list(b) for b in self.bad_rows],
            "demos_dropped_too_long": self.demos_dropped_too_long,
            "demo_token_percentiles": self.demo_token_percentiles,
            "outputs": self.outputs,
        }


def percentiles(values: list[int]) -> dict[str, float]:
    """min / p50 / p90 / p99 / max of ``values`` (nearest-rank)."""
    s = sorted(values)
    if not s:
        return {}

    def rank(p: float) -> float:
        return float(s[min(len(s) - 1, max(0, math.ceil(p / 100 * len(s)) - 1))])

    return {"min": float(s[0]), "p50": rank(50), "p90": rank(90), "p99": rank(99), "max": float(s[-1])}


# ---------------------------------------------------------------------------- pipeline


def filter_demo_lengths(
    rows: list[dict],
    count_tokens: Callable[[list[str]], list[int]],
    max_demo_tokens: int | None,
    report: PrepareReport,
    demo_key: str = DEMO_KEY,
) -> list[dict]:
    """Drop demonstrations longer than ``max_demo_tokens`` (rows left without one are dropped:
    ``demo_too_long``) and record the token-length percentiles of the kept demos."""
    kept_rows, lengths = [], []
    batch = 256
    for start in tqdm(range(0, len(rows), batch), desc="tokenize demos", unit="batch", mininterval=1.0):
        chunk = rows[start : start + batch]
        flat = [d for r in chunk for d in r[demo_key]]
        counts = iter(capped_counts(count_tokens, flat, max_demo_tokens))
        for r in chunk:
            demos = []
            for d in r[demo_key]:
                n = next(counts)
                if max_demo_tokens is not None and n > max_demo_tokens:
                    report.demos_dropped_too_long += 1
                    continue
                demos.append(d)
                lengths.append(n)
            if not demos:
                report.dropped["demo_too_long"] += 1
                continue
            kept_rows.append({**r, demo_key: demos})
    report.demo_token_percentiles = percentiles(lengths)
    return kept_rows


CHARS_PER_TOKEN_WINDOW = 16
"""A demo longer than ``16 x max_demo_tokens`` characters is first tokenized only on that many characters."""
CUT_MARGIN_TOKENS = 64
"""Tokens a cut may change at its boundary (the word it splits): a window proves a demo too long only with
more than ``max_demo_tokens + CUT_MARGIN_TOKENS`` tokens."""


def capped_counts(
    count_tokens: Callable[[list[str]], list[int]], texts: list[str], max_tokens: int | None
) -> list[int]:
    """Token counts of ``texts``, tokenizing only what ``max_tokens`` can keep (bounded memory).

    A text longer than :data:`CHARS_PER_TOKEN_WINDOW` x ``max_tokens`` characters is tokenized on a window of
    that many characters first (cut at a space when there is one); more than ``max_tokens`` +
    :data:`CUT_MARGIN_TOKENS` tokens there prove the whole text too long, and ``max_tokens + 1`` stands for its
    count. Only a text that is dense in tokens beyond the window is tokenized whole. Without ``max_tokens``
    every text is tokenized whole. (Before: one 50 MB demo took 85 s and 10 GB.)
    """
    if max_tokens is None:
        return count_tokens(texts)
    window = CHARS_PER_TOKEN_WINDOW * max(int(max_tokens), 1)
    out: list[int | None] = [None] * len(texts)
    short = [i for i, t in enumerate(texts) if len(t) <= window]
    for i, n in zip(short, count_tokens([texts[i] for i in short]), strict=True):
        out[i] = n
    for i, text in enumerate(texts):
        if out[i] is not None:
            continue
        head = text[:window]
        space = head.rfind(" ", window // 2)
        head = head[:space] if space > 0 else head
        if count_tokens([head])[0] > max_tokens + CUT_MARGIN_TOKENS:
            out[i] = max_tokens + 1
        else:
            out[i] = count_tokens([text])[0]
    return out  # type: ignore[return-value]


def tokenizer_counter(tokenizer_path: str) -> Callable[[list[str]], list[int]]:
    """Token counts as the agent loop encodes a demo (``add_special_tokens=False``)."""
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(tokenizer_path)
    except (OSError, ValueError) as e:
        raise ValueError(
            f"--tokenizer {tokenizer_path} could not be loaded: {type(e).__name__}: {str(e).rstrip('.')}. "
            f"Pass a local model/tokenizer directory (with tokenizer.json or tokenizer_config.json)."
        ) from e

    def count(texts: list[str]) -> list[int]:
        if not texts:
            return []
        return [len(ids) for ids in tok(texts, add_special_tokens=False)["input_ids"]]

    return count


def check_split_options(val_size: int, subsample: float | None) -> None:
    """Reject a negative ``--val-size`` and a ``--subsample`` outside (0, 1] before any work is done."""
    if val_size < 0:
        raise ValueError(f"--val-size must be >= 0 (rows moved to val.parquet), got {val_size}")
    if subsample is not None and not 0 < subsample <= 1:
        raise ValueError(f"--subsample must be a fraction in (0, 1] (e.g. 0.1), got {subsample}")


def finish(
    rows: list[dict],
    report: PrepareReport,
    *,
    output_dir: str,
    val_size: int = 0,
    subsample: float | None = None,
    seed: int = 0,
    demo_key: str = DEMO_KEY,
    require_demos: bool = True,
) -> PrepareReport:
    """Validation split, subsample, contract check, write parquet files and the JSON report."""
    check_split_options(val_size, subsample)
    rng = random.Random(seed)
    order = list(range(len(rows)))
    val_rows: list[dict] = []
    if val_size:
        if val_size >= len(rows):
            raise ValueError(
                f"--val-size {val_size} leaves no training rows (only {len(rows)} rows kept); "
                f"pass a --val-size below {len(rows)}"
            )
        val_idx = set(rng.sample(order, val_size))
        for i in sorted(val_idx):
            r = {k: v for k, v in rows[i].items() if k != demo_key}
            # same extra_info fields as the eval sets, so both can be listed in data.val_files
            r["extra_info"] = {**r["extra_info"], "split": "val", "n_samples": 1, "answer_type": "math"}
            val_rows.append(r)
        rows = [rows[i] for i in order if i not in val_idx]
    if subsample is not None:
        k = max(1, round(subsample * len(rows)))
        keep = set(rng.sample(range(len(rows)), k))
        report.dropped["subsample"] += len(rows) - k
        rows = [r for i, r in enumerate(rows) if i in keep]
    for i, r in enumerate(rows):
        r["extra_info"] = {**r["extra_info"], "index": i}
    for i, r in enumerate(val_rows):
        r["extra_info"] = {**r["extra_info"], "index": i}
    validate_rows(rows, demo_key=demo_key, require_demos=require_demos, where="train")
    validate_rows(val_rows, demo_key=demo_key, require_demos=False, where="val")
    os.makedirs(output_dir, exist_ok=True)
    train_path = write_parquet(rows, os.path.join(output_dir, "train.parquet"))
    validate_parquet(train_path, demo_key=demo_key, require_demos=require_demos)
    report.outputs["train"] = train_path
    if require_demos:
        # the SFT baseline's data: the same prompts + demonstrations, for verl's SFT trainer
        from prefix_rft.data.sft import SFT_FILE_NAME, write_sft_parquet

        sft_path = os.path.join(output_dir, SFT_FILE_NAME)
        write_sft_parquet(rows, sft_path, demo_key=demo_key)
        report.outputs["sft_train"] = sft_path
    if val_rows:
        val_path = write_parquet(val_rows, os.path.join(output_dir, "val.parquet"))
        validate_parquet(val_path, demo_key=demo_key, require_demos=False)
        report.outputs["val"] = val_path
    report.rows_written, report.val_rows = len(rows), len(val_rows)
    report_path = os.path.join(output_dir, "prepare_report.json")
    with open(report_path, "w") as f:
        json.dump(report.to_json(), f, indent=2)
    report.outputs["report"] = report_path
    return report


def prepare_openr1(
    source: str = OPENR1_HF_ID,
    *,
    output_dir: str,
    split: str = "train",
    max_demo_tokens: int | None = None,
    tokenizer: str | None = None,
    subsample: float | None = None,
    seed: int = 0,
    val_size: int = 0,
    demo_key: str = DEMO_KEY,
) -> PrepareReport:
    """Prepare LUFFY's OpenR1-Math-46k-8192 (hub id or a local copy in the same schema)."""
    check_split_options(val_size, subsample)
    src_rows = load_rows(source, split=split)
    found = set().union(*(r.keys() for r in src_rows)) if src_rows else set()
    missing = [k for k in OPENR1_COLUMNS if k not in found]
    if src_rows and missing:
        raise ValueError(
            f"{source}: not in the OpenR1 schema: column(s) {missing} not found; columns are "
            f"{sorted(found)} (expected {list(OPENR1_COLUMNS)}). For a dataset with problem / solution / "
            f"answer columns use `python -m prefix_rft.data prepare generic` with --problem-key / "
            f"--solution-key / --answer-key."
        )
    report = PrepareReport(rows_in=len(src_rows))
    rows = []
    first_row: dict[str, int] = {}  # problem text -> source row that wrote it
    for i, src in enumerate(tqdm(src_rows, desc="convert", unit="row", mininterval=1.0)):
        try:
            row = convert_openr1_row(src, len(rows), demo_key=demo_key)
        except RowError as e:
            reason = "missing_answer" if "ground_truth" in str(e) else "bad_field"
            report.dropped[reason] += 1
            report.bad_rows.append((i, str(e)))
            continue
        problem = row["prompt"][-1]["content"]
        if problem in first_row:
            report.dropped["duplicate_problem"] += 1
            report.bad_rows.append((i, f"same problem as source row {first_row[problem]} (kept once)"))
            continue
        first_row[problem] = i
        rows.append(row)
    return _finish_train(
        rows,
        report,
        output_dir=output_dir,
        max_demo_tokens=max_demo_tokens,
        tokenizer=tokenizer,
        subsample=subsample,
        seed=seed,
        val_size=val_size,
        demo_key=demo_key,
        require_demos=True,
    )


def prepare_generic(
    source: str,
    *,
    output_dir: str,
    problem_key: str = "problem",
    solution_key: str | None = "solution",
    answer_key: str = "answer",
    split: str = "train",
    config: str | None = None,
    data_source: str | None = None,
    answer_from_solution: bool = False,
    max_demo_tokens: int | None = None,
    tokenizer: str | None = None,
    subsample: float | None = None,
    seed: int = 0,
    val_size: int = 0,
    demo_key: str = DEMO_KEY,
) -> PrepareReport:
    """Prepare any dataset with problem / solution / answer columns (hub id or local file)."""
    check_split_options(val_size, subsample)
    src_rows = load_rows(source, split=split, config=config)
    if src_rows:
        missing = [k for k in (problem_key, solution_key) if k is not None and k not in src_rows[0]]
        if missing:
            raise ValueError(
                f"{source}: column(s) {missing} not found; columns are {sorted(src_rows[0])}. "
                f"Pass --problem-key / --solution-key / --answer-key."
            )
    report = PrepareReport(rows_in=len(src_rows))
    name = data_source or os.path.splitext(os.path.basename(source.rstrip("/")))[0] or "generic"
    rows = convert_generic_rows(
        src_rows,
        problem_key=problem_key,
        solution_key=solution_key,
        answer_key=answer_key,
        data_source=name,
        answer_from_solution=answer_from_solution,
        demo_key=demo_key,
        dropped=report.dropped,
        bad=report.bad_rows,
    )
    return _finish_train(
        rows,
        report,
        output_dir=output_dir,
        max_demo_tokens=max_demo_tokens,
        tokenizer=tokenizer,
        subsample=subsample,
        seed=seed,
        val_size=val_size,
        demo_key=demo_key,
        require_demos=solution_key is not None,
    )


def _finish_train(
    rows,
    report,
    *,
    output_dir,
    max_demo_tokens,
    tokenizer,
    subsample,
    seed,
    val_size,
    demo_key,
    require_demos,
):
    if max_demo_tokens is not None and tokenizer is None:
        raise ValueError("--max-demo-tokens needs --tokenizer (the model's tokenizer path) to count tokens")
    if tokenizer is not None and require_demos:
        rows = filter_demo_lengths(rows, tokenizer_counter(tokenizer), max_demo_tokens, report, demo_key)
    if not rows:
        raise ValueError("no rows left to write: " + report.render())
    return finish(
        rows,
        report,
        output_dir=output_dir,
        val_size=val_size,
        subsample=subsample,
        seed=seed,
        demo_key=demo_key,
        require_demos=require_demos,
    )
