"""Export the recipe as a self-contained verl-recipe folder: ``python scripts/export_upstream.py [--out DIR]``.

Writes ``DIR/prefix_rft/`` (default ``outputs/upstream/prefix_rft/``), the shape of a folder of verl-recipe (the
repository that verl mounts as its ``recipe/`` submodule), so that from the folder holding ``recipe/``

    python -m recipe.prefix_rft.main_prefix_rft [hydra overrides]

runs Prefix-RFT with no ``prefix-rft`` package installed. The folder holds:

* the installed library's modules (``prefix_rft/``: ``core/``, config, the verl glue, reward, data, eval, ...)
  as ``recipe.prefix_rft.*``, except :data:`EXCLUDED` (empty: the CPU backend ``verl_cpu/``, the fixtures and
  the benchmark tools ``benchmarks/`` live outside the package, and a GPU run never imports them);
* this folder's own files (``recipe/prefix_rft/``: ``main_prefix_rft.py``, ``config/`` with the presets);
* the GPU launchers ``scripts/run_*qwen7b*.sh`` and the shared bodies they source, calling
  ``python -m recipe.prefix_rft.main_prefix_rft``;
* ``README.md`` in verl-recipe's shape, its yaml snippets and code lines read from the files at export time;
* ``REQUIRED_VERL.txt``: the pin of ``recipe/prefix_rft/REQUIRED_VERL.txt`` with notes for the exported form.

Module paths are rewritten from ``prefix_rft.X`` to ``recipe.prefix_rft.X`` (imports, ``external_lib``,
``pkg://`` paths, ``python -m`` lines, docstrings); config keys such as ``prefix_rft.advantage.mode`` are
left as they are (they are told apart by the ``prefix_rft:`` block of the recipe yaml). Anything the export
cannot place (a reference to a module it leaves out, a launcher line it no longer recognises) stops it with
an error naming the file and line: nothing is written half-right. :func:`check_export` re-reads a written
folder and lists every module path that does not resolve inside it (tests/test_upstream_export.py).
"""

from __future__ import annotations

import argparse
import ast
import re
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
LIBRARY = ROOT / "prefix_rft"
RECIPE = ROOT / "recipe" / "prefix_rft"
SCRIPTS = ROOT / "scripts"
LAUNCHER_GLOB = "run_*qwen7b*.sh"
PACKAGE = "recipe.prefix_rft"
EXCLUDED: tuple[str, ...] = ()
"""Entries of ``prefix_rft/`` that are not exported (a missing one is fine). Empty: the package is the library
alone (the CPU backend, fixtures and benchmark tools live outside it, in ``verl_cpu/`` and ``benchmarks/``)."""
TEXT_SUFFIXES = {".py", ".yaml", ".yml", ".sh", ".txt", ".md", ".json", ".toml", ".cfg"}
FILE_SUFFIXES = {"py", "yaml", "yml", "sh", "md", "txt", "json", "jsonl", "parquet", "png"}
"""``prefix_rft.<suffix>`` is a file name (``preset/prefix_rft.yaml``), not a module path."""

MODULE_CHAIN = re.compile(r"(?<![\w.])prefix_rft((?:\.\w+)+)")
IMPORT_LINE = re.compile(r"^(\s*(?:from|import)\s+)prefix_rft(?=[.\s])", re.M)
EXPORTED_CHAIN = re.compile(re.escape(PACKAGE) + r"((?:\.\w+)+)")
SCRIPT_PATH = re.compile(r"(?<![\w/$.])scripts/(?=(?:run_|_)[\w*]*\.sh)")
SOURCED = re.compile(r"^\s*source\s+[^\n]*?/(_\w+\.sh)\"?\s*$", re.M)

# Launcher lines that name the repository layout, per exported file: (pattern, replacement). Each must match
# exactly once in its file, so a changed launcher stops the export instead of leaving a repository path in it.
LAUNCHER_EDITS: dict[str, list[tuple[str, str]]] = {
    "_prefix_rft_common.sh": [
        (
            r'^PREFIX_RFT_ROOT=\$\(cd "\$\(dirname "\$\{BASH_SOURCE\[0\]\}"\)/\.\." && pwd\)$',
            "# the folder holding recipe/ (the verl-recipe checkout)\n"
            'RECIPE_PARENT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)',
        ),
        (
            r'^if \[\[ -z "\$\{PYTHON:-\}" \]\]; then\n.*\.venv/bin/python.*\nfi$',
            "PYTHON=${PYTHON:-python3}",
        ),
        (
            r"^(#   PYTHON +)interpreter \(default: the repository's[^\n]*\n#[^\n]*$",
            r"\1interpreter (default: python3)",
        ),
        (
            r'^(\s*)"\$PYTHON" "\$PREFIX_RFT_ROOT/recipe/prefix_rft/main_prefix_rft\.py" \\$',
            r'\1PYTHONPATH="$RECIPE_PARENT${PYTHONPATH:+:$PYTHONPATH}" "$PYTHON" -m '
            + PACKAGE
            + r".main_prefix_rft \\",
        ),
    ],
    "run_ablation_qwen7b.sh": [
        (
            r'^ROOT=\$\(cd "\$\(dirname "\$\{BASH_SOURCE\[0\]\}"\)/\.\." && pwd\)$',
            'ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)  # the folder holding recipe/',
        ),
        (r'"\$ROOT/scripts/(_\w+\.sh)"', r'"$ROOT/recipe/prefix_rft/\1"'),
    ],
}
LEFTOVERS = ("PREFIX_RFT_ROOT", ".venv", "scripts/")
"""Text that must not survive in an exported launcher (each names the repository's layout)."""


class ExportError(Exception):
    """The export cannot be written correctly; the message names the file, the line and the fix."""


@dataclass(frozen=True)
class Names:
    """What a ``prefix_rft.X`` reference can be: an exported module, a left-out one, or a config key."""

    modules: frozenset[str]
    left_out: frozenset[str]
    config: dict

    def kind(self, parts: list[str]) -> str:
        """``module`` | ``config`` | ``file`` | ``left_out`` | ``unknown`` for ``prefix_rft.<parts...>``."""
        head = parts[0]
        if len(parts) == 1 and head in FILE_SUFFIXES:
            return "file"
        if head in self.config:
            section = self.config[head]
            keys = section if isinstance(section, dict) else {}
            # `prefix_rft.advantage` is a module and a config section: a key of the section decides
            if head not in self.modules or len(parts) == 1 or parts[1] in keys:
                return "config"
        if head in self.modules:
            return "module"
        return "left_out" if head in self.left_out else "unknown"


def _names() -> Names:
    cfg = yaml.safe_load((RECIPE / "config" / "prefix_rft_trainer.yaml").read_text())["prefix_rft"]
    modules = {p.stem for p in _library_entries()} | {p.stem for p in RECIPE.glob("*.py")}
    left_out = {Path(e).stem for e in EXCLUDED} - modules
    return Names(frozenset(modules), frozenset(left_out), cfg)


def _library_entries() -> list[Path]:
    """Top-level entries of ``prefix_rft/`` that are exported."""
    return sorted(
        p
        for p in LIBRARY.iterdir()
        if p.name not in EXCLUDED and p.name != "__pycache__" and not p.name.startswith(".")
    )


def _line(text: str, pos: int) -> int:
    return text.count("\n", 0, pos) + 1


def rewrite(text: str, where: str, names: Names, problems: list[str]) -> str:
    """``text`` with module paths ``prefix_rft.X`` as ``recipe.prefix_rft.X``; what cannot be placed goes to
    ``problems`` (``where`` line N: reason)."""

    def replace(m: re.Match) -> str:
        parts = m.group(1)[1:].split(".")
        kind = names.kind(parts)
        if kind == "module":
            return PACKAGE + m.group(1)
        if kind in ("left_out", "unknown"):
            problems.append(f"{where} line {_line(text, m.start())}: mentions {m.group(0)}, {_why(parts)}")
        return m.group(0)

    text = MODULE_CHAIN.sub(replace, text)
    if where.endswith(
        ".py"
    ):  # `import prefix_rft.advantage` (also a config section) and `from prefix_rft import x`
        text = IMPORT_LINE.sub(lambda m: m.group(1) + PACKAGE, text)
    return text


def _why(parts: list[str]) -> str:
    if parts[0] in {Path(e).stem for e in EXCLUDED}:
        return f"which the export leaves out (EXCLUDED in {Path(__file__).name}): drop the reference from the file"
    return "which is neither an exported module nor a key of the recipe yaml's prefix_rft: block"


def _edit_launcher(name: str, text: str, problems: list[str]) -> str:
    for pattern, replacement in LAUNCHER_EDITS.get(name, []):
        text, count = re.subn(pattern, replacement, text, flags=re.M)
        if count != 1:
            problems.append(
                f"scripts/{name}: expected one line matching {pattern!r}, found {count}: the launcher changed; "
                f"update LAUNCHER_EDITS in {Path(__file__).name}"
            )
    text = SCRIPT_PATH.sub("recipe/prefix_rft/", text)
    for leftover in LEFTOVERS:
        for m in re.finditer(re.escape(leftover), text):
            problems.append(
                f"scripts/{name} line {_line(text, m.start())}: still mentions {leftover!r} after the export's edits; "
                f"update LAUNCHER_EDITS in {Path(__file__).name}"
            )
    return text


def _launchers(names: Names, problems: list[str]) -> tuple[dict[str, str], list[str]]:
    """Exported launcher name -> text, and the launchers left out (with why)."""
    out, skipped = {}, []
    for path in sorted(SCRIPTS.glob(LAUNCHER_GLOB)):
        text = path.read_text()
        missing = sorted(
            {
                "prefix_rft/" + m.group(1)[1:].split(".")[0]
                for m in MODULE_CHAIN.finditer(text)
                if names.kind(m.group(1)[1:].split(".")) == "left_out"
            }
        )
        if missing:  # a launcher that runs a module EXCLUDED from the export cannot come along
            skipped.append(f"`{path.name}`: it runs {', '.join(missing)}, which this export leaves out")
            continue
        out[path.name] = text
        for helper in SOURCED.findall(text):
            out.setdefault(helper, (SCRIPTS / helper).read_text())
    for name in LAUNCHER_EDITS:
        if name not in out and (SCRIPTS / name).is_file() and not any(f"`{name}`" in s for s in skipped):
            problems.append(f"scripts/{name} has LAUNCHER_EDITS but no exported launcher sources it")
    edited = {}
    for name, text in out.items():
        text = rewrite(text, f"scripts/{name}", names, problems)
        edited[name] = _edit_launcher(name, text, problems)
    return edited, skipped


def _required_verl() -> tuple[str, dict[str, str]]:
    """The exported REQUIRED_VERL.txt (the repository's pin, notes for the exported folder) and its fields."""
    fields: dict[str, str] = {}
    comments = []
    for line in (RECIPE / "REQUIRED_VERL.txt").read_text().splitlines():
        if line.startswith("#"):
            comments.append(line)
        elif "=" in line:
            key, value = line.split("=", 1)
            fields[key.strip()] = value.strip()
    fields["RECIPE_FOLDER"] = "prefix_rft"
    fields["NOTES"] = (
        "Self-contained: no verl source is modified and no other package is needed beyond verl[verl-core] and "
        "the few listed in README.md. Run from the folder holding recipe/: python -m "
        f"{PACKAGE}.main_prefix_rft. Plugs in through verl's registries and hooks only: register_adv_est "
        "(prefix_rft estimator), the agent-loop registry (prefix_rft_agent), set_loss_fn (actor loss), "
        f"actor_rollout_ref.model.external_lib ({PACKAGE}.plugin), and a PPOTrainerSync subclass "
        f"({PACKAGE}.trainer.PrefixRFTTrainer) launched by its own Ray task runner through verl's run_ppo."
    )
    body = "\n".join(comments + [f"{k}={v}" for k, v in fields.items()]) + "\n"
    return body, fields


def export(out: Path) -> Path:
    """Write ``out/prefix_rft/`` (replacing a previous export there) and return its path."""
    names = _names()
    problems: list[str] = []
    clash = sorted({p.stem for p in _library_entries()} & {p.stem for p in RECIPE.glob("*.py")})
    if clash:
        raise ExportError(f"prefix_rft/ and recipe/prefix_rft/ both define {clash}: one name, one file")
    files: dict[Path, str | Path] = {}  # relative path -> text (rewritten) or source path (copied as is)
    for entry in _library_entries():
        sources = [entry] if entry.is_file() else sorted(entry.rglob("*"))
        for src in sources:
            if not src.is_file() or "__pycache__" in src.parts:
                continue
            files[src.relative_to(LIBRARY)] = src
    for src in sorted(RECIPE.rglob("*")):
        if (
            src.is_file()
            and "__pycache__" not in src.parts
            and src.name not in ("README.md", "REQUIRED_VERL.txt")
        ):
            files[src.relative_to(RECIPE)] = src
    for rel, src in list(files.items()):
        if src.suffix in TEXT_SUFFIXES:
            files[rel] = rewrite(src.read_text(), str(src.relative_to(ROOT)), names, problems)
    launchers, skipped = _launchers(names, problems)
    files.update({Path(name): text for name, text in launchers.items()})
    required, pin = _required_verl()
    files[Path("REQUIRED_VERL.txt")] = required
    try:
        files[Path("README.md")] = readme(names, sorted(launchers), skipped, pin)
    except ExportError as err:
        problems.append(str(err))
    if problems:
        raise ExportError("the export would be wrong:\n  " + "\n  ".join(problems))

    target = out / "prefix_rft"
    if target.exists() and not (target / "main_prefix_rft.py").is_file():
        raise ExportError(f"{target} exists and is not a previous export: choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".prefix_rft-", dir=out))
    try:
        for rel, content in files.items():
            dest = staging / rel
            dest.parent.mkdir(parents=True, exist_ok=True)
            if isinstance(content, Path):
                shutil.copy2(content, dest)
            else:
                dest.write_text(content)
                if dest.suffix == ".sh":
                    dest.chmod(0o755)
        leftovers = check_export(staging)
        if leftovers:
            raise ExportError("the written folder does not stand alone:\n  " + "\n  ".join(leftovers))
    except BaseException:
        shutil.rmtree(staging)
        raise
    if target.exists():
        shutil.rmtree(target)
    staging.rename(target)
    for line in skipped:
        print(f"note: launcher left out: {line.replace('`', '')}", file=sys.stderr)
    return target


def check_export(folder: Path) -> list[str]:
    """Problems of an exported folder: a module path ``prefix_rft.X`` left unrewritten, an import of a module
    outside the export, or a ``recipe.prefix_rft.X`` (import, yaml value, ``python -m`` line) with no file."""
    folder = Path(folder)
    present = {p.stem for p in folder.iterdir() if p.suffix == ".py" or (p.is_dir() and p.name != "config")}
    left_out = {Path(e).stem for e in EXCLUDED} - present
    names = Names(frozenset(present), frozenset(left_out), _names().config)
    problems = []
    for path in sorted(folder.rglob("*")):
        if not path.is_file() or path.suffix not in TEXT_SUFFIXES:
            continue
        rel, text = path.relative_to(folder), path.read_text()
        if path.suffix == ".py":
            for node in ast.walk(ast.parse(text, str(rel))):
                mods = (
                    [a.name for a in node.names]
                    if isinstance(node, ast.Import)
                    else [node.module or ""]
                    if isinstance(node, ast.ImportFrom) and node.level == 0
                    else []
                )
                for mod in mods:
                    if mod == "prefix_rft" or mod.startswith("prefix_rft."):
                        problems.append(f"{rel} line {node.lineno}: imports {mod} (the repository's package)")
        for m in MODULE_CHAIN.finditer(text):
            if names.kind(m.group(1)[1:].split(".")) in ("module", "left_out"):
                problems.append(
                    f"{rel} line {_line(text, m.start())}: {m.group(0)} is not rewritten to {PACKAGE}"
                )
        for m in EXPORTED_CHAIN.finditer(text):
            head = m.group(1)[1:].split(".")[0]
            if not ((folder / f"{head}.py").is_file() or (folder / head / "__init__.py").is_file()):
                problems.append(
                    f"{rel} line {_line(text, m.start())}: {m.group(0)} has no module in the export"
                )
    return problems


# ----------------------------------------------------------------------------------------------- README


@dataclass(frozen=True)
class Idea:
    """One idea of the paper: its README section, the yaml keys that set it, the code lines that do it."""

    title: str
    what: str
    keys: tuple[str, ...]
    code: tuple[tuple[str, str], ...]  # (file under prefix_rft/, function name | "name = call(" assignment)


IDEAS = (
    Idea(
        "Prefix sampling with the cosine schedule",
        "For every prompt, `num_prefixed` of the `rollout.n` rollouts start from a prefix of a demonstration "
        "and the policy writes the rest. The prefix ratio is drawn from `U[low_t, high]`, where `low_t` falls "
        "from `low_start` to `low_end` on a cosine over `decay_steps` (a pure function of the global step, so "
        "resume-safe). The prefix is cut at a token boundary of the tokenized demonstration and spliced in "
        "token space by the `prefix_rft_agent` agent loop.",
        ("prefix_rft.num_prefixed", "prefix_rft.demo_key", "prefix_rft.ratio", "actor_rollout_ref.rollout.n"),
        (
            ("core/schedule.py", "ratio_lower_bound"),
            ("core/schedule.py", "sample_prefix_ratio"),
            ("core/splice.py", "splice_prefix"),
        ),
    ),
    Idea(
        "Dr.GRPO advantage shared by the whole group",
        "Hybrid and on-policy rollouts of a prompt form one group and share one baseline: `A_i = r_i - mean(r)`, "
        "no division by the standard deviation. The estimator is registered as `prefix_rft` "
        "(`register_adv_est`); `prefix_rft.advantage.mode` selects the prefix-aware variants.",
        ("algorithm.adv_estimator", "prefix_rft.advantage"),
        (("core/advantage.py", "group_advantage"),),
    ),
    Idea(
        "Entropy-based clipping: only the top-20% entropy demo tokens are trained",
        "Among the demo-prefix tokens of a PPO mini-batch (`scope`), only the `top_ratio` highest-entropy ones "
        "keep their advantage; every other demo token's advantage is 0. The policy's own tokens are untouched.",
        ("prefix_rft.entropy_clip", "actor_rollout_ref.actor.calculate_entropy"),
        (("core/entropy.py", "select_demo_tokens"),),
    ),
    Idea(
        "Loss aggregation",
        "Demo and generated tokens get the same PPO token loss (ratio against the recomputed old policy, clip "
        "0.2, dual-clip 3). Token losses are summed per response, averaged over the mini-batch's responses and "
        "divided by a constant, the response budget (Dr.GRPO's `seq-mean-token-sum-norm`), through verl's "
        "`agg_loss`; `prefix_rft.loss.prefix_tokens=exclude` drops demo tokens from it.",
        (
            "actor_rollout_ref.actor.loss_agg_mode",
            "actor_rollout_ref.actor.loss_scale_factor",
            "actor_rollout_ref.actor.clip_ratio_low",
            "actor_rollout_ref.actor.clip_ratio_high",
            "actor_rollout_ref.actor.clip_ratio_c",
            "prefix_rft.loss",
        ),
        (("core/loss.py", "aggregation_mask"), ("actor_loss.py", "aggregate")),
    ),
    Idea(
        "Optional per-prompt guidance",
        "Off by default (`mode: schedule`, the paper: every prompt is guided). `on_failure` guides a prompt only "
        "while its running on-policy success rate is at or below `threshold`; `adaptive` holds each prompt's "
        "hybrid success near `target` with its own prefix ratio.",
        ("prefix_rft.guidance",),
        (("core/guidance.py", "decide"), ("core/guidance.py", "adaptive_ratio")),
    ),
)


def _yaml_snippet(config: dict, keys: tuple[str, ...]) -> str:
    """The recipe yaml restricted to ``keys`` (dotted paths), nested as in the file."""
    snippet: dict = {}
    for key in keys:
        node, parts = config, key.split(".")
        for part in parts:
            if not isinstance(node, dict) or part not in node:
                raise ExportError(
                    f"README: the recipe yaml has no key {key}: update IDEAS in {Path(__file__).name}"
                )
            node = node[part]
        dest = snippet
        for part in parts[:-1]:
            dest = dest.setdefault(part, {})
        dest[parts[-1]] = node
    return yaml.safe_dump(snippet, sort_keys=False, default_flow_style=False).rstrip()


def _code_lines(rel: str, name: str) -> str:
    """The source of function ``name`` (or the ``x = f(`` assignment) in ``prefix_rft/<rel>``, as exported."""
    path = LIBRARY / rel
    text = path.read_text()
    tree = ast.parse(text)
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)) and node.name == name:
            return ast.get_source_segment(text, node, padded=True)
        if isinstance(node, ast.Assign) and "=" in name:
            target, call = (s.strip().rstrip("(") for s in name.split("=", 1))
            if (
                isinstance(node.value, ast.Call)
                and ast.unparse(node.value.func) == call
                and [ast.unparse(t) for t in node.targets] == [target]
            ):
                lines = text.splitlines()[node.lineno - 1 : node.end_lineno]
                indent = min(len(ln) - len(ln.lstrip()) for ln in lines if ln.strip())
                return "\n".join(ln[indent:] for ln in lines)
    raise ExportError(f"README: prefix_rft/{rel} has no {name!r}: update IDEAS in {Path(__file__).name}")


def _presets() -> list[tuple[str, str]]:
    out = []
    for path in sorted((RECIPE / "config" / "preset").glob("*.yaml")):
        lines = path.read_text().splitlines()
        out.append((path.stem, " ".join(ln[1:].strip() for ln in lines[1:] if ln.startswith("#"))))
    return out


def _requirements() -> list[str]:
    """The project's runtime dependencies other than verl (pyproject.toml)."""
    import tomllib  # Python >= 3.11, as the repository's venv

    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    return [d for d in deps if not d.replace(" ", "").startswith("verl")]


def readme(names: Names, launchers: list[str], skipped: list[str], pin: dict[str, str]) -> str:
    """The exported README.md (verl-recipe's shape: required verl, quick start, configuration per idea)."""
    config = yaml.safe_load((RECIPE / "config" / "prefix_rft_trainer.yaml").read_text())
    problems: list[str] = []
    out = [
        "# Recipe: Prefix-RFT (prefix sampling between SFT and RFT)",
        "",
        "Prefix-RFT ([arXiv 2507.01679](https://arxiv.org/abs/2507.01679)) blends supervised and reinforcement "
        "fine-tuning inside one RL step: some rollouts of a prompt start from a prefix of a demonstration and "
        "the policy completes them; all rollouts share one reward baseline. This recipe runs it on verl's v1 "
        "trainer (synchronous mode) through verl's registries and hooks; no verl source is modified.",
        "",
        "This folder is generated from the prefix-rft project (`make upstream`); its README sections below "
        "quote the code and the config as exported.",
        "",
        "## Required `verl` version",
        "",
        f"verl `{pin.get('TAG', '?')}`"
        + (
            f" (commit `{pin['COMMIT']}`)"
            if pin.get("COMMIT")
            else " (commit not recorded: see REQUIRED_VERL.txt)"
        )
        + ": see [`REQUIRED_VERL.txt`](REQUIRED_VERL.txt).",
        "",
        "## Quickstart",
        "",
        "```bash",
        "# from the folder holding recipe/ (e.g. a verl checkout with its recipe submodule)",
        f"{pin.get('PIP_INSTALL', 'pip install verl')}",
        "pip install " + " ".join(f'"{d}"' for d in _requirements()),
        '# GPU stack: verl\'s extras, e.g. "verl[verl-core,fsdp,vllm]==0.9.1"',
        "",
        "# data: LUFFY's OpenR1-Math-46k-8192 with its traces as demonstrations, and the math benchmarks",
        f"python -m {PACKAGE}.data prepare openr1 --output-dir $HOME/data/prefix_rft",
        f"python -m {PACKAGE}.data prepare eval --output-dir $HOME/data/prefix_rft_eval",
        "",
        "# train (one 8-GPU node; any hydra override goes last and wins)",
        "bash recipe/prefix_rft/run_prefix_rft_qwen7b.sh trainer.nnodes=1",
        "# compose, validate and print the config only (no GPU)",
        f"python -m {PACKAGE}.main_prefix_rft --cfg job",
        "```",
        "",
        "Launchers (each sets `MODEL_PATH`, `DATA_DIR`, `NNODES`, ... from the environment; see "
        "`_prefix_rft_common.sh`):",
        "",
        *[f"- `{name}`" for name in launchers if name.startswith("run_")],
        *([""] + [f"Not exported: {line}." for line in skipped] if skipped else []),
        "",
        "## Configuration",
        "",
        "`config/prefix_rft_trainer.yaml` composes verl's own `ppo_trainer.yaml` (`hydra.searchpath: "
        "[pkg://verl.trainer.config]`) and adds a `prefix_rft:` block; every key is overridable on the command "
        "line and validated at start-up. Each idea of the paper below: the keys that set it (recipe defaults) "
        "and the lines that implement it.",
    ]
    for idea in IDEAS:
        out += ["", f"### {idea.title}", "", idea.what, ""]
        try:
            out += ["```yaml", _yaml_snippet(config, idea.keys), "```", ""]
            for rel, name in idea.code:
                code = rewrite(_code_lines(rel, name), f"prefix_rft/{rel}", names, problems)
                out += [f"`{rel}`:", "", "```python", code.rstrip(), "```", ""]
        except ExportError as err:
            problems.append(str(err))
        if out[-1] == "":
            out.pop()
    out += [
        "",
        "## Presets",
        "",
        "The paper's baselines and ablations are configurations: `config/preset/NAME.yaml`, selected with "
        "`+preset=NAME` on any launcher's command line (later overrides win), e.g. "
        "`bash recipe/prefix_rft/run_prefix_rft_qwen7b.sh +preset=luffy`.",
        "",
        "| preset | what it runs |",
        "|---|---|",
        *[f"| `{name}` | {text} |" for name, text in _presets()],
    ]
    if problems:
        raise ExportError("\n  ".join(problems))
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--out", type=Path, default=ROOT / "outputs" / "upstream", help="writes OUT/prefix_rft/"
    )
    args = parser.parse_args(argv)
    try:
        folder = export(args.out)
    except ExportError as err:
        print(f"export_upstream: {err}", file=sys.stderr)
        return 1
    print(f"wrote {folder}")
    if folder.parent.name == "recipe":
        print(f"run it from {folder.parent.parent}: python -m {PACKAGE}.main_prefix_rft --cfg job")
    else:
        print(
            "copy it into a verl-recipe checkout as recipe/prefix_rft (or export with --out <dir>/recipe) and run"
        )
        print(f"python -m {PACKAGE}.main_prefix_rft from the folder holding recipe/")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
