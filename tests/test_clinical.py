"""Clinical fields: validation with clear errors, and the numeric encoding."""

from __future__ import annotations

import pytest

from liaids.clinical import ClinicalInfo
from liaids.errors import ClinicalInfoError

VALID = {
    "age": 61,
    "sex": "m",
    "hepatitis_b": "yes",
    "hepatitis_c": False,
    "cirrhosis": 1,
    "cholangiolithiasis": "no",
    "extrahepatic_tumour": False,
}


def test_valid_fields_are_normalised() -> None:
    info = ClinicalInfo.from_dict(VALID)
    assert info.sex == "M" and info.hepatitis_b is True and info.cirrhosis is True
    assert info.cholangiolithiasis is False
    assert info.encode() == [0.61, 1.0, 1.0, 0.0, 1.0, 0.0, 0.0]
    assert ClinicalInfo.from_dict(info.to_dict()) == info


@pytest.mark.parametrize(
    ("change", "words"),
    [
        ({"age": 250}, "outside the plausible range"),
        ({"age": -3}, "outside the plausible range"),
        ({"age": "sixty"}, "age must be a number"),
        ({"age": float("nan")}, "age must be a number"),
        ({"sex": "X"}, "sex must be 'M' or 'F'"),
        ({"cirrhosis": "maybe"}, "cirrhosis must be true/false"),
        ({"cirrhosis": 2}, "cirrhosis must be true/false"),
        ({"hepatitis_b": None}, "missing clinical field(s) ['hepatitis_b']"),
        ({"weight": 80}, "unknown clinical field(s) ['weight']"),
    ],
)
def test_bad_values_name_the_field_and_the_file(change: dict, words: str) -> None:
    data = {**VALID, **change}
    with pytest.raises(ClinicalInfoError) as err:
        ClinicalInfo.from_dict(data, source="case7/case.json")
    assert words in str(err.value)
    assert str(err.value).startswith("case7/case.json: ")


def test_missing_field_is_never_defaulted() -> None:
    data = dict(VALID)
    del data["extrahepatic_tumour"]
    with pytest.raises(ClinicalInfoError, match="extrahepatic_tumour"):
        ClinicalInfo.from_dict(data)
