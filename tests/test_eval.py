"""prefix_rft.eval end to end on CPU: injected and real (transformers) generation, resume, checkpoints."""

from __future__ import annotations

import json
import os

import pytest
import torch

from prefix_rft.data.contract import read_parquet_rows
from prefix_rft.data.eval_sets import prepare_eval
from prefix_rft.eval import (
    SamplingSettings,
    chat_prompts,
    evaluate,
    find_verl_actor,
    main,
    render_markdown,
    resolve_model,
)

EVAL_FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures", "eval")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny model directory and the eval sets prepared from the fixture copies of the public sets."""
    from prefix_rft.testing.tiny import build_tiny_model

    root = tmp_path_factory.mktemp("evalroot")
    model_dir = build_tiny_model(str(root / "model"))
    data_dir = str(root / "data")
    prepare_eval(
        data_dir, local_dir=EVAL_FIXTURES, benchmarks=["aime24", "math500", "minerva", "gpqa_diamond"]
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
    assert oracle.calls[3:] == [(2, 1)] and set(res["benchmarks"]) == {
        "aime24",
        "math500",
        "gpqa_diamond",
        "minerva",
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
    assert len(oracle.calls) == 4


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
