"""Packaging against the installed verl: the GPU extras are complete stacks, REQUIRED_VERL.txt is what
verl-recipe's ``install_verl.sh`` reads.

Both read verl's own metadata (``importlib.metadata``), so a verl upgrade that moves flash-attn or the rollout
engines to other extras fails here, not at model load on a GPU node.
"""

from __future__ import annotations

import re
import shlex
from importlib.metadata import requires, version
from pathlib import Path

import pytest
import tomllib
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
REQUIRED_VERL = ROOT / "recipe" / "prefix_rft" / "REQUIRED_VERL.txt"

ATTENTION_KERNELS = {"flash-attn"}
ROLLOUT_ENGINES = {"vllm", "sglang"}
#: our extra -> what it must pull in besides the kernel (training engine, rollout engine)
GPU_EXTRAS = {
    "vllm": {"vllm"},
    "sglang": {"sglang"},
    "megatron": {"megatron-core", "vllm"},
}


def verl_extra_closure(extras: set[str]) -> set[str]:
    """Canonical names of every distribution that ``verl[extras]`` requires, following verl's extras that
    require ``verl[...]`` again (e.g. ``fsdp`` -> ``verl[flash-attn-cu130torch211]``)."""
    reqs = [Requirement(r) for r in requires("verl") or []]
    todo, seen, names = list(extras), set(), set()
    while todo:
        extra = todo.pop()
        if extra in seen:
            continue
        seen.add(extra)
        for req in reqs:
            if req.marker is None or not req.marker.evaluate({"extra": extra}):
                continue
            if canonicalize_name(req.name) == "verl":
                todo.extend(req.extras)
            else:
                names.add(canonicalize_name(req.name))
    return names


def extra_closure(extra: str) -> set[str]:
    """Every distribution our ``prefix-rft[extra]`` pulls in (through verl's metadata)."""
    names = set()
    for line in PYPROJECT["project"]["optional-dependencies"][extra]:
        req = Requirement(line)
        if canonicalize_name(req.name) == "verl":
            assert req.specifier.contains(version("verl")), f"{extra}: {line} does not pin the installed verl"
            names |= verl_extra_closure(set(req.extras))
        else:
            names.add(canonicalize_name(req.name))
    return names


def test_verl_metadata_is_what_this_test_expects():
    """Guard: the closure really follows verl's nested extras (else the checks below would pass vacuously)."""
    assert "flash-attn" in verl_extra_closure({"fsdp"})
    assert "flash-attn" not in verl_extra_closure({"vllm"})
    assert {"vllm", "sglang"}.isdisjoint(verl_extra_closure({"megatron"}))
    assert verl_extra_closure({"no-such-extra"}) == set()


@pytest.mark.parametrize("extra", sorted(GPU_EXTRAS))
def test_every_gpu_extra_has_an_attention_kernel_and_a_rollout_engine(extra):
    names = extra_closure(extra)
    assert names & ATTENTION_KERNELS, (
        f"prefix-rft[{extra}] installs no attention kernel ({sorted(ATTENTION_KERNELS)}): the actor defaults to "
        "attn_implementation=flash_attention_2 and fails at model load; add verl's fsdp or megatron extra"
    )
    assert names & ROLLOUT_ENGINES, (
        f"prefix-rft[{extra}] installs no rollout engine ({sorted(ROLLOUT_ENGINES)}); add verl's vllm or "
        "sglang extra"
    )
    missing = GPU_EXTRAS[extra] - names
    assert not missing, f"prefix-rft[{extra}] lacks {sorted(missing)}"


def test_base_dependency_pins_the_installed_verl_with_the_v1_trainer_stack():
    (verl_line,) = [d for d in PYPROJECT["project"]["dependencies"] if d.startswith("verl")]
    req = Requirement(verl_line)
    assert req.specifier.contains(version("verl")) and "verl-core" in req.extras
    assert "transferqueue" in verl_extra_closure(set(req.extras))


def read_required_verl(path: Path) -> dict[str, str]:
    """``KEY=value`` fields as verl-recipe's ``install_verl.sh`` reads them: ``#`` lines skipped, the first
    line of a key wins, the value is everything after the first ``=``, trimmed."""
    fields: dict[str, str] = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, value = line.split("=", 1)
        fields.setdefault(key, value.strip())
    return fields


def test_required_verl_is_a_pinned_tag_of_the_installed_release():
    f = read_required_verl(REQUIRED_VERL)
    installed = version("verl")
    assert f["MODE"] == "pinned_tag", "install_verl.sh knows pinned_tag / pinned_commit / rolling / ..."
    assert f["TAG"] == f"v{installed}"
    assert f["UPSTREAM"].endswith("/verl.git") and f["RECIPE_FOLDER"] == "prefix_rft"
    if "COMMIT" in f:
        assert re.fullmatch(r"[0-9a-f]{40}", f["COMMIT"]), f"COMMIT={f['COMMIT']!r} is not a full SHA"
    assert f["GIT_SETUP"] == f"git clone --branch {f['TAG']} {f['UPSTREAM']} verl"


def test_required_verl_pip_install_installs_verl_only():
    cmd = read_required_verl(REQUIRED_VERL)["PIP_INSTALL"]
    words = shlex.split(cmd)
    assert words[:2] == ["pip", "install"], "install_verl.sh rewrites a leading `pip install` to its pip"
    assert not {"&&", ";", "|", "-e", "--editable", "."} & set(words), f"{cmd!r} must install verl only"
    reqs = [Requirement(w) for w in words[2:]]
    assert [canonicalize_name(r.name) for r in reqs] == ["verl"]
    assert str(reqs[0].specifier) == f"=={version('verl')}" and "verl-core" in reqs[0].extras


def test_required_verl_reader_matches_install_verl_semantics(tmp_path):
    p = tmp_path / "REQUIRED_VERL.txt"
    p.write_text(
        "# MODE=rolling\n  MODE = x\nMODE=pinned_tag  \nMODE=second\nPIP_INSTALL=pip install a==1 b=2\n"
    )
    f = read_required_verl(p)
    assert f["MODE "] == "x" and f["MODE"] == "pinned_tag" and f["PIP_INSTALL"] == "pip install a==1 b=2"
