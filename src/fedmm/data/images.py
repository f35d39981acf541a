"""Reading image files into uint8 arrays, with errors that name the file."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from fedmm.errors import FedmmError


def read_rgb(path: str | Path, size: int | None = None) -> np.ndarray:
    """H x W x 3 uint8; resized to size x size when given (bilinear)."""
    try:
        with Image.open(path) as im:
            im = im.convert("RGB")
            if size and im.size != (size, size):
                im = im.resize((size, size), Image.BILINEAR)
            return np.asarray(im, dtype=np.uint8)
    except FileNotFoundError:
        raise FedmmError(f"image file not found: {path}") from None
    except (UnidentifiedImageError, OSError, SyntaxError) as e:
        raise FedmmError(f"cannot read image {path} ({type(e).__name__}: {e}); replace or remove the file") from None
