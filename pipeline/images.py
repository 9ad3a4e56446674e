"""Reading images safely into (C, H, W) float tensors in [0, 1].

Every failure is an ``ImageError`` whose message names the image, so a sweep can record it
against the one fit it spoils and a CLI can print it as one line.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from pipeline.messages import DipError

# Refuse images above this many pixels before decoding them (decompression-bomb guard):
# 64 Mpx is larger than any image of the papers' data sets by two orders of magnitude.
MAX_PIXELS = 64_000_000
# Refuse image files above this size before reading them whole (a 64 Mpx 16-bit RGB PNG
# compresses well below it; anything larger is not a picture of these studies).
MAX_FILE_BYTES = 512 * 2**20
SAMPLE_PREFIX = "skimage:"


class ImageError(DipError, ValueError):
    """An image that cannot be used, with a message that names it."""


def read_bytes(source: str | Path) -> tuple[bytes, str]:
    """The encoded bytes of a local path or a bundled sample (``skimage:NAME``), and a label."""
    text = str(source)
    if text.startswith(SAMPLE_PREFIX):
        return sample_png(text[len(SAMPLE_PREFIX) :]), text
    try:
        with Path(text).open("rb") as fh:
            return read_limited(fh, text), text
    except OSError as err:
        raise ImageError(f"cannot read image {text}: {err.strerror or err}") from None


def read_limited(fh: BinaryIO, label: str, limit: int | None = None) -> bytes:
    """The whole file, refused with a clear error once it passes `limit` (default MAX_FILE_BYTES)."""
    limit = MAX_FILE_BYTES if limit is None else limit
    data = fh.read(limit + 1)
    if len(data) > limit:
        raise ImageError(f"{label}: file larger than the {limit // 2**20} MiB image limit")
    return data


def sample_png(name: str) -> bytes:
    """A scikit-image bundled sample encoded as PNG, so samples and files share one decoder."""
    from skimage import data  # imported here: only samples need it

    loader = getattr(data, name, None)
    if name.startswith("_") or not callable(loader):
        raise ImageError(f"unknown sample image {SAMPLE_PREFIX}{name} (try skimage:astronaut, skimage:camera)")
    buf = io.BytesIO()
    Image.fromarray(np.asarray(loader())).save(buf, format="PNG")
    return buf.getvalue()


def decode(data: bytes | BinaryIO, label: str) -> torch.Tensor:
    """Decode PNG/JPEG/BMP/… bytes to (C, H, W) float32 in [0, 1], C = 1 (grey) or 3 (RGB)."""
    stream = io.BytesIO(data) if isinstance(data, bytes) else data
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            img = Image.open(stream)
            if img.width * img.height > MAX_PIXELS:
                raise ImageError(f"{label}: {img.width}x{img.height} exceeds the {MAX_PIXELS} pixel limit")
            img.load()
        except ImageError:
            raise
        except UnidentifiedImageError:
            raise ImageError(f"{label}: not a readable image (unknown or corrupt format)") from None
        except (Image.DecompressionBombWarning, Image.DecompressionBombError):
            raise ImageError(f"{label}: refused as a decompression bomb (over {MAX_PIXELS} pixels)") from None
        except (OSError, SyntaxError, ValueError) as err:
            raise ImageError(f"{label}: not a readable image ({err})") from None
    return to_tensor(img, label)


def to_tensor(img: Image.Image, label: str) -> torch.Tensor:
    """Map any PIL mode to grey or RGB floats; alpha is dropped with a warning."""
    mode = img.mode
    if mode in ("RGBA", "LA", "PA") or (mode == "P" and "transparency" in img.info):
        warnings.warn(f"{label}: alpha channel dropped", stacklevel=3)
    if mode in ("I;16", "I;16B", "I;16L", "I"):
        wide = np.asarray(img, dtype=np.float64)
        wide = wide / (65535.0 if wide.max() > 255 else 255.0)
        return torch.from_numpy(np.clip(wide, 0, 1)).float()[None]
    if mode == "F":
        return torch.from_numpy(np.clip(np.asarray(img, dtype=np.float32), 0, 1))[None]
    grey = mode in ("1", "L", "LA") or (mode == "P" and is_grey_palette(img))
    arr = np.asarray(img.convert("L" if grey else "RGB"), dtype=np.float32) / 255.0
    tensor = torch.from_numpy(arr)
    return tensor[None] if grey else tensor.permute(2, 0, 1).contiguous()


def is_grey_palette(img: Image.Image) -> bool:
    palette = np.asarray(img.convert("RGB"))
    return bool((palette[..., 0] == palette[..., 1]).all() and (palette[..., 1] == palette[..., 2]).all())


def load_image(source: str | Path) -> torch.Tensor:
    """Read and decode a local file or bundled sample."""
    data, label = read_bytes(source)
    if not data:
        raise ImageError(f"{label}: file is empty")
    return decode(data, label)


def center_crop(image: torch.Tensor, multiple: int, size: int | None = None, label: str = "image") -> torch.Tensor:
    """Centre-crop (C, H, W) to sides that are multiples of ``multiple`` (Ulyanov et al.'s practice).

    ``size`` first crops to at most size × size, for small smoke-scale fits.
    """
    _, h, w = image.shape
    th, tw = (min(h, size), min(w, size)) if size else (h, w)
    th, tw = th - th % multiple, tw - tw % multiple
    if th < multiple or tw < multiple or th == 0 or tw == 0:
        raise ImageError(f"{label}: {w}x{h} is too small for a network that needs sides in multiples of {multiple}")
    top, left = (h - th) // 2, (w - tw) // 2
    return image[:, top : top + th, left : left + tw]


def to_uint8(image: np.ndarray) -> np.ndarray:
    """(C, H, W) floats in [0, 1] to an (H, W[, 3]) uint8 array for PNG."""
    arr = np.clip(np.rint(np.asarray(image, dtype=np.float32) * 255.0), 0, 255).astype(np.uint8)
    return arr[0] if arr.shape[0] == 1 else np.transpose(arr, (1, 2, 0))


def encode_png(image: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(to_uint8(image)).save(buf, format="PNG")
    return buf.getvalue()
