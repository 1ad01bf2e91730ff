"""Every shipped gin file parses, and documents itself."""

import pytest

from ddmr_core.config.parsing import config_root, parse_config, shipped_configs

CONFIGS = shipped_configs()


def test_configs_are_shipped():
    assert CONFIGS, "configs/ holds no .gin files"


@pytest.mark.parametrize("path", CONFIGS, ids=[str(p) for p in CONFIGS])
def test_config_parses(path):
    parse_config([config_root() / path])


@pytest.mark.parametrize("path", CONFIGS, ids=[str(p) for p in CONFIGS])
def test_config_starts_with_a_comment(path):
    first = (config_root() / path).read_text().lstrip().splitlines()[0]
    assert first.startswith("#"), f"{path} should open with a comment saying what it is for"
