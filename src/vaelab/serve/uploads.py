"""Turning an uploaded file into one example of the model's shape, or a clear refusal.

Accepted: an image (PNG, JPEG, or another format Pillow reads) for image models, and a
``.npy`` array of exactly ``prod(x_shape)`` numbers for any model. The format is told by the
file's first bytes, not its name. An image is converted to the model's channels (grey or
RGB; transparency is laid over white), resized with Pillow to H x W and scaled to [0, 1];
when its border is light but the model's grey data have a dark background (MNIST: white
digits on black) its values are inverted, and the result says so (never for colour models).

Every refusal is an :class:`UploadError` whose message the page shows as it is.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, UnidentifiedImageError

from ..errors import VaelabError
from .explorer import is_image

__all__ = ["UploadError", "Prepared", "prepare_upload", "MAX_UPLOAD_BYTES"]

MAX_UPLOAD_BYTES = 5 * 1024 * 1024
MAX_PIXELS = 4096 * 4096  # width * height of an uploaded image, read from its header before decoding
MAX_ASPECT = 8.0  # a 1 x 500 strip cannot be resized into a square picture sensibly
NPY_MAGIC = b"\x93NUMPY"


class UploadError(VaelabError):
    """An uploaded file that cannot become an example for this model (HTTP 4xx)."""


@dataclass
class Prepared:
    """An upload as the model sees it: ``x`` of shape ``x_shape`` (float32), and notes on
    what was done to it on the way (resizing, inversion)."""

    x: np.ndarray
    notes: list[str] = field(default_factory=list)


def prepare_upload(data: bytes, name: str, shape: tuple[int, ...], background: float | None = None) -> Prepared:
    """Read an uploaded file as one example of ``shape``.

    Args:
        data: the file's bytes.
        name: its name, only for messages.
        shape: the model's example shape ``x_shape``.
        background: mean border value of the model's images (None: never invert).
    """
    if not data:
        raise UploadError(f"'{name}' is empty")
    if data.startswith(NPY_MAGIC):
        return _from_npy(data, name, shape)
    if not is_image(shape):
        raise UploadError(
            f"'{name}' is not a .npy file; this model's data are vectors of shape {shape}, "
            f"so upload a .npy array of {int(np.prod(shape))} numbers"
        )
    return _from_image(data, name, shape, background)


def _from_npy(data: bytes, name: str, shape: tuple[int, ...]) -> Prepared:
    try:
        a = np.load(io.BytesIO(data), allow_pickle=False)
    except (ValueError, OSError, EOFError) as err:
        raise UploadError(f"'{name}' is not a readable .npy array ({err})") from None
    if not isinstance(a, np.ndarray) or a.dtype.kind not in "biuf":
        raise UploadError(f"'{name}' holds {a.dtype} values; upload a .npy array of numbers")
    size = int(np.prod(shape))
    if a.size != size:
        raise UploadError(
            f"'{name}' has shape {a.shape} ({a.size} numbers) but this model's examples have shape "
            f"{shape} ({size} numbers); upload one example, e.g. an array of shape {shape} or ({size},)"
        )
    x = a.astype(np.float32).reshape(shape)
    if not np.isfinite(x).all():
        raise UploadError(f"'{name}' holds {int((~np.isfinite(x)).sum())} NaN/inf values; upload finite numbers")
    notes = [] if a.shape == shape else [f"reshaped from {a.shape} to {shape}"]
    return Prepared(x, notes)


def _wide_grey(img: Image.Image, name: str) -> tuple[Image.Image, float]:
    """A grey image of more than 8 bits as a float image (mode ``F``) and the value of white:
    65535 for 16-bit data (a 32-bit integer image whose values fit 16 bits too), 255 for one
    whose values fit 8 bits, 1 for float data in [0, 1]."""
    a = np.asarray(img, dtype=np.float64)
    if not np.isfinite(a).all():
        raise UploadError(f"'{name}' holds NaN or infinite pixel values; upload an image of finite grey levels")
    lo, hi = float(a.min()), float(a.max())
    if img.mode == "F":
        if lo < 0 or hi > 1:
            raise UploadError(f"'{name}' is a float image with values in [{lo:g}, {hi:g}]; the explorer reads float "
                              "images as grey levels in [0, 1] (white = 1): rescale it, or save it as an 8-bit PNG")
        scale = 1.0
    elif lo < 0 or hi > 65535:
        raise UploadError(f"'{name}' holds grey levels in [{lo:g}, {hi:g}], outside 8 or 16 bits; "
                          "save it as an 8- or 16-bit PNG")
    else:
        scale = 65535.0 if img.mode.startswith("I;16") or hi > 255 else 255.0
    return Image.fromarray(a.astype(np.float32), mode="F"), scale


def _from_image(data: bytes, name: str, shape: tuple[int, ...], background: float | None) -> Prepared:
    c, h, w = shape
    too_big = f"upload an image of at most {MAX_PIXELS:,} pixels (e.g. 4096 x 4096)"
    try:
        with warnings.catch_warnings():
            # Pillow refuses more than 2 * MAX_IMAGE_PIXELS at open and warns above it; both
            # are errors here (uploads are read one at a time, under the app's gate)
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))  # lazy: reads the header only
            width, height = img.size
            if width * height > MAX_PIXELS:  # before a single pixel is decoded
                raise UploadError(f"'{name}' is {width} x {height} pixels; {too_big}")
            img.load()
    except UploadError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise UploadError(f"'{name}' declares more pixels than Pillow will decode; {too_big}") from None
    except UnidentifiedImageError:
        start = data[:12].decode("ascii", "replace")
        raise UploadError(
            f"'{name}' is not an image Pillow can read (it starts with {start!r}); "
            "upload a PNG or JPEG image or a .npy array"
        ) from None
    except (OSError, ValueError, SyntaxError) as err:
        raise UploadError(f"'{name}' is a damaged or truncated image ({err})") from None
    if max(width, height) / max(1, min(width, height)) > MAX_ASPECT:
        raise UploadError(
            f"'{name}' is {width} x {height} pixels; an image that long and thin cannot be resized "
            f"to {w} x {h} sensibly (crop it nearer to the model's aspect ratio)"
        )
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(white, rgba)
    notes = []
    if img.mode in ("I", "F") or img.mode.startswith("I;16"):  # 16-bit, 32-bit or float grey levels
        # (Pillow's convert("L") clips these to 0..255: a 16-bit mid-grey would come out white)
        img, scale = _wide_grey(img, name)
        if c == 3:
            notes.append("grey image: its one channel copied into red, green and blue")
    else:
        img, scale = img.convert("L" if c == 1 else "RGB"), 255.0
    if (width, height) != (w, h):
        img = img.resize((w, h), Image.Resampling.LANCZOS)
        notes.append(f"resized from {width} x {height} to {w} x {h} pixels")
    a = np.clip(np.asarray(img, dtype=np.float32) / scale, 0.0, 1.0)  # [H, W] or [H, W, 3]
    if c == 3 and a.ndim == 2:
        a = np.repeat(a[:, :, None], 3, axis=2)
    x = a[None] if c == 1 else a.transpose(2, 0, 1)  # [C, H, W]
    border = np.concatenate([x[:, 0, :], x[:, -1, :], x[:, :, 0], x[:, :, -1]], -1).mean()
    if c == 1 and background is not None and background < 0.5 and border > 0.5:  # grey digits; never a colour photo
        x = 1.0 - x
        notes.append("colours inverted: the image has a light background, the model's data a dark one")
    return Prepared(np.ascontiguousarray(x, dtype=np.float32), notes)
