"""Target GPU files: every shipped target loads and is consistent; unknown names fail loudly."""

from __future__ import annotations

import json

import pytest

from faircalib_export.errors import ConfigError
from faircalib_export.trt.errors import UnknownTargetError
from faircalib_export.trt.targets import list_targets, load_target

SHIPPED = {"rtx3090": "8.6", "rtx4090": "8.9", "rtx4080-16gb": "8.9", "rtx4060ti-16gb": "8.9",
           "a4000": "8.6", "l4": "8.9", "h100": "9.0"}


def test_shipped_targets():
    assert set(SHIPPED) <= set(list_targets())
    for name, cc in SHIPPED.items():
        t = load_target(name)
        assert t.name == name and t.compute_capability == cc
        assert t.kernel_path == ("int8-mma" if cc == "9.0" else "int4-mma")
        assert 15 < t.memory_gib < 81 and t.max_batch >= 1 and t.max_seq >= 256
    assert load_target("h100").sm == "sm_90"


def test_unknown_target_lists_the_known_ones():
    with pytest.raises(UnknownTargetError) as info:
        load_target("rtx5090-imaginary")
    assert isinstance(info.value, ConfigError)
    assert "rtx4090" in str(info.value) and "h100" in str(info.value)


def test_target_file_validation(tmp_path):
    good = json.loads(json.dumps(load_target("l4").to_dict()))
    file = tmp_path / "mine.json"
    file.write_text(json.dumps(dict(good, name="mine")))
    assert load_target(file).name == "mine"
    file.write_text(json.dumps(dict(good, kernel_path="int8-mma")))
    with pytest.raises(ConfigError, match="int4-mma"):
        load_target(file)
    file.write_text(json.dumps({k: v for k, v in good.items() if k != "memory_gib"}))
    with pytest.raises(ConfigError, match="memory_gib"):
        load_target(file)
