"""scripts/cpu_demo.py's command line: it never deletes a previous run unless asked; its table has a legend."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def cpu_demo():
    spec = importlib.util.spec_from_file_location("cpu_demo_script", ROOT / "scripts" / "cpu_demo.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _previous_run(tmp_path):
    out = tmp_path / "demo"
    (out / "checkpoints" / "global_step_5").mkdir(parents=True)
    (out / "checkpoints" / "global_step_5" / "model.pt").write_text("weights")
    return out


def test_previous_output_is_refused_unless_asked(cpu_demo, tmp_path, capsys):
    out = _previous_run(tmp_path)
    assert cpu_demo.main(["--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"{out} holds a previous run (1 checkpoint(s)). Pass --overwrite" in err
    assert (out / "checkpoints" / "global_step_5" / "model.pt").read_text() == "weights"
    assert cpu_demo.prepare_out_dir(out, keep=True, overwrite=False) is None and out.exists()
    assert "contradict" in cpu_demo.prepare_out_dir(out, keep=True, overwrite=True)
    assert cpu_demo.prepare_out_dir(out, keep=False, overwrite=True) is None and not out.exists()
    assert cpu_demo.prepare_out_dir(tmp_path / "fresh", keep=False, overwrite=False) is None


def test_table_legend_covers_every_column_and_says_what_the_run_shows(cpu_demo):
    from prefix_rft.cpu.launch import summary_header

    header = summary_header()
    legend, shows = cpu_demo.legend_lines(header, num_prefixed=1, rollout_n=4)
    assert all(f"{title} = " in legend for title in header)
    assert shows.startswith("what this run shows: 1 of 4 rollouts per prompt start from a demo prefix")
    assert "plain RFT (4 on-policy rollouts" in cpu_demo.legend_lines(header, 0, 4)[1]
