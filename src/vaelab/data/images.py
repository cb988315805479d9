"""Folders of PNG/JPEG images: read with their channels, optionally resized, into ``[N, C, H, W]``.

A folder holds images directly, or one subfolder per class (the subfolder's name is the
label if every name is a whole number, else labels are 0, 1, ... in sorted name order).

Channels are kept: a folder of grey images (Pillow modes ``1``, ``L``, ``LA``, ``I``,
``I;16``, ``F``) gives ``C = 1``, a folder of colour images gives ``C = 3`` (RGB). Images with
a palette or transparency (``P``, ``PA``, ``RGBA``, ``CMYK``, ...) are converted to RGB; a grey
image with alpha (``LA``) stays grey. Transparent pixels are composited onto white, as the
latent space explorer does with uploaded images. A folder mixing grey and colour images is an error naming one file of each kind:
convert them to one kind first (a grey image as RGB repeats its grey in the three channels).

All images must have one size, or be resized with ``resize=(H, W)`` (``--resize HxW``):
Pillow's Lanczos filter (antialiased when it shrinks; the explorer resizes uploads the same
way); the aspect ratio is not kept (crop first to keep it). Pixels stay 8-bit
(uint8); :func:`~vaelab.data.load_data` divides them by 255. Grey images of more than 8 bits
(16-bit, 32-bit integer, float) are read at their grey level as the explorer reads uploads
(16-bit values over 65535, float ones in [0, 1]), then rounded to 8 bits; Pillow's own
conversion clips them to 0..255 (a 16-bit mid-grey came out white). An image of more pixels
than Pillow decodes (its decompression-bomb guard) is refused, naming it and its size. A vaelab
run folder (``config.json`` beside the run's weights or records) or a folder of them (train's
``--out``) is refused as such: its PNGs are the run's figures.

>>> parse_resize("32x24")
(32, 24)
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from vaelab.errors import VaelabError

__all__ = ["IMAGE_SUFFIXES", "GREY_MODES", "ImageFolder", "read_image_folder", "parse_resize", "image_files", "grey_levels"]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
GREY_MODES = frozenset({"1", "L", "LA", "La", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"})  # Pillow modes read as C = 1


@dataclass(frozen=True)
class ImageFolder:
    """What an image folder holds: pixels ``[N, C, H, W]`` uint8, labels ``[N]`` int64 (or
    None without class subfolders) and the class names (None when the names are numbers)."""

    x: np.ndarray
    labels: np.ndarray | None
    class_names: tuple[str, ...] | None


def parse_resize(value: str | tuple[int, int] | list[int] | None, what: str = "--resize") -> tuple[int, int] | None:
    """``"HxW"`` (e.g. ``"32x32"``; or a pair) as ``(H, W)``; ``""``/None as None; else a one-line VaelabError."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if isinstance(value, (tuple, list)) and len(value) == 2 and all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        h, w = value
    else:
        found = re.fullmatch(r"\s*(\d+)\s*[xX]\s*(\d+)\s*", value) if isinstance(value, str) else None
        if found is None:
            raise VaelabError(f"{what} must be HxW in pixels, height first, e.g. 32x32; got {value!r}")
        h, w = int(found[1]), int(found[2])
    if h < 1 or w < 1:
        raise VaelabError(f"{what} must be HxW with positive sizes, e.g. 32x32; got {h}x{w}")
    return int(h), int(w)


def image_files(folder: Path) -> list[Path]:
    """The PNG/JPEG files directly in ``folder``, sorted by name (hidden files skipped)."""
    return sorted(p for p in folder.iterdir()
                  if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_SUFFIXES)


_RUN_FILES = ("model.safetensors", "checkpoint.safetensors", "model.json", "manifest.json", "metrics.jsonl")


def _run_files(folder: Path) -> list[str]:
    """The files that make ``folder`` a vaelab run folder (``config.json`` and one or more of the
    run's records), or [] when it is not one."""
    try:
        if not (folder / "config.json").is_file():
            return []
        return ["config.json", *(name for name in _RUN_FILES if (folder / name).is_file())][:3]
    except OSError:
        return []


def _trained_on(run: Path) -> str:
    """' (it was trained on 'NAME')', the data its config.json names, or '' when unreadable."""
    import json

    try:
        data = json.loads((run / "config.json").read_text(encoding="utf-8"))["config"]["data"]
    except (OSError, ValueError, KeyError, TypeError):
        return ""
    return f" (it was trained on {data!r})" if isinstance(data, str) and data else ""


def check_not_runs(folder: Path) -> None:
    """Refuse, as such, a folder given as data that is a vaelab run folder or a folder of runs
    (``--out``): their PNGs are the runs' figures, and reading them as an image data set
    (of mixed sizes) said to pass --resize."""
    found = _run_files(folder)
    if len(found) > 1:
        raise VaelabError(
            f"data '{folder}' is a vaelab run folder ({', '.join(found)}), not a data folder: its images are the run's "
            f"figures; pass --data the data set itself{_trained_on(folder)}, and give the run where a command takes "
            f"a run (vaelab eval '{folder}', vaelab encode '{folder}' DATA)")
    try:
        runs = sorted(p for p in folder.iterdir() if p.is_dir() and len(_run_files(p)) > 1)
    except OSError:
        return  # the listing says what is wrong
    if runs:
        raise VaelabError(
            f"data '{folder}' holds vaelab run folders ('{runs[0].name}'{', ...' if len(runs) > 1 else ''}) where an "
            f"image folder holds class folders of images: pass --data the data set itself, not a folder of runs (list "
            f"them with vaelab runs '{folder}'), or move the run folders out of the data")


def _short(err: BaseException) -> str:
    return " ".join(str(err).split())[:200] or type(err).__name__


def _listing(folder: Path) -> tuple[list[Path], list[int] | None, tuple[str, ...] | None]:
    """The image files of a folder and, with class subfolders, their labels and class names."""
    subfolders = sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    files = image_files(folder)
    if not subfolders:
        if not files:
            raise VaelabError(f"image folder '{folder}' has no PNG/JPEG images")
        return files, None, None
    if files:
        raise VaelabError(
            f"image folder '{folder}' has images ('{files[0].name}', ...) beside class "
            f"subfolders; move every image into its class subfolder"
        )
    names = [p.name for p in subfolders]
    numbered = all(n.isdigit() for n in names)
    ids = [int(n) for n in names] if numbered else list(range(len(names)))
    labels: list[int] = []
    for sub, label in zip(subfolders, ids, strict=True):
        members = image_files(sub)
        if not members:
            raise VaelabError(f"class folder '{sub}' has no PNG/JPEG images; add some or remove it")
        files += members
        labels += [label] * len(members)
    return files, labels, None if numbered else tuple(names)


def read_image_folder(folder: str | Path, resize: tuple[int, int] | None = None) -> ImageFolder:
    """Read every image of ``folder`` (see the module docstring) as uint8 ``[N, C, H, W]``.

    Headers are read first (mode and size of every file, no decoding), so a folder that mixes
    grey and colour, or sizes without ``resize``, is refused before any pixel is decoded.
    """
    from PIL import Image, UnidentifiedImageError  # Pillow comes with matplotlib

    folder = Path(folder)
    check_not_runs(folder)  # a run folder's (or --out's) PNGs are figures, not a data set
    files, labels, class_names = _listing(folder)
    headers: list[tuple[str, tuple[int, int]]] = []  # (mode, (width, height)) per file
    for path in files:
        try:
            with Image.open(path) as image:
                headers.append((image.mode, image.size))
        except Image.DecompressionBombError as err:  # Pillow's guard, at open: more than 2 x MAX_IMAGE_PIXELS
            found = re.search(r"\((\d+) pixels\)", str(err))
            size = f"{int(found[1]):,} pixels" if found else "more pixels than Pillow decodes"
            raise VaelabError(f"image '{path}' is {size}, more than Pillow will decode ({2 * (Image.MAX_IMAGE_PIXELS or 0):,} "
                              "pixels at most: a decompression bomb guard); shrink it or remove it") from None
        except (UnidentifiedImageError, OSError) as err:
            raise VaelabError(f"image '{path}' cannot be read ({_short(err)}); remove or re-save it") from None
    grey = [mode in GREY_MODES for mode, _ in headers]
    if any(grey) and not all(grey):
        g, c = grey.index(True), grey.index(False)
        raise VaelabError(
            f"image folder '{folder}' mixes grey and colour images: '{files[g]}' is grey (mode {headers[g][0]}), "
            f"'{files[c]}' is colour (mode {headers[c][0]}); convert them all to one kind (e.g. all to RGB)"
        )
    if resize is None:
        first = headers[0][1]
        other = next((i for i, (_, size) in enumerate(headers) if size != first), None)
        if other is not None:
            (w0, h0), (w1, h1) = first, headers[other][1]
            raise VaelabError(
                f"images of different sizes: '{files[0]}' is {h0}x{w0} and '{files[other]}' is {h1}x{w1} "
                f"(height x width); pass --resize HxW to resize them all, e.g. --resize {h0}x{w0}"
            )
    mode = "L" if grey[0] else "RGB"
    from ..evaluation.memory import check_bytes

    (w0, h0), channels = headers[0][1], 1 if grey[0] else 3
    h, w = resize if resize is not None else (h0, w0)
    # the decoded bytes and the float32 copy made of them: refused before the first pixel is decoded
    check_bytes(5.0 * len(files) * channels * h * w, f"the image folder '{folder}' ({len(files):,} images of "
                f"{h}x{w} pixels)", "choose a smaller --resize" if resize is not None else "resize the images smaller")
    pixels = [_decode(path, mode, resize) for path in files]
    x = np.stack(pixels)  # [N, H, W] or [N, H, W, 3]
    x = x[:, None] if mode == "L" else x.transpose(0, 3, 1, 2)  # [N, C, H, W]
    return ImageFolder(np.ascontiguousarray(x), None if labels is None else np.asarray(labels, dtype=np.int64),
                       class_names)


def grey_levels(image: Any) -> tuple[np.ndarray, float]:
    """The pixel values ``[H, W]`` (float64) of a grey image of more than 8 bits and the value of
    white: 65535 for 16-bit data (and a 32-bit integer image whose values need more than 8 bits),
    255 for one whose values fit 8 bits, 1 for a float image (values in [0, 1]). What is wrong
    otherwise is a ValueError whose text completes "the image ..." (the image folder reader and
    the explorer's uploads each say it their way)."""
    a = np.asarray(image, dtype=np.float64)
    if not np.isfinite(a).all():
        raise ValueError("holds NaN or infinite pixel values")
    lo, hi = (float(a.min()), float(a.max())) if a.size else (0.0, 0.0)
    if image.mode == "F":
        if lo < 0 or hi > 1:
            raise ValueError(f"is a float image with values in [{lo:g}, {hi:g}]; float images are read as grey "
                             "levels in [0, 1] (white = 1)")
        return a, 1.0
    if lo < 0 or hi > 65535:
        raise ValueError(f"holds grey levels in [{lo:g}, {hi:g}], outside 8 or 16 bits")
    return a, 65535.0 if image.mode.startswith("I;16") or hi > 255 else 255.0


def _wide_grey(image: Any, path: Path) -> Any:
    """A grey image of more than 8 bits as a float image (Pillow mode ``F``) of grey levels in
    [0, 1] (:func:`grey_levels`: the rules of the explorer's upload reader)."""
    from PIL import Image

    try:
        a, white = grey_levels(image)
    except ValueError as err:
        raise VaelabError(f"image '{path}' {err}; save it as an 8- or 16-bit PNG (or a float image of grey "
                          "levels in [0, 1])") from None
    return Image.fromarray((a / white).astype(np.float32), mode="F")


def _decode(path: Path, mode: str, resize: tuple[int, int] | None) -> Any:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            if image.mode in ("RGBA", "RGBa", "LA", "La", "PA") or (image.mode == "P" and "transparency" in image.info):
                rgba = image.convert("RGBA")  # transparent pixels onto white
                image = Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba)
            wide = mode == "L" and (image.mode in ("I", "F") or image.mode.startswith("I;16"))
            # 16-bit, 32-bit or float grey levels: Pillow's convert("L") clips them to 0..255 (a 16-bit
            # mid-grey came out white), so they are scaled to their grey level as the explorer does
            image = _wide_grey(image, path) if wide else image.convert(mode)
            if resize is not None and image.size != (resize[1], resize[0]):
                image = image.resize((resize[1], resize[0]), Image.Resampling.LANCZOS)  # Pillow sizes are (W, H)
            if wide:  # grey levels in [0, 1] (F): to 8 bits, as every grey image of the folder
                return np.rint(np.clip(np.asarray(image, dtype=np.float32), 0.0, 1.0) * 255.0).astype(np.uint8)
            return np.asarray(image, dtype=np.uint8)
    except (UnidentifiedImageError, OSError) as err:
        raise VaelabError(f"image '{path}' cannot be read ({_short(err)}); remove or re-save it") from None
