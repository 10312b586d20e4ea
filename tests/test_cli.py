"""The `resnet-tasks` command: happy paths and every bad input → one line, exit code 2."""
from __future__ import annotations

import json
import os
import shutil
import signal
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
    assert_user_error(invoke("finetune", *base, "--ignore-index", "3"), "--ignore-index")  # a segmentation flag
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


# ---- validate before side effects: each case exits 2 with one line and leaves no run folder ----------------------
@pytest.fixture
def unwritable(tmp_path) -> Path:
    """A folder nobody may create files in (as root, chmod does not stop writes: use /sys)."""
    if os.geteuid() == 0:
        return Path("/sys")
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    return ro


def truncated_copy(data: Path, dest: Path) -> Path:
    """``data`` with one JPEG cut in half: its header reads fine, its pixels do not."""
    from PIL import Image

    shutil.copytree(data, dest)
    src = next((dest / "train" / "square").iterdir())
    Image.open(src).convert("RGB").resize((64, 64)).save(dest / "train" / "square" / "cut.jpg", quality=95)
    raw = (dest / "train" / "square" / "cut.jpg").read_bytes()
    (dest / "train" / "square" / "cut.jpg").write_bytes(raw[: len(raw) // 2])
    return dest


BAD_FINETUNE = {
    "negative lr": (["--lr", "-1"], "lr must be > 0"),
    "batch size 0": (["--batch-size", "0"], "batch_size must be >= 1"),
    "img size 0": (["--img-size", "0"], "img_size must be >= 16"),
    "negative workers": (["--workers", "-1"], "workers must be >= 0"),
    "zero epochs": (["--epochs", "0"], "epochs must be >= 1"),
    "freeze stages 5": (["--freeze-stages", "5"], "freeze_stages must be in 0…4"),
    "no cuda": (["--device", "cuda"], "no CUDA device"),
    "missing data": (["--data", "/nonexistent/data"], "/nonexistent/data not found"),
    "unknown task": (["--task", "segmentatoin"], "unknown task 'segmentatoin'"),
}


@pytest.mark.parametrize("case", list(BAD_FINETUNE))
def test_bad_finetune_values_are_refused_before_any_folder_exists(case, tiny_cls_args, tmp_path, monkeypatch):
    if case == "no cuda" and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    monkeypatch.chdir(tmp_path)
    flags, message = BAD_FINETUNE[case]
    base = tiny_cls_args[2:] if "--task" in flags else tiny_cls_args  # tiny_cls_args starts with --task
    assert_user_error(invoke("finetune", *base, *flags), message)
    assert not (tmp_path / "run").exists() and not (tmp_path / "runs").exists()


def test_bad_values_in_yaml_are_refused_like_flags(tiny_cls_args, tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("task: classification\nlr: -1\n")
    assert_user_error(invoke("finetune", "--config", str(cfg), *tiny_cls_args[2:]), "lr must be > 0")
    assert not (tmp_path / "run").exists()


def test_out_that_is_a_file(tiny_cls_args, tmp_path):
    (tmp_path / "file").write_text("x")
    assert_user_error(invoke("finetune", *tiny_cls_args, "--out", str(tmp_path / "file")), "is a file")


def test_out_that_is_read_only(tiny_cls_args, unwritable):
    assert_user_error(invoke("finetune", *tiny_cls_args, "--out", str(unwritable / "run")), "cannot write")
    assert not (unwritable / "run").exists()


def test_evaluate_batch_size_0(tiny_cls_data, tmp_path):
    assert_user_error(invoke("evaluate", "--checkpoint", str(tmp_path), "--data", str(tiny_cls_data),
                             "--batch-size", "0"), "--batch-size", "0")


@pytest.fixture(scope="module")
def trained_run(tiny_cls_data, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("trained") / "run"
    args = ["--data", str(tiny_cls_data), "--weights", "none", "--img-size", "32", "--batch-size", "8", "--epochs",
            "1", "--workers", "0", "--out", str(run)]
    assert invoke("finetune", "classification", *args).exit_code == 0
    return run


def test_predict_and_evaluate_outputs_read_only(trained_run, tiny_cls_data, unwritable):
    image = next((tiny_cls_data / "val" / "circle").iterdir())
    assert_user_error(invoke("predict", "--checkpoint", str(trained_run), str(image), "--out",
                             str(unwritable / "pred")), "cannot write")
    assert_user_error(invoke("evaluate", "--checkpoint", str(trained_run), "--data", str(tiny_cls_data), "--json",
                             str(unwritable / "m.json")), "cannot write")


def test_truncated_jpeg_is_caught_before_training_and_skipped_on_request(tiny_cls_args, tiny_cls_data, tmp_path):
    data = truncated_copy(tiny_cls_data, tmp_path / "cut")
    assert_user_error(invoke("finetune", *tiny_cls_args, "--data", str(data)), "cut.jpg", "--skip-bad-images")
    assert not (tmp_path / "run").exists()
    ok = invoke("finetune", *tiny_cls_args, "--data", str(data), "--skip-bad-images", "--epochs", "1")
    assert ok.exit_code == 0 and "skipped 1 unreadable image" in ok.output


def test_a_taken_out_is_refused_unless_resume_or_overwrite(trained_run, tiny_cls_data):
    args = ["--data", str(tiny_cls_data), "--weights", "none", "--img-size", "32", "--epochs", "1", "--workers", "0"]
    before = (trained_run / "best.pt").stat().st_mtime_ns
    assert_user_error(invoke("finetune", *args, "--out", str(trained_run)), "already holds a run", "--resume",
                      "--overwrite")
    assert (trained_run / "best.pt").stat().st_mtime_ns == before  # the finished run is untouched
    assert invoke("finetune", "--resume", str(trained_run)).exit_code == 0


def test_a_locked_run_folder_is_refused(tiny_cls_args, tmp_path):
    from tasks.engine.rundir import RunDir

    with RunDir(tmp_path / "run").claim():  # another run is writing there
        assert_user_error(invoke("finetune", *tiny_cls_args), "in use by another run")


def test_default_out_is_a_fresh_folder_each_time(tiny_cls_data, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    args = ["--data", str(tiny_cls_data), "--weights", "none", "--img-size", "32", "--epochs", "1", "--workers", "0"]
    assert invoke("finetune", *args).exit_code == 0
    assert invoke("finetune", *args).exit_code == 0
    runs = sorted((tmp_path / "runs").iterdir())
    assert len(runs) == 2 and all(r.name.startswith("classification-") and (r / "best.pt").is_file() for r in runs)


def test_a_last_batch_of_one_trains(tiny_cls_args):
    """24 training images = 23 + 1 at 32 px (deepest map 1x1): the single image joins the batch before."""
    result = invoke("finetune", *tiny_cls_args, "--batch-size", "23", "--epochs", "1")
    assert result.exit_code == 0, result.output


# ---- defaults, help, progress, logging ------------------------------------------------------------------------
def test_random_weights_unfreeze_and_say_so(tiny_cls_args, tmp_path):
    import yaml

    result = invoke("finetune", *tiny_cls_args, "--epochs", "1")
    assert "random initial weights, so backbone_lr_mult=1.0" in result.output
    assert yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())["backbone_lr_mult"] == 1.0


def test_random_weights_defaults_for_detection_keep_what_the_user_set():
    from tasks.config import split_values
    from tasks.detection.config import DetectionConfig
    from tasks.runner import follow_weights

    train, det = split_values({"weights": "none"}, DetectionConfig)
    follow_weights(train, det, user_keys={"weights"})
    assert (det.freeze_stages, det.norm, train.backbone_lr_mult) == (0, "bn", 1.0)
    train, det = split_values({"weights": "none", "freeze_stages": 2}, DetectionConfig)
    follow_weights(train, det, user_keys={"weights", "freeze_stages"})
    assert (det.freeze_stages, det.norm) == (2, "bn")
    train, det = split_values({}, DetectionConfig)  # pretrained: the fine-tuning defaults stay
    follow_weights(train, det, user_keys=set())
    assert (det.freeze_stages, det.norm, train.backbone_lr_mult) == (1, "frozen_bn", 0.1)


def test_full_res_skip_is_on_for_random_weights_only_unless_set():
    from tasks.config import split_values
    from tasks.runner import follow_weights
    from tasks.segmentation.config import SegmentationConfig

    def skip(values, user_keys):
        train, seg = split_values(values, SegmentationConfig)
        follow_weights(train, seg, user_keys)
        return seg.full_res_skip

    assert skip({"weights": "none"}, {"weights"}) is True
    assert skip({}, set()) is False  # pretrained: exactly smp.Unet
    assert skip({"weights": "none", "full_res_skip": False}, {"weights", "full_res_skip"}) is False
    assert skip({"full_res_skip": True}, {"full_res_skip"}) is True


def test_root_help_imports_no_torch():
    code = ("import sys; from cli import cli\n"
            "try: cli(['--help'])\nexcept SystemExit: pass\n"
            "assert 'torch' not in sys.modules, 'torch imported'")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                         cwd=Path(__file__).parents[1])
    assert out.returncode == 0, out.stderr
    assert "finetune" in out.stdout


def test_each_task_help_lists_its_own_flags_and_defaults():
    det = " ".join(invoke("finetune", "detection", "--help").output.split())  # unwrapped
    assert "--anchor-sizes" in det and "[default: frozen_bn]" in det and "--epochs" in det
    for other in ("--tile", "--num-classes", "--loss", "--label-smoothing", "--nested-classes"):
        assert other not in det, other
    seg = " ".join(invoke("finetune", "segmentation", "--help").output.split())
    assert "--tile" in seg and "[default: 256]" in seg and "--anchor-sizes" not in seg
    assert " ".join(invoke("finetune", "--task", "detection", "--help").output.split()) == det  # an alias
    assert "classification" in invoke("finetune", "--help").output


def test_without_a_tty_progress_is_logged_every_n_steps(tiny_cls_args):
    result = invoke("finetune", *tiny_cls_args, "--log-every", "2", "--epochs", "1")
    assert result.exit_code == 0
    lines = [ln for ln in result.output.splitlines() if "s/step" in ln]
    assert [ln.split()[3] for ln in lines] == ["2/3", "3/3"] and all("ETA" in ln for ln in lines)


def test_quiet_keeps_only_warnings_and_the_result(tiny_cls_args):
    result = invoke("finetune", *tiny_cls_args, "--epochs", "1", "--quiet")
    assert result.exit_code == 0
    assert result.stdout.strip().startswith("done:") and len(result.stdout.strip().splitlines()) == 1


def test_bundled_preset_by_name(tiny_cls_args, tmp_path):
    import yaml

    result = invoke("finetune", "--config", "classification", *tiny_cls_args[2:], "--epochs", "1")
    assert result.exit_code == 0, result.output
    assert yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())["label_smoothing"] == 0.1
    assert_user_error(invoke("finetune", "--config", "nope"), "config nope not found", "classification")


INTERRUPTED = ["--data", "{data}", "--weights", "none", "--img-size", "32", "--batch-size", "2", "--epochs", "2",
               "--workers", "2", "--log-every", "1", "--out", "{out}"]


@pytest.mark.slow
def test_sigterm_to_the_process_group_saves_exits_130_without_worker_traceback(tiny_cls_data, tmp_path):
    """What ``timeout`` does: SIGTERM to the whole process group, DataLoader workers included."""
    exe = Path(sys.executable).parent / "resnet-tasks"
    args = [a.format(data=tiny_cls_data, out=tmp_path / "run") for a in INTERRUPTED]
    proc = subprocess.Popen([str(exe), "finetune", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    for line in proc.stdout:
        if "step 3/" in line:
            os.killpg(proc.pid, signal.SIGTERM)
            break
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "Traceback" not in err + out and "interrupted (SIGTERM)" in err
    again = subprocess.run([str(exe), "finetune", "--resume", str(tmp_path / "run")], capture_output=True,
                           text=True, timeout=300)
    assert again.returncode == 0 and "resuming" in again.stdout


def test_a_third_party_task_registers_with_its_own_flags(monkeypatch):
    """What a package's entry point (group resnet_tasks.tasks) does: register a config class."""
    from dataclasses import dataclass

    import tasks
    from tasks.config import TaskConfig, option

    monkeypatch.setattr(tasks, "_REGISTRY", dict(tasks._REGISTRY))  # leave the real registry as it was

    @tasks.register_task("toy", task="toy_pkg.task:ToyTask")
    @dataclass
    class ToyConfig(TaskConfig):
        """A toy task."""

        wiggle: int = option(3, "How much to wiggle.", ge=0)

    assert "toy" in tasks.task_names()
    help_text = " ".join(invoke("finetune", "toy", "--help").output.split())
    assert "A toy task." in help_text and "--wiggle INTEGER How much to wiggle. (>= 0) [default: 3]" in help_text
    with pytest.raises(ValueError, match="already registered"):
        tasks.register_task("toy", task="other:Task")(type("OtherConfig", (), {}))


def test_quiet_before_the_command_works_too(tiny_cls_args):
    result = invoke("-q", "finetune", *tiny_cls_args, "--epochs", "1")
    assert result.exit_code == 0 and len(result.stdout.strip().splitlines()) == 1
