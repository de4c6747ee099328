"""Argument parsing shared by the recipes: one YAML file with a section per stage, flags override it.

    python recipes/stage3.py --config recipes/configs/tiny-shapes.yaml --learning_rate 1e-4

A recipe reads its own section (`stage0`, `stage1`, ...). Keys that no argument dataclass of the recipe
knows are an error naming them, in the YAML as on the command line.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
from dataclasses import fields

import yaml

# transformers 5.24 renamed these TrainingArguments (the old names warn, and go in v6). A config or flag may use
# either name; it reaches the installed release under the name that release reads.
RENAMED_ARGUMENTS = {
    "gradient_checkpointing": "activation_checkpointing",
    "gradient_checkpointing_kwargs": "activation_checkpointing_kwargs",
}


def read_section(path: str, section: str) -> dict:
    """The `section:` mapping of a recipe YAML, with a clear error if the file or section is unusable."""
    try:
        with open(path) as stream:
            document = yaml.safe_load(stream) or {}
    except OSError as error:
        raise ValueError(f"Cannot read the config file {path!r}: {error}") from error
    if not isinstance(document, dict) or not isinstance(document.get(section, {}), dict):
        raise ValueError(f"{path}: expected a mapping with a '{section}:' section.")
    return document.get(section) or {}


def parse_recipe_args(parser, section: str, argv: list[str] | None = None) -> tuple:
    """Parses `--config FILE` (its `section`) and flags into the parser's dataclasses.

    Args:
        parser: an `HfArgumentParser` (e.g. `trl.TrlParser`) over the recipe's argument dataclasses.
        section: the YAML section this recipe reads.
        argv: command-line arguments (defaults to `sys.argv[1:]`).
    """
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--config", default=None)
    known, remaining = pre.parse_known_args(argv)
    valid = {f.name for dataclass_type in parser.dataclass_types for f in fields(dataclass_type)}
    aliases = _aliases(valid)
    remaining = [_rename_flag(token, aliases) for token in remaining]
    if known.config:
        values = read_section(known.config, section)
        clashes = [key for key in values if key in aliases and aliases[key] in values]
        if clashes:
            raise ValueError(
                f"{known.config}: section '{section}' sets both {clashes[0]!r} and {aliases[clashes[0]]!r} "
                "(one argument under its old and new name): keep one"
            )
        values = {aliases.get(key, key): value for key, value in values.items()}
        unknown = sorted(set(values) - valid)
        if unknown:
            raise ValueError(f"{known.config}: unknown key(s) in section '{section}': {unknown}")
        parser.set_defaults(**values)
    outputs = parser.parse_args_into_dataclasses(args=remaining, return_remaining_strings=True)
    *dataclasses, leftover = outputs
    if leftover:
        raise ValueError(f"Unknown argument(s): {leftover}")
    return tuple(dataclasses)


def _aliases(valid: set[str]) -> dict[str, str]:
    """Name used by a config → name the installed transformers reads, for the renamed arguments it knows."""
    aliases = {}
    for old, new in RENAMED_ARGUMENTS.items():
        if new in valid:
            aliases[old] = new
        elif old in valid:
            aliases[new] = old
    return aliases


def _rename_flag(token: str, aliases: dict[str, str]) -> str:
    if not token.startswith("--"):
        return token
    name, sep, value = token[2:].partition("=")
    return f"--{aliases[name]}{sep}{value}" if name in aliases else token


def load_recipe(path: str):
    """Imports a recipe script (e.g. `recipes/stage3.py`) as a module, to call its `make_parser`/`main`."""
    name = f"sigma_recipe_{os.path.splitext(os.path.basename(path))[0]}"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up here
    spec.loader.exec_module(module)
    return module


def run_recipe(path: str, argv: list[str]):
    """Runs a recipe in this process, as `python path argv...` would; returns what its `main` returns."""
    recipe = load_recipe(path)
    return recipe.main(*parse_recipe_args(recipe.make_parser(), recipe.SECTION, argv))


__all__ = ["load_recipe", "parse_recipe_args", "read_section", "run_recipe"]
