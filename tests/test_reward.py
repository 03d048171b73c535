"""prefix_rft.reward: hand-checked answers, the </think> rule, adversarial inputs, threads and asyncio."""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from prefix_rft import reward
from prefix_rft.reward import compute_score, guard_reason, last_boxed

# (ground truth, response, expected score)
HAND_CASES = [
    ("7", "The answer is \\boxed{7}.", 1.0),
    ("7", "The answer is \\boxed{8}.", 0.0),
    ("7", "so $\\boxed{7}$", 1.0),
    ("\\frac{1}{2}", "\\boxed{0.5}", 1.0),
    ("0.5", "\\boxed{\\frac{1}{2}}", 1.0),
    ("0.5", "\\boxed{\\dfrac12}", 1.0),
    ("\\frac{1}{2}", "\\boxed{1/2}", 1.0),
    ("\\frac{1}{3}", "\\boxed{0.5}", 0.0),
    ("\\frac{\\sqrt{3}}{2}", "\\boxed{\\dfrac{\\sqrt3}{2}}", 1.0),
    ("2\\pi", "\\boxed{2\\pi}", 1.0),
    ("2\\pi", "\\boxed{\\pi}", 0.0),
    ("90^\\circ", "\\boxed{90}", 1.0),
    ("(1,2)", "\\boxed{(1, 2)}", 1.0),
    ("\\{1,2\\}", "\\boxed{\\{1, 2\\}}", 1.0),
    ("x^2+2x+1", "\\boxed{(x+1)^2}", 1.0),
    ("\\text{(B)}", "\\boxed{B}", 1.0),
    ("7", "7", 0.0),  # no box -> 0 even when the bare text is right
    ("7", "the answer is 7", 0.0),
    ("7", "\\boxed{}", 0.0),
    ("7", "\\boxed{7", 0.0),  # unterminated box
    ("\\frac{1}{2}", "\\boxed{\\frac{1}{2}}", 1.0),  # nested braces inside the box
    ("\\frac{\\sqrt{2}}{2}", "\\boxed{\\frac{\\sqrt{2}}{2}}", 1.0),
    ("8", "first \\boxed{7}, then corrected: \\boxed{8}", 1.0),  # the LAST box counts
    ("7", "first \\boxed{7}, then corrected: \\boxed{8}", 0.0),
    ("5", "\\fbox{5}", 1.0),
    ("\\boxed{12}", "\\boxed{12}", 1.0),  # a boxed ground truth is unboxed first
    ("$12$", "\\boxed{12}", 1.0),
]


@pytest.mark.parametrize(("gold", "response", "expected"), HAND_CASES)
def test_hand_cases(gold, response, expected):
    out = compute_score("math", response, gold)
    assert out["score"] == expected
    assert out["acc"] is (expected == 1.0)
    assert isinstance(out["pred"], str)


def test_return_type_and_pred():
    out = compute_score("math", "blah \\boxed{\\frac{1}{2}} done", "0.5", extra_info={"index": 3})
    assert out == {"score": 1.0, "acc": True, "pred": "\\frac{1}{2}", "timeout": 0}
    assert compute_score("math", "no box", "1") == {"score": 0.0, "acc": False, "pred": "", "timeout": 0}


def test_after_think_rule():
    # Only the text after the last </think> is scored.
    assert compute_score("m", "<think>maybe \\boxed{7}</think> final: \\boxed{8}", "8")["score"] == 1.0
    assert compute_score("m", "<think>maybe \\boxed{7}</think> final: \\boxed{8}", "7")["score"] == 0.0
    # A box only inside the thinking does not count.
    assert compute_score("m", "<think>\\boxed{7}</think> I am not sure.", "7")["score"] == 0.0
    # Without </think> the whole response is the answer (an unfinished or absent think block).
    assert compute_score("m", "<think>so \\boxed{7}", "7")["score"] == 1.0
    assert compute_score("m", "<think>a</think> b </think> \\boxed{3}", "3")["score"] == 1.0


def test_last_boxed_extraction():
    assert last_boxed("x \\boxed{\\frac{1}{2}} y") == "\\frac{1}{2}"
    assert last_boxed("\\boxed{\\{1,2\\}}") == "\\{1,2\\}"  # escaped braces do not close the box
    assert last_boxed("\\boxed{a} \\boxed{b{c}d}") == "b{c}d"
    assert last_boxed("\\boxed 5$") == "5"
    assert last_boxed("\\boxedx") is None
    assert last_boxed("nothing") is None
    assert last_boxed("\\boxed{" + "1" * (reward.MAX_ANSWER_CHARS + 5) + "}") is None


def test_multiple_choice():
    assert compute_score("gpqa_diamond", "\\boxed{(C)}", "C")["score"] == 1.0
    assert compute_score("mmlu_pro", "\\boxed{\\text{D}}", "D")["score"] == 1.0
    assert compute_score("arc_c", "\\boxed{B. Photosynthesis}", "B")["score"] == 1.0
    assert compute_score("gpqa_diamond", "\\boxed{D}", "C")["score"] == 0.0
    assert compute_score("gpqa_diamond", "C", "C")["score"] == 0.0  # no box
    # extra_info marks a multiple-choice row from any source
    assert (
        compute_score("x", "\\boxed{A}", "A", extra_info={"answer_type": "multiple_choice"})["score"] == 1.0
    )
    # a math source is not letter-matched: "A" vs "B" symbols differ
    assert compute_score("math", "\\boxed{A}", "B")["score"] == 0.0


@pytest.mark.parametrize(
    ("expr", "reason"),
    [
        ("9^{9^{9}}", "power_tower"),
        ("10^{10^{10}}", "power_tower"),
        ("2**3**4", "power_tower"),
        ("x^2^3", "power_tower"),
        ("10^{100000}", "exponent"),
        ("10**100000", "exponent"),
        ("{" * 6 + "1" + "}" * 6, "brace_depth"),
        ("(" * 11 + "1" + ")" * 11, "group_depth"),
        ("1" * 61, "digits"),
        ("x^2" * 9, "powers"),
        ("1" * 401, "too_long"),
        # safe answers pass
        ("x^2y^2", None),
        ("2^{10}", None),
        ("10^{99999}", None),
        ("\\{1,2\\}", None),
        ("e^{i\\pi}", None),
        ("\\frac{\\sqrt{\\frac{1}{2}}}{3}", None),
    ],
)
def test_guards(expr, reason):
    assert guard_reason(expr) == reason


ADVERSARIAL = [
    "a" * 1_000_000,
    "\\boxed{" + "{" * 500_000 + "1" + "}" * 500_000 + "}",
    "\\boxed{" * 200_000,
    "</think>" * 120_000 + "\\boxed{" + "{" * 7 + "7" + "}" * 7 + "}",
    "\\boxed{1" + "0" * 100_000 + "}",
    "\\boxed{" + str(10**4000) + "}",
    "\\boxed{10^{100000}}",
    "\\boxed{10**100000}",
    "\\boxed{9^{9^{9}}}",
    "\\boxed{" + "(" * 40 + "7" + ")" * 40 + "}",
    "\\boxed{" + "\\frac{1}{" * 8 + "7" + "}" * 8 + "}",
    "x" * 999_990 + "\\boxed{",
    "\\boxed{\\left(" * 30,
]


@pytest.mark.parametrize("response", ADVERSARIAL, ids=range(len(ADVERSARIAL)))
def test_adversarial_inputs_finish_with_zero(response):
    out = compute_score("math", response, "7")
    assert out["score"] == 0.0 and out["acc"] is False
    assert len(out["pred"]) <= reward.MAX_ANSWER_CHARS


def test_large_response_with_valid_final_box():
    response = ("blah \\boxed{3} " * 70_000) + "\\boxed{7}"
    assert len(response) > 1_000_000
    assert compute_score("math", response, "7")["score"] == 1.0


@pytest.mark.parametrize("bad", [None, 123, b"\\boxed{7}"])
def test_bad_types_never_raise(bad):
    out = compute_score("math", bad, "7")
    assert out["score"] == 0.0
    out = compute_score("math", "\\boxed{7}", None)
    assert out["score"] == 0.0


def test_ground_truth_types():
    import numpy as np

    assert compute_score("math", "\\boxed{None}", None)["score"] == 0.0
    assert compute_score("math", "\\boxed{7}", 7)["score"] == 1.0
    assert compute_score("math", "\\boxed{7}", np.array(["7"]))["score"] == 1.0
    assert compute_score("math", "\\boxed{7}", [])["score"] == 0.0


def test_guard_hit_is_counted():
    before = reward.STATS["guard:pred:power_tower"]
    compute_score("math", "\\boxed{9^{9^{9}}}", "7")
    assert reward.STATS["guard:pred:power_tower"] == before + 1


def _expected_pairs():
    return [(case[0], case[1], case[2]) for case in HAND_CASES] * 2


def test_thread_pool():
    # math-verify's default (signal-based) timeout cannot run off the main thread: prove that, then
    # check compute_score (timeouts off) gives the single-threaded answers from a pool.
    from math_verify import parse

    errors = []

    def default_parse():
        try:
            parse("\\boxed{1}")
        except ValueError as e:
            errors.append(e)

    t = threading.Thread(target=default_parse)
    t.start()
    t.join()
    assert errors and "threaded" in str(errors[0])

    pairs = _expected_pairs()
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(lambda p: compute_score("math", p[1], p[0]), pairs))
    assert [r["score"] for r in results] == [p[2] for p in pairs]


async def test_asyncio_to_thread():
    pairs = _expected_pairs()
    results = await asyncio.gather(*(asyncio.to_thread(compute_score, "math", p[1], p[0]) for p in pairs))
    assert [r["score"] for r in results] == [p[2] for p in pairs]


async def test_through_verl_reward_manager():
    """verl 0.9.1's reward loop (config -> load_reward_manager -> NaiveRewardManager.run_single) runs it:
    ``reward.custom_reward_function.path=pkg://prefix_rft.reward`` and the dict lands in reward_extra_info."""
    import numpy as np
    import torch
    from omegaconf import OmegaConf
    from verl import DataProto
    from verl.trainer.ppo.reward import load_reward_manager

    from benchmarks.fixtures.tiny import build_tiny_tokenizer

    tok = build_tiny_tokenizer()
    cfg = OmegaConf.create(
        {
            "reward": {
                "custom_reward_function": {"path": "pkg://prefix_rft.reward", "name": "compute_score"},
                "reward_manager": {"source": "register", "name": "naive"},
            }
        }
    )
    manager = load_reward_manager(cfg, tok)
    outs = []
    for response, gt in [("<think>hm</think> so \\boxed{12}", "12"), ("so \\boxed{13}", "12")]:
        p = tok("<|im_start|>user\nq<|im_end|>\n", add_special_tokens=False)["input_ids"]
        r = tok(response, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        data = DataProto.from_dict(
            tensors={
                "prompts": torch.tensor([p]),
                "responses": torch.tensor([r + [tok.pad_token_id] * 3]),
                "attention_mask": torch.tensor([[1] * (len(p) + len(r)) + [0] * 3]),
            },
            non_tensors={
                "data_source": np.array(["math"], dtype=object),
                "reward_model": np.array([{"ground_truth": gt}], dtype=object),
                "extra_info": np.array([{"index": 0}], dtype=object),
            },
        )
        outs.append(await manager.run_single(data))
    assert outs[0] == {
        "reward_score": 1.0,
        "reward_extra_info": {"score": 1.0, "acc": True, "pred": "12", "timeout": 0},
    }
    assert outs[1]["reward_score"] == 0.0 and outs[1]["reward_extra_info"]["pred"] == "13"


SLOW_ANSWERS = [
    "\\boxed{9999999!}",
    "\\boxed{99999!!}",
    "\\boxed{((((9!)!)!)!)}",
    "\\boxed{\\sum_{k=1}^{99999} k^{99999}}",
    "\\boxed{999999!}",
    "\\boxed{" + "+".join(["99999^{99999}"] * 8) + "}",
    "\\boxed{8 \\times 99999^{99999}}",
]
"""Answers that pass the guards but ran for seconds to minutes in math-verify, holding the GIL."""


@pytest.mark.parametrize("response", SLOW_ANSWERS)
def test_every_call_is_time_bounded(response):
    assert reward.POOL.wait_warm()  # the bound is on the check, not on starting verifier processes
    before = reward.STATS["timeout"]
    start = time.monotonic()
    out = compute_score("math", response, "7")
    elapsed = time.monotonic() - start
    # the bound is 1 s of the verifier's CPU time: ~1 s of wall clock on a quiet machine, more when other
    # processes share the cores (never more than reward.MAX_WAIT_S)
    assert elapsed < 30.0, f"{response}: {elapsed:.1f} s"
    assert out["score"] == 0.0
    if response in SLOW_ANSWERS[:4]:  # minutes unbounded: always cut
        assert out["timeout"] == 1
    assert reward.STATS["timeout"] == before + out["timeout"]  # 4-13 s ones finish under load or are cut


def test_timeout_is_configurable_and_correct_answers_still_score():
    assert reward.POOL.wait_warm()
    start = time.monotonic()
    out = compute_score("math", "\\boxed{9999999!}", "7", timeout_s=0.2)
    assert out["timeout"] == 1 and time.monotonic() - start < 15.0  # 0.2 CPU-s, even on a loaded machine
    assert reward.POOL.wait_warm()
    assert compute_score("math", "\\boxed{\\frac{1}{2}}", "0.5", timeout_s=30) == {
        "score": 1.0,
        "acc": True,
        "pred": "\\frac{1}{2}",
        "timeout": 0,
    }


async def test_slow_answers_do_not_stall_other_threads_or_the_event_loop():
    assert reward.POOL.wait_warm()
    loop = asyncio.get_running_loop()
    ticks = 0

    async def ticker():
        nonlocal ticks
        while True:
            await asyncio.sleep(0.01)
            ticks += 1

    tick_task = asyncio.create_task(ticker())
    start = time.monotonic()
    with ThreadPoolExecutor(max_workers=4) as pool:
        slow = [loop.run_in_executor(pool, compute_score, "math", r, "7") for r in SLOW_ANSWERS[:2]]
        fast = loop.run_in_executor(pool, compute_score, "math", "\\boxed{\\frac{2}{4}}", "0.5")
        assert (await fast)["score"] == 1.0
        results = await asyncio.gather(*slow)
    tick_task.cancel()
    elapsed = time.monotonic() - start
    assert [r["timeout"] for r in results] == [1, 1] and elapsed < 30.0  # 1 CPU-s each (see above)
    assert ticks > 0.3 * elapsed / 0.01  # the event loop kept running (the GIL was not held)


def _correct_answers(n: int) -> list[tuple[str, str]]:
    """``n`` (gold, response) pairs, all correct: a third plain, a third numeric forms, a third symbolic."""
    out = []
    for k in range(1, n + 1):
        kind = k % 3
        if kind == 0:
            out.append((str(k), f"so the answer is \\boxed{{{k}}}."))
        elif kind == 1:
            out.append((f"\\frac{{{k}}}{{4}}", f"\\boxed{{{k / 4}}}"))
        else:  # needs math-verify (sympy): equal, but not as strings or plain numbers
            out.append((f"x^2+{2 * k}x+{k * k}", f"\\boxed{{(x+{k})^2}}"))
    return out


def test_correct_answers_score_1_on_a_busy_machine():
    """Before: on a loaded machine, 3 of 24 correct answers scored 0 (the wall-clock bound cut the verifier
    while it was waiting for a core). Now the bound is the verifier's own CPU time and plain answers never
    reach it: 300 correct answers from 8 threads, with CPU-bound processes hogging every core, all score 1."""
    import os
    import subprocess
    import sys

    answers = _correct_answers(300)
    assert reward.POOL.wait_warm()
    hogs = [
        subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(3 * (os.cpu_count() or 2))
    ]
    try:
        time.sleep(0.5)
        before = reward.STATS["timeout"]
        with ThreadPoolExecutor(max_workers=8) as pool:
            # 0.3 s of verifier CPU per check is ample (each check here needs a few ms); the wall clock under
            # this load is many times that
            results = list(pool.map(lambda ga: compute_score("math", ga[1], ga[0], timeout_s=0.3), answers))
    finally:
        for hog in hogs:
            hog.kill()
            hog.wait()
    wrong = [
        (g, r["pred"], r["timeout"]) for (g, _), r in zip(answers, results, strict=True) if r["score"] != 1.0
    ]
    assert not wrong, f"{len(wrong)} of {len(answers)} correct answers scored 0 under load: {wrong[:5]}"
    assert reward.STATS["timeout"] == before


def test_fast_path_decides_plain_matches_in_process():
    assert reward.fast_equal("0.25", "\\frac{1}{4}") and reward.fast_equal("-1/2", "-\\dfrac{1}{2}")
    assert reward.fast_equal("$12$", "12") and reward.fast_equal("3.0", "3")
    assert not reward.fast_equal("0.333", "\\frac{1}{3}")  # left to math-verify, never decided wrong here
    assert not reward.fast_equal("1/0", "1/0") or reward.fast_equal("1/0", "1/0")  # strings equal: a match
    assert reward._as_number("1/0") is None
