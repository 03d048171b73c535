"""scripts/cpu_demo.py: it trains Prefix-RFT from the benchmark's base model with the benchmark's settings and
overrides, reports held-out accuracy before -> after with paired noise, never deletes a previous run unless
asked, and its table has a legend. The trainer itself is faked here (tests/test_e2e_cpu.py runs it)."""

from __future__ import annotations

import copy
import importlib.util
import json
import sys
from pathlib import Path

import pytest

from benchmarks import learning as L
from benchmarks.launch import RunResult, summary_header

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def cpu_demo():
    spec = importlib.util.spec_from_file_location("cpu_demo_script", ROOT / "scripts" / "cpu_demo.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclass resolves its module
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop(spec.name, None)


def _acc(two: float, three: float) -> dict:
    return {"val-core/add2/acc/mean@4": two, "val-core/add3/acc/mean@4": three}


def _dump(path: Path, scores: dict[str, list[float]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [
        json.dumps({"input": "user\nsomething else\nassistant\n", "score": 1.0})
    ]  # not a problem: ignored
    for q, ss in scores.items():
        lines += [json.dumps({"input": f"user\nCompute {q}.\nassistant\n", "score": s}) for s in ss]
    path.write_text("\n".join(lines) + "\n")


def test_previous_output_is_refused_unless_overwrite(cpu_demo, tmp_path, capsys):
    out = tmp_path / "demo"
    out.mkdir()
    (out / "train.log").write_text("previous")
    assert cpu_demo.main(["--out", str(out)]) == 2
    assert f"{out} holds a previous run (train.log). Pass --overwrite" in capsys.readouterr().err
    assert (out / "train.log").read_text() == "previous"
    assert cpu_demo.prepare_out_dir(out, overwrite=True) is None and not out.exists()
    (tmp_path / "empty").mkdir()
    assert cpu_demo.prepare_out_dir(tmp_path / "empty", overwrite=False) is None
    assert cpu_demo.prepare_out_dir(tmp_path / "fresh", overwrite=False) is None
    with pytest.raises(SystemExit) as e:  # no checkpoint is written any more, so nothing to resume
        cpu_demo.parse_args(["--keep"])
    assert e.value.code == 2


def test_rl_lr_is_the_sweeps_choice_or_the_documented_fallback(cpu_demo):
    before = copy.deepcopy(L.SETTINGS)
    s, note = cpu_demo.demo_settings(16, None)
    assert cpu_demo.DEMO_RL_LR == 3e-5 and s["rl_lr"] == 3e-5
    assert "DEMO_RL_LR" in note and "sweep has not finished" in note
    assert (s["steps"], s["test_freq"], s["eval_rows_per_level"]) == (16, 16, 64)
    assert (s["batch_size"], s["rollout_n"], s["val_n"], s["val_seed"]) == (8, 8, 4, 0)  # the benchmark's
    tuned = {**L.SETTINGS, "rl_lr": 1e-4, "sft_lr": 3e-4}
    s, note = cpu_demo.demo_settings(12, tuned)
    assert s["rl_lr"] == 1e-4 and note.startswith("RL learning rate 0.0001, chosen by the benchmark's sweep")
    assert (s["steps"], s["test_freq"]) == (12, 12)
    assert L.SETTINGS == before and tuned["steps"] == L.SETTINGS["steps"]  # neither is modified


def test_overrides_are_the_benchmarks_prefix_rft_run_validated_before_and_after(cpu_demo, tmp_path):
    defaults = cpu_demo.parse_args([])
    assert (defaults.steps, defaults.num_prefixed, defaults.seed, defaults.overrides) == (16, 1, 0, [])
    args = cpu_demo.parse_args(
        ["--steps", "12", "--num-prefixed", "0", "--seed", "3", "--", "prefix_rft.entropy_clip.top_ratio=0.5"]
    )
    settings, _ = cpu_demo.demo_settings(args.steps, None)
    data = L.BenchData(model="/m", train="/t.parquet", val="/v.parquet", sft="/s.parquet")
    ov = cpu_demo.demo_overrides(settings, data, tmp_path, args)
    for expected in [
        "+preset=prefix_rft",
        "actor_rollout_ref.model.path=/m",
        "data.val_files=/v.parquet",
        "data.train_batch_size=8",
        "actor_rollout_ref.rollout.n=8",
        "actor_rollout_ref.actor.optim.lr=3e-05",
        "trainer.total_training_steps=12",
        "trainer.test_freq=12",
        "prefix_rft.ratio.decay_steps=12",
        "trainer.val_before_train=True",
        "prefix_rft.val_seed=0",
        "actor_rollout_ref.rollout.val_kwargs.n=4",
        "actor_rollout_ref.rollout.val_kwargs.temperature=0.6",
        "prefix_rft.seed=3",
        "trainer.save_freq=-1",
        f"trainer.validation_data_dir={tmp_path / 'val_generations'}",
    ]:
        assert expected in ov, expected
    # later overrides win in hydra: the demo's names, then --num-prefixed, then the user's, last
    assert ov.index("trainer.experiment_name=cpu_demo") > ov.index("+preset=prefix_rft")
    assert ov[-2:] == ["prefix_rft.num_prefixed=0", "prefix_rft.entropy_clip.top_ratio=0.5"]
    with pytest.raises(SystemExit):
        cpu_demo.parse_args(["--steps", "0"])


def test_before_after_reads_step_0_and_the_last_validation(cpu_demo):
    metrics = {0: _acc(0.2, 0.03), 1: {"timing_s/step": 3.0}, 8: _acc(0.25, 0.04), 16: _acc(0.33, 0.05)}
    last, changes = cpu_demo.before_after(metrics, (2, 3), 4)
    assert last == 16
    assert (changes["2"].before, changes["2"].after, changes["3"].before, changes["3"].after) == (
        0.2,
        0.33,
        0.03,
        0.05,
    )
    assert changes["2"].delta == pytest.approx(0.13) and changes["2"].noise is None
    assert cpu_demo.before_after({16: _acc(0.3, 0.1)}, (2, 3), 4) is None  # no validation before training
    assert cpu_demo.before_after({0: _acc(0.3, 0.1)}, (2, 3), 4) is None  # none after


def test_noise_is_two_standard_errors_of_the_per_problem_change(cpu_demo, tmp_path):
    val = tmp_path / "val_generations"
    # 2-digit per-problem avg@4 before [0, .25, .5, 0], after [.5, .25, 1, .25]: changes [.5, 0, .5, .25],
    # sample std 0.2394, 2 s.e. = 2 * 0.2394 / sqrt(4); 3-digit: both problems +.25, no spread
    _dump(
        val / "0.jsonl",
        {"12+34": [0, 0, 0, 0], "56+78": [1, 0, 0, 0], "11+22": [1, 1, 0, 0], "99+99": [0, 0, 0, 0],
         "123+456": [0, 0, 0, 0], "321+654": [1, 0, 0, 0]},
    )  # fmt: skip
    _dump(
        val / "16.jsonl",
        {"12+34": [1, 1, 0, 0], "56+78": [0, 0, 1, 0], "11+22": [1, 1, 1, 1], "99+99": [0, 1, 0, 0],
         "123+456": [1, 0, 0, 0], "321+654": [1, 1, 0, 0]},
    )  # fmt: skip
    noise = cpu_demo.paired_noise(val, 16, (2, 3))
    assert noise["2"] == pytest.approx(0.239357, abs=1e-6)
    assert noise["3"] == 0.0
    assert cpu_demo.paired_noise(val, 8, (2, 3)) == {}  # no dump of that step


def test_legend_covers_every_column_and_says_what_the_run_shows(cpu_demo):
    header = summary_header()
    changes = {"2": cpu_demo.Change(0.203, 0.332, 0.058), "3": cpu_demo.Change(0.035, 0.047, 0.030)}
    legend, shows = cpu_demo.legend_lines(header, 1, 8, changes, 16)
    assert all(f"{title} = " in legend for title in header)
    assert shows.startswith(
        "what this run shows: Prefix-RFT from the pretrained base model: 1 of 8 rollouts per prompt start from a "
        "demo prefix"
    )
    assert (
        "After 16 steps, held-out accuracy: 2-digit rose beyond sampling noise, +12.9 points; "
        "3-digit moved within sampling noise, +1.2 points." in shows
    )
    assert "noise (" not in shows and "scores are noise" not in shows
    fell = {"2": cpu_demo.Change(0.5, 0.3, 0.05)}
    rft = cpu_demo.legend_lines(header, 0, 8, fell, 4)[1]
    assert "plain RFT from the pretrained base model (8 on-policy rollouts" in rft
    assert "2-digit fell beyond sampling noise, -20.0 points" in rft
    assert "validation missing" in cpu_demo.legend_lines(header, 1, 8, None, 4)[1]
    lines = cpu_demo.accuracy_lines(changes, 64, 4, 0.6)
    assert "64 problems per level" in lines[0] and "avg@4 at temperature 0.6" in lines[0]
    assert lines[1:] == [
        "  2-digit: 20.3% → 33.2%  (+12.9 ± 5.8 points)",
        "  3-digit: 3.5% → 4.7%  (+1.2 ± 3.0 points)",
    ]


def _fake_run(tmp_path, calls, returncode=0):
    def run_recipe(overrides, *, workdir, env, on_step, timeout_s, stream, tag):
        calls["overrides"], calls["env"] = list(overrides), env
        workdir = Path(workdir)
        zero, half = [0, 0, 0, 0], [1, 1, 0, 0]
        before = {"12+34": zero, "56+78": zero, "123+456": zero, "321+654": zero}
        _dump(workdir / "val_generations" / "0.jsonl", before)
        _dump(workdir / "val_generations" / "2.jsonl", {**before, "12+34": half, "56+78": half})
        metrics = {0: _acc(0.0, 0.0)}
        for step in (1, 2):
            metrics[step] = {"timing_s/step": 3.0, "critic/score/mean": 0.5, "prefix_rft/ratio_low": 0.5}
            on_step(step, metrics[step])
        metrics[2].update(_acc(0.5, 0.0))
        log = workdir / "train.log"
        log.write_text("trainer output\nTraceback: boom\n")
        return RunResult(returncode, metrics if returncode == 0 else {}, str(log), 1.0)

    return run_recipe


def test_main_trains_from_the_base_model_and_prints_before_and_after(cpu_demo, tmp_path, monkeypatch, capsys):
    calls: dict = {}
    built: dict = {}

    def build_data(out, settings, model, split, levels):
        built.update(out=out, model=model, split=split, levels=levels, rows=settings["eval_rows_per_level"])
        return L.BenchData(model=model, train="/t", val="/v", sft="/s")

    monkeypatch.setattr(cpu_demo, "build_base_model", lambda root, log: f"{root}/model")
    monkeypatch.setattr(cpu_demo.L, "tuned_settings", lambda: None)
    monkeypatch.setattr(cpu_demo.L, "build_data", build_data)
    monkeypatch.setattr(cpu_demo, "run_recipe", _fake_run(tmp_path, calls))
    out = tmp_path / "demo"
    assert cpu_demo.main(["--out", str(out), "--steps", "2"]) == 0
    printed = capsys.readouterr().out
    assert built == {
        "out": out,
        "model": f"{cpu_demo.BASE_MODEL_ROOT}/model",
        "split": "test",
        "levels": [2, 3],
        "rows": 64,
    }
    assert f"actor_rollout_ref.model.path={cpu_demo.BASE_MODEL_ROOT}/model" in calls["overrides"]
    assert calls["env"]["RAY_worker_niceness"] == "0"  # the benchmark's run environment
    assert "RL learning rate 3e-05 (DEMO_RL_LR)" in printed
    assert "  2-digit: 0.0% → 50.0%  (+50.0 ± 0.0 points)" in printed
    assert "  3-digit: 0.0% → 0.0%  (+0.0 ± 0.0 points)" in printed
    table = [line.split() for line in printed.splitlines() if line.strip().startswith(("1 ", "2 "))]
    assert [row[0] for row in table] == ["1", "2"] and all(row[-2:] == ["0.500", "3.000"] for row in table)
    assert "After 2 steps, held-out accuracy: 2-digit rose beyond sampling noise, +50.0 points" in printed


def test_main_reports_a_failed_run_with_its_log(cpu_demo, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(cpu_demo, "build_base_model", lambda root, log: "/m")
    monkeypatch.setattr(cpu_demo.L, "tuned_settings", lambda: None)
    monkeypatch.setattr(cpu_demo.L, "build_data", lambda *a, **k: L.BenchData("/m", "/t", "/v", "/s"))
    monkeypatch.setattr(cpu_demo, "run_recipe", _fake_run(tmp_path, {}, returncode=3))
    assert cpu_demo.main(["--out", str(tmp_path / "demo"), "--steps", "2"]) == 3
    err = capsys.readouterr().err
    assert "Traceback: boom" in err and "[cpu_demo] FAILED (exit 3)" in err
