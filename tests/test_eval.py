"""prefix_rft.eval end to end on CPU: injected and real (transformers) generation, resume, checkpoints."""

from __future__ import annotations

import json
import math
import os
from fractions import Fraction

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from prefix_rft.data.contract import read_parquet_rows
from prefix_rft.data.eval_sets import prepare_eval
from prefix_rft.eval import (
    SamplingSettings,
    benchmark_pass_at_k,
    chat_prompts,
    evaluate,
    find_verl_actor,
    main,
    parse_pass_at,
    pass_at_k,
    render_markdown,
    resolve_model,
)

EVAL_FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures", "eval")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, tiny_model_dir):
    """The session's tiny model directory and the eval sets prepared from the fixture copies of the public sets."""
    root = tmp_path_factory.mktemp("evalroot")
    model_dir = tiny_model_dir
    data_dir = str(root / "data")
    prepare_eval(
        data_dir,
        local_dir=EVAL_FIXTURES,
        benchmarks=["aime24", "math500", "minerva", "gpqa_diamond", "arc_c", "mmlu_pro"],
    )
    return model_dir, data_dir


class CountingOracle:
    """A generate function that answers the first sample of each prompt right and the others wrong."""

    def __init__(self, answers: dict[str, str]):
        self.answers = answers
        self.calls: list[tuple[int, int]] = []

    def __call__(self, prompts, n, settings):
        self.calls.append((len(prompts), n))
        return [
            [f"<think>x</think> so \\boxed{{{self.answers[p]}}}"] + ["\\boxed{-1}"] * (n - 1) for p in prompts
        ]


def _oracle(model_dir, data_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    answers = {}
    for f in os.listdir(data_dir):
        if f.endswith(".parquet"):
            rows = read_parquet_rows(os.path.join(data_dir, f))
            answers.update(
                zip(chat_prompts(tok, rows), (r["reward_model"]["ground_truth"] for r in rows), strict=True)
            )
    return CountingOracle(answers), tok


def test_scores_resume_and_markdown(tiny, tmp_path):
    model_dir, data_dir = tiny
    oracle, tok = _oracle(model_dir, data_dir)
    out = str(tmp_path / "res.json")
    res = evaluate(
        model_dir,
        data_dir,
        out,
        benchmarks=["aime24", "math500", "gpqa_diamond"],
        generate=oracle,
        tokenizer=tok,
        compare_paper=True,
    )
    b = res["benchmarks"]
    # aime24: avg@32 from the manifest, 1 of 32 right per problem; math500/gpqa: pass@1, the one sample right
    assert b["aime24"]["n_samples"] == 32 and b["aime24"]["metric"] == "avg@32"
    assert b["aime24"]["mean"] == pytest.approx(1 / 32)
    assert b["aime24"]["problems"][0]["scores"] == [1.0] + [0.0] * 31
    assert b["aime24"]["problems"][0]["preds"][:2] == ["204", "-1"]
    assert b["math500"]["mean"] == 1.0 and b["math500"]["metric"] == "pass@1"
    assert b["gpqa_diamond"]["mean"] == 1.0
    assert oracle.calls == [(2, 32), (2, 1), (2, 1)]
    on_disk = json.load(open(out))
    assert on_disk["benchmarks"]["math500"]["num_problems"] == 2
    md = open(str(tmp_path / "res.md")).read()
    assert "| **model (ours)** | 3.1 | — | — | 100.0 | — | — | 51.6 (2/6 sets) |" in md
    assert "| Prefix-RFT (paper, Qwen2.5-Math-7B) | 31.8 | 26.4 | 68.2 | 88.4 | 40.3 | 55.7 | 51.8 |" in md
    assert "GPQA-diamond" in md

    # resume: nothing finished is generated again
    evaluate(
        model_dir,
        data_dir,
        out,
        benchmarks=["aime24", "math500", "gpqa_diamond"],
        generate=oracle,
        tokenizer=tok,
    )
    assert len(oracle.calls) == 3
    # a new benchmark is the only work done
    res = evaluate(model_dir, data_dir, out, generate=oracle, tokenizer=tok)
    assert oracle.calls[3:] == [(2, 1)] * 3 and set(res["benchmarks"]) == {
        "aime24",
        "math500",
        "gpqa_diamond",
        "minerva",
        "arc_c",
        "mmlu_pro",
    }
    # changed settings on a finished benchmark, or another model: refuse to mix
    with pytest.raises(ValueError, match="already has aime24"):
        evaluate(
            model_dir,
            data_dir,
            out,
            benchmarks=["aime24"],
            generate=oracle,
            tokenizer=tok,
            settings=SamplingSettings(temperature=1.0),
        )
    with pytest.raises(ValueError, match="holds results of"):
        evaluate("other-model", data_dir, out, generate=oracle, tokenizer=tok)
    assert len(oracle.calls) == 6


def test_generator_shape_is_checked(tiny, tmp_path):
    model_dir, data_dir = tiny
    _, tok = _oracle(model_dir, data_dir)
    with pytest.raises(RuntimeError, match="completions"):
        evaluate(
            model_dir,
            data_dir,
            str(tmp_path / "r.json"),
            benchmarks=["math500"],
            tokenizer=tok,
            generate=lambda prompts, n, s: [["\\boxed{1}"]] * (len(prompts) - 1),
        )


def _fake_fsdp_checkpoint(model_dir: str, root) -> str:
    """The layout verl's FSDP checkpoint manager writes for world size 1 (plain-tensor shard)."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    actor = root / "global_step_3" / "actor"
    (actor / "huggingface").mkdir(parents=True)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    torch.save(model.state_dict(), actor / "model_world_size_1_rank_0.pt")
    (actor / "fsdp_config.json").write_text(json.dumps({"FSDP_version": 2, "world_size": 1}))
    AutoConfig.from_pretrained(model_dir).save_pretrained(actor / "huggingface")
    AutoTokenizer.from_pretrained(model_dir).save_pretrained(actor / "huggingface")
    return str(root / "global_step_3")


def test_verl_checkpoint_is_merged_then_generated_with_hf(tiny, tmp_path):
    from transformers import AutoModelForCausalLM

    model_dir, data_dir = tiny
    ckpt = _fake_fsdp_checkpoint(model_dir, tmp_path)
    assert find_verl_actor(ckpt) == (os.path.join(ckpt, "actor"), "fsdp")
    assert find_verl_actor(model_dir) is None
    out = str(tmp_path / "ck.json")
    res = evaluate(
        ckpt,
        data_dir,
        out,
        benchmarks=["math500", "minerva"],
        backend="hf",
        n_override=2,
        limit=1,
        settings=SamplingSettings(max_tokens=5, seed=1),
    )
    merged = os.path.join(ckpt, "actor", "huggingface_merged")
    assert res["model_path"] == merged and os.path.exists(os.path.join(merged, "config.json"))
    ref = AutoModelForCausalLM.from_pretrained(model_dir).state_dict()
    got = AutoModelForCausalLM.from_pretrained(merged).state_dict()
    for k, v in ref.items():  # the merger stores bf16
        torch.testing.assert_close(got[k].float(), v.to(torch.bfloat16).float())
    for name in ("math500", "minerva"):
        b = res["benchmarks"][name]
        assert b["num_problems"] == 1 and b["n_samples"] == 2 and b["metric"] == "avg@2"
        assert len(b["problems"][0]["scores"]) == 2
        assert all(s in (0.0, 1.0) for s in b["problems"][0]["scores"])
    # the merged copy is reused
    assert resolve_model(ckpt) == merged


def test_cli_errors(tmp_path, capsys):
    assert main(["some-model", "--data-dir", str(tmp_path), "--output", str(tmp_path / "o.json")]) == 1
    assert "prepare eval" in capsys.readouterr().err


def test_render_markdown_full_table():
    bench = {
        b: {
            "mean": m,
            "metric": "pass@1",
            "num_problems": 1,
            "settings": {
                "temperature": 0.6,
                "top_p": 0.95,
                "max_tokens": 8192,
                "seed": 0,
                "n": 1,
                "limit": None,
            },
        }
        for b, m in [
            ("aime24", 0.3),
            ("aime25", 0.2),
            ("amc23", 0.6),
            ("math500", 0.9),
            ("minerva", 0.4),
            ("olympiadbench", 0.5),
        ]
    }
    md = render_markdown({"model": "/x/ckpt/", "benchmarks": bench})
    assert "| **ckpt (ours)** | 30.0 | 20.0 | 60.0 | 90.0 | 40.0 | 50.0 | 48.3 |" in md
    assert "paper" not in md


def test_cli_missing_model_path(tiny, tmp_path, capsys):
    _, data_dir = tiny
    assert main(["/nonexist/model", "--data-dir", data_dir, "--output", str(tmp_path / "o.json")]) == 1
    assert "model not found: /nonexist/model" in capsys.readouterr().err


def test_cli_vllm_backend_without_vllm(tiny, tmp_path, capsys, monkeypatch):
    import importlib.util

    real_find_spec = importlib.util.find_spec
    # behave as on a machine without vLLM, whether or not this one has it
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda n, *a: None if n == "vllm" else real_find_spec(n, *a)
    )
    model_dir, data_dir = tiny
    args = [model_dir, "--data-dir", data_dir, "--output", str(tmp_path / "o.json"), "--backend", "vllm"]
    assert main(args) == 1
    err = capsys.readouterr().err
    assert '--backend vllm: vllm is not installed; `pip install -e ".[vllm]"` or use --backend hf' in err


def test_cli_manifest_file_missing_or_malformed(tiny, tmp_path, capsys):
    import shutil

    model_dir, data_dir = tiny
    d = str(tmp_path / "data")
    shutil.copytree(data_dir, d)
    os.remove(os.path.join(d, "aime24.parquet"))
    assert main([model_dir, "--data-dir", d, "--output", str(tmp_path / "o.json")]) == 1
    err = capsys.readouterr().err
    assert "not found: " + os.path.join(d, "aime24.parquet") in err
    assert f"re-run `python -m prefix_rft.data prepare eval --output-dir {d}`" in err
    with open(os.path.join(d, "manifest.json"), "w") as f:
        f.write("{not json")
    assert main([model_dir, "--data-dir", d, "--output", str(tmp_path / "o.json")]) == 1
    err = capsys.readouterr().err
    assert "manifest.json: not valid JSON" in err and "prepare eval --output-dir" in err
    with open(os.path.join(d, "manifest.json"), "w") as f:
        f.write('{"aime24": {"rows": 1}}')
    assert main([model_dir, "--data-dir", d, "--output", str(tmp_path / "o.json")]) == 1
    assert "malformed manifest" in capsys.readouterr().err


# ---------------------------------------------------------------------------- pass@k


def test_pass_at_k_hand_computed_values():
    assert pass_at_k(4, 1, 2) == pytest.approx(0.5)  # 1 - C(3,2)/C(4,2) = 1 - 3/6
    assert pass_at_k(5, 2, 3) == pytest.approx(0.9)  # 1 - C(3,3)/C(5,3) = 1 - 1/10
    assert pass_at_k(10, 3, 2) == pytest.approx(1 - 21 / 45)  # 1 - C(7,2)/C(10,2)
    assert pass_at_k(32, 5, 1) == pytest.approx(5 / 32)  # pass@1 = c / n = avg@n
    assert pass_at_k(4, 0, 1) == 0.0 and pass_at_k(4, 0, 4) == 0.0  # no correct sample
    assert pass_at_k(4, 3, 2) == 1.0  # n - c = 1 < k: every pair holds a correct sample
    assert pass_at_k(4, 1, 4) == 1.0  # k = n: all samples drawn
    assert pass_at_k(1, 1, 1) == 1.0
    # n = 2048 (the paper's AIME24 curve): no overflow, exact against integers
    assert pass_at_k(2048, 3, 256) == pytest.approx(
        1 - math.comb(2045, 256) / math.comb(2048, 256), abs=1e-12
    )


@pytest.mark.parametrize(
    ("args", "error", "match"),
    [
        ((4, 1, 5), ValueError, r"k must be in \[1, n=4\], got 5: pass@k needs at least k samples"),
        ((4, 1, 0), ValueError, r"k must be in \[1, n=4\], got 0"),
        ((4, 5, 2), ValueError, r"c \(correct samples\) must be in \[0, n=4\], got 5"),
        ((4, -1, 2), ValueError, r"c \(correct samples\) must be in \[0, n=4\], got -1"),
        ((0, 0, 1), ValueError, r"n \(samples per problem\) must be >= 1, got 0"),
        ((4.0, 1, 2), TypeError, "n must be an int, got float 4.0"),
        ((4, True, 2), TypeError, "c must be an int, got bool True"),
    ],
)
def test_pass_at_k_rejects_bad_input(args, error, match):
    with pytest.raises(error, match=match):
        pass_at_k(*args)


@settings(max_examples=300, deadline=None)
@given(st.integers(1, 300).flatmap(lambda n: st.tuples(st.just(n), st.integers(0, n), st.integers(1, n))))
def test_pass_at_k_matches_binomials_and_is_monotone(nck):
    n, c, k = nck
    exact = 1 - Fraction(math.comb(n - c, k), math.comb(n, k))
    value = pass_at_k(n, c, k)
    assert 0.0 <= value <= 1.0
    assert value == pytest.approx(float(exact), abs=1e-9)
    if k < n:
        assert pass_at_k(n, c, k) <= pass_at_k(n, c, k + 1)
    if c < n:
        assert pass_at_k(n, c, k) <= pass_at_k(n, c + 1, k)


def test_parse_pass_at():
    assert parse_pass_at("64, 1,8,8,256") == [1, 8, 64, 256]
    import argparse

    for bad in ("1,x", "0", "1,,2", "-1"):
        with pytest.raises(argparse.ArgumentTypeError, match="is not a positive integer"):
            parse_pass_at(bad)


def test_benchmark_pass_at_k_averages_problems_and_rejects_partial_credit():
    problems = [{"index": 0, "scores": [1.0, 0.0, 0.0, 0.0]}, {"index": 1, "scores": [0.0] * 4}]
    assert benchmark_pass_at_k("b", problems, [1, 2, 4]) == {"1": 0.125, "2": 0.25, "4": 0.5}
    with pytest.raises(ValueError, match=r"b: problem 3 has non-0/1 scores \[0.5\]"):
        benchmark_pass_at_k("b", [{"index": 3, "scores": [0.5, 1.0]}], [1])


class FirstRightOracle:
    """Right on the first sample of each prompt of ``right``, wrong on every other sample."""

    def __init__(self, answers: dict[str, str], right: set[str]):
        self.answers, self.right = answers, right
        self.calls: list[tuple[int, int]] = []

    def __call__(self, prompts, n, settings):
        self.calls.append((len(prompts), n))
        return [
            ([f"\\boxed{{{self.answers[p]}}}"] if p in self.right else ["\\boxed{-1}"])
            + ["\\boxed{-1}"] * (n - 1)
            for p in prompts
        ]


def test_pass_at_in_json_and_markdown_and_resume(tiny, tmp_path):
    model_dir, data_dir = tiny
    counting, tok = _oracle(model_dir, data_dir)
    aime = read_parquet_rows(os.path.join(data_dir, "aime24.parquet"))
    first = chat_prompts(tok, aime)[0]
    oracle = FirstRightOracle(counting.answers, {first})  # aime24: problem 0 has c=1 of 4, problem 1 c=0
    out = str(tmp_path / "pk.json")
    res = evaluate(
        model_dir,
        data_dir,
        out,
        benchmarks=["aime24"],
        generate=oracle,
        tokenizer=tok,
        n_override=4,
        pass_at=[4, 1, 2],
    )
    b = res["benchmarks"]["aime24"]
    assert b["metric"] == "avg@4" and b["mean"] == 0.125
    assert b["pass_at_k"] == {"1": 0.125, "2": 0.25, "4": 0.5}  # (0.25 + 0) / 2, (0.5 + 0) / 2, (1 + 0) / 2
    assert json.load(open(out))["benchmarks"]["aime24"]["pass_at_k"] == b["pass_at_k"]
    md = open(str(tmp_path / "pk.md")).read()
    assert "| benchmark | metric | problems | score | pass@1 | pass@2 | pass@4 |" in md
    assert "| aime24 | avg@4 | 2 | 12.5 | 12.5 | 25.0 | 50.0 |" in md
    assert "unbiased estimator of Chen et al. (2021)" in md
    assert oracle.calls == [(2, 4)]

    # resume: a new k on a finished benchmark comes from the stored scores, nothing is generated
    res = evaluate(
        model_dir,
        data_dir,
        out,
        benchmarks=["aime24"],
        generate=oracle,
        tokenizer=tok,
        n_override=4,
        pass_at=[3],
    )
    assert oracle.calls == [(2, 4)]
    assert res["benchmarks"]["aime24"]["pass_at_k"] == {"1": 0.125, "2": 0.25, "3": 0.375, "4": 0.5}
    # k above the stored n: refused before anything runs, naming the flag and the fix
    with pytest.raises(
        ValueError, match=r"--pass-at 8: .* aime24 is already in .*pk.json with n=4; .* --n 8"
    ):
        evaluate(
            model_dir,
            data_dir,
            out,
            benchmarks=["aime24"],
            generate=oracle,
            tokenizer=tok,
            n_override=4,
            pass_at=[8],
        )
    # a benchmark that still has to run: checked against its n before generating anything
    with pytest.raises(ValueError, match=r"--pass-at 8: .* math500 has n=4 sample\(s\) per problem \(--n\)"):
        evaluate(
            model_dir,
            data_dir,
            out,
            benchmarks=["math500"],
            generate=oracle,
            tokenizer=tok,
            n_override=4,
            pass_at=[1, 8],
        )
    assert oracle.calls == [(2, 4)]


def test_cli_pass_at_errors_name_the_flag(tiny, tmp_path, capsys):
    model_dir, data_dir = tiny
    args = [model_dir, "--data-dir", data_dir, "--output", str(tmp_path / "o.json")]
    assert main(args + ["--benchmarks", "math500", "--pass-at", "1,8"]) == 1
    err = capsys.readouterr().err
    assert "error: --pass-at 8: pass@k needs k <= n samples per problem, but math500 has n=1" in err
    assert "(manifest.json); pass --n 8 (or more), or leave math500 out with --benchmarks" in err
    assert not os.path.exists(tmp_path / "o.json")
    with pytest.raises(SystemExit) as e:
        main(args + ["--pass-at", "1,eight"])
    assert e.value.code == 2
    assert "argument --pass-at: 'eight' is not a positive integer" in capsys.readouterr().err


# ---------------------------------------------------------------------------- OOD sets: letter grading


LETTER_FORMS = [
    ("{L}", 1.0),
    ("({L})", 1.0),
    ("\\text{{{L}}}", 1.0),
    ("\\textbf{{({L})}}", 1.0),
    ("{L}. the option text", 1.0),
    ("Answer: {L}", 1.0),
    ("{l}", 1.0),
    ("{W}", 0.0),  # another letter
    ("{L} and {W}", 0.0),  # a hedge names two letters
    ("({W}) or ({L})", 0.0),
]


def test_ood_letters_are_graded_through_eval(tiny, tmp_path):
    """ARC-c / GPQA-diamond / MMLU-Pro rows prepared from the public schemas: a boxed letter is scored by
    the multiple-choice path of the reward (letter compare), each written form as expected."""
    model_dir, data_dir = tiny
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    gold = {}
    for name in ("arc_c", "gpqa_diamond", "mmlu_pro"):
        rows = read_parquet_rows(os.path.join(data_dir, f"{name}.parquet"))
        assert all(r["extra_info"]["answer_type"] == "multiple_choice" for r in rows)
        gold.update(
            zip(chat_prompts(tok, rows), (r["reward_model"]["ground_truth"] for r in rows), strict=True)
        )

    def forms(prompts, n, settings):
        out = []
        for p in prompts:
            L = gold[p]
            W = "A" if L != "A" else "B"
            out.append(
                [f"<think>...</think> \\boxed{{{f.format(L=L, l=L.lower(), W=W)}}}" for f, _ in LETTER_FORMS]
            )
        return out

    res = evaluate(
        model_dir,
        data_dir,
        str(tmp_path / "ood.json"),
        benchmarks=["arc_c", "gpqa_diamond", "mmlu_pro"],
        generate=forms,
        tokenizer=tok,
        n_override=len(LETTER_FORMS),
        compare_paper=True,
    )
    expected = [s for _, s in LETTER_FORMS]
    for name in ("arc_c", "gpqa_diamond", "mmlu_pro"):
        b = res["benchmarks"][name]
        assert [p["scores"] for p in b["problems"]] == [expected, expected], name
        assert b["mean"] == pytest.approx(0.7)
    md = open(str(tmp_path / "ood.md")).read()
    assert "| method | ARC-c | GPQA-diamond | MMLU-Pro | avg |" in md
    assert "| **model (ours)** | 70.0 | 70.0 | 70.0 | 70.0 |" in md
    assert "| SFT then RL (arXiv 2604.23747, verl) | — | — | — | 59.9 |" in md


def test_math_path_does_not_grade_letters_so_mc_rows_are_routed():
    """Why the OOD rows carry ``answer_type``: the math path (math-verify) reads a letter as a symbol, so
    ``C. text`` fails there and only the multiple-choice path grades it; the route works by
    ``data_source`` or by ``extra_info`` alone (e.g. a renamed source in ``data.val_files``)."""
    from prefix_rft.reward import choice_letter, compute_score

    assert compute_score("math500", "\\boxed{C. Planetary days}", "C")["score"] == 0.0
    assert compute_score("arc_c", "\\boxed{C. Planetary days}", "C")["score"] == 1.0
    mc = {"answer_type": "multiple_choice"}
    assert compute_score("my_arc_copy", "\\boxed{C. Planetary days}", "C", mc)["score"] == 1.0
    assert compute_score("my_arc_copy", "\\boxed{C and D}", "C", mc)["score"] == 0.0
    assert [choice_letter(x) for x in ("{C}", "Option C", "(c)", "C/D", "C, D", "Cat", "a")] == [
        "C",
        "C",
        "C",
        None,
        None,
        None,
        "A",
    ]


# ---------------------------------------------------------------------------- tables


def test_ood_table_same_layout_partial_sets():
    bench = {
        "gpqa_diamond": {
            "mean": 0.4,
            "metric": "pass@1",
            "num_problems": 198,
            "settings": {"temperature": 0.6, "top_p": 0.95, "max_tokens": 8192, "seed": 0, "n": 1},
        }
    }
    md = render_markdown({"model": "m", "benchmarks": bench})
    assert "| **m (ours)** | — | 40.0 | — | 40.0 (1/3 sets) |" in md
    assert "2604.23747" not in md  # reference rows only with compare_paper
    assert "| gpqa_diamond | pass@1 | 198 | 40.0 |\n" in md  # no pass@k stored: no pass@k columns
