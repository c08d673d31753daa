"""One scheme for config dataclasses <-> JSON (`see3d_core.dataclass_json`), used by UNetConfig,
TrainConfig and CurationConfig: nested dataclasses, tuples, optional sections, named errors."""

from __future__ import annotations

import dataclasses
import json

import pytest

from see3d_core.dataclass_json import from_json_dict, to_json_dict


@dataclasses.dataclass(frozen=True)
class Inner:
    size: int = 3
    scale: float = 1.0
    axes: tuple[str, ...] = ("x", "y")


@dataclasses.dataclass(frozen=True)
class Outer:
    name: str = "a"
    inner: Inner = Inner()
    optional: Inner | None = None
    rules: tuple[tuple[str, object], ...] = (("batch", ("data", "fsdp")), ("embed", None))
    flag: bool = False


def test_round_trip_through_json_text():
    config = Outer(name="b", inner=Inner(size=5, axes=("z",)), optional=Inner(scale=2.5), flag=True)
    raw = json.loads(json.dumps(to_json_dict(config)))
    assert raw["inner"] == {"size": 5, "scale": 1.0, "axes": ["z"]} and raw["rules"][0] == ["batch", ["data", "fsdp"]]
    assert from_json_dict(Outer, raw) == config
    assert from_json_dict(Outer, {"optional": None}) == Outer()
    assert from_json_dict(Outer, {"inner": {"scale": 2}}).inner.scale == 2.0  # an int where a float is expected


def test_errors_name_the_source_the_key_path_and_what_was_expected():
    with pytest.raises(ValueError, match=r"run/config.json: unknown Outer field\(s\) \['colour'\]; expected some of"):
        from_json_dict(Outer, {"colour": 1}, source="run/config.json")
    with pytest.raises(ValueError, match=r"cfg: optional: unknown Inner field\(s\) \['sise'\]"):
        from_json_dict(Outer, {"optional": {"sise": 4}}, source="cfg")
    with pytest.raises(ValueError, match="cfg: inner.size must be int, got '4'"):
        from_json_dict(Outer, {"inner": {"size": "4"}}, source="cfg")
    with pytest.raises(ValueError, match="cfg: flag must be bool, got 1"):
        from_json_dict(Outer, {"flag": 1}, source="cfg")
    with pytest.raises(ValueError, match="cfg: inner: expected a table of Inner fields, got int"):
        from_json_dict(Outer, {"inner": 7}, source="cfg")
    assert from_json_dict(Outer, {"format": "x"}, ignore=("format",)) == Outer()


def test_the_kit_configs_use_it():
    from see3d_core.unet_config import UNetConfig, tiny
    from see3d_torch.curation.config import CurationConfig

    assert UNetConfig.from_dict(json.loads(json.dumps(tiny().to_dict()))) == tiny()
    with pytest.raises(ValueError, match="my.json: unknown UNetConfig field"):
        UNetConfig.from_dict({"channels": 3}, source="my.json")
    curation = CurationConfig().with_options(temporal_stride=3, max_clip_frames=10)
    assert CurationConfig.from_dict(json.loads(json.dumps(curation.to_dict()))) == curation
    with pytest.raises(ValueError, match=r"c.toml: motion: unknown MotionConfig field\(s\) \['flow_speed'\]"):
        CurationConfig.from_dict({"motion": {"flow_speed": 1}}, source="c.toml")
