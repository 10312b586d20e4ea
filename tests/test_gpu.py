"""CUDA paths (AMP, channels_last). Skipped cleanly on machines without CUDA, such as CI."""
from __future__ import annotations

import pytest
import torch

from tasks.engine.runtime import Runtime

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


def test_runtime_uses_amp_and_channels_last_on_cuda():
    rt = Runtime.create("cuda")
    assert rt.amp_dtype in (torch.bfloat16, torch.float16) and rt.channels_last
    x = rt.to_device(torch.zeros(2, 3, 8, 8))
    assert x.is_cuda and x.is_contiguous(memory_format=torch.channels_last)


def test_classification_fit_on_cuda(tiny_cls_data, tmp_path):
    from tasks.classification.config import ClassificationConfig
    from tasks.classification.task import ClassificationTask
    from tasks.config import TrainConfig
    from tasks.engine.trainer import fit

    task = ClassificationTask(ClassificationConfig(data=str(tiny_cls_data), weights=None, img_size=32), run_dir=tmp_path)
    result = fit(task, TrainConfig(epochs=2, batch_size=8, workers=0, device="cuda"), run_dir=tmp_path)
    assert all(torch.isfinite(torch.tensor(h["train_loss"])) for h in result["history"])
