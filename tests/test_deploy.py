"""`resnet-tasks export` and `predict --model`: every task × format round trip on tiny runs, checked
with each format's own runtime on inputs the export never saw; bad input → exit 2, no file left."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from cli import cli
from tasks.runner import restore

FORMATS = {"onnx": ".onnx", "torchscript": ".pt", "exported-program": ".pt2"}
CASES = [("classification", f) for f in FORMATS] + [("segmentation", f) for f in FORMATS] + [("detection", "onnx")]


def invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def assert_user_error(result, *fragments: str) -> None:
    assert result.exit_code == 2, result.output
    err = result.stderr.strip()
    assert err.startswith("error: ") and len(err.splitlines()) == 1, err
    for f in fragments:
        assert f in err, err


def train(args: list, out: Path) -> Path:
    r = invoke("finetune", *args, "--weights", "none", "--epochs", 1, "--workers", 0, "--out", out, "-q")
    assert r.exit_code == 0, r.output
    return out


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, tuple[Path, Path]]:
    """(run folder, data folder) of one tiny run per task."""
    import sys

    from tasks.classification.demo import make_classification_demo
    from tasks.detection.demo import write_demo

    sys.path.insert(0, str(Path(__file__).parent))
    from test_segmentation import make_data

    root = tmp_path_factory.mktemp("deploy")
    # 64 px: at 32 px the deepest map is 1x1, which torch.export specialises (a size-1 dimension)
    cls = make_classification_demo(root / "cls", seed=1, size=64, n_train=4, n_val=2)
    seg = make_data(root / "seg", n_train=4, n_val=2, size=(45, 38))
    det = write_demo(root / "det", seed=1, n_train=4, n_val=2)
    return {
        "classification": (train(["classification", "--data", cls, "--img-size", 64, "--batch-size", 8], root / "r-cls"),
                           cls),
        "segmentation": (train(["segmentation", "--data", seg, "--img-size", 32, "--batch-size", 4], root / "r-seg"),
                         seg),
        "detection": (train(["detection", "--data", det, "--img-size", 64, "--anchor-sizes", "16,32,64,128,256",
                             "--fpn-channels", 32, "--box-head-dim", 64, "--roi-batch-size", 16, "--proposals", 20,
                             "--batch-size", 2], root / "r-det"), det),
    }


def run_with_own_runtime(fmt: str, path: Path, x):
    """The exported file run by its format's runtime, independently of tasks.deploy's loaders."""
    if fmt == "onnx":
        import onnxruntime as ort

        s = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return [torch.from_numpy(a) for a in s.run(None, {s.get_inputs()[0].name: x.numpy()})]
    module = torch.jit.load(str(path)) if fmt == "torchscript" else torch.export.load(str(path)).module()
    return [module(x)]


def memoised_exports(runs, tmp_path_factory, prefix: str, flags):
    """``get(task, fmt)`` → (file, CLI output) of ``export`` with ``flags(task, fmt)``, made once each."""
    done: dict[tuple[str, str], tuple[Path, str]] = {}

    def get(task: str, fmt: str) -> tuple[Path, str]:
        if (task, fmt) not in done:
            out = tmp_path_factory.mktemp(prefix) / f"model{FORMATS[fmt]}"
            r = invoke("export", "--checkpoint", runs[task][0], "--format", fmt, "--out", out, *flags(task, fmt))
            assert r.exit_code == 0, r.output
            done[task, fmt] = out, r.output
        return done[task, fmt]

    return get


@pytest.fixture(scope="module")
def exported(runs, tmp_path_factory):
    """``exported(task, fmt)`` → (file, CLI output) of a ``--dynamic`` export, made once per module."""
    return memoised_exports(runs, tmp_path_factory, "export", lambda task, fmt: ["--dynamic"])


@pytest.mark.parametrize("task,fmt", CASES)
def test_round_trip_matches_pytorch_on_unseen_shapes(runs, exported, task, fmt):
    run, _ = runs[task]
    out, output = exported(task, fmt)
    assert "parity: max abs difference" in output
    meta = json.loads(out.with_name(out.name + ".json").read_text())
    assert meta["task"] == task and meta["model_format"] == fmt and meta["parity"]["max_abs_diff"] <= 1e-4
    assert meta["classes"] and {"mean", "std"} <= set(meta["preprocessing"])
    assert [p.name for p in out.parent.iterdir() if p.name.startswith(".")] == []  # no temporary file left

    _, model, _, _ = restore(run, "cpu")
    model.eval()
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        if task == "detection":  # one image of any size per call: boxes, labels, scores
            x = torch.rand(3, 70, 90, generator=g)
            got = run_with_own_runtime(fmt, out, x)
            ref = model([x])[0]
            expected = [ref["boxes"], ref["labels"], ref["scores"]]
        else:  # a batch size and an image size the export never saw
            x = torch.randn(3, 3, 40, 56, generator=g)
            got, expected = run_with_own_runtime(fmt, out, x), [model(x)]
    for e, a in zip(expected, got, strict=True):
        assert e.shape == a.shape
        assert (e.float() - a.float()).abs().max().item() <= 1e-4


def test_static_export_fixes_the_image_size_not_the_batch(runs, tmp_path):
    import onnxruntime as ort

    run, _ = runs["classification"]
    out = tmp_path / "static.onnx"
    assert invoke("export", "--checkpoint", run, "--out", out).exit_code == 0
    meta = json.loads((tmp_path / "static.onnx.json").read_text())
    assert meta["inputs"][0]["shape"] == ["batch", 3, 64, 64] and meta["dynamic_size"] is False
    s = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    assert s.run(None, {"images": np.zeros((5, 3, 64, 64), np.float32)})[0].shape == (5, 4)
    with pytest.raises(Exception, match="(?i)dimension|shape"):
        s.run(None, {"images": np.zeros((1, 3, 40, 40), np.float32)})


def test_nhwc_layout_takes_channels_last_images(runs, tmp_path):
    import onnxruntime as ort

    run, _ = runs["classification"]
    out = tmp_path / "nhwc.onnx"
    assert invoke("export", "--checkpoint", run, "--out", out, "--layout", "nhwc").exit_code == 0
    assert json.loads((tmp_path / "nhwc.onnx.json").read_text())["inputs"][0]["layout"] == "NHWC"
    x = torch.randn(2, 3, 64, 64)
    s = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    got = s.run(None, {"images": x.permute(0, 2, 3, 1).contiguous().numpy()})[0]
    _, model, _, _ = restore(run, "cpu")
    with torch.no_grad():
        assert np.abs(got - model.eval()(x).numpy()).max() <= 1e-4


@pytest.mark.parametrize("task", ["classification", "segmentation", "detection"])
def test_predict_with_the_onnx_file_writes_what_the_checkpoint_writes(runs, exported, task, tmp_path):
    run, data = runs[task]
    images = {"classification": data / "val", "segmentation": data / "val" / "images",
              "detection": data / "images"}[task]
    model, _ = exported(task, "onnx")
    a, b = tmp_path / "onnx", tmp_path / "ckpt"
    r = invoke("predict", "--model", model, images, "--out", a)
    assert r.exit_code == 0, r.output
    assert invoke("predict", "--checkpoint", run, images, "--out", b).exit_code == 0
    if task == "classification":
        pa, pb = (json.loads((d / "predictions.json").read_text()) for d in (a, b))
        assert [p["label"] for p in pa] == [p["label"] for p in pb]
        assert np.allclose([p["score"] for p in pa], [p["score"] for p in pb], atol=1e-3)
    elif task == "segmentation":
        for m in sorted((b / "masks").iterdir()):
            assert np.array_equal(np.asarray(Image.open(m)), np.asarray(Image.open(a / "masks" / m.name)))
    else:  # the checkpoint batches 4 images (torchvision pads them to one size), ONNX runs one at a time
        dets = json.loads((a / "detections.json").read_text())
        assert {d["file_name"] for d in dets} <= {str(p) for p in images.iterdir()}
        assert len(list(a.glob("*.png"))) == len(list(images.iterdir()))


# ---- --precision fp16 ----------------------------------------------------------------------------------------------
# Every format on both tasks; --dynamic and --layout nhwc ride along on the classifier's ONNX file. Static
# exports otherwise, and 2 parity images: PyTorch's float16 convolutions on a CPU run ~15x slower than float32
# ones, and a dynamic ExportedProgram takes seconds to load. The segmentation ONNX and ExportedProgram cases
# (~12 s each, the same exporters as the fp32 round trips above) run with -m slow.
FP16_CASES = {("classification", "onnx"): ["--layout", "nhwc", "--dynamic"], ("classification", "torchscript"): [],
              ("classification", "exported-program"): [], ("segmentation", "onnx"): [],
              ("segmentation", "torchscript"): [], ("segmentation", "exported-program"): []}
SLOW_FP16 = {("segmentation", "onnx"), ("segmentation", "exported-program")}


@pytest.fixture(scope="module")
def exported_fp16(runs, tmp_path_factory):
    """``exported_fp16(task, fmt)`` → (file, CLI output) of an fp16 export with the flags of ``FP16_CASES``."""
    return memoised_exports(runs, tmp_path_factory, "fp16",
                            lambda task, fmt: ["--precision", "fp16", "--samples", 2, *FP16_CASES[task, fmt]])


def file_dtypes(fmt: str, path: Path) -> tuple[str | None, set[str]]:
    """(the graph's input dtype, or None where the format does not fix it; its floating weights' dtypes)."""
    if fmt == "onnx":
        import onnx

        m = onnx.load(str(path))
        name = onnx.helper.tensor_dtype_to_np_dtype
        floats = {str(name(t.data_type)) for t in m.graph.initializer if t.data_type in (
            onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE, onnx.TensorProto.BFLOAT16)}
        return str(name(m.graph.input[0].type.tensor_type.elem_type)), floats
    if fmt == "torchscript":
        m = torch.jit.load(str(path))
        return None, {str(t.dtype).removeprefix("torch.") for t in [*m.parameters(), *m.buffers()]
                      if t.is_floating_point()}
    ep = torch.export.load(str(path))
    (user_input,) = ep.graph_signature.user_inputs
    node = next(n for n in ep.graph.nodes if n.name == user_input)
    return (str(node.meta["val"].dtype).removeprefix("torch."),
            {str(t.dtype).removeprefix("torch.") for t in ep.state_dict.values() if t.is_floating_point()})


@pytest.mark.parametrize("task,fmt", [pytest.param(*case, marks=pytest.mark.slow) if case in SLOW_FP16 else case
                                      for case in FP16_CASES])
def test_fp16_round_trip_is_float16_half_the_size_and_close_to_fp32(runs, exported_fp16, task, fmt):
    run, _ = runs[task]
    out, output = exported_fp16(task, fmt)
    assert "parity: max abs difference" in output
    meta = json.loads(out.with_name(out.name + ".json").read_text())
    (spec,) = meta["inputs"]
    assert spec["dtype"] == "float16" and spec["layout"] == ("NHWC" if "nhwc" in FP16_CASES[task, fmt] else "NCHW")
    tol = meta["parity"]["tolerance"]
    assert 0.01 <= tol < 1 and meta["parity"]["max_abs_diff"] <= tol  # 1e-4 (fp32's) would refuse float16
    input_dtype, weights = file_dtypes(fmt, out)
    assert input_dtype in (None, "float16") and weights == {"float16"}
    _, model, _, _ = restore(run, "cpu")
    n_params = sum(p.numel() for p in model.parameters())
    assert 2 * n_params < out.stat().st_size < 2.5 * n_params  # 2 bytes a weight (fp32: 4)

    shape = spec["shape"]  # ["batch", 3, H, W] or NHWC ["batch", H, W, 3]
    h, w = (40, 56) if meta["dynamic_size"] else shape[2:] if spec["layout"] == "NCHW" else shape[1:3]
    x = torch.randn(3, 3, h, w, generator=torch.Generator().manual_seed(0))  # a batch (and size) never seen
    fed = x.permute(0, 2, 3, 1).contiguous() if spec["layout"] == "NHWC" else x
    (got,) = run_with_own_runtime(fmt, out, fed.half())
    with torch.no_grad():
        expected = model.eval()(x)
    assert got.dtype == torch.float16 and got.shape == expected.shape
    assert (got.float() - expected).abs().max().item() <= 0.01 * max(1.0, expected.abs().max().item())


def test_predict_with_an_fp16_onnx_file_writes_what_the_checkpoint_writes(runs, exported_fp16, tmp_path):
    run, data = runs["classification"]
    model, _ = exported_fp16("classification", "onnx")  # NHWC and float16: predict permutes and casts
    r = invoke("predict", "--model", model, data / "val", "--out", tmp_path / "onnx")
    assert r.exit_code == 0, r.output
    assert invoke("predict", "--checkpoint", run, data / "val", "--out", tmp_path / "ckpt").exit_code == 0
    pa, pb = (json.loads((tmp_path / d / "predictions.json").read_text()) for d in ("onnx", "ckpt"))
    assert [p["label"] for p in pa] == [p["label"] for p in pb]
    assert np.allclose([p["score"] for p in pa], [p["score"] for p in pb], atol=1e-2)


# ---- bad input: exit 2, one line, nothing written -----------------------------------------------------------------
def test_a_checkpoint_that_is_not_ours(tmp_path):
    bad = tmp_path / "weights.pt"
    torch.save({"conv1.weight": torch.zeros(1)}, bad)
    out = tmp_path / "m.onnx"
    assert_user_error(invoke("export", "--checkpoint", bad, "--out", out), "not a resnet-tasks checkpoint")
    assert not out.exists()


def test_unsupported_format_for_the_task(runs, tmp_path):
    run, _ = runs["detection"]
    out = tmp_path / "det.pt"
    assert_user_error(invoke("export", "--checkpoint", run, "--format", "torchscript", "--out", out),
                      "detection models export to onnx only")
    assert_user_error(invoke("export", "--checkpoint", run, "--layout", "nhwc", "--out", out), "--layout nhwc")
    assert_user_error(invoke("export", "--checkpoint", run, "--precision", "fp16", "--out", tmp_path / "det.onnx"),
                      "--precision fp16 is not available for detection onnx export")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("fmt,precision", [("onnx", "fp32"), ("torchscript", "fp16")])
def test_a_parity_failure_leaves_no_file(runs, tmp_path, fmt, precision):
    run, _ = runs["classification"]
    out = tmp_path / f"m{FORMATS[fmt]}"
    out.write_bytes(b"an older export")  # kept: only a checked file replaces it
    assert_user_error(invoke("export", "--checkpoint", run, "--format", fmt, "--precision", precision, "--out", out,
                             "--tolerance", "0"), "parity check failed", "nothing written")
    assert out.read_bytes() == b"an older export" and sorted(p.name for p in tmp_path.iterdir()) == [out.name]


def test_other_bad_requests(runs, tmp_path):
    run, _ = runs["classification"]
    assert_user_error(invoke("export", "--checkpoint", run, "--format", "exported-program", "--out", tmp_path / "m.pt"),
                      "must end in .pt2")
    assert_user_error(invoke("export", "--checkpoint", run, "--format", "torchscript", "--opset", 17, "--out",
                             tmp_path / "m.pt"), "--opset applies to --format onnx only")
    assert_user_error(invoke("export", "--checkpoint", run, "--data", tmp_path / "nowhere", "--out", tmp_path / "m.onnx"),
                      "data folder", "not found")
    images = runs["classification"][1] / "val"
    assert_user_error(invoke("predict", "--model", tmp_path / "m.onnx", images, "--out", tmp_path / "p"),
                      "m.onnx not found")
    (tmp_path / "m.onnx").write_bytes(b"x")
    assert_user_error(invoke("predict", "--model", tmp_path / "m.onnx", images, "--out", tmp_path / "p"),
                      "m.onnx.json not found")
    assert_user_error(invoke("predict", "--model", tmp_path / "m.onnx", "--checkpoint", run, images, "--out",
                             tmp_path / "p"), "exactly one of --checkpoint CKPT or --model FILE")


# ---- quantize ------------------------------------------------------------------------------------------------------
def int8_tensors(path: Path) -> int:
    ep = torch.export.load(str(path))
    return sum(t.dtype == torch.int8 for t in [*ep.state_dict.values(), *ep.constants.values()])


def test_static_int8_is_4x_smaller_and_close_to_fp32(runs, tmp_path):
    from tasks.deploy.adapters import adapter_for
    from tasks.deploy.quantize import load_int8
    from tasks.deploy.source import load_source

    run, data = runs["classification"]
    out, report = tmp_path / "q.pt2", tmp_path / "r.json"
    r = invoke("quantize", "--checkpoint", run, "--out", out, "--calib-images", 8, "--batch-size", 4, "--json", report,
               "--latency-runs", 2)
    assert r.exit_code == 0, r.output
    assert "top1:" in r.output and "latency batch1:" in r.output
    rep = json.loads(report.read_text())
    assert rep["calibration_images"] == 8 and rep["size_mb"]["int8"] < 0.3 * rep["size_mb"]["fp32"]
    assert int8_tensors(out) == 21  # 20 convolutions and the linear head
    src = load_source(run)
    val = adapter_for("classification").val_dataset(src.task, data)
    x = torch.stack([val[i][0] for i in range(len(val))])
    with torch.no_grad():
        ref, got = src.model(x), load_int8(out, x)(x)
    assert torch.nn.functional.cosine_similarity(ref, got).min() > 0.99
    assert json.loads((tmp_path / "q.pt2.json").read_text())["quantization"]["mode"] == "static"
    pr = invoke("predict", "--model", out, data / "val", "--out", tmp_path / "pred")
    assert pr.exit_code == 0, pr.output


def test_dynamic_int8_quantises_the_linear_layer_only(runs, tmp_path):
    from tasks.deploy.formats import load

    run, data = runs["classification"]
    out = tmp_path / "d.pt2"
    r = invoke("quantize", "--checkpoint", run, "--mode", "dynamic", "--out", out, "--batch-size", 4, "--no-lower",
               "--latency-runs", 0)
    assert r.exit_code == 0, r.output
    assert int8_tensors(out) == 1
    _, model, _, _ = restore(run, "cpu")
    x = torch.rand(3, 3, 64, 64)
    with torch.no_grad():  # the head's weights quantised per channel: logits within a few hundredths
        assert (load("exported-program", out, None)(x) - model.eval()(x)).abs().max() < 0.05


def test_segmentation_int8(runs, tmp_path):
    run, _ = runs["segmentation"]
    r = invoke("quantize", "--checkpoint", run, "--out", tmp_path / "s.pt2", "--calib-images", 4, "--batch-size", 2,
               "--latency-runs", 0, "--no-lower")
    assert r.exit_code == 0, r.output
    assert "miou:" in r.output and int8_tensors(tmp_path / "s.pt2") > 20


def test_quantize_bad_requests(runs, tmp_path):
    assert_user_error(invoke("quantize", "--checkpoint", runs["detection"][0], "--out", tmp_path / "q.pt2"),
                      "quantize supports classification and segmentation")
    assert_user_error(invoke("quantize", "--checkpoint", runs["classification"][0], "--out", tmp_path / "q.onnx"),
                      "must end in .pt2")
    assert list(tmp_path.iterdir()) == []


# ---- prune ---------------------------------------------------------------------------------------------------------
def test_fit_shapes_rebuilds_a_pruned_model_from_its_weights():
    from resnet_backbones import create_backbone
    from tasks.classification.model import ImageClassifier
    from tasks.deploy.prune import fit_shapes, prune_channels

    def fresh():
        return ImageClassifier(create_backbone("resnet18", None, out_features=("c4", "c5")), 3).eval()

    model = fresh()
    pruned = prune_channels(model, torch.randn(2, 3, 64, 64), 0.8, [model.head])  # the classes stay
    assert pruned.backbone.layer1[0].conv1.out_channels < 64 and pruned.head.out_features == 3
    loaded = fresh()
    fit_shapes(loaded, pruned.state_dict())
    loaded.load_state_dict(pruned.state_dict())
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(loaded(x), pruned(x))


def test_prune_finetune_load_export(runs, tmp_path):
    run, data = runs["classification"]
    out = tmp_path / "pruned"
    r = invoke("prune", "--checkpoint", run, "--keep", 0.8, "--out", out, "--finetune-epochs", 1)
    assert r.exit_code == 0, r.output
    rep = json.loads((out / "prune_report.json").read_text())
    assert rep["flops_ratio"] <= 0.8 and rep["finetuned"]["params"] < 0.8 * rep["before"]["params"]
    assert {"before", "pruned", "finetuned"} <= set(rep) and "top1" in rep["finetuned"]
    _, model, _, ckpt = restore(out, "cpu")
    assert ckpt["task_meta"]["pruned"]["keep"] == 0.8
    assert 48 <= model.backbone.layer4[0].conv1.in_channels < 256  # every prunable layer lost channels
    ev = invoke("evaluate", "--checkpoint", out, "--data", data, "--json", tmp_path / "m.json")
    assert ev.exit_code == 0, ev.output
    assert json.loads((tmp_path / "m.json").read_text())["top1"] == pytest.approx(rep["finetuned"]["top1"])
    ex = invoke("export", "--checkpoint", out, "--out", tmp_path / "p.onnx")
    assert ex.exit_code == 0, ex.output


def test_prune_segmentation_without_finetuning(runs, tmp_path):
    run, data = runs["segmentation"]
    out = tmp_path / "pruned"
    r = invoke("prune", "--checkpoint", run, "--out", out)
    assert r.exit_code == 0, r.output
    assert json.loads((out / "prune_report.json").read_text())["flops_ratio"] <= 0.8
    pr = invoke("predict", "--checkpoint", out, data / "val" / "images", "--out", tmp_path / "pred")
    assert pr.exit_code == 0, pr.output


def test_prune_bad_requests(runs, tmp_path):
    assert_user_error(invoke("prune", "--checkpoint", runs["detection"][0], "--out", tmp_path / "p"),
                      "prune supports classification and segmentation")
    assert invoke("prune", "--checkpoint", runs["classification"][0], "--keep", 1.5, "--out", tmp_path / "p"
                  ).exit_code == 2
    assert_user_error(invoke("prune", "--checkpoint", runs["classification"][0], "--out", runs["classification"][0]),
                      "already holds a run")
    assert_user_error(invoke("prune", "--out", tmp_path / "p"), "prune needs --checkpoint CKPT and --out DIR")
    assert_user_error(invoke("prune", "--resume", tmp_path / "p", "--overwrite"), "pass one of them")
    assert_user_error(invoke("prune", "--resume", runs["classification"][0]), "is not a pruned fine-tune")
    assert not (tmp_path / "p").exists()


def test_an_interrupted_pruned_finetune_resumes_bit_identical(tiny_cls_data, tmp_path, monkeypatch):
    """Interrupted in its second epoch, continued by the same command line with --resume: every parameter and
    buffer equals an uninterrupted run's; a finished or interrupted run is never redone without --overwrite."""
    from tasks.classification.task import ClassificationTask
    from tasks.deploy.prune import prune
    from tasks.engine.trainer import TrainingInterrupted
    from test_engine import StopAt, assert_identical_runs

    # drawing the epochs' PNGs is most of a tiny run's time, and none of what is tested here
    monkeypatch.setattr(ClassificationTask, "save_visuals", lambda *args: None)
    monkeypatch.setattr("tasks.engine.runlog.plot_curves", lambda *args: None)
    src = train(["classification", "--data", tiny_cls_data, "--img-size", 32, "--batch-size", 12, "--logger", "none"],
                tmp_path / "src")
    a, b = tmp_path / "a", tmp_path / "b"
    args = ["prune", "--checkpoint", src, "--keep", 0.8, "--finetune-epochs", 2]  # 2 steps an epoch
    assert invoke(*args, "--out", a).exit_code == 0
    with pytest.raises(TrainingInterrupted, match="--resume"):
        prune(src, 0.8, b, finetune_epochs=2, callbacks=[StopAt(1, 1)])
    state = torch.load(b / "last.pt", weights_only=True)["state"]
    assert (state["epoch"], state["step_in_epoch"]) == (1, 1) and not (b / "prune_report.json").exists()
    for taken in (a, b):
        assert_user_error(invoke(*args, "--out", taken), "already holds a run", "--resume")
    assert_user_error(invoke("finetune", "--resume", b), "pruned model", f"prune --resume {b}")
    assert_user_error(invoke(*args, "--keep", 0.5, "--out", b, "--resume", b), "cannot change --keep")

    r = invoke(*args, "--out", b, "--resume", b)  # the same command line, --resume added
    assert r.exit_code == 0, r.output
    assert "resuming" in r.output and "finetuned" in r.output
    assert_identical_runs(a, b)
    reports = [json.loads((d / "prune_report.json").read_text()) for d in (a, b)]
    for rep in reports:
        for stage in ("before", "pruned", "finetuned"):
            del rep[stage]["latency_ms_batch1"]  # measured: differs run to run
    assert reports[0] == reports[1] and reports[1]["finetuned"]["params"] < reports[1]["before"]["params"]
