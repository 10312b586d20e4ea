"""End-to-end runs on the real images in ../shared/data (slow; `pytest -m slow`)."""
from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from cli import cli

pytestmark = pytest.mark.slow


def test_hymenoptera_finetune_evaluate_predict(tmp_path, shared_data):
    data = shared_data("hymenoptera_data")
    run = tmp_path / "run"
    r = CliRunner().invoke(cli, ["finetune", "--data", str(data), "--weights", "none", "--img-size", "64",
                                 "--epochs", "1", "--batch-size", "32", "--skip-bad-images", "--out", str(run)])
    assert r.exit_code == 0, r.output
    ev = CliRunner().invoke(cli, ["evaluate", "--checkpoint", str(run), "--data", str(data)])
    assert ev.exit_code == 0 and "top1" in ev.output
    pr = CliRunner().invoke(cli, ["predict", "--checkpoint", str(run), str(data / "val" / "bees"), "--out",
                                  str(tmp_path / "pred")])
    assert pr.exit_code == 0
    assert len(json.loads((tmp_path / "pred" / "predictions.json").read_text())) == 83


def test_omniglot_pretrain_then_fewshot_on_unseen_alphabets(tmp_path, shared_data):
    root = shared_data("omniglot")
    run = tmp_path / "run"
    r = CliRunner().invoke(cli, ["finetune", "--data", str(root / "images_background_small1"), "--nested-classes",
                                 "--weights", "none", "--img-size", "32", "--epochs", "1", "--batch-size", "64",
                                 "--out", str(run)])
    assert r.exit_code == 0, r.output
    ev = CliRunner().invoke(cli, ["fewshot-eval", "--checkpoint", str(run), "--data",
                                  str(root / "images_background_small2"), "--ways", "5", "--shots", "1",
                                  "--queries", "5", "--episodes", "50"])
    assert ev.exit_code == 0, ev.output
    acc = float(ev.output.split("accuracy ")[1].split("%")[0])
    assert acc > 20.0  # above 5-way chance even after one epoch
