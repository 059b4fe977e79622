"""Centre profiles: built-ins load, user files in JSON or YAML load, bad ones fail clearly."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from liaids.errors import ProfileError
from liaids.phantom.profiles import BUILTIN_PROFILES, load_profile


@pytest.mark.parametrize("name", BUILTIN_PROFILES)
def test_builtin_profiles_load(name: str) -> None:
    prof = load_profile(name)
    assert prof.name == name
    assert sum(prof.primary_type_weights.values()) > 0


def test_external_centres_differ_from_internal() -> None:
    internal, zzh, qzh = load_profile("internal"), load_profile("zzh"), load_profile("qzh")
    assert zzh.primary_type_weights != internal.primary_type_weights
    assert qzh.background_extrahepatic_tumour < internal.background_extrahepatic_tumour


def test_user_profile_from_yaml_and_json(tmp_path: Path) -> None:
    data = load_profile("internal").to_dict()
    data["name"] = "my-centre"
    data["slice_thickness_mm"] = {"3.0": 1.0}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(data))
    (tmp_path / "c.json").write_text(json.dumps(data))
    assert load_profile(tmp_path / "c.yaml").slice_thickness_mm == {"3.0": 1.0}
    assert load_profile(tmp_path / "c.json").name == "my-centre"


@pytest.mark.parametrize(
    ("change", "words"),
    [
        ({"no_lesion_fraction": 1.5}, "must be a probability"),
        ({"mas_range": [300, 100]}, "low <= high"),
        ({"slice_thickness_mm": {"25": 1.0}}, "outside 0.5-10 mm"),
        ({"primary_type_weights": {"XYZ": 1.0}}, "unknown lesion types"),
        ({"colour": "blue"}, "unknown profile field"),
    ],
)
def test_bad_profile_fields(tmp_path: Path, change: dict, words: str) -> None:
    data = {**load_profile("internal").to_dict(), **change}
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(data))
    with pytest.raises(ProfileError, match=words) as err:
        load_profile(path)
    assert str(path) in str(err.value)


def test_unknown_profile_name() -> None:
    with pytest.raises(ProfileError, match="built-in profiles: internal"):
        load_profile("nowhere")


def test_unparseable_profile(tmp_path: Path) -> None:
    path = tmp_path / "broken.json"
    path.write_text("{not json")
    with pytest.raises(ProfileError, match="cannot parse profile"):
        load_profile(path)


@pytest.mark.parametrize(
    ("change", "words"),
    [
        ({"name": "../escape"}, "name must be"),
        ({"name": 5}, "name must be"),
        ({"mas_range": ["a", "b"]}, "invalid profile value"),
        ({"kvp": {"abc": 1}}, "invalid profile value"),
        ({"age_mean": "x"}, "invalid profile value"),
        ({"slice_thickness_mm": {"thin": 1.0}}, "invalid profile value"),
    ],
)
def test_profile_values_of_the_wrong_type(tmp_path: Path, change: dict, words: str) -> None:
    path = tmp_path / "bad.json"
    path.write_text(json.dumps({**load_profile("internal").to_dict(), **change}))
    with pytest.raises(ProfileError, match=words):
        load_profile(path)
