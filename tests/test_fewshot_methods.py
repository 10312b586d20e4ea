"""Few-shot methods: cosine head with margin, episode scoring options."""
from __future__ import annotations

import pytest
import torch

from tasks.classification.config import ClassificationConfig
from tasks.classification.model import CosineClassifier
from tasks.config import ConfigError


def test_cosine_margin_lowers_only_the_true_class_logit():
    head = CosineClassifier(8, 4, scale=10.0)
    x, y = torch.randn(5, 8), torch.tensor([0, 1, 2, 3, 0])
    logits = head(x)
    m = head.with_margin(logits, y, 0.2)
    diff = logits - m
    assert torch.allclose(diff[torch.arange(5), y], torch.full((5,), 2.0))
    diff[torch.arange(5), y] = 0
    assert torch.count_nonzero(diff) == 0
    assert logits.abs().max() <= 10.0 + 1e-5  # bounded by the scale: |cos| ≤ 1


def test_cosine_margin_needs_a_cosine_head_and_a_valid_range():
    ClassificationConfig(head="cosine", cosine_margin=0.1)
    with pytest.raises(ConfigError, match="head cosine or imprint"):
        ClassificationConfig(head="linear", cosine_margin=0.1)
    with pytest.raises(ConfigError, match="cosine_margin"):
        ClassificationConfig(head="cosine", cosine_margin=1.5)


def test_cosine_head_with_margin_trains_and_restores(tiny_cls_data, tmp_path):
    from tasks.classification.task import ClassificationTask
    from tasks.config import TrainConfig
    from tasks.engine.trainer import fit
    from tasks.runner import restore

    run = tmp_path / "r"
    cfg = ClassificationConfig(data=str(tiny_cls_data), weights=None, img_size=32, head="cosine",
                               cosine_margin=0.2)
    torch.manual_seed(0)
    fit(ClassificationTask(cfg, run_dir=run), TrainConfig(epochs=1, batch_size=8, workers=0), run_dir=run)
    task, model, _, _ = restore(run, "cpu")
    assert isinstance(model.head, CosineClassifier)
    assert model.head.scale.item() != 10.0  # the scale is learnt
    assert model(torch.zeros(2, 3, 32, 32)).shape == (2, len(task.classes))


def test_balanced_assignment_fixes_a_greedy_collision():
    from tasks.classification.fewshot import Scoring, classify

    # Both queries are closest to class 0, but query 1 is the better match for it: greedy argmax
    # predicts [0, 0], the balanced (transductive) assignment [1, 0].
    support = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    query = torch.tensor([[0.8, 0.6], [0.9, 0.1]])
    labels = torch.tensor([0, 1])
    assert classify(support, labels, query, Scoring(center="none", power=False)).tolist() == [0, 0]
    assert classify(support, labels, query, Scoring(center="none", power=False, transductive=True)).tolist() == [1, 0]


def test_support_centring_changes_scores_but_not_separable_results():
    from tasks.classification.episodes import sample_episodes
    from tasks.classification.fewshot import Scoring, classify, run_episodes

    offset = torch.full((4,), 5.0)  # a shared offset makes all cosines ≈ 1; centring removes it
    support = torch.eye(4) + offset
    query = torch.eye(4) * 0.9 + offset + 0.05 * torch.tensor([[0, 1, 0, 0], [0, 0, 1, 0], [1, 0, 0, 0], [0, 0, 0, 1.]])
    labels = torch.arange(4)
    assert classify(support, labels, query, Scoring(center="support")).tolist() == [0, 1, 2, 3]
    with pytest.raises(ValueError, match="center"):
        Scoring(center="base")
    feats = torch.nn.functional.one_hot(torch.arange(5).repeat_interleave(4), 5).float() + 3.0
    eps = sample_episodes(torch.arange(5).repeat_interleave(4).tolist(), 5, 1, 3, 10, seed=0)
    assert run_episodes(feats, eps, Scoring(center="support"))["accuracy"] == 1.0
    assert run_episodes(feats, eps, Scoring(center="none", transductive=True))["accuracy"] == 1.0


@pytest.mark.parametrize("augment", ["imagenet", "shift", "none"])
def test_augment_policies_give_the_eval_framing(augment):
    import numpy as np

    from resnet_backbones import Preprocessing
    from tasks.classification.data import eval_transform, train_transform

    img = np.full((105, 90, 3), 255, np.uint8)
    img[40:60, 30:50] = 0  # a dark square on white, like a pen stroke
    pre = Preprocessing()
    tr = train_transform(32, pre, augment)
    tr.set_random_seed(0)
    ev = eval_transform(32, pre, augment)(image=img)["image"]
    assert tr(image=img)["image"].shape == ev.shape == (3, 32, 32)
    white = (1 - pre.mean[0]) / pre.std[0]
    # Policies that keep the whole image show its white border at evaluation; imagenet crops in.
    assert torch.isclose(ev[0, 0, 0], torch.tensor(white), atol=1e-3)
    if augment != "imagenet":
        assert torch.allclose(ev, eval_transform(32, pre, augment)(image=img)["image"])


def test_shift_policy_never_flips_or_recolours():
    import numpy as np

    from resnet_backbones import Preprocessing
    from tasks.classification.data import train_transform

    img = np.full((64, 64, 3), 255, np.uint8)
    img[20:44, 4:14] = 0  # a bar at the far left
    tr = train_transform(64, Preprocessing(mean=(0, 0, 0), std=(1, 1, 1)), "shift")
    for seed in range(20):
        tr.set_random_seed(seed)
        x = tr(image=img)["image"][0]
        dark_cols = (x < 0.5).any(0).nonzero().flatten()
        assert dark_cols.float().mean() < 20  # stays on the left: never mirrored
        assert x[0, 0] == 1.0 and x[-1, -1] == 1.0  # white stays white (no colour jitter)


def test_power_transform_is_applied_before_the_cosine():
    from tasks.classification.fewshot import Scoring, classify

    # Squares of small integers: the square root restores the integers, and the nearest prototype
    # changes with it: after the root cos([6,9,1], [8,8,3]) > cos([6,9,1], [2,9,1]), before it the reverse.
    support = torch.tensor([[4.0, 81.0, 1.0], [64.0, 64.0, 9.0]])
    query = torch.tensor([[36.0, 81.0, 1.0]])
    labels = torch.tensor([0, 1])
    plain = Scoring(center="none", power=False)
    assert classify(support, labels, query, plain).tolist() == [0]
    assert classify(support, labels, query, Scoring(center="none")).tolist() == [1]  # power on by default
    assert classify(support.sqrt(), labels, query.sqrt(), plain).tolist() == [1]


def test_multi_level_features_weigh_each_level_equally():
    from resnet_backbones import create_backbone
    from tasks.classification.model import ImageClassifier

    m = ImageClassifier(create_backbone("resnet18", None, out_features=("c4", "c5")), 3).eval()
    x = torch.randn(2, 3, 64, 64)
    c5, both = m.features(x), m.features(x, ("c4", "c5"))
    assert c5.shape == (2, 512) and both.shape == (2, 256 + 512)
    assert torch.allclose(both[:, :256].norm(dim=1), torch.ones(2)) and torch.allclose(both[:, 256:].norm(dim=1), torch.ones(2))
    assert torch.allclose(both[:, 256:], torch.nn.functional.normalize(c5, dim=1), atol=1e-6)


def test_cli_refuses_a_margin_on_a_linear_head(tiny_cls_data, tmp_path):
    from click.testing import CliRunner

    from cli import cli

    out = tmp_path / "run"
    r = CliRunner().invoke(cli, ["finetune", "classification", "--data", str(tiny_cls_data), "--weights", "none",
                                 "--head", "linear", "--cosine-margin", "0.1", "--out", str(out)])
    assert r.exit_code == 2, r.output
    err = r.stderr.strip()
    assert err.startswith("error: ") and len(err.splitlines()) == 1 and "head cosine or imprint" in err
    assert not out.exists()


def test_max_pooling_and_three_levels():
    from resnet_backbones import create_backbone
    from tasks.classification.model import ImageClassifier

    m = ImageClassifier(create_backbone("resnet18", None, out_features=("c3", "c4", "c5")), 3).eval()
    x = torch.randn(2, 3, 48, 48)
    maps = m.backbone(x)
    f = m.features(x, ("c3", "c4", "c5"), pool="max")
    assert f.shape == (2, 128 + 256 + 512)
    expected = torch.nn.functional.normalize(maps["c4"].amax((2, 3)), dim=1)
    assert torch.allclose(f[:, 128:384], expected, atol=1e-6)
    with pytest.raises(ValueError, match="pool"):
        m.features(x, ("c5",), pool="gem")


def test_shifted_moves_the_image_and_repeats_the_border():
    from tasks.classification.model import shifted

    x = torch.arange(16.).view(1, 1, 4, 4)
    assert torch.equal(shifted(x, 0, 0), x)
    down = shifted(x, 0, 1)
    assert torch.equal(down[..., 1:, :], x[..., :3, :]) and torch.equal(down[..., 0, :], x[..., 0, :])
    left = shifted(x, -2, 0)
    assert torch.equal(left[..., :2], x[..., 2:]) and torch.equal(left[..., 2:], x[..., 3:].expand(1, 1, 4, 2))


def test_shift_tta_averages_three_diagonal_views():
    from torch.utils.data import TensorDataset, DataLoader

    from resnet_backbones import create_backbone
    from tasks.classification.model import ImageClassifier, extract_features, shifted
    from tasks.engine.runtime import Runtime

    torch.manual_seed(0)
    m = ImageClassifier(create_backbone("resnet18", None, out_features=("c3", "c4", "c5")), 3).eval()
    x = torch.randn(3, 3, 32, 32)
    loader = DataLoader(TensorDataset(x, torch.arange(3)), batch_size=2)
    rt = Runtime.create("cpu", False)
    plain, labels = extract_features(m, loader, rt, ("c5",))
    tta, _ = extract_features(m, loader, rt, ("c5",), tta_shift=2)
    with torch.no_grad():
        views = [m.features(shifted(x, dx, dy)) for dx, dy in [(0, 0), (2, 2), (-2, -2)]]
    assert labels.tolist() == [0, 1, 2]
    assert torch.allclose(plain, views[0], atol=1e-5)
    assert torch.allclose(tta, torch.stack(views).mean(0), atol=1e-5)
    assert not torch.allclose(tta, plain, atol=1e-3)


def test_scoring_refuses_bad_pool_levels_and_shift():
    from tasks.classification.fewshot import Scoring

    with pytest.raises(ValueError, match="pool"):
        Scoring(pool="median")
    with pytest.raises(ValueError, match="levels"):
        Scoring(levels=("c2",))
    with pytest.raises(ValueError, match="tta_shift"):
        Scoring(tta_shift=-1)
