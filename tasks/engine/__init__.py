"""The one training loop shared by every task, and what it is made of.

- ``trainer.py``     :func:`fit` and the :class:`Trainer` (setup, the loop, one step, end of epoch)
- ``callbacks.py``   the callback protocol; history, visuals, freeze schedule, checkpointing
- ``progress.py``    progress bar on a terminal, log lines every N steps otherwise
- ``checkpoint.py``  atomic, ``weights_only`` checkpoints; the lean (model-only) form
- ``rng.py``         every RNG state, captured and restored (exact resume)
- ``batching.py``    seeded batches per epoch, no batch of one, per-sample worker seeds
- ``signals.py``     Ctrl-C/SIGTERM set a flag read between steps; workers ignore them
- ``rundir.py``      the run folder: taken, locked, removed if the run never started
- ``optim.py``       parameter groups, optimiser, warmup + cosine schedule
- ``runtime.py``     device, autocast, memory format
- ``runlog.py``      metrics.jsonl / .csv and curves.png
"""
