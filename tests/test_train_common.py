"""Case splits shared by the training modules: the seeded split and a hand-made splits file."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from liaids.errors import LiaidsError
from liaids.train.common import cases_in_splits, split_and_record, split_cases

CASES = [f"case_{n:03d}" for n in range(20)]


def test_seeded_split_is_repeatable_disjoint_and_complete(tmp_path: Path) -> None:
    a = split_cases(CASES, 0.15, 7, tmp_path)
    assert a == split_cases(CASES, 0.15, 7, tmp_path)
    assert len(a["val"]) == 3 and sorted(a["train"] + a["val"]) == CASES
    assert a != split_cases(CASES, 0.15, 8, tmp_path)


def test_splits_file_overrides_the_seeded_split(tmp_path: Path) -> None:
    path = tmp_path / "splits.json"
    path.write_text(json.dumps({"train": CASES[5:10], "val": ["case_001", "case_000"]}))
    splits = split_cases(CASES, 0.15, 7, tmp_path, path)
    # Cases in neither list are left out of training and validation.
    assert splits == {"val": ["case_000", "case_001"], "train": CASES[5:10]}
    assert cases_in_splits(CASES[::-1], splits) == [*CASES[9:4:-1], "case_001", "case_000"]


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        ("{not json", "cannot read the splits file"),
        ("[1, 2]", "must hold an object"),
        (json.dumps({"train": CASES[:3], "val": []}), "non-empty list of case ids under 'val'"),
        (json.dumps({"train": CASES[:3], "val": ["nobody"]}), "not in the dataset: nobody"),
        (json.dumps({"train": CASES[:3], "val": CASES[2:4]}), "in both train and val: case_002"),
    ],
)
def test_bad_splits_file_names_the_file_and_the_problem(tmp_path: Path, content: str, problem: str) -> None:
    path = tmp_path / "my_splits.json"
    path.write_text(content)
    with pytest.raises(LiaidsError, match=problem) as err:
        split_cases(CASES, 0.15, 7, tmp_path, path)
    assert "my_splits.json" in str(err.value)


def test_seeded_split_needs_two_cases(tmp_path: Path) -> None:
    with pytest.raises(LiaidsError, match="at least 2 cases"):
        split_cases(CASES[:1], 0.15, 7, tmp_path)


def test_split_and_record_writes_the_split_and_plan_and_keeps_dataset_order(tmp_path: Path) -> None:
    # The helper reads only the dataset's case order and folder.
    ds = SimpleNamespace(case_ids=CASES, root=tmp_path)
    splits_file = tmp_path / "given.json"
    splits_file.write_text(json.dumps({"train": ["case_004", "case_002"], "val": ["case_000"]}))
    out = tmp_path / "run"
    out.mkdir()
    used, splits = split_and_record(out, ds, {"pixel_mm": 3.0}, 0.2, 0, splits_file)
    assert used == ["case_000", "case_002", "case_004"]
    assert json.loads((out / "splits.json").read_text()) == splits
    assert json.loads((out / "plan.json").read_text()) == {"pixel_mm": 3.0}
    # max_cases takes the first cases before the seeded split.
    used, splits = split_and_record(out, ds, {}, 0.2, 0, max_cases=5)
    assert used == CASES[:5] and len(splits["val"]) == 1
    assert json.loads((out / "splits.json").read_text()) == splits
    # Excluded cases (an upstream model's training cases) never enter the split; max_cases counts the rest.
    used, splits = split_and_record(out, ds, {}, 0.2, 0, max_cases=3, exclude={"case_000", "case_002"})
    assert used == ["case_001", "case_003", "case_004"]
    assert not {"case_000", "case_002"} & {*splits["train"], *splits["val"]}
