"""prefix_rft.plot on a synthetic run logged through verl's own file logger (and tensorboard)."""

from __future__ import annotations

import math
import os

import pytest

from prefix_rft.plot import main, plot_run, read_jsonl, read_log, smooth


def _metrics(step: int, with_entropy: bool) -> dict:
    low = 0.05 + 0.5 * 0.9 * (1 + math.cos(math.pi * min(step, 50) / 50))
    m = {
        "prefix_rft/ratio_low": low,
        "prefix_rft/ratio_high": 0.95,
        "prefix_rft/ratio_mean": (low + 0.95) / 2,
        "prefix_rft/score_prefixed": 0.8 - 0.3 * step / 60,
        "prefix_rft/score_on_policy": 0.2 + 0.4 * step / 60,
        "prefix_rft/kept_frac": 0.2,
        "response_length/mean": 500.0 + 10 * step,
        "timing_s/step": 3.0,
    }
    if with_entropy:
        m["prefix_rft/entropy_prefix"] = 0.9
        m["prefix_rft/entropy_continuation"] = 0.5
    return m


@pytest.fixture
def verl_jsonl(tmp_path, monkeypatch):
    """60 steps written by verl 0.9.1's FileLogger (the ``file`` backend), with validation every 20 steps."""
    from verl.utils.tracking import FileLogger

    path = tmp_path / "run.jsonl"
    monkeypatch.setenv("VERL_FILE_LOGGER_PATH", str(path))
    logger = FileLogger("proj", "exp")
    for step in range(1, 61):
        logger.log(_metrics(step, with_entropy=False), step=step)
        if step % 20 == 0:
            logger.log({"val-core/aime24/acc/mean@32": step / 100}, step=step)
    logger.finish()
    return str(path)


def test_read_verl_file_logger(verl_jsonl):
    s = read_jsonl(verl_jsonl)
    assert s["prefix_rft/ratio_high"] == [(k, 0.95) for k in range(1, 61)]
    assert s["val-core/aime24/acc/mean@32"] == [(20, 0.2), (40, 0.4), (60, 0.6)]
    assert s["prefix_rft/ratio_low"][-1] == (60, pytest.approx(0.05))
    assert "prefix_rft/entropy_prefix" not in s


def test_plot_skips_missing_and_writes_pngs(verl_jsonl, tmp_path, capsys):
    import matplotlib.image as mpimg

    written = plot_run(verl_jsonl, str(tmp_path / "png"), smooth_k=5)
    names = sorted(os.path.basename(p) for p in written)
    assert names == [
        "kept_frac.png",
        "overview.png",
        "ratio_schedule.png",
        "response_length.png",
        "scores.png",
        "validation.png",
    ]
    out = capsys.readouterr().out
    assert "skipping entropy.png" in out and "prefix_rft/entropy_prefix" in out
    assert "without ['prefix_rft/prefix_token_frac']" in out
    img = mpimg.imread(os.path.join(tmp_path, "png", "scores.png"))
    assert img.shape[0] > 200 and img.shape[1] > 300


def test_cli(verl_jsonl, tmp_path, capsys):
    assert main([verl_jsonl, "--out", str(tmp_path / "o")]) == 0
    assert "wrote" in capsys.readouterr().out
    assert main([str(tmp_path / "nope.jsonl"), "--out", str(tmp_path / "o2")]) == 1
    empty = tmp_path / "empty.jsonl"
    empty.write_text('{"step": 1, "data": {"unrelated": 1.0}}\n')
    assert main([str(empty), "--out", str(tmp_path / "o3")]) == 1


def test_duplicate_steps_and_bad_lines(tmp_path, capsys):
    p = tmp_path / "r.jsonl"
    p.write_text(
        '{"step": 1, "data": {"a": 1.0}}\n{"step": 2, "data": {"a": 2.0}}\n'
        '{"step": 2, "data": {"a": 5.0, "s": "text", "l": [1, 3]}}\n{"step": 3, "da'
    )
    s = read_jsonl(str(p))
    assert s["a"] == [(1, 1.0), (2, 5.0)]  # a re-logged step keeps its last value
    assert s["l"] == [(2, 2.0)] and "s" not in s
    assert "not JSON" in capsys.readouterr().out


def test_tensorboard_dir(tmp_path):
    from torch.utils.tensorboard import SummaryWriter

    w = SummaryWriter(str(tmp_path / "tb"))
    for step in range(1, 11):
        for k, v in _metrics(step, with_entropy=True).items():
            w.add_scalar(k, v, step)
    w.close()
    s = read_log(str(tmp_path / "tb"))
    assert [x for x, _ in s["prefix_rft/entropy_prefix"]] == list(range(1, 11))
    assert s["response_length/mean"][0][1] == pytest.approx(510.0)
    written = plot_run(str(tmp_path / "tb"), str(tmp_path / "png"))
    assert any(p.endswith("entropy.png") for p in written)


def test_smooth():
    assert smooth([1, 2, 3, 4], 1) == [1, 2, 3, 4]
    assert smooth([1.0, 3.0, 5.0, 7.0], 2) == [1.0, 2.0, 4.0, 6.0]


@pytest.mark.parametrize("k", ["0", "-2"])
def test_cli_rejects_bad_smooth(verl_jsonl, tmp_path, capsys, k):
    with pytest.raises(SystemExit) as e:
        main([verl_jsonl, "--out", str(tmp_path / "o"), "--smooth", k])
    assert e.value.code == 2 and "--smooth must be a window of >= 1 steps" in capsys.readouterr().err


def test_guidance_panels_are_drawn_when_logged(tmp_path, monkeypatch):
    """A run with per-prompt guidance (prefix_rft.guidance.mode) gets its guidance and demo-token panels."""
    from verl.utils.tracking import FileLogger

    path = tmp_path / "guided.jsonl"
    monkeypatch.setenv("VERL_FILE_LOGGER_PATH", str(path))
    logger = FileLogger("proj", "exp")
    for step in range(1, 11):
        m = _metrics(step, with_entropy=False)
        m.update(
            {
                "prefix_rft/guided_frac": 1.0 - step / 20,
                "prefix_rft/prompt_ratio_mean": 0.5,
                "prefix_rft/prompt_ratio_p10": 0.0,
                "prefix_rft/prompt_ratio_p90": 0.8,
                "prefix_rft/demo_tokens_trained": 40.0 - step,
            }
        )
        logger.log(m, step=step)
    logger.finish()
    names = {os.path.basename(p) for p in plot_run(str(path), str(tmp_path / "png"), smooth_k=1)}
    assert {"guidance.png", "demo_tokens.png"} <= names
    assert read_jsonl(str(path))["prefix_rft/guided_frac"][-1] == (10, pytest.approx(0.5))
