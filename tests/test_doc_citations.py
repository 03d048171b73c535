"""The project's code and docs cite verl by module and function, never by line number, and refer to no
document outside this repository (line numbers rot with every verl release; outside documents are not
shipped)."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCANNED = (
    "prefix_rft",
    "recipe",
    "scripts",
    "docs",
    "tests",
    "tests_vllm",
    "benchmarks",
    "README.md",
    "Makefile",
    "pyproject.toml",
)
SUFFIXES = {".py", ".md", ".sh", ".yaml", ".yml", ".txt", ".toml", ""}

LINE_CITATION = re.compile(
    r"\bl\.\s?\d+"  # ``model.py`` l.149
    r"|\.(?:py|yaml|sh)`{0,2}[:#]L?\d+"  # distributed.py:89, model.py#L12
    r"|\.(?:py|yaml|sh)`{0,2},?\s+lines?\s+\d+"  # model.py line 12
    r"|``:\d+``"  # ``:63``
)
OUTSIDE_DOC = re.compile(r"\b(?:VERL|PAPER|ARCHITECTURE)\.md\b|\.\./shared\b|/work/shared\b")


def scanned_files() -> list[Path]:
    out = []
    for name in SCANNED:
        p = ROOT / name
        files = [p] if p.is_file() else sorted(f for f in p.rglob("*") if f.is_file())
        out += [f for f in files if f.suffix in SUFFIXES and "__pycache__" not in f.parts]
    return [f for f in out if f.resolve() != Path(__file__).resolve()]


def offending_lines(pattern: re.Pattern, files: list[Path]) -> list[str]:
    hits = []
    for f in files:
        for i, line in enumerate(f.read_text(errors="replace").splitlines(), 1):
            if pattern.search(line):
                hits.append(f"{f.relative_to(ROOT)}:{i}: {line.strip()}")
    return hits


def test_the_patterns_catch_what_they_must_and_nothing_else():
    for bad in (
        "(``verl/workers/config/model.py`` l.149)",
        "verl/__init__.py l. 55-76",
        "``verl/utils/distributed.py:89``",
        "model.py#L185",
        "`ray_trainer.py` lines 249-279",
        "and ``:63``: verl builds",
    ):
        assert LINE_CITATION.search(bad), bad
    for good in (
        "(``verl.workers.config.model.HFModelConfig.__post_init__``)",
        "f'{path} line {lineno}: bad JSON'",
        "train.jsonl line 3: not JSON",
        "val_kwargs.n=1",
    ):
        assert not LINE_CITATION.search(good), good
    for bad in ("see VERL.md", "(ARCHITECTURE.md metrics contract)", "../shared/PAPER.md"):
        assert OUTSIDE_DOC.search(bad), bad
    assert not OUTSIDE_DOC.search("recipe/prefix_rft/README.md and docs/CPU.md")


def test_scan_covers_the_project():
    names = {str(f.relative_to(ROOT)) for f in scanned_files()}
    assert {"prefix_rft/trainer.py", "docs/CPU.md", "README.md", "recipe/prefix_rft/README.md"} <= names
    assert "tests/test_doc_citations.py" not in names


def test_no_verl_citation_by_line_number():
    hits = offending_lines(LINE_CITATION, scanned_files())
    assert not hits, "cite verl by module and function (e.g. ``verl.x.y.Class.method``), not by line:\n" + (
        "\n".join(hits)
    )


def test_no_reference_to_documents_outside_the_repository():
    hits = offending_lines(OUTSIDE_DOC, scanned_files())
    assert not hits, "the repo's docs must be self-contained; drop or inline these references:\n" + (
        "\n".join(hits)
    )
