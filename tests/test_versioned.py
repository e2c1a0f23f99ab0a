"""Typed configs round-trip through their dicts and refuse what they cannot read."""

from __future__ import annotations

import pytest

from faircalib_export.calibrate.config import CalibConfig, recipe_for
from faircalib_export.errors import ConfigError
from faircalib_export.quant.spec import QuantSpec


@pytest.mark.parametrize("config", [CalibConfig("flatquant", w_bits=3, epochs=2),
                                    CalibConfig("flatquant", format="nvfp4", act_clips=False),
                                    QuantSpec(a_bits=8, transform="hadamard")])
def test_round_trip_and_refusals(config):
    cls = type(config)
    data = config.to_dict()
    assert data["version"] == cls.VERSION and cls.from_dict(data) == config
    with pytest.raises(ConfigError, match="version 99"):
        cls.from_dict({**data, "version": 99})
    with pytest.raises(ConfigError, match="unknown field"):
        cls.from_dict({**data, "colour": "red"})
    with pytest.raises(ConfigError, match="must be an object"):
        cls.from_dict([1, 2])


def test_values_are_validated_on_read():
    with pytest.raises(ConfigError, match="bit width 16"):
        CalibConfig.from_dict({"method": "rtn", "w_bits": 16})  # nothing to fold at 16 bits
    with pytest.raises(ConfigError, match="epochs"):
        CalibConfig.from_dict({"epochs": -1})
    with pytest.raises(ConfigError, match="transform"):
        QuantSpec.from_dict({"transform": "fourier"})


def test_unset_epochs_take_the_model_recipe():
    assert CalibConfig().epochs is None
    assert CalibConfig().resolved(64).epochs == recipe_for(64).epochs
    assert CalibConfig().resolved(4096).epochs == recipe_for(4096).epochs == 15
    assert CalibConfig(epochs=3).resolved(4096).epochs == 3


def test_frozen_activation_clips():
    """`act_clips=False` keeps a learning method's activation clips at 1 (and its weight
    clips learnable); configs written before the field read back with the clips learned.
    (Mutants: the field ignored by `spec()`; a missing field read as False.)"""
    assert CalibConfig("flatquant").spec().learn_a_clip is True
    frozen = CalibConfig("flatquant", act_clips=False).spec()
    assert frozen.learn_a_clip is False and frozen.learn_w_clip is True
    old = CalibConfig("flatquant").to_dict()
    del old["act_clips"]
    assert CalibConfig.from_dict(old).act_clips is True
    with pytest.raises(ConfigError, match="act_clips"):
        CalibConfig(act_clips="no")
