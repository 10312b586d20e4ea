"""The `resnet-tasks` command: happy paths and every bad input → one line, exit code 2."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from cli import cli


def invoke(*args: str):
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def assert_user_error(result, *fragments: str) -> None:
    assert result.exit_code == 2, result.output
    err = result.stderr.strip()
    assert err.startswith("error: ") and len(err.splitlines()) == 1, err
    assert "Traceback" not in result.output
    for f in fragments:
        assert f in err, err


def test_backbones_lists_registry():
    result = invoke("backbones")
    assert result.exit_code == 0
    for name in ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152"):
        assert name in result.output
    assert "64/256/512/1024/2048" in result.output and "IMAGENET1K_V2" in result.output


def test_backbones_describe():
    result = invoke("backbones", "--describe", "resnet50", "--freeze-stages", "3")
    assert result.exit_code == 0
    assert "FREEZE_AT = 4" in result.output and "frozen_stages = 3" in result.output
    assert "trainable_layers = 1" in result.output
    assert_user_error(invoke("backbones", "--describe", "resnet50", "--freeze-stages", "7"), "0…4")
    assert_user_error(invoke("backbones", "--describe", "resnet51"), "unknown backbone 'resnet51'")


def test_finetune_evaluate_predict_round_trip(tiny_cls_args, tiny_cls_data, tmp_path):
    result = invoke("finetune", *tiny_cls_args)
    assert result.exit_code == 0, result.output
    assert "best top1" in result.output
    run = tmp_path / "run"
    ev = invoke("evaluate", "--checkpoint", str(run), "--data", str(tiny_cls_data), "--json", str(tmp_path / "m.json"))
    assert ev.exit_code == 0, ev.output
    metrics = json.loads((tmp_path / "m.json").read_text())
    best = torch.load(run / "best.pt", weights_only=True)["state"]["history"][-1]
    assert metrics["top1"] == pytest.approx(best["top1"])  # same val split → same number
    pr = invoke("predict", "--checkpoint", str(run / "best.pt"), str(tiny_cls_data / "val" / "circle"),
                "--out", str(tmp_path / "pred"))
    assert pr.exit_code == 0, pr.output
    preds = json.loads((tmp_path / "pred" / "predictions.json").read_text())
    assert len(preds) == 3 and all(p["label"] in {"circle", "square", "triangle", "cross"} for p in preds)
    assert (tmp_path / "pred" / "predictions.csv").exists()


def test_yaml_config_and_flag_override(tiny_cls_args, tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("task: classification\nepochs: 1\nlr: 0.01\nlabel_smoothing: 0.0\n")
    result = invoke("finetune", "--config", str(cfg), *tiny_cls_args[2:], "--lr", "0.002")
    assert result.exit_code == 0, result.output
    import yaml

    resolved = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert resolved["lr"] == 0.002 and resolved["label_smoothing"] == 0.0 and resolved["epochs"] == 2


def test_resume_cli(tiny_cls_args, tmp_path):
    assert invoke("finetune", *tiny_cls_args).exit_code == 0
    again = invoke("finetune", "--resume", str(tmp_path / "run"))
    assert again.exit_code == 0 and "resuming" in again.output
    assert_user_error(invoke("finetune", "--resume", str(tmp_path / "run"), "--lr", "0.5"),
                      "cannot change lr when resuming")


def test_fewshot_finetune_and_episodic_eval(tiny_cls_data, tmp_path):
    args = ["--data", str(tiny_cls_data), "--weights", "none", "--img-size", "32", "--workers", "0",
            "--shots", "2", "--freeze-stages", "4", "--head", "prototype", "--out", str(tmp_path / "run")]
    assert invoke("finetune", *args).exit_code == 0
    subset = json.loads((tmp_path / "run" / "fewshot_subset.json").read_text())
    assert subset["shots"] == 2 and all(len(v) == 2 for v in subset["classes"].values())
    a = invoke("fewshot-eval", "--checkpoint", str(tmp_path / "run"), "--data", str(tiny_cls_data / "train"),
               "--ways", "3", "--shots", "1", "--queries", "2", "--episodes", "10", "--seed", "3", "--include-seen")
    b = invoke("fewshot-eval", "--checkpoint", str(tmp_path / "run"), "--data", str(tiny_cls_data / "train"),
               "--ways", "3", "--shots", "1", "--queries", "2", "--episodes", "10", "--seed", "3", "--include-seen")
    assert a.exit_code == 0 and a.output == b.output
    assert "3-way 1-shot" in a.output and "95% CI" in a.output
    # The tiny set's classes were all seen in training: left out unless asked for.
    assert "over 4 classes" in a.output
    unseen_only = invoke("fewshot-eval", "--checkpoint", str(tmp_path / "run"), "--data", str(tiny_cls_data / "train"))
    assert_user_error(unseen_only, "every class", "--include-seen")
    assert_user_error(invoke("fewshot-eval", "--checkpoint", str(tmp_path / "run"), "--data",
                             str(tiny_cls_data / "train"), "--ways", "9", "--include-seen"), "lower --ways")


def test_bad_inputs_exit_2_with_one_line(tiny_cls_args, tiny_cls_data, tmp_path):
    base = tiny_cls_args
    assert_user_error(invoke("finetune", *base, "--data", str(tmp_path / "nope")), "nope", "not found")
    assert_user_error(invoke("finetune", *base, "--optimizer", "adam"), "optimizer must be one of")
    assert_user_error(invoke("finetune", *base, "--freeze-stages", "5"), "0…4")
    assert_user_error(invoke("finetune", *base, "--backbone", "resnet51"), "unknown backbone")
    assert_user_error(invoke("finetune", *base, "--ignore-index", "3"), "ignore_index")
    bad_yaml = tmp_path / "bad.yaml"
    bad_yaml.write_text("epochz: 3\n")
    assert_user_error(invoke("finetune", "--config", str(bad_yaml), *base[2:]), "epochz")
    assert_user_error(invoke("finetune", "--config", str(tmp_path / "missing.yaml")), "missing.yaml")
    wrong = tmp_path / "r18.pth"
    import torchvision

    torch.save(torchvision.models.resnet18().state_dict(), wrong)
    assert_user_error(invoke("finetune", *base, "--backbone", "resnet50", "--weights", str(wrong)),
                      "do not fit resnet50", "looks like resnet18")
    assert_user_error(invoke("finetune", *base, "--weights", str(tmp_path / "nothere.pth")), "nothere.pth")
    corrupt = tmp_path / "corrupt"
    shutil.copytree(tiny_cls_data, corrupt)
    (corrupt / "train" / "square" / "x.jpg").write_bytes(b"\x00garbage")
    assert_user_error(invoke("finetune", *base, "--data", str(corrupt)), "x.jpg", "--skip-bad-images")
    assert_user_error(invoke("evaluate", "--checkpoint", str(tmp_path / "none.pt"), "--data", str(tiny_cls_data)),
                      "none.pt")
    assert_user_error(invoke("evaluate", "--checkpoint", str(wrong), "--data", str(tiny_cls_data)),
                      "not a resnet-tasks checkpoint")


def test_default_weights_fall_back_loudly_offline(tiny_cls_data, tmp_path, monkeypatch):
    import urllib.error

    def offline(*a, **k):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    args = ["--data", str(tiny_cls_data), "--img-size", "32", "--epochs", "1", "--workers", "0"]
    result = invoke("finetune", *args, "--out", str(tmp_path / "a"))
    assert result.exit_code == 0, result.output
    assert "Falling back to RANDOM initialisation" in result.output
    # Asked for explicitly: never replaced.
    assert_user_error(invoke("finetune", *args, "--weights", "imagenet", "--out", str(tmp_path / "b")),
                      "cannot download", "--weights PATH")


def test_debug_shows_traceback(tiny_cls_args, tmp_path):
    result = CliRunner().invoke(cli, ["--debug", "finetune", *tiny_cls_args, "--data", str(tmp_path / "nope")])
    assert result.exit_code != 0 and result.exception is not None


def test_installed_entry_point(tmp_path):
    exe = Path(sys.executable).parent / "resnet-tasks"
    if not exe.exists():
        pytest.skip("resnet-tasks entry point not installed in this environment")
    out = subprocess.run([str(exe), "backbones"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "resnet152" in out.stdout
    bad = subprocess.run([str(exe), "finetune", "--data", str(tmp_path / "missing"), "--weights", "none"],
                         capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert bad.returncode == 2 and bad.stderr.startswith("error:") and "Traceback" not in bad.stderr
