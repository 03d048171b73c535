"""Named presets: the paper's baselines and ablations as hydra config-group entries.

Each preset is ``config/preset/<NAME>.yaml`` beside this file (``# @package _global_``), selected with
``+preset=NAME`` on the ``main_prefix_rft.py`` command line (or
``bash scripts/run_ablation_qwen7b.sh NAME``). Later command-line overrides win over the preset. The
launchers, the tests and the CPU benchmark all read these same files.

``python recipe/prefix_rft/presets.py`` lists them with their one-line descriptions. A plain file of the recipe
(standard library only), run or loaded by path: verl's wheel installs an unrelated top-level ``recipe`` package.
"""

from __future__ import annotations

import sys
from pathlib import Path

PRESET_DIR = Path(__file__).resolve().parent / "config" / "preset"


def list_presets() -> list[str]:
    """Names of every preset, sorted."""
    return sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))


def preset_path(name: str) -> Path:
    """Path of preset ``name``; an unknown name is an error listing the known ones."""
    path = PRESET_DIR / f"{name}.yaml"
    if not path.is_file():
        raise ValueError(f"unknown preset {name!r}; known presets: {', '.join(list_presets())}")
    return path


def preset_override(name: str) -> str:
    """The hydra override selecting preset ``name`` (checked to exist)."""
    preset_path(name)
    return f"+preset={name}"


def describe(name: str) -> str:
    """The preset's description: its comment lines after ``# @package _global_``, joined."""
    lines = preset_path(name).read_text().splitlines()
    text = [ln[1:].strip() for ln in lines[1:] if ln.startswith("#")]
    return " ".join(text)


def main(argv: list[str] | None = None) -> int:
    """``python recipe/prefix_rft/presets.py [NAME]``: list every preset, or check one name (exit 2 if unknown)."""
    args = sys.argv[1:] if argv is None else argv
    if args and args[0] not in ("--list", "-l"):
        try:
            preset_path(args[0])
        except ValueError as err:
            print(err, file=sys.stderr)
            return 2
        return 0
    width = max(len(n) for n in list_presets())
    for name in list_presets():
        print(f"{name:<{width}}  {describe(name)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
