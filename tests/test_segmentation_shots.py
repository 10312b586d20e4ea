"""Few-shot segmentation: --shots K picks K training images, saves the list, reuses it on --resume."""
from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from cli import cli
from tasks.data.io import DataError
from tasks.segmentation.data import find_layout
from tasks.segmentation.shots import SUBSET_FILE, sample_shots

from test_segmentation import make_data, task_for


def invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


def test_subsets_are_seeded_and_nested(tmp_path):
    pairs = find_layout(make_data(tmp_path / "d", n_train=8)).train
    one, two, five = (sample_shots(pairs, k, seed=0) for k in (1, 2, 5))
    assert len(five) == 5 and set(one) <= set(two) <= set(five)
    assert sample_shots(pairs, 2, seed=0) == two
    assert any(sample_shots(pairs, 2, seed=s) != two for s in range(1, 5))


def test_shots_train_on_k_images_and_save_them(tmp_path):
    data = make_data(tmp_path / "d")  # 6 train + 3 val
    task = task_for(data, tmp_path, shots=2)
    task.run_dir.mkdir(parents=True)
    train_ds, val_ds = task.build_datasets()
    saved = json.loads((task.run_dir / SUBSET_FILE).read_text())
    assert saved["shots"] == 2 and len(saved["images"]) == 2 and all("/train/" in p for p in saved["images"])
    # An epoch keeps the full split's length: the 2 images cycled.
    assert len(train_ds) == 6 and {str(p.image) for p in train_ds.pairs} == set(saved["images"])
    assert len(val_ds) == 3


def test_saved_list_is_read_back_not_drawn_again(tmp_path):
    data = make_data(tmp_path / "d")
    task = task_for(data, tmp_path, shots=2)
    task.run_dir.mkdir(parents=True)
    task.build_datasets()
    path = task.run_dir / SUBSET_FILE
    saved = json.loads(path.read_text())
    others = [str(p.image) for p in find_layout(data).train if str(p.image) not in saved["images"]]
    saved["images"] = others[:2]  # a hand-edited list
    path.write_text(json.dumps(saved))
    again, _ = task_for(data, tmp_path, shots=2).build_datasets()
    assert {str(p.image) for p in again.pairs} == set(others[:2])
    # Drawn for another K: drawn again and overwritten.
    task_for(data, tmp_path, shots=3).build_datasets()
    assert json.loads(path.read_text())["shots"] == 3


def test_saved_list_naming_a_validation_image_is_refused(tmp_path):
    data = make_data(tmp_path / "d")
    task = task_for(data, tmp_path, shots=1)
    task.run_dir.mkdir(parents=True)
    (task.run_dir / SUBSET_FILE).write_text(json.dumps({"shots": 1, "seed": 0,
                                                        "images": [str(data / "val" / "images" / "v0.png")]}))
    with pytest.raises(DataError, match="v0.png, which is not a training image"):
        task.build_datasets()


FAST = ["--task", "segmentation", "--weights", "none", "--img-size", 32, "--batch-size", 4, "--workers", 0,
        "--decoder-channels", "16,8,8,8,8"]


def test_resume_reuses_the_saved_list(tmp_path):
    data, run = make_data(tmp_path / "d"), tmp_path / "run"
    r = invoke("finetune", *FAST, "--data", data, "--shots", 2, "--epochs", 1, "--out", run)
    assert r.exit_code == 0, r.output
    assert "2 of 6 training image(s)" in r.output
    saved = json.loads((run / SUBSET_FILE).read_text())
    again = invoke("finetune", "--resume", run)
    assert again.exit_code == 0, again.output
    assert "resuming" in again.output and f"training on the 2 image(s) listed in {run / SUBSET_FILE}" in again.output
    assert json.loads((run / SUBSET_FILE).read_text()) == saved


def test_more_shots_than_images_is_one_clear_line(tmp_path):
    r = invoke("finetune", *FAST, "--data", make_data(tmp_path / "d"), "--shots", 9, "--out", tmp_path / "run")
    assert r.exit_code == 2
    assert r.stderr.strip() == ("error: --shots 9 but there are only 6 training images (3 more are held out for "
                                "validation); use --shots 6 or fewer, or leave --shots out")
