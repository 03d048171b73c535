"""A procedural reasoning task for CPU-scale learning experiments: multi-digit addition, carried step by step.

Level ``d`` adds two ``d``-digit numbers. The worked demonstration writes one column per step, from the
units up, with the carry and the digits of the result so far, and ends in ``\\boxed{sum}``::

    Compute 347+285.                                        (user turn, plus the project's instruction)
    7+5=12, 2. 4+8+1=13, 32. 3+2+1=6, 632. \\boxed{632}     (assistant turn)

The last column writes the whole sum (a final carry becomes its leading digit). Every column costs the model
the same local skill (add two digits and a carry, prepend a digit), so a model that is shown short numbers
only gets partial competence on longer ones: that is what makes the levels a difficulty ladder.

Rows follow the project's data contract (verl's RL parquet columns plus the ``demonstrations`` column);
``data_source`` is ``add<d>`` so verl's validation reports one accuracy per level. Everything is a pure
function of ``(level, seed, split)``; train and evaluation problems never overlap (disjoint hashes).
"""

from __future__ import annotations

import hashlib
import random

#: Digits per operand of each level.
LEVELS = (1, 2, 3, 4, 5)


def data_source(level: int) -> str:
    """The ``data_source`` value of a level's rows (verl groups validation metrics by it)."""
    return f"add{level}"


def question(a: int, b: int) -> str:
    """The problem statement (the user turn is this, a newline and the project's instruction)."""
    return f"Compute {a}+{b}."


def prompt_text(a: int, b: int) -> str:
    """The user turn's content: the problem alone (the model learns the step layout and ``\\boxed{}`` in
    pretraining; a long constant instruction would only cost compute at this scale)."""
    return question(a, b)


def solution(a: int, b: int) -> str:
    """The worked demonstration: one column per step from the units up, ending in ``\\boxed{a+b}``."""
    xs, ys = str(a)[::-1], str(b)[::-1]
    width = max(len(xs), len(ys))
    carry, digits, steps = 0, "", []
    for i in range(width):
        x, y = int(xs[i]) if i < len(xs) else 0, int(ys[i]) if i < len(ys) else 0
        s = x + y + carry
        term = f"{x}+{y}" + (f"+{carry}" if carry else "")
        carry = s // 10
        digits = str(s % 10) + digits
        shown = (str(carry) + digits) if (i == width - 1 and carry) else digits
        steps.append(f"{term}={s}, {shown}.")
    return " ".join(steps) + f" \\boxed{{{a + b}}}"


def _is_eval(a: int, b: int) -> bool:
    """A fixed ~1/8 of all problems is reserved for evaluation (never trained on, never pretrained on)."""
    return hashlib.blake2b(f"{a}+{b}".encode(), digest_size=2).digest()[0] < 32


#: Held-out splits: ``eval`` is the whole reserved pool; ``dev`` (tuning) and ``test`` (reported results) are
#: its two disjoint halves, so hyper-parameters chosen on ``dev`` never see a ``test`` problem.
HELD_OUT = ("eval", "dev", "test")


def held_out_split(a: int, b: int) -> str | None:
    """``"dev"`` or ``"test"`` for a reserved problem (a second hash bit halves the pool), ``None`` for a
    training problem."""
    if not _is_eval(a, b):
        return None
    return "dev" if hashlib.blake2b(f"{a}+{b}".encode(), digest_size=2).digest()[1] & 1 else "test"


def _bounds(level: int) -> tuple[int, int]:
    if level not in LEVELS:
        raise ValueError(f"level must be one of {LEVELS}, got {level!r}")
    return (0 if level == 1 else 10 ** (level - 1)), 10**level - 1


def _in_split(p: tuple[int, int], split: str) -> bool:
    if split == "eval":
        return _is_eval(*p)
    if split in HELD_OUT:
        return held_out_split(*p) == split
    return not _is_eval(*p)


def _draw(level: int, rng: random.Random, want_eval: bool | str) -> tuple[int, int]:
    """One problem of ``level``: of the held-out split named by ``want_eval`` (``True`` = ``"eval"``), or a
    training problem (``False``)."""
    split = "eval" if want_eval is True else (want_eval or "train")
    lo, hi = _bounds(level)
    while True:
        p = (rng.randint(lo, hi), rng.randint(lo, hi))
        if _in_split(p, split):
            return p


def sample_problems(level: int, n: int, seed: int, split: str) -> list[tuple[int, int]]:
    """``n`` distinct problems ``(a, b)`` of ``level`` digits each for ``split`` (one of :data:`HELD_OUT`, or
    anything else = train), deterministic in ``(level, n, seed, split)``; held-out and train problems are
    disjoint, and so are ``dev`` and ``test``."""
    lo, hi = _bounds(level)
    capacity = (hi - lo + 1) ** 2 // {"eval": 10, "dev": 20, "test": 20}.get(split, 2)
    if n > capacity:
        raise ValueError(
            f"level {level} has too few distinct {split} problems for n={n} (at most {capacity})"
        )
    rng = random.Random(f"arith-{level}-{seed}-{split}")
    seen: set[tuple[int, int]] = set()
    out: list[tuple[int, int]] = []
    while len(out) < n:
        p = _draw(level, rng, split if split in HELD_OUT else False)
        if p not in seen:
            seen.add(p)
            out.append(p)
    return out


def rows(
    level: int, n: int, seed: int = 0, split: str = "train", with_demos: bool | None = None
) -> list[dict]:
    """``n`` verl RL rows of ``level``; training rows carry their worked demonstration (held-out rows carry
    none, as the data contract requires; ``extra_info.split`` is ``val`` for ``dev`` rows, ``test`` for
    ``eval`` / ``test`` rows: both mark validation rows for the agent loop)."""
    with_demos = (split not in HELD_OUT) if with_demos is None else with_demos
    out = []
    for i, (a, b) in enumerate(sample_problems(level, n, seed, split)):
        row = {
            "data_source": data_source(level),
            "prompt": [{"role": "user", "content": prompt_text(a, b)}],
            "ability": "math",
            "reward_model": {"ground_truth": str(a + b), "style": "rule"},
            "extra_info": {
                "index": i,
                "split": {"dev": "val", "eval": "test", "test": "test"}.get(split, "train"),
                "level": level,
            },
        }
        if with_demos:
            row["demonstrations"] = [solution(a, b)]
        out.append(row)
    return out


def corpus(level_weights: dict[int, float], n: int, seed: int) -> list[tuple[str, str]]:
    """``n`` (user content, demonstration) pairs for pretraining, levels drawn with the given weights,
    problems drawn with replacement from the training problems (never an evaluation problem)."""
    rng = random.Random(f"arith-corpus-{seed}")
    levels = sorted(level_weights)
    weights = [level_weights[k] for k in levels]
    pairs = []
    for _ in range(n):
        a, b = _draw(rng.choices(levels, weights)[0], rng, want_eval=False)
        pairs.append((prompt_text(a, b), solution(a, b)))
    return pairs
