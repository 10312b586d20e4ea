"""Classification on ants/bees vs a timm loop; the Omniglot pretraining step vs the shared reference loop."""
from __future__ import annotations

import itertools

import torch
import torch.nn.functional as F

from .sides import Plain, Settings, engine_infer, engine_step, first_batch, our_trainer, size_batch
from .timing import Ratio

# What the PyTorch transfer-learning tutorial's loop does: plain CE, SGD with momentum, a step schedule.
TUTORIAL = {"optimizer": "sgd", "label_smoothing": 0.0, "weight_decay": 1e-4, "warmup_epochs": 0.0,
            "lr_scheduler": "step", "backbone_lr_mult": 1.0}


def ce(model, x, y, smoothing: float = 0.0) -> torch.Tensor:
    return F.cross_entropy(model(x), y, label_smoothing=smoothing)


def timm_sgd(nesterov: bool = False, lr: float = 0.01, wd: float = 1e-4):
    return lambda params: torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=wd, nesterov=nesterov)


def run(s: Settings, extra: dict) -> list[Ratio]:
    import timm

    data = s.data / "hymenoptera_data"
    size, batch = size_batch("classification", s)
    out = []
    for label, values in (("defaults", {}), ("ref_settings", TUTORIAL)):
        tr = our_trainer("classification", {"data": str(data), "backbone": "resnet18", "weights": None,
                                            "img_size": size, "batch_size": batch, **values}, s, f"cls-{label}")
        x, y = first_batch(tr)
        torch.manual_seed(0)
        ref = Plain(timm.create_model("resnet18", num_classes=len(tr.task.classes)), ce, s)
        note = f"resnet18 {size}px b{batch} vs timm + SGD loop"
        out.append(s.ratio(f"classification/train_step/{label}", engine_step(tr, (x, y), len(y)),
                           ref.step(x, y), note=note))
        if label == "defaults":
            out.append(s.ratio("classification/inference", engine_infer(tr, x, s), ref.infer(x),
                               note=f"eval forward, b{batch}"))
            out.append(loader_ratio(tr, data, size, batch, s, extra, out[0].ours_s))
    return out


def loader_ratio(tr, data, size: int, batch: int, s: Settings, extra: dict, step_s: float) -> Ratio:
    """Images/s of our training loader (albumentations, seeded per sample) vs torchvision's ImageFolder
    pipeline (RandomResizedCrop, flip, ToTensor, Normalize), each with 2 workers, from a fresh iterator
    (worker start included, as at every epoch); and what the loader delivers vs what the step consumes."""
    from torch.utils.data import DataLoader
    from torchvision import datasets, transforms

    from tasks.engine.batching import make_loader

    workers, batches = 2, 4 if s.quick else 8
    ours = make_loader(tr.train_loader.dataset, batch, workers, s.device.type == "cuda", tr.task.collate_fn(),
                       sampler=torch.utils.data.RandomSampler(tr.train_loader.dataset))
    tf = transforms.Compose([transforms.RandomResizedCrop(size), transforms.RandomHorizontalFlip(),
                             transforms.ToTensor(), transforms.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])])
    ref = DataLoader(datasets.ImageFolder(str(data / "train"), tf), batch_size=batch, shuffle=True,
                     num_workers=workers, pin_memory=s.device.type == "cuda")

    def drain(loader):
        return lambda: list(itertools.islice(iter(loader), batches))

    r = s.ratio("classification/loader", drain(ours), drain(ref), warmup=1,
                note=f"{batches} batches of {batch}, {workers} workers, fresh iterator")
    images_s = batches * batch / r.ours_s
    extra["classification/loader_images_per_s"] = round(images_s, 1)
    extra["classification/train_step_images_per_s"] = round(batch / step_s, 1)
    return r


def fewshot_run(s: Settings, extra: dict) -> list[Ratio]:
    """The Omniglot pretraining step: our bundled preset vs ``../shared/reference/omniglot_plain_loop.py``'s
    step (timm resnet18, 64 px, SGD Nesterov, label smoothing 0.1), and ours at the reference's settings."""
    import timm

    data = s.data / "omniglot" / "images_background_small1"
    equal = {"img_size": 64, "head": "linear", "cosine_margin": 0.0}
    out = []
    for label, values in (("defaults", {}), ("ref_settings", equal)):
        tr = our_trainer("classification", {"data": str(data), "weights": None, **values}, s, f"omniglot-{label}",
                         config="omniglot_pretrain")
        x, y = first_batch(tr)
        torch.manual_seed(0)
        ref = Plain(timm.create_model("resnet18", num_classes=len(tr.task.classes)),
                    lambda m, a, b: ce(m, a, b, 0.1), s, timm_sgd(nesterov=True, lr=0.1, wd=5e-4))
        xr = x if x.shape[-1] == 64 else F.interpolate(x, size=64, mode="bilinear")  # the reference's 64 px
        xr = xr.expand(-1, 3, -1, -1) if xr.shape[1] == 1 else xr
        out.append(s.ratio(f"fewshot/pretrain_step/{label}", engine_step(tr, (x, y), len(y)), ref.step(xr, y),
                           note=f"ours {x.shape[-1]}px {x.shape[1]}ch b{len(y)} vs reference 64px"))
    return out
