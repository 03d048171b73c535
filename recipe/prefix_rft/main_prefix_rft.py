"""Prefix-RFT entry point: ``python recipe/prefix_rft/main_prefix_rft.py [hydra overrides]`` in this repository,
``python -m recipe.prefix_rft.main_prefix_rft [hydra overrides]`` in a verl-recipe tree (``make upstream``).

Composes ``config/prefix_rft_trainer.yaml`` (verl's ``ppo_trainer`` + the ``prefix_rft:`` block), checks the
``prefix_rft`` block and the verl keys it depends on (:func:`prefix_rft.verl_config.validate_verl_config`),
then runs verl's ``run_ppo`` with :class:`prefix_rft.trainer.PrefixRFTTaskRunner`, which builds
:class:`prefix_rft.trainer.PrefixRFTTrainer` (verl's synchronous v1 trainer plus the Prefix-RFT hooks).

In this repository run it as a file: here ``recipe/`` holds no code package, and verl's wheel installs an
unrelated top-level ``recipe`` namespace. ``make upstream`` exports this folder with the library as a
verl-recipe folder, where the ``-m`` form runs from the folder holding ``recipe/``. ``--cfg job`` (anywhere on the command line) validates the composed config exactly as a run
does, prints it and launches nothing; ``--cfg hydra|all`` are Hydra's own, also accepted anywhere.
"""

import importlib.util
import os
import sys

import hydra
import yaml


def split_cfg_flag(argv: list[str]) -> tuple[list[str], str | None]:
    """``argv`` without its ``--cfg X`` / ``-c X`` / ``--cfg=X`` flag (wherever it is), and ``X`` (or None).

    Hydra's parser accepts the flag only before the overrides; a launcher appends the user's arguments
    after its own overrides, so the flag is taken out here.
    """
    rest, value, i = [], None, 0
    while i < len(argv):
        arg = argv[i]
        if arg in ("--cfg", "-c") and i + 1 < len(argv):
            value, i = argv[i + 1], i + 2
            continue
        if arg.startswith("--cfg="):
            value = arg.split("=", 1)[1]
        else:
            rest.append(arg)
        i += 1
    return rest, value


def searchpath_without_imports(args: list[str]) -> list[str]:
    """A ``hydra.searchpath`` override naming the recipe yaml's ``pkg://X`` entries as the
    ``file://`` folders of package X, found without importing it (``[]`` when the command line sets the
    searchpath itself or a package is not found: hydra then reads the yaml's own entries).

    Hydra's ``pkg://`` source imports the package, and importing ``verl`` loads torch, Ray and transformers
    (~3 s of a ~5 s ``--cfg job``); read from its folder, verl's ``ppo_trainer`` config composes the same. So
    ``--cfg job`` takes ~1 s and a run with a bad value stops in ~1 s, before verl is imported.
    """
    if any(a.lstrip("+").startswith("hydra.searchpath") for a in args):
        return []
    here = os.path.dirname(os.path.abspath(__file__))
    with open(os.path.join(here, "config", "prefix_rft_trainer.yaml")) as f:
        entries = ((yaml.safe_load(f) or {}).get("hydra") or {}).get("searchpath") or []
    out = []
    for entry in entries:
        if entry.startswith("pkg://"):
            top, *sub = entry[len("pkg://") :].split(".")
            spec = importlib.util.find_spec(top)  # a top-level name: located, not imported
            if spec is None or not spec.submodule_search_locations:
                return []
            folder = os.path.join(spec.submodule_search_locations[0], *sub)
            if not os.path.isdir(folder):
                return []
            entry = "file://" + folder
        out.append(f"'{entry}'")
    return [f"hydra.searchpath=[{','.join(out)}]"] if out else []


CONFIG_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "config")
CONFIG_NAME = "prefix_rft_trainer"
PRINT_ONLY = False
"""Set by ``--cfg job`` together with hydra flags (``-cn``, ``--resolve``, ...): ``@hydra.main`` composes,
:func:`main` validates and prints."""


def validate_and_print(config) -> int:
    """``--cfg job``'s output: the config validated (exit code 2 and the reason when invalid), then printed (0)."""
    from omegaconf import OmegaConf

    from prefix_rft.config import PrefixRFTConfigError
    from prefix_rft.verl_config import validate_verl_config

    try:
        validate_verl_config(config)
    except PrefixRFTConfigError as err:
        print(f"invalid config: {err}", file=sys.stderr)
        return 2
    print(OmegaConf.to_yaml(config), end="")
    return 0


def print_job(overrides: list[str]) -> int:
    """``--cfg job`` with overrides only: compose the config as a run would, validate and print it, start nothing;
    returns the exit code.

    Composed with hydra's compose API: ``@hydra.main`` composes the whole config twice (once to read
    ``hydra.mode``), half of a dry run's second. Hydra's errors print as ``@hydra.main`` prints them (the whole
    traceback with ``HYDRA_FULL_ERROR=1``).
    """
    from hydra import compose, initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    try:
        with initialize_config_dir(config_dir=CONFIG_DIR, version_base=None):
            config = compose(config_name=CONFIG_NAME, overrides=overrides)
    except (HydraException, OmegaConfBaseException) as err:
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        cause = err.__cause__ if isinstance(err.__cause__, OmegaConfBaseException) else None
        print(str(err) if cause is None else f"{err}\n{cause}", file=sys.stderr)
        print(
            "\nSet the environment variable HYDRA_FULL_ERROR=1 for a complete stack trace.", file=sys.stderr
        )
        return 1
    return validate_and_print(config)


@hydra.main(config_path="config", config_name=CONFIG_NAME, version_base=None)
def main(config):
    """Hydra entry: validate, start Ray, train (with :data:`PRINT_ONLY`: validate and print)."""
    if PRINT_ONLY:
        sys.exit(validate_and_print(config))
    from prefix_rft.verl_config import validate_verl_config  # no torch, no verl: a bad value fails in ~1 s

    validate_verl_config(config)  # before the ~5 s import of verl's trainer (run_prefix_rft checks it again)
    from prefix_rft.trainer import run_prefix_rft

    run_prefix_rft(config)


def with_overrides(args: list[str], extra: list[str]) -> list[str]:
    """``args`` with the hydra overrides ``extra`` after its own, its flags (``-m``, ``-cn X``, ``--info ...``) first:
    hydra's parser takes the overrides only as one run of positional arguments."""
    if not extra:
        return list(args)
    from hydra._internal.utils import get_args_parser  # the parser @hydra.main uses

    overrides = list(get_args_parser().parse_args(args).overrides)
    flags, pending = [], list(overrides)
    for arg in args:
        if pending and arg == pending[0]:
            pending.pop(0)
        else:
            flags.append(arg)
    return [*flags, *overrides, *extra]


if __name__ == "__main__":
    args, cfg_flag = split_cfg_flag(sys.argv[1:])
    # verl's config folder by path: the config is composed and checked before anything imports verl
    searchpath = searchpath_without_imports(args)
    if cfg_flag == "job" and not any(arg.startswith("-") for arg in args):
        sys.exit(print_job([*args, *searchpath]))
    # --cfg job with hydra flags (-cn X, -p P, ...): @hydra.main composes, main() validates and prints
    if cfg_flag == "job":
        PRINT_ONLY = True
        quiet = [
            "hydra.output_subdir=null",
            "hydra.run.dir=.",
            "hydra/job_logging=none",
            "hydra/hydra_logging=none",
        ]
        sys.argv = [sys.argv[0], *with_overrides(args, [*searchpath, *quiet])]
    else:
        sys.argv = [
            sys.argv[0],
            *(["--cfg", cfg_flag] if cfg_flag else []),
            *with_overrides(args, searchpath),
        ]
    main()
