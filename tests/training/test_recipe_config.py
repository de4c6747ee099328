"""Recipe argument parsing: arguments renamed by transformers are accepted under either name."""

import warnings

import pytest
import yaml

from modeling_sigma.training.recipe_config import load_recipe, parse_recipe_args


@pytest.fixture(scope="module")
def stage1():
    return load_recipe("recipes/stage1.py")


def training_args(stage1, tmp_path, section, *flags):
    config = tmp_path / "config.yaml"
    config.write_text(
        yaml.safe_dump({"stage1": {"output_dir": str(tmp_path / "out"), "bf16": False, **section}})
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)  # the deprecated name must not reach transformers
        parsed = parse_recipe_args(stage1.make_parser(), stage1.SECTION, ["--config", str(config), *flags])
    return next(args for args in parsed if hasattr(args, "gradient_checkpointing"))


@pytest.mark.parametrize("name", ["gradient_checkpointing", "activation_checkpointing"])
def test_checkpointing_under_either_name(stage1, tmp_path, name):
    assert training_args(stage1, tmp_path, {name: True}).gradient_checkpointing is True
    assert training_args(stage1, tmp_path, {name: False}).gradient_checkpointing is False
    assert training_args(stage1, tmp_path, {}, f"--{name}", "false").gradient_checkpointing is False
    assert training_args(stage1, tmp_path, {}, f"--{name}=true").gradient_checkpointing is True


def test_both_names_in_one_section_is_an_error(stage1, tmp_path):
    section = {"gradient_checkpointing": True, "activation_checkpointing": False}
    with pytest.raises(ValueError, match="both 'gradient_checkpointing' and 'activation_checkpointing'"):
        training_args(stage1, tmp_path, section)
