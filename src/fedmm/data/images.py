"""Reading image files (or image bytes from a Parquet export) into uint8 arrays, with errors that name the source."""

from __future__ import annotations

import io
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from fedmm.errors import FedmmError

# Pixels an image may have (a decompression bomb is a few KB on disk and gigabytes decoded); posters and VQA
# images are under one megapixel.
MAX_PIXELS = 40_000_000


def read_rgb(source: str | Path | bytes, size: int | None = None, name: str | None = None) -> np.ndarray:
    """H x W x 3 uint8 from a file path or encoded bytes; resized to size x size when given (bilinear).

    The whole image is decoded here, so a truncated file fails now, with its name, not later inside training.
    `name` is what errors call the image (default: the path)."""
    name = name or str(source if not isinstance(source, bytes) else "image bytes")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(source) if isinstance(source, bytes) else source) as im:
                if im.width * im.height > MAX_PIXELS:
                    raise FedmmError(
                        f"image {name} has {im.width} x {im.height} pixels, over fedmm's cap of "
                        f"{MAX_PIXELS:,}; resize or remove the file"
                    )
                im = im.convert("RGB")
                if size and im.size != (size, size):
                    im = im.resize((size, size), Image.BILINEAR)
                return np.asarray(im, dtype=np.uint8)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise FedmmError(
            f"image {name} is too large to decode safely ({str(e)[:100]}); resize or remove the file"
        ) from None
    except FileNotFoundError:
        raise FedmmError(f"image file not found: {name}") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise FedmmError(f"cannot read image {name} ({type(e).__name__}: {e}); replace or remove the file") from None


def png_bytes(image: Any) -> bytes:
    """A PIL image (what a Hugging Face `Image` feature decodes to) as PNG bytes, for `read_rgb` or a file."""
    buf = io.BytesIO()
    image.convert("RGB").save(buf, format="PNG")
    return buf.getvalue()


class ImageFiles:
    """An image table read from files when a batch asks for a row, for data sets too large to hold decoded (VQA v2:
    82,783 training images, 36 GB at 384 x 384). It stands where `MultimodalDataset.images` holds an array; a file
    that cannot be read fails then, with its name."""

    def __init__(self, paths: list[Path], size: int):
        self.paths = list(paths)
        self.size = size

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, j: int) -> np.ndarray:
        return read_rgb(self.paths[int(j)], self.size)


def cache_home() -> Path:
    """fedmm's cache folder (decoded dataset images, frozen encoders' features): $FEDMM_CACHE, else
    $XDG_CACHE_HOME/fedmm, else ~/.cache/fedmm."""
    if os.environ.get("FEDMM_CACHE"):
        return Path(os.environ["FEDMM_CACHE"]).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or "~/.cache").expanduser() / "fedmm"
