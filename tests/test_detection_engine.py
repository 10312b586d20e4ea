"""Detection through the engine and the CLI: finetune → evaluate → predict, TFA from a checkpoint, demo."""
from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from cli import cli
from tasks.config import PRESETS
from tasks.detection.demo import write_demo
from tasks.detection.visualize import MIN_SIDE

# Tiny but complete: every flag below is a real CLI flag of --task detection.
FAST = ["--weights", "none", "--img-size", "64", "--anchor-sizes", "16,32,64,128,256", "--fpn-channels", "32",
        "--box-head-dim", "64", "--roi-batch-size", "16", "--proposals", "20", "--batch-size", "3",
        "--workers", "0", "--epochs", "1"]


def invoke(*args: str):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


def assert_user_error(result, *fragments: str) -> None:
    assert result.exit_code == 2, result.output
    err = result.stderr.strip()
    assert err.startswith("error: ") and len(err.splitlines()) == 1, err
    for f in fragments:
        assert f in err, err


@pytest.fixture(scope="module")
def tiny_det_data(tmp_path_factory) -> Path:
    return write_demo(tmp_path_factory.mktemp("det") / "data", seed=1, n_train=6, n_val=3)


@pytest.fixture(scope="module")
def base_run(tiny_det_data, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("det-run") / "run"
    result = invoke("finetune", "--task", "detection", "--data", tiny_det_data, *FAST, "--out", run)
    assert result.exit_code == 0, result.output
    assert "best ap50" in result.output
    return run


def test_finetune_evaluate_predict_round_trip(base_run, tiny_det_data, tmp_path):
    assert (base_run / "best.pt").is_file() and len(list((base_run / "visuals").glob("val_*.png"))) == 3
    ckpt = torch.load(base_run / "best.pt", weights_only=True)
    assert [c["name"] for c in ckpt["task_meta"]["categories"]] == ["circle", "square", "triangle"]
    ev = invoke("evaluate", "--checkpoint", base_run, "--data", tiny_det_data, "--json", tmp_path / "m.json")
    assert ev.exit_code == 0, ev.output
    metrics = json.loads((tmp_path / "m.json").read_text())
    assert set(metrics) == {"map", "ap50", "ap75", "ap_small", "ap_medium", "ap_large"}
    best = ckpt["state"]["history"][-1]
    assert metrics["ap50"] == pytest.approx(best["ap50"])  # same val split, same weights → same number

    images = sorted((tiny_det_data / "images").glob("*.png"))[:2]
    pr = invoke("predict", "--checkpoint", base_run / "best.pt", *images, "--out", tmp_path / "pred")
    assert pr.exit_code == 0, pr.output
    dets = json.loads((tmp_path / "pred" / "detections.json").read_text())
    assert dets, "a trained detector with 20 proposals returns boxes above 0.05"
    for d in dets:
        w, h = Image.open(d["file_name"]).size
        x, y, bw, bh = d["bbox"]
        assert d["category_id"] in (1, 2, 3) and 0 <= x and 0 <= y and x + bw <= w + 0.01 and y + bh <= h + 0.01
        assert d["category_name"] in ("circle", "square", "triangle") and 0.05 <= d["score"] <= 1
    assert {d["image_id"] for d in dets} <= {1, 2}
    for p in images:
        png, (w, h) = Image.open(tmp_path / "pred" / f"{p.stem}.png"), Image.open(p).size
        k = math.ceil(MIN_SIDE / min(w, h))  # drawn enlarged by a whole factor, so labels can be read
        assert png.size == (w * k, h * k)


def rename_category(data: Path, out: Path, old: str, new: str) -> Path:
    """A copy of ``data`` where category ``old`` is called ``new`` (a class the base model never saw)."""
    shutil.copytree(data, out)
    for split in ("train", "val"):
        path = out / "annotations" / f"{split}.json"
        coco = json.loads(path.read_text())
        for c in coco["categories"]:
            if c["name"] == old:
                c["name"] = new
        path.write_text(json.dumps(coco))
    return out


def test_tfa_fine_tunes_only_the_predictor_from_a_checkpoint(base_run, tiny_det_data, tmp_path):
    novel = rename_category(tiny_det_data, tmp_path / "novel", "triangle", "pyramid")
    run = tmp_path / "tfa"
    result = invoke("finetune", "--task", "detection", "--data", novel, *FAST, "--out", run,
                    "--init-from", base_run, "--train-only", "predictor", "--cosine-classifier", "--shots", "1")
    assert result.exit_code == 0, result.output
    assert "rows kept for 2 class(es) ['circle', 'square'], new: ['pyramid']" in result.output
    subset = json.loads((run / "fewshot_subset.json").read_text())
    assert {k: len(v) for k, v in subset["annotation_ids"].items()} == {"circle": 1, "square": 1, "pyramid": 1}
    base = torch.load(base_run / "best.pt", weights_only=True)["model"]
    tuned = torch.load(run / "last.pt", weights_only=True)["model"]
    pred = "roi_heads.box_predictor."
    same = [k for k in base if not k.startswith(pred)]
    assert all(torch.equal(base[k], tuned[k]) for k in same), "TFA must leave everything but the predictor"
    assert not torch.equal(base[pred + "bbox_pred.weight"], tuned[pred + "bbox_pred.weight"])
    assert pred + "cls_score.bias" not in tuned  # cosine classifier
    # evaluate/predict rebuild it from the checkpoint alone (no --init-from read again).
    shutil.rmtree(base_run / "visuals", ignore_errors=True)
    ev = invoke("evaluate", "--checkpoint", run, "--data", novel)
    assert ev.exit_code == 0, ev.output


def test_init_from_checks_architecture(base_run, tiny_det_data, tmp_path):
    result = invoke("finetune", "--task", "detection", "--data", tiny_det_data, *FAST, "--out", tmp_path / "x",
                    "--init-from", base_run, "--head", "c4")
    assert_user_error(result, "was trained with --head fpn")


def test_data_errors_are_one_line(tiny_det_data, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(tiny_det_data, broken)
    (broken / "images" / "00002.png").unlink()
    result = invoke("finetune", "--task", "detection", "--data", broken, *FAST, "--out", tmp_path / "r")
    assert_user_error(result, "'00002.png' not found")
    result = invoke("finetune", "--task", "detection", "--data", tmp_path / "nope", *FAST, "--out", tmp_path / "r")
    assert_user_error(result, "not found")
    result = invoke("finetune", "--task", "detection", "--data", tiny_det_data, *FAST, "--out", tmp_path / "r",
                    "--head", "c5")
    assert_user_error(result, "head must be one of fpn, c4")
    result = invoke("finetune", "--task", "detection", "--data", tiny_det_data, *FAST, "--out", tmp_path / "r",
                    "--head", "c4", "--head-version", "v2")
    assert_user_error(result, "--head c4 has no v2 design")
    assert not (tmp_path / "r").exists()  # nothing left behind


def test_convert_masks_to_coco_command(tmp_path):
    (tmp_path / "masks").mkdir()
    m = np.zeros((20, 30), np.uint8)
    m[2:6, 3:9], m[10:20, 10:30] = 1, 2
    Image.fromarray(m).save(tmp_path / "masks" / "im.png")
    result = invoke("convert", "masks-to-coco", tmp_path / "masks", "--out", tmp_path / "a.json",
                    "--category", "cell")
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["annotations"] == 2
    bad = invoke("convert", "masks-to-coco", tmp_path / "masks", "--out", tmp_path / "a.json",
                 "--images", tmp_path / "missing")
    assert_user_error(bad, "image folder", "not found")


@pytest.mark.slow
@pytest.mark.parametrize("head", ["fpn", "c4"])
def test_demo_learns_from_random_init(head, tmp_path):
    """The documented demo: no flag but the head; offline the backbone starts random."""
    result = invoke("finetune", "--task", "detection", "--head", head, "--weights", "none",
                    "--out", tmp_path / "demo")
    assert result.exit_code == 0, result.output
    best = torch.load(tmp_path / "demo" / "best.pt", weights_only=True)["state"]["best_metric"]
    assert best > 0.3, f"demo AP50 {best:.3f}"


@pytest.mark.parametrize("preset", sorted(PRESETS.glob("detection*.yaml")),
                         ids=lambda p: p.name)
def test_presets_are_valid_detection_configs(preset):
    from tasks.config import load_yaml, split_values
    from tasks.detection.config import DetectionConfig

    values = load_yaml(preset)
    assert values.pop("task") == "detection"
    train, cfg = split_values(values, DetectionConfig)
    assert cfg.head in ("fpn", "c4") and list(cfg.anchor_sizes) == [32, 64, 128, 256, 512]
