"""The run folder: refused when taken, locked while a run writes to it, gone if the run never started."""
from __future__ import annotations

import contextlib
import logging
import shutil
import time
from pathlib import Path
from typing import Iterator

from filelock import FileLock, Timeout

from resnet_backbones.errors import UserError

log = logging.getLogger(__name__)
LOCK = ".lock"
# What a run writes; --overwrite removes these (never anything else the folder may hold, nor a
# fewshot_subset.json, which a user may have placed there to choose the images).
OUTPUTS = ("last.pt", "best.pt", "config.yaml", "metrics.jsonl", "metrics.csv", "curves.png", "visuals", "demo_data",
           "summary.json", "events.out.tfevents.*")
RUN_MARKERS = ("last.pt", "best.pt", "config.yaml", "metrics.jsonl")  # a folder holding one of these holds a run


def fresh_run_dir(task: str, root: str | Path = "runs") -> Path:
    """``runs/<task>-<timestamp>``, with ``-2``, ``-3``… when that name is taken."""
    base = Path(root) / f"{task}-{time.strftime('%Y%m%d-%H%M%S')}"
    path, k = base, 1
    while path.exists():
        k += 1
        path = base.with_name(f"{base.name}-{k}")
    return path


def holds_run(path: Path) -> bool:
    return path.is_dir() and any((path / name).exists() for name in RUN_MARKERS)


def check_run_dir(path: Path, resume: bool, overwrite: bool) -> None:
    """Refuse a file, or a folder holding a run unless resuming or overwriting (no side effects)."""
    if path.exists() and not path.is_dir():
        raise UserError(f"--out {path} is a file; pass a folder")
    if holds_run(path) and not (resume or overwrite):
        raise UserError(f"--out {path} already holds a run; pass --resume {path} to continue it, --overwrite "
                        "to replace it, or another --out")


class RunDir:
    """Claim ``path`` for one run: see :meth:`claim`."""

    def __init__(self, path: str | Path, resume: bool = False, overwrite: bool = False) -> None:
        self.path = Path(path)
        self.resume, self.overwrite = resume, overwrite
        self.started = False  # set once the folder holds a resumable checkpoint
        check_run_dir(self.path, resume, overwrite)

    @contextlib.contextmanager
    def claim(self) -> Iterator["RunDir"]:
        """Create and lock the folder; if the run fails before :attr:`started`, remove what was created."""
        created = [p for p in (self.path, *self.path.parents) if not p.exists()]
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            lock = FileLock(self.path / LOCK)
            lock.acquire(timeout=0)
        except Timeout:
            raise UserError(f"run folder {self.path} is in use by another run; wait for it to end or pass "
                            "another --out") from None
        except OSError as e:
            raise UserError(f"cannot write the run folder {self.path}: {e.strerror}; pass a writable --out") \
                from None
        try:
            check_run_dir(self.path, self.resume, self.overwrite)  # again: another run may just have finished
            self._tidy()
            yield self
        except BaseException:
            if created and not self.started:
                shutil.rmtree(self.path, ignore_errors=True)
                for p in created[1:]:  # parents this run created, if nothing else went there meanwhile
                    with contextlib.suppress(OSError):
                        p.rmdir()
            raise
        finally:
            lock.release()

    def _tidy(self) -> None:
        # A kill during a save leaves the temporary file; the lock guarantees no save is running now.
        for tmp in self.path.glob(".*.tmp"):
            tmp.unlink()
            log.info("removed %s left by an interrupted save", tmp.name)
        if self.overwrite and not self.resume:
            for p in (p for name in OUTPUTS for p in self.path.glob(name)):
                if p.is_dir():
                    shutil.rmtree(p)
                else:
                    p.unlink()
