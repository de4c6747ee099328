"""SigmaConfig: layout validation and the one AutoConfig registration helper."""

import subprocess
import sys
import textwrap

import pytest
from sigma_testing_utils import LAYOUT, REPO_ROOT

from modeling_sigma.modeling.configuration_sigma import SigmaConfig


def test_layout_and_offsets_are_checked():
    config = SigmaConfig(identifier_layout=LAYOUT.to_dict(), identifier_token_offsets=list(range(10, 15)))
    assert config.layout == LAYOUT and config.identifier_token_range == (10, 10 + LAYOUT.num_tokens)
    with pytest.raises(ValueError, match="identifier_token_offsets has 2 entries"):
        SigmaConfig(identifier_layout=LAYOUT.to_dict(), identifier_token_offsets=[1, 2])
    with pytest.raises(ValueError, match="lambda_ssp must be >= 0"):
        SigmaConfig(lambda_ssp=-1.0)


def test_register_sigma_config_makes_auto_config_know_sigma_and_is_idempotent():
    script = textwrap.dedent(
        """
        from transformers import AutoConfig
        from modeling_sigma.modeling.configuration_sigma import SigmaConfig, register_sigma_config
        try:
            AutoConfig.for_model("sigma")
            raise SystemExit("sigma was known before registration")
        except ValueError:
            pass
        register_sigma_config()
        register_sigma_config()
        assert type(AutoConfig.for_model("sigma")) is SigmaConfig
        """
    )
    subprocess.run([sys.executable, "-c", script], check=True, cwd=REPO_ROOT)
