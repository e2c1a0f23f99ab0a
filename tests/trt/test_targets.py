"""Target GPU files: every shipped target loads and is consistent; unknown names fail loudly."""

from __future__ import annotations

import json

import pytest

from faircalib_export.errors import ConfigError
from faircalib_export.trt.errors import UnknownTargetError
from faircalib_export.trt.targets import list_targets, load_target

SHIPPED = {"rtx3090": "8.6", "rtx4090": "8.9", "rtx4080-16gb": "8.9", "rtx4060ti-16gb": "8.9",
           "a4000": "8.6", "l4": "8.9", "h100": "9.0"}
BLACKWELL = {"rtx5090": ("12.0", 31.84), "rtx5080": ("12.0", 15.92),
             "rtx5070ti": ("12.0", 15.92), "b200": ("10.0", 179.0)}


def test_shipped_targets():
    assert set(SHIPPED) <= set(list_targets())
    for name, cc in SHIPPED.items():
        t = load_target(name)
        assert t.name == name and t.compute_capability == cc
        assert t.kernel_path == ("int8-mma" if cc == "9.0" else "int4-mma")
        assert 15 < t.memory_gib < 81 and t.max_batch >= 1 and t.max_seq >= 256
        assert t.default_format == "int" and t.formats == ("int",) and not t.fp4
        with pytest.raises(ConfigError, match="no FP4 tensor cores"):
            t.kernel_path_for("nvfp4")
    assert load_target("h100").sm == "sm_90"


@pytest.mark.parametrize("name", sorted(BLACKWELL))
def test_blackwell_targets_default_to_native_nvfp4(name):
    cc, memory = BLACKWELL[name]
    t = load_target(name)
    assert (t.compute_capability, t.memory_gib) == (cc, memory)
    assert t.fp4 and t.default_format == "nvfp4" and t.kernel_path == "fp4-native"
    assert t.formats == ("int", "nvfp4")  # TensorRT quantizes activations to 16-blocks only
    assert t.kernel_path_for("int") == "int8-mma"  # no int4 MMA after Ada
    assert t.kernel_path_for("mxfp4") == "fp4-native"
    assert "approximate" in t.notes
    assert t.sm == ("sm_120" if cc == "12.0" else "sm_100")


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
    # default_format: optional (older files are int), validated against the GPU
    file.write_text(json.dumps({k: v for k, v in good.items() if k != "default_format"}))
    assert load_target(file).default_format == "int"
    file.write_text(json.dumps(dict(good, default_format="fp8")))
    with pytest.raises(ConfigError, match="default_format must be one of"):
        load_target(file)
    file.write_text(json.dumps(dict(good, default_format="nvfp4", kernel_path="fp4-native")))
    with pytest.raises(ConfigError, match="no FP4 tensor cores"):  # l4 is Ada
        load_target(file)
    blackwell = load_target("rtx5090").to_dict()
    file.write_text(json.dumps(dict(blackwell, default_format="mxfp4")))
    with pytest.raises(ConfigError, match="no TensorRT path"):
        load_target(file)
    file.write_text(json.dumps(dict(blackwell, kernel_path="int8-mma")))
    with pytest.raises(ConfigError, match="fp4-native"):
        load_target(file)
    file.write_text(json.dumps(dict(blackwell, default_format="int", kernel_path="int8-mma")))
    assert load_target(file).kernel_path == "int8-mma"  # int W4A4 on Blackwell: the plugin
