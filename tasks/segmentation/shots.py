"""Few-shot segmentation: train on K of the training images, chosen once per run folder.

The choice is seeded and written to ``RUN/fewshot_subset.json``; a run that finds that file in its
folder (``--resume``, or a list the user edited by hand) trains on the images it lists instead of
drawing again. Subsets are nested: with one seed, the K = 2 images include the K = 1 image.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

import torch

from ..data.io import DataError
from ..data.seeding import sample_seed
from .data import Pair

log = logging.getLogger(__name__)

SUBSET_FILE = "fewshot_subset.json"


def sample_shots(pairs: list[Pair], k: int, seed: int) -> list[Pair]:
    """``k`` of ``pairs`` (seeded), in file-name order."""
    g = torch.Generator().manual_seed(sample_seed(seed, "segmentation-shots"))
    picked = torch.randperm(len(pairs), generator=g)[:k].tolist()
    return [pairs[i] for i in sorted(picked)]


def _read_subset(path: Path, pairs: list[Pair], k: int, seed: int) -> list[Pair] | None:
    """The pairs a saved subset lists, or None if it was drawn for another --shots / --seed."""
    try:
        saved = json.loads(path.read_text())
        listed, same = saved["images"], (saved["shots"], saved["seed"]) == (k, seed)
    except (ValueError, KeyError, TypeError) as e:
        raise DataError(f"{path} is not a few-shot subset written by resnet-tasks ({type(e).__name__}: {e}); "
                        "fix or delete it") from None
    if not same:
        return None
    by_image = {p.image.resolve(): p for p in pairs}
    chosen = []
    for image in listed:
        pair = by_image.get(Path(image).resolve())
        if pair is None:
            raise DataError(f"{path} lists {image}, which is not a training image of this data (validation "
                            "images are held out); fix the list or delete the file to draw again")
        chosen.append(pair)
    if not chosen:
        raise DataError(f"{path} lists no images; fix the list or delete the file to draw again")
    return chosen


def few_shot_pairs(pairs: list[Pair], k: int, seed: int, run_dir: Path | None, held_out: int) -> list[Pair]:
    """The ``k`` training pairs of this run: read back from ``run_dir`` if saved there, else drawn and saved.

    Args:
        held_out: number of validation images, named in the error when ``k`` exceeds the training set.
    """
    if k < 1:
        raise DataError(f"--shots must be at least 1, got {k}")
    if k > len(pairs):
        raise DataError(f"--shots {k} but there are only {len(pairs)} training images ({held_out} more are "
                        f"held out for validation); use --shots {len(pairs)} or fewer, or leave --shots out")
    path = Path(run_dir) / SUBSET_FILE if run_dir is not None else None
    if path is not None and path.is_file():
        chosen = _read_subset(path, pairs, k, seed)
        if chosen is not None:
            log.info(f"few-shot: training on the {len(chosen)} image(s) listed in {path}")
            return chosen
    chosen = sample_shots(pairs, k, seed)
    if path is not None:
        path.write_text(json.dumps({"shots": k, "seed": seed, "images": [str(p.image) for p in chosen],
                                    "masks": [str(p.mask) for p in chosen]}, indent=1))
    log.info(f"few-shot: {k} of {len(pairs)} training image(s) (list in {SUBSET_FILE})")
    return chosen
