"""Classification on several data folders at once: merging by relative path, the report, the config type."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from cli import cli
from tasks.classification.config import ClassificationConfig
from tasks.classification.data import load_folders
from tasks.config import ConfigError, build
from tasks.data.io import DataError
from tasks.segmentation.config import SegmentationConfig


def invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture
def two_folders(tiny_cls_data, tmp_path) -> tuple[Path, Path]:
    """``a`` with its own train/val: circle, square. ``b`` without val (split by val_fraction):
    circle, triangle."""
    a, b = tmp_path / "a", tmp_path / "b"
    for split in ("train", "val"):
        for c in ("circle", "square"):
            shutil.copytree(tiny_cls_data / split / c, a / split / c)
    for c in ("circle", "triangle"):
        shutil.copytree(tiny_cls_data / "train" / c, b / c)
    return a, b


def test_same_relative_path_merges_and_is_counted(two_folders):
    a, b = two_folders
    train, val, merge = load_folders([a, b], nested=False, val_fraction=0.5, seed=0, skip_bad=False)
    assert sorted({s.label for s in train}) == ["circle", "square", "triangle"]
    circles = [s.path for s in train if s.label == "circle"]
    assert any(a in p.parents for p in circles) and any(b in p.parents for p in circles)
    assert (merge.classes, merge.merged, merge.classes_per_folder) == (3, 1, [2, 2])
    assert "3 classes; 1 merged" in merge.summary() and "circle" in merge.summary()
    # a keeps its own val/ (3 per class); b is split by val_fraction (3 of 6 per class).
    assert sum(s.label == "square" for s in val) == 3 and sum(s.label == "circle" for s in val) == 6


def test_distinct_nested_classes_stay_apart(tiny_cls_data, tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    shutil.copytree(tiny_cls_data / "train" / "circle", a / "greek" / "alpha")
    shutil.copytree(tiny_cls_data / "train" / "square", b / "latin" / "alpha")
    shutil.copytree(tiny_cls_data / "train" / "cross", b / "greek" / "alpha")
    train, _, merge = load_folders([a, b], nested=True, val_fraction=0.5, seed=0, skip_bad=False)
    assert sorted({s.label for s in train}) == ["greek/alpha", "latin/alpha"]
    assert merge.merged == 1 and merge.merged_examples == ["greek/alpha"]


def test_a_folder_given_twice_is_an_error(two_folders):
    a, _ = two_folders
    with pytest.raises(DataError, match="given twice"):
        load_folders([a, a / ".." / "a"], False, 0.5, 0, False)


def test_data_is_a_list_for_classification_and_one_value_elsewhere():
    assert ClassificationConfig(data="x").data == ["x"]
    assert build(ClassificationConfig, {"data": "x,y"}).data == ["x,y"]  # a path, not split at commas
    assert build(ClassificationConfig, {"data": ["x", "y"]}).data == ["x", "y"]
    assert build(SegmentationConfig, {"data": ["x"]}).data == "x"
    with pytest.raises(ConfigError, match="data takes one value"):
        build(SegmentationConfig, {"data": ["x", "y"]})
    # Other list fields still split at commas, whether given once or repeated.
    assert build(SegmentationConfig, {"class_names": ["a,b"]}).class_names == ["a", "b"]
    assert build(SegmentationConfig, {"decoder_channels": "64,32"}).decoder_channels == [64, 32]


def fast(tmp_path) -> list:
    return ["--weights", "none", "--img-size", 32, "--workers", 0, "--freeze-stages", 4, "--head", "prototype",
            "--val-fraction", 0.5, "--out", tmp_path / "run"]


def test_repeated_data_flag_trains_on_both_and_reports(two_folders, tmp_path):
    a, b = two_folders
    r = invoke("finetune", "--data", a, "--data", b, *fast(tmp_path))
    assert r.exit_code == 0, r.output
    assert "2 data folders (2 + 2 classes) → 3 classes; 1 merged" in r.output
    report = json.loads((tmp_path / "run" / "data_folders.json").read_text())
    assert report["merged"] == 1 and report["folders"] == [str(a), str(b)]
    assert yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())["data"] == [str(a), str(b)]


def test_yaml_list_of_folders(two_folders, tmp_path):
    a, b = two_folders
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({"task": "classification", "data": [str(a), str(b)]}))
    r = invoke("finetune", "--config", cfg, *fast(tmp_path))
    assert r.exit_code == 0, r.output
    assert json.loads((tmp_path / "run" / "data_folders.json").read_text())["classes"] == 3


def test_one_folder_from_yaml_and_cli_still_works(tiny_cls_data, tmp_path):
    r = invoke("finetune", "--data", tiny_cls_data, *fast(tmp_path))
    assert r.exit_code == 0, r.output
    assert not (tmp_path / "run" / "data_folders.json").exists()
    assert yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())["data"] == [str(tiny_cls_data)]
