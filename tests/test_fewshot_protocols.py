"""Few-shot protocols: within-alphabet episodes, the published one-shot runs layout, fewshot-eval CLI."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from cli import cli
from tasks.classification.episodes import sample_episodes, usable_groups
from tasks.classification.omniglot_runs import read_runs, runs_as_episodes
from tasks.data.io import DataError


def invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


def assert_user_error(result, *fragments: str) -> None:
    assert result.exit_code == 2, result.output
    err = result.stderr.strip()
    assert err.startswith("error: ") and len(err.splitlines()) == 1 and "Traceback" not in result.output, err
    for f in fragments:
        assert f in err, err


# ---- sampling -------------------------------------------------------------------------------------------
# 10 classes of 5 images; class c belongs to group c // 4: groups 0 and 1 hold 4 classes, group 2 only 2.
LABELS = [c for c in range(10) for _ in range(5)]
GROUPS = {c: f"alphabet{c // 4}" for c in range(10)}


def test_within_alphabet_episodes_share_a_parent_and_skip_small_groups():
    eps = sample_episodes(LABELS, ways=3, shots=1, queries=2, episodes=60, seed=0, groups=GROUPS)
    used = set()
    for ep in eps:
        classes = [LABELS[i] for i in ep.support]
        assert len(set(classes)) == 3 and len({GROUPS[c] for c in classes}) == 1
        assert not set(ep.support) & set(ep.query)
        assert all(LABELS[q] == classes[lab] for q, lab in zip(ep.query, ep.query_labels))
        used.add(GROUPS[classes[0]])
    assert used == {"alphabet0", "alphabet1"}  # alphabet2 has 2 < 3 classes: never drawn
    assert list(usable_groups(LABELS, GROUPS, ways=3, min_images=3)) == ["alphabet0", "alphabet1"]


def test_within_alphabet_episodes_are_seeded():
    a = sample_episodes(LABELS, 3, 1, 2, 20, seed=5, groups=GROUPS)
    assert a == sample_episodes(LABELS, 3, 1, 2, 20, seed=5, groups=GROUPS)
    assert a != sample_episodes(LABELS, 3, 1, 2, 20, seed=6, groups=GROUPS)


def test_across_classes_episodes_mix_groups():
    eps = sample_episodes(LABELS, ways=4, shots=1, queries=1, episodes=30, seed=0)
    assert any(len({GROUPS[LABELS[i]] for i in ep.support}) > 1 for ep in eps)


def test_no_group_big_enough_names_the_largest():
    with pytest.raises(DataError, match="largest, 'alphabet0', has 4.*lower --ways"):
        sample_episodes(LABELS, ways=5, shots=1, queries=1, episodes=1, seed=0, groups=GROUPS)
    # Classes without shots + queries images do not count towards a group.
    with pytest.raises(DataError, match="has 0"):
        sample_episodes(LABELS, ways=2, shots=3, queries=3, episodes=1, seed=0, groups=GROUPS)


# ---- the published runs layout --------------------------------------------------------------------------
def noise_png(path: Path, seed: int, size: int = 32) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (size, size), dtype=np.uint8)).save(path)


def make_runs(root: Path, n_runs: int = 2, ways: int = 4, wrong_answers_in: tuple[str, ...] = ()) -> Path:
    """``root/runNN`` in Lake et al.'s layout. Each query is a copy of one support image (so any
    network matches it), listed in shuffled order; in ``wrong_answers_in`` the file names the
    wrong support for every query."""
    for r in range(1, n_runs + 1):
        run = f"run{r:02d}"
        order = np.random.default_rng(r).permutation(ways)
        lines = []
        for j, c in enumerate(order, 1):
            support = root / run / "training" / f"class{c + 1:02d}.png"
            noise_png(support, seed=100 * r + int(c))
            (root / run / "test").mkdir(exist_ok=True)
            shutil.copy(support, root / run / "test" / f"item{j:02d}.png")
            named = (c + 1) % ways if run in wrong_answers_in else c
            lines.append(f"{run}/test/item{j:02d}.png {run}/training/class{named + 1:02d}.png")
        (root / run / "class_labels.txt").write_text("\n".join(lines) + "\n")
    return root


def test_read_runs_pairs_each_query_with_its_support(tmp_path):
    runs = read_runs(make_runs(tmp_path / "runs"))
    assert [r.name for r in runs] == ["run01", "run02"]
    for r in runs:
        assert len(r.supports) == 4 and len(r.queries) == 4
        for q, a in zip(r.queries, r.answers):
            assert q.read_bytes() == r.supports[a].read_bytes()
    images, episodes = runs_as_episodes(runs)
    assert len(images) == 16 and len(set(images)) == 16
    assert [images[i] for i in episodes[1].query] == runs[1].queries
    assert [images[episodes[1].support[a]] for a in episodes[1].query_labels] == [runs[1].supports[a]
                                                                                 for a in runs[1].answers]


@pytest.mark.parametrize("breakage, fragment", [
    ("no_runs", "no runNN/ folders"),
    ("no_labels", "run02/class_labels.txt not found"),
    ("three_fields", "class_labels.txt line 2: expected"),
    ("missing_image", "class_labels.txt line 1:"),
    ("support_elsewhere", "is not an image in"),
    ("empty", "lists no queries"),
])
def test_malformed_runs_name_the_file(tmp_path, breakage, fragment):
    root = make_runs(tmp_path / "runs")
    labels = root / "run02" / "class_labels.txt"
    lines = labels.read_text().splitlines()
    if breakage == "no_runs":
        for r in ("run01", "run02"):
            shutil.rmtree(root / r)
    elif breakage == "no_labels":
        labels.unlink()
    elif breakage == "three_fields":
        lines[1] += " extra"
    elif breakage == "missing_image":
        lines[0] = lines[0].replace("item", "nothing")
    elif breakage == "support_elsewhere":
        lines[0] = lines[0].split()[0] + " run01/training/class01.png"
    elif breakage == "empty":
        lines = []
    if breakage not in ("no_runs", "no_labels"):
        labels.write_text("\n".join(lines))
    with pytest.raises(DataError, match=fragment):
        read_runs(root)


# ---- through the CLI --------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def checkpoint(tiny_cls_data, tmp_path_factory) -> Path:
    """A frozen random backbone with a prototype head: nothing to train, so it builds in seconds."""
    run = tmp_path_factory.mktemp("fs") / "run"
    r = invoke("finetune", "--data", tiny_cls_data, "--weights", "none", "--img-size", 32, "--workers", 0,
               "--freeze-stages", 4, "--head", "prototype", "--out", run)
    assert r.exit_code == 0, r.output
    return run


def test_runs_cli_prints_each_run_and_the_mean(checkpoint, tmp_path):
    root = make_runs(tmp_path / "runs", n_runs=3, wrong_answers_in=("run02",))
    r = invoke("fewshot-eval", "--checkpoint", checkpoint, "--runs", root)
    assert r.exit_code == 0, r.output
    assert "run01: 4-way 1-shot, 4 queries, error 0.0%" in r.output
    assert "run02: 4-way 1-shot, 4 queries, error 100.0%" in r.output
    assert "mean error over 3 runs: 33.33%" in r.output


def test_runs_cli_errors(checkpoint, tmp_path):
    root = make_runs(tmp_path / "runs")
    (root / "run01" / "class_labels.txt").write_text("run01/test/item01.png\n")
    assert_user_error(invoke("fewshot-eval", "--checkpoint", checkpoint, "--runs", root),
                      "run01/class_labels.txt line 1")
    assert_user_error(invoke("fewshot-eval", "--checkpoint", checkpoint, "--runs", root, "--ways", 20),
                      "drop --ways")
    assert_user_error(invoke("fewshot-eval", "--checkpoint", checkpoint), "exactly one of --data")


@pytest.fixture(scope="module")
def nested_data(tiny_cls_data, tmp_path_factory) -> Path:
    """alphabets a (4 characters), b (3), c (2); 9 images per character."""
    root = tmp_path_factory.mktemp("nested") / "data"
    shapes = ["circle", "square", "triangle", "cross"]
    for alphabet, n in (("a", 4), ("b", 3), ("c", 2)):
        for i in range(n):
            dst = root / alphabet / f"character{i}"
            shutil.copytree(tiny_cls_data / "train" / shapes[i], dst)
            for p in (tiny_cls_data / "val" / shapes[i]).iterdir():
                shutil.copy(p, dst / f"val_{p.name}")
    return root


def test_within_alphabet_cli(checkpoint, nested_data):
    args = ["fewshot-eval", "--checkpoint", checkpoint, "--data", nested_data, "--nested-classes",
            "--protocol", "within-alphabet", "--shots", 1, "--queries", 2, "--episodes", 20]
    r = invoke(*args, "--ways", 3)
    assert r.exit_code == 0, r.output
    assert "3-way 1-shot within-alphabet" in r.output and "9 classes in 2 of 3 alphabets" in r.output
    assert r.output == invoke(*args, "--ways", 3).output
    assert_user_error(invoke(*args, "--ways", 5), "the largest, 'a', has 4")
    assert_user_error(invoke(*args[:5], *args[6:], "--flat-classes", "--ways", 3), "--nested-classes")


@pytest.mark.slow
def test_within_alphabet_20_way_on_omniglot(shared_data, tmp_path):
    """small2 without the alphabets small1 trained on: katakana and Sanskrit have ≥ 20 characters,
    Tagalog (17) is skipped."""
    root = shared_data("omniglot")
    run = tmp_path / "run"
    r = invoke("finetune", "--data", root / "images_background_small1", "--nested-classes", "--weights", "none",
               "--img-size", 32, "--epochs", 1, "--batch-size", 64, "--workers", 0, "--out", run)
    assert r.exit_code == 0, r.output
    ev = invoke("fewshot-eval", "--checkpoint", run, "--data", root / "images_background_small2",
                "--protocol", "within-alphabet", "--ways", 20, "--shots", 1, "--queries", 1, "--episodes", 100)
    assert ev.exit_code == 0, ev.output
    assert "20-way 1-shot within-alphabet" in ev.output and "in 2 of 3 alphabets" in ev.output
    assert float(ev.output.split("accuracy ")[1].split("%")[0]) > 10.0  # chance is 5 %
    # The same checkpoint on runs laid out like Lake et al.'s, built from katakana's drawings
    # (binary 1-bit PNGs, as published): support = drawing 1, query = drawing 2 of 20 characters.
    runs = tmp_path / "runs"
    chars = sorted((root / "images_background_small2" / "Japanese_(katakana)").iterdir())[:20]
    lines = []
    for j, c in enumerate(np.random.default_rng(0).permutation(20), 1):
        first, second = sorted(chars[c].iterdir())[:2]
        for src, dst in ((first, runs / "run01" / "training" / f"class{c + 1:02d}.png"),
                         (second, runs / "run01" / "test" / f"item{j:02d}.png")):
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(src, dst)
        lines.append(f"run01/test/item{j:02d}.png run01/training/class{c + 1:02d}.png")
    (runs / "run01" / "class_labels.txt").write_text("\n".join(lines) + "\n")
    ev = invoke("fewshot-eval", "--checkpoint", run, "--runs", runs)
    assert ev.exit_code == 0, ev.output
    assert float(ev.output.split("run01: 20-way 1-shot, 20 queries, error ")[1].split("%")[0]) < 90.0  # chance 95 %


def test_scoring_flags_reach_the_episodes(checkpoint, tmp_path):
    root = make_runs(tmp_path / "runs", n_runs=2, wrong_answers_in=("run02",))
    plain = invoke("fewshot-eval", "--checkpoint", checkpoint, "--runs", root)
    for flags in (["--center", "support"], ["--transductive"], ["--center", "support", "--transductive"]):
        r = invoke("fewshot-eval", "--checkpoint", checkpoint, "--runs", root, *flags)
        assert r.exit_code == 0, r.output
        # run01 pairs each query with an identical support: perfect whatever the scoring
        assert "run01: 4-way 1-shot, 4 queries, error 0.0%" in r.output
    assert "mean error over 2 runs" in plain.output
    r = invoke("fewshot-eval", "--checkpoint", checkpoint, "--runs", root, "--center", "base")
    assert r.exit_code == 2 and "'base' is not one of" in r.output


def test_fewshot_eval_feature_options(checkpoint, nested_data):
    """Pooling, levels and test-time shifts are real choices: each changes the scores, bad values exit 2."""
    args = ["fewshot-eval", "--checkpoint", checkpoint, "--data", nested_data, "--nested-classes",
            "--protocol", "within-alphabet", "--ways", 3, "--shots", 1, "--queries", 2, "--episodes", 30,
            "--no-power", "--center", "none"]
    outputs = {}
    for flags in ([], ["--pool", "avg"], ["--features", "c5"], ["--tta-shift", 4], ["--tta-shift", 0]):
        r = invoke(*args, *flags)
        assert r.exit_code == 0, r.output
        outputs[tuple(map(str, flags))] = r.output.split("accuracy ")[1]
    # The tiny model was trained with --augment imagenet: auto TTA is off, so the default equals 0.
    assert outputs[()] == outputs[("--tta-shift", "0")]
    assert len({outputs[()], outputs[("--pool", "avg")], outputs[("--features", "c5")]}) >= 2
    assert_user_error(invoke(*args, "--pool", "gem"), "--pool")
    assert_user_error(invoke(*args, "--tta-shift", -1), "--tta-shift")
