"""Evaluation sets of the paper (sec. 4) as verl parquet, one file per benchmark, no demonstrations.

``BENCHMARKS`` is the single table of sources: public Hugging Face ids used by the math-RL community,
their split, the columns read and the number of samples per problem (avg@32 for AIME/AMC, pass@1
otherwise, as in the paper). Each benchmark is written to ``<output_dir>/<name>.parquet`` with
``data_source = <name>`` (verl groups validation metrics by it) and ``extra_info.n_samples``; a
``manifest.json`` records the table for ``python -m prefix_rft.eval``.

Multiple-choice sets (ARC-c, GPQA-diamond, MMLU-Pro) list the options as ``A. ...`` lines and ask for
the letter in ``\\boxed{}``; ground truth is the letter (``extra_info.answer_type = multiple_choice``).
GPQA's options are shuffled with a fixed per-question seed (its source lists the correct one first).
"""

from __future__ import annotations

import json
import os
import random
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

from tqdm.auto import tqdm

from prefix_rft.data.contract import INSTRUCTION, validate_rows
from prefix_rft.data.sources import SourceError, load_rows, read_local, write_parquet

MC_INSTRUCTION = "Please reason step by step, and put the letter of your final answer within \\boxed{}"
LETTERS = "ABCDEFGHIJ"


@dataclass(frozen=True)
class Benchmark:
    """One evaluation set: where it comes from and how it is scored."""

    name: str
    hf_id: str
    split: str
    config: str | None
    n_samples: int
    kind: str  # "math" | "ood"
    columns: str  # the source columns read, for the docs
    paper_column: str | None = None  # column of the paper's results table (arXiv 2507.01679 sec. 5)

    @property
    def metric(self) -> str:
        return f"avg@{self.n_samples}" if self.n_samples > 1 else "pass@1"


BENCHMARKS: dict[str, Benchmark] = {
    b.name: b
    for b in [
        Benchmark(
            "aime24",
            "math-ai/aime24",
            "test",
            None,
            32,
            "math",
            "problem, solution (the answer, boxed)",
            "AIME24",
        ),
        Benchmark("aime25", "math-ai/aime25", "test", None, 32, "math", "problem, answer", "AIME25"),
        Benchmark("amc23", "math-ai/amc23", "test", None, 32, "math", "question, answer", "AMC"),
        Benchmark("math500", "HuggingFaceH4/MATH-500", "test", None, 1, "math", "problem, answer", "MATH500"),
        Benchmark("minerva", "math-ai/minervamath", "test", None, 1, "math", "question, answer", "Minerva"),
        Benchmark(
            "olympiadbench",
            "math-ai/olympiadbench",
            "test",
            None,
            1,
            "math",
            "question, final_answer (list)",
            "Olympiad",
        ),
        Benchmark(
            "arc_c",
            "allenai/ai2_arc",
            "test",
            "ARC-Challenge",
            1,
            "ood",
            "question, choices {text, label}, answerKey",
        ),
        Benchmark(
            "gpqa_diamond",
            "Idavidrein/gpqa",
            "train",
            "gpqa_diamond",
            1,
            "ood",
            "Question, Correct Answer, Incorrect Answer 1-3 (gated: accept the terms on the hub)",
        ),
        Benchmark(
            "mmlu_pro", "TIGER-Lab/MMLU-Pro", "test", None, 1, "ood", "question, options, answer (letter)"
        ),
    ]
}
MATH_BENCHMARKS = [b for b in BENCHMARKS if BENCHMARKS[b].kind == "math"]
OOD_BENCHMARKS = [b for b in BENCHMARKS if BENCHMARKS[b].kind == "ood"]


class EvalRowError(ValueError):
    pass


# ---------------------------------------------------------------------------- per-benchmark converters


def _text(v: Any, what: str) -> str:
    if isinstance(v, float) and v.is_integer():
        v = int(v)
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        v = str(v)
    if not isinstance(v, str) or not v.strip():
        raise EvalRowError(f"{what} is missing or empty")
    return v.strip()


def _unwrap_answer(ans: str) -> str:
    """``\\boxed{204}`` -> ``204``; ``$\\frac12$`` -> ``\\frac12``."""
    from prefix_rft.reward import last_boxed

    if "\\boxed" in ans:
        boxed = last_boxed(ans, max_chars=len(ans))
        ans = boxed if boxed is not None else ans
    ans = ans.strip()
    if len(ans) >= 2 and ans.startswith("$") and ans.endswith("$"):
        ans = ans.strip("$").strip()
    return ans


def _math(problem_key: str, answer_key: str) -> Callable[[Mapping], tuple[str, str, dict]]:
    def convert(src: Mapping) -> tuple[str, str, dict]:
        ans = src.get(answer_key)
        if isinstance(ans, list):  # OlympiadBench: final_answer is a list
            ans = ", ".join(_unwrap_answer(_text(a, answer_key)) for a in ans) if ans else None
        problem = _text(src.get(problem_key), problem_key)
        return f"{problem}\n{INSTRUCTION}", _unwrap_answer(_text(ans, answer_key)), {}

    return convert


def _mc_prompt(question: str, options: list[str]) -> str:
    lines = "\n".join(f"{LETTERS[i]}. {opt}" for i, opt in enumerate(options))
    return f"{question.strip()}\n\n{lines}\n\n{MC_INSTRUCTION}"


def _arc(src: Mapping) -> tuple[str, str, dict]:
    question = _text(src.get("question"), "question")
    choices = src.get("choices") or {}
    texts, labels = list(choices.get("text") or []), [str(x) for x in (choices.get("label") or [])]
    if not texts or len(texts) != len(labels):
        raise EvalRowError("choices.text / choices.label missing or of different lengths")
    key = _text(src.get("answerKey"), "answerKey")
    if key not in labels:
        raise EvalRowError(f"answerKey {key!r} not among labels {labels}")
    return _mc_prompt(question, texts), LETTERS[labels.index(key)], {"answer_type": "multiple_choice"}


def _gpqa(src: Mapping) -> tuple[str, str, dict]:
    question = _text(src.get("Question"), "Question")
    correct = _text(src.get("Correct Answer"), "Correct Answer")
    options = [correct] + [
        _text(src.get(f"Incorrect Answer {k}"), f"Incorrect Answer {k}") for k in (1, 2, 3)
    ]
    rng = random.Random(f"gpqa-{question}")  # fixed per question, independent of row order
    rng.shuffle(options)
    return _mc_prompt(question, options), LETTERS[options.index(correct)], {"answer_type": "multiple_choice"}


def _mmlu_pro(src: Mapping) -> tuple[str, str, dict]:
    question = _text(src.get("question"), "question")
    options = [str(o) for o in (src.get("options") or [])]
    if not options or len(options) > len(LETTERS):
        raise EvalRowError("options missing or more than 10")
    answer = _text(src.get("answer"), "answer").upper()
    if answer not in LETTERS[: len(options)]:
        raise EvalRowError(f"answer {answer!r} is not one of the {len(options)} option letters")
    index = src.get("answer_index")
    if isinstance(index, int) and not isinstance(index, bool) and LETTERS.find(answer) != index:
        raise EvalRowError(f"answer {answer!r} disagrees with answer_index {index} (0 = A)")
    return _mc_prompt(question, options), answer, {"answer_type": "multiple_choice"}


CONVERTERS: dict[str, Callable[[Mapping], tuple[str, str, dict]]] = {
    "aime24": _math("problem", "solution"),
    "aime25": _math("problem", "answer"),
    "amc23": _math("question", "answer"),
    "math500": _math("problem", "answer"),
    "minerva": _math("question", "answer"),
    "olympiadbench": _math("question", "final_answer"),
    "arc_c": _arc,
    "gpqa_diamond": _gpqa,
    "mmlu_pro": _mmlu_pro,
}


REQUIRED_COLUMNS: dict[str, tuple[str, ...]] = {
    "aime24": ("problem", "solution"),
    "aime25": ("problem", "answer"),
    "amc23": ("question", "answer"),
    "math500": ("problem", "answer"),
    "minerva": ("question", "answer"),
    "olympiadbench": ("question", "final_answer"),
    "arc_c": ("question", "choices", "answerKey"),
    "gpqa_diamond": (
        "Question",
        "Correct Answer",
        "Incorrect Answer 1",
        "Incorrect Answer 2",
        "Incorrect Answer 3",
    ),
    "mmlu_pro": ("question", "options", "answer"),
}
"""Source columns each converter reads (the public schema of the benchmark's hub id)."""


def check_columns(name: str, src_rows: list[dict], source: str) -> None:
    """Raise :class:`SourceError` naming the found and expected columns when a required one is absent."""
    found = set().union(*(r.keys() for r in src_rows)) if src_rows else set()
    missing = [c for c in REQUIRED_COLUMNS[name] if c not in found]
    if src_rows and missing:
        raise SourceError(
            f"{source}: column(s) {missing} not found; columns are {sorted(found)}. {name} expects "
            f"{list(REQUIRED_COLUMNS[name])} (the schema of {BENCHMARKS[name].hf_id}); rename the columns"
        )


def convert_benchmark(name: str, src_rows: list[dict]) -> tuple[list[dict], list[tuple[int, str]]]:
    """Source rows of benchmark ``name`` -> (verl rows, [(source index, reason) of skipped rows])."""
    bench = BENCHMARKS[name]
    convert = CONVERTERS[name]
    rows, bad = [], []
    for i, src in enumerate(tqdm(src_rows, desc=name, unit="row", mininterval=1.0, leave=False)):
        try:
            prompt, answer, extra = convert(src)
        except EvalRowError as e:
            bad.append((i, str(e)))
            continue
        rows.append(
            {
                "data_source": name,
                "prompt": [{"role": "user", "content": prompt}],
                "ability": "math" if bench.kind == "math" else "multiple_choice",
                "reward_model": {"ground_truth": answer, "style": "rule"},
                "extra_info": {
                    "index": len(rows),
                    "split": "test",
                    "source_index": i,
                    "n_samples": bench.n_samples,
                    "answer_type": "math",
                    **extra,
                },
            }
        )
    return rows, bad


def _find_local(local_dir: str | None, name: str) -> str | None:
    """``<local_dir>/<name>.parquet|jsonl|json`` or ``<name>/``; with ``local_dir`` set, a missing copy is
    an error (no silent hub download)."""
    if not local_dir:
        return None
    candidates = [os.path.join(local_dir, name + suffix) for suffix in (".parquet", ".jsonl", ".json")]
    for path in candidates:
        if os.path.exists(path):
            return path
    path = os.path.join(local_dir, name)
    if os.path.isdir(path):
        return path
    raise SourceError(
        f"--local-dir {local_dir}: no local copy of {name}; expected one of "
        f"{', '.join(os.path.basename(c) for c in candidates)} or {name}/ there (the schema of "
        f"{BENCHMARKS[name].hf_id}). Add it, or drop --local-dir (or this benchmark from --benchmarks)."
    )


def prepare_eval(
    output_dir: str,
    *,
    benchmarks: list[str] | None = None,
    local_dir: str | None = None,
    include_ood: bool = True,
) -> dict[str, Any]:
    """Write ``<output_dir>/<name>.parquet`` for each benchmark plus ``manifest.json``; return the manifest.

    ``local_dir``: where ``<name>.parquet|jsonl|json`` (or a ``<name>/`` snapshot dir) in the public
    schema replace the hub download (a missing directory or copy is an error, never a silent hub
    download). A benchmark that fails to load is reported and the others still
    written; the call raises at the end listing the failures.
    """
    names = benchmarks or (MATH_BENCHMARKS + (OOD_BENCHMARKS if include_ood else []))
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown:
        raise ValueError(f"unknown benchmark(s) {unknown}; choose from {list(BENCHMARKS)}")
    if local_dir and not os.path.isdir(local_dir):
        raise SourceError(
            f"--local-dir {local_dir}: directory not found; pass the directory holding "
            f"<name>.parquet|jsonl|json copies, or drop --local-dir to download from the hub"
        )
    os.makedirs(output_dir, exist_ok=True)
    manifest_path = os.path.join(output_dir, "manifest.json")
    manifest: dict[str, Any] = {}
    if os.path.exists(manifest_path):
        with open(manifest_path) as f:
            manifest = json.load(f)
    failures = {}
    for name in tqdm(names, desc="benchmarks", unit="set"):
        bench = BENCHMARKS[name]
        local = None
        try:
            local = _find_local(local_dir, name)
            src_rows = (
                read_local(local) if local else load_rows(bench.hf_id, split=bench.split, config=bench.config)
            )
            check_columns(name, src_rows, local or bench.hf_id)
        except SourceError as e:
            failures[name] = str(e)
            print(f"[{name}] FAILED: {e}")
            continue
        rows, bad = convert_benchmark(name, src_rows)
        for idx, reason in bad[:10]:
            print(f"[{name}] skipped source row {idx}: {reason}")
        if not rows:
            failures[name] = f"no usable rows ({len(bad)} skipped)"
            continue
        validate_rows(rows, require_demos=False, where=name)
        path = write_parquet(rows, os.path.join(output_dir, f"{name}.parquet"))
        manifest[name] = {
            **asdict(bench),
            "metric": bench.metric,
            "file": os.path.basename(path),
            "rows": len(rows),
            "skipped": len(bad),
            "source": local or bench.hf_id,
        }
        print(
            f"[{name}] {len(rows)} rows ({bench.metric}) -> {path}" + (f", {len(bad)} skipped" if bad else "")
        )
    if len(failures) < len(names):  # not written when every benchmark failed
        with open(manifest_path, "w") as f:
            json.dump(manifest, f, indent=2)
    if failures:
        raise SourceError(
            "some benchmarks could not be prepared:\n" + "\n".join(f"  {k}: {v}" for k, v in failures.items())
        )
    return manifest
