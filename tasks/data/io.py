"""Reading images and masks with errors that name the file."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from resnet_backbones.errors import UserError

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".gif", ".bmp", ".tif", ".tiff", ".webp")


class DataError(UserError):
    """A data file or folder is missing, unreadable or inconsistent."""


def list_images(folder: Path) -> list[Path]:
    """Image files directly in ``folder``, sorted by name (hidden files skipped)."""
    return sorted(p for p in Path(folder).iterdir()
                  if p.is_file() and p.suffix.lower() in IMAGE_EXTS and not p.name.startswith("."))


def read_rgb(path: str | Path) -> np.ndarray:
    """HxWx3 uint8 RGB; grayscale, palette, RGBA and animated GIF (first frame) are converted."""
    try:
        with Image.open(path) as im:
            im.seek(0)
            if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
                # Composite on white so transparent regions don't turn black.
                im = im.convert("RGBA")
                bg = Image.new("RGBA", im.size, (255, 255, 255, 255))
                im = Image.alpha_composite(bg, im)
            return np.asarray(im.convert("RGB"))
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise DataError(f"cannot read image {path}: {type(e).__name__}: {e}; fix or remove the file "
                        "(classification: --skip-bad-images skips such files)") from None


def read_mask(path: str | Path) -> np.ndarray:
    """HxW integer class-index mask; palette PNGs give their indices, RGB masks are refused."""
    try:
        with Image.open(path) as im:
            if im.mode in ("RGB", "RGBA"):
                arr = np.asarray(im.convert("RGB"))
                if not (np.array_equal(arr[..., 0], arr[..., 1]) and np.array_equal(arr[..., 0], arr[..., 2])):
                    raise DataError(f"mask {path} is a colour image; masks must hold class indices "
                                    "(grayscale or palette PNG)")
                return arr[..., 0].astype(np.int64)
            if im.mode == "LA":
                im = im.convert("L")
            return np.asarray(im).astype(np.int64)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise DataError(f"cannot read mask {path}: {type(e).__name__}: {e}") from None


def check_readable(path: Path) -> bool:
    """Decode the whole file, as training will: a truncated JPEG passes a header check
    (``Image.verify``) and only fails once its last rows are read."""
    try:
        with Image.open(path) as im:
            im.load()
        return True
    except Exception:
        return False
