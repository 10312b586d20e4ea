"""``python -m tasks …`` is the ``resnet-tasks`` command; under torchrun: ``torchrun --nproc-per-node N -m tasks
finetune …`` (each process runs the command; the engine joins them into one data-parallel run)."""
import sys

from cli import main

if __name__ == "__main__":
    sys.exit(main())
