"""Turning an uploaded file into one example of the model's shape, or a clear refusal.

Accepted: a PNG or JPEG image for image models (no other format: Pillow's other readers are
attack surface the explorer does not need, and its EPS reader would run Ghostscript), and a
``.npy`` array of exactly ``prod(x_shape)`` numbers for any model. The format is told by the
file's first bytes, not its name. A ``.npy`` header is read and checked (numeric type, the
model's count of numbers, the bytes actually there) before its data are read. An image is
converted to the model's channels (grey or RGB; transparency is laid over white), resized with
Pillow to H x W and scaled to [0, 1];
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
IMAGE_FORMATS = ("PNG", "JPEG")  # Pillow's format names; every other reader stays closed
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


def _npy_header(data: bytes, name: str) -> tuple[tuple[int, ...], bool, np.dtype, int]:
    """``(shape, fortran_order, dtype, offset of the data)`` from a ``.npy`` file's header,
    read without touching its data (``np.load`` would allocate whatever the header declares)."""
    fmt = np.lib.format
    f = io.BytesIO(data)
    unreadable = f"'{name}' is not a readable .npy array"
    try:
        version = fmt.read_magic(f)
        if version == (1, 0):
            shape, fortran, dtype = fmt.read_array_header_1_0(f)
        elif version == (2, 0):
            shape, fortran, dtype = fmt.read_array_header_2_0(f)
        else:  # 3.0 is only written for structured types with non-Latin-1 field names
            raise UploadError(f"{unreadable} (format version {version[0]}.{version[1]}); save it with numpy.save")
    except UploadError:
        raise
    except Exception as err:  # ValueError mostly; tokenize.TokenError, RecursionError for odd headers: all unreadable
        text = " ".join(str(err).split())
        raise UploadError(f"{unreadable} ({text[:200]})") from None
    return tuple(shape), bool(fortran), dtype, f.tell()


def _from_npy(data: bytes, name: str, shape: tuple[int, ...]) -> Prepared:
    a_shape, fortran, dtype, offset = _npy_header(data, name)
    if dtype.hasobject:
        raise UploadError(f"'{name}' is not a readable .npy array (it holds Python objects, which the explorer never "
                          "unpickles); upload a .npy array of numbers")
    if dtype.kind not in "biuf" or dtype.fields is not None or dtype.subdtype is not None:
        raise UploadError(f"'{name}' holds values of type {_dtype_name(dtype)}; upload a .npy array of numbers "
                          "(integer, float or bool)")
    if any(n < 0 for n in a_shape) or len(a_shape) > 32:
        raise UploadError(f"'{name}' is not a readable .npy array (its header declares shape {_shape_text(a_shape)})")
    size, count = int(np.prod(shape)), 1
    for n in a_shape:  # Python integers: a declared (10**11,) or (2**62, 2**62) cannot overflow
        count *= n
    if count != size:
        raise UploadError(
            f"'{name}' has shape {_shape_text(a_shape)} ({count} numbers) but this model's examples have shape "
            f"{shape} ({size} numbers); upload one example, e.g. an array of shape {shape} or ({size},)"
        )
    present, needed = len(data) - offset, count * dtype.itemsize
    if present != needed:
        raise UploadError(f"'{name}' is not a readable .npy array: its header declares {needed} bytes of data, "
                          f"the file holds {present}" + ("" if present > needed else " (cut short?)"))
    a = np.frombuffer(data, dtype=dtype, count=count, offset=offset).reshape(a_shape, order="F" if fortran else "C")
    x = a.astype(np.float32).reshape(shape)
    if not np.isfinite(x).all():
        raise UploadError(f"'{name}' holds {int((~np.isfinite(x)).sum())} NaN/inf values; upload finite numbers")
    notes = [] if a.shape == shape else [f"reshaped from {a.shape} to {shape}"]
    return Prepared(x, notes)


def _shape_text(shape: tuple[int, ...]) -> str:
    """A declared shape for a message, cut short when a header declares hundreds of dimensions."""
    text = str(shape)
    return text if len(text) <= 80 else text[:80] + "…)"


def _dtype_name(dtype: np.dtype) -> str:
    text = str(dtype)
    return text if len(text) <= 60 else text[:60] + "…"


def _wide_grey(img: Image.Image, name: str) -> tuple[Image.Image, float]:
    """A grey image of more than 8 bits as a float image (mode ``F``) and the value of white
    (:func:`vaelab.data.images.grey_levels`, the image folder reader's rules)."""
    from ..data.images import grey_levels

    try:
        a, white = grey_levels(img)
    except ValueError as err:
        raise UploadError(f"'{name}' {err}; upload an 8- or 16-bit PNG") from None
    return Image.fromarray(a.astype(np.float32), mode="F"), white


def _from_image(data: bytes, name: str, shape: tuple[int, ...], background: float | None) -> Prepared:
    c, h, w = shape
    too_big = f"upload an image of at most {MAX_PIXELS:,} pixels (e.g. 4096 x 4096)"
    try:
        with warnings.catch_warnings():
            # Pillow refuses more than 2 * MAX_IMAGE_PIXELS at open and warns above it; both
            # are errors here (uploads are read one at a time, under the app's gate)
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            # lazy: reads the header only; PNG and JPEG only (no other decoder is ever tried)
            img = Image.open(io.BytesIO(data), formats=IMAGE_FORMATS)
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
            f"'{name}' is not an image the explorer reads (PNG or JPEG; it starts with {start!r}); "
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
