"""Reader for the published one-shot "runs" of Lake et al. 2015 (brendenlake/omniglot)::

    DIR/run01/class_labels.txt      one line per query: "run01/test/item01.png run01/training/class12.png"
    DIR/run01/test/item01.png …     the queries
    DIR/run01/training/class01.png  one support image per class (every image here is a candidate)

Paths in ``class_labels.txt`` are relative to ``DIR``, the folder that holds the runs.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..data.io import DataError, list_images
from .episodes import Episode

LABELS_FILE = "class_labels.txt"


@dataclass(frozen=True)
class OneShotRun:
    """One run: ``queries[j]`` shows the class of ``supports[answers[j]]``."""

    name: str
    supports: list[Path]
    queries: list[Path]
    answers: list[int]


def _read_run(root: Path, run: Path) -> OneShotRun:
    labels = run / LABELS_FILE
    if not labels.is_file():
        raise DataError(f"{labels} not found; every runNN/ folder needs a {LABELS_FILE} "
                        "('runNN/test/itemXX.png runNN/training/classYY.png' per line)")
    supports = list_images(run / "training") if (run / "training").is_dir() else []
    if len(supports) < 2:
        raise DataError(f"{run / 'training'} holds {len(supports)} image(s); a run needs one support image "
                        "per class, at least 2")
    index = {p.resolve(): i for i, p in enumerate(supports)}
    queries, answers = [], []
    for n, line in enumerate(labels.read_text().splitlines(), 1):
        if not line.strip():
            continue
        fields = line.split()
        where = f"{labels} line {n}"
        if len(fields) != 2:
            raise DataError(f"{where}: expected 'runNN/test/itemXX.png runNN/training/classYY.png', got {line!r}")
        query, support = (root / f for f in fields)
        for p in (query, support):
            if not p.is_file():
                raise DataError(f"{where}: {p} not found (paths are relative to {root})")
        if support.resolve() not in index:
            raise DataError(f"{where}: the support {fields[1]} is not an image in {run / 'training'}")
        if query.resolve() in index or query in queries:
            raise DataError(f"{where}: the query {fields[0]} is a support image or listed twice")
        queries.append(query)
        answers.append(index[support.resolve()])
    if not queries:
        raise DataError(f"{labels} lists no queries")
    return OneShotRun(run.name, supports, queries, answers)


def read_runs(root: str | Path) -> list[OneShotRun]:
    """Every ``run*/`` folder of ``root``, sorted by name; malformed files raise, naming the file."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"runs folder {root} not found")
    runs = sorted(p for p in root.iterdir() if p.is_dir() and p.name.startswith("run"))
    if not runs:
        raise DataError(f"no runNN/ folders in {root} (expected {root}/run01/{LABELS_FILE}, "
                        f"{root}/run01/training/, {root}/run01/test/)")
    return [_read_run(root, run) for run in runs]


def runs_as_episodes(runs: list[OneShotRun]) -> tuple[list[Path], list[Episode]]:
    """All images once (features are computed per image) and one :class:`Episode` per run
    indexing into them."""
    images: list[Path] = []
    episodes = []
    for run in runs:
        start = len(images)
        images += run.supports + run.queries
        ways = len(run.supports)
        episodes.append(Episode(support=list(range(start, start + ways)), support_labels=list(range(ways)),
                                query=list(range(start + ways, start + ways + len(run.queries))),
                                query_labels=list(run.answers)))
    return images, episodes
