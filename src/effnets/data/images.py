"""One robust image opener for training, evaluation and pseudo-labelling.

``open_image(path)`` returns an RGB ``PIL.Image`` or raises ``BadImage`` (an ``EffnetsError``)
with the path and a one-line reason; nothing else escapes, whatever the bytes on disk.

* **Bad files**: missing paths and broken symbolic links, directories named like images,
  zero-byte files, files PIL cannot identify (text, HTML error pages, ...), truncated or corrupt
  data (the pixels are decoded here, so truncation is found at open time, not later) and images
  over ``max_pixels`` (default ``DEFAULT_MAX_PIXELS``, PIL's own decompression-bomb limit of
  ~89.5 MP).  The pixel cap is checked from the header, before any pixel is decoded, so a
  "decompression bomb" costs nothing; PIL's DecompressionBombWarning/Error become ``BadImage``.
* **EXIF orientation** is applied (``ImageOps.exif_transpose``); a corrupt EXIF block is ignored
  (the image is used as stored) rather than rejecting an otherwise good image.
* **Modes** -> RGB:
  ``L``, ``1``: grey replicated to three channels.
  ``P``: through the palette (``RGBA`` first when the palette has transparency).
  ``RGBA``, ``LA``, ``PA``, ``RGBa``, ``La``: **alpha-composited on white** (``background``),
  as a browser shows them; dropping alpha instead would reveal whatever colour transparent
  pixels happen to store (often black).
  ``CMYK``: PIL's conversion (no ICC colour management).
  ``I;16*`` (16-bit grey): divided by 257, i.e. the full 16-bit range maps to 0..255.
  ``I`` (32-bit int): kept if within 0..255, divided by 257 if within 0..65535, else min-max scaled.
  ``F`` (float): x255 if within 0..1, kept if within 0..255, else min-max scaled; NaN -> 0.
  ``YCbCr``, ``LAB``, ``HSV``: PIL's conversion.  16-bit RGB PNGs are already reduced to 8 bits
  by PIL.  Multi-frame files (GIF, TIFF) give their first frame.

(``effnets predict`` in ``effnets/export`` has its own opener for now; both should use this one.)
"""
from __future__ import annotations

import os
import warnings

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from ..errors import BadImage

DEFAULT_MAX_PIXELS = 89_478_485  # PIL's default Image.MAX_IMAGE_PIXELS (~ 0.25 GB of 24-bit RGB)
WHITE = (255, 255, 255)

__all__ = ["open_image", "probe_image", "to_rgb", "BadImage", "DEFAULT_MAX_PIXELS"]


def _check_path(path: str) -> None:
    if os.path.isdir(path):
        raise BadImage(path, "is a directory, not an image file")
    if not os.path.exists(path):
        reason = "is a broken symbolic link" if os.path.islink(path) else "does not exist"
        raise BadImage(path, reason)
    try:
        size = os.path.getsize(path)
    except OSError as e:
        raise BadImage(path, f"cannot be read ({e.strerror or e})") from None
    if size == 0:
        raise BadImage(path, "is empty (0 bytes)")


def _open(path: str, max_pixels: int | None):
    """PIL image with only the header read; the pixel cap checked."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # DecompressionBombWarning (the cap is ours), corrupt EXIF, ...
            im = Image.open(path)
    except Image.DecompressionBombError as e:
        raise BadImage(path, f"too large to decode safely ({e})") from None
    except UnidentifiedImageError:
        raise BadImage(path, "is not an image file PIL can identify (wrong extension, or corrupt header)") from None
    except PermissionError as e:
        raise BadImage(path, f"cannot be read ({e.strerror})") from None
    except Exception as e:  # noqa: BLE001 - any parse failure of hostile bytes is a bad image
        raise BadImage(path, f"cannot be opened ({type(e).__name__}: {_first_line(e)})") from None
    w, h = im.size
    if w < 1 or h < 1:
        im.close()
        raise BadImage(path, f"has an empty size {w}x{h}")
    if max_pixels is not None and w * h > max_pixels:
        im.close()
        raise BadImage(path, f"is {w}x{h} = {w * h:,} pixels, over the {max_pixels:,}-pixel limit (max_pixels); "
                             "shrink it or raise the limit")
    return im


def _first_line(e: BaseException) -> str:
    s = str(e).strip()
    return s.splitlines()[0][:200] if s else "no details"


def probe_image(path: str | os.PathLike, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> tuple[int, int, str]:
    """Cheap check from the header only: ``(width, height, mode)`` or ``BadImage``.  Finds missing,
    empty, unidentifiable and oversized files, not truncated pixel data (``open_image`` does)."""
    path = os.fspath(path)
    _check_path(path)
    im = _open(path, max_pixels)
    try:
        return im.size[0], im.size[1], im.mode
    finally:
        im.close()


def open_image(path: str | os.PathLike, max_pixels: int | None = DEFAULT_MAX_PIXELS,
               background: tuple[int, int, int] = WHITE) -> Image.Image:
    """Decode ``path`` to an RGB image (see the module docstring), or raise ``BadImage``."""
    path = os.fspath(path)
    _check_path(path)
    im = _open(path, max_pixels)
    try:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # e.g. "Corrupt EXIF data", "Palette images with transparency"
                im.load()
        except Exception as e:  # noqa: BLE001 - truncated/corrupt pixel data of any format
            raise BadImage(path, f"has corrupt or truncated image data ({type(e).__name__}: {_first_line(e)})") from None
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                oriented = ImageOps.exif_transpose(im)
        except Exception:  # noqa: BLE001 - a broken EXIF block: keep the stored orientation
            oriented = im
        try:
            return to_rgb(oriented if oriented is not None else im, background)
        except BadImage:
            raise
        except Exception as e:  # noqa: BLE001
            raise BadImage(path, f"has an unsupported pixel format {im.mode!r} ({_first_line(e)})") from None
    finally:
        im.close()


def _scaled_to_uint8(a: np.ndarray, mode: str) -> np.ndarray:
    a = np.nan_to_num(a.astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    lo, hi = (float(a.min()), float(a.max())) if a.size else (0.0, 0.0)
    if mode.startswith("I;16"):
        a = a / 257.0
    elif mode == "F" and lo >= 0 and hi <= 1:
        a = a * 255.0
    elif lo >= 0 and hi <= 255:
        pass
    elif mode == "I" and lo >= 0 and hi <= 65535:
        a = a / 257.0
    else:
        a = (a - lo) * (255.0 / (hi - lo)) if hi > lo else np.zeros_like(a)
    return np.clip(np.rint(a), 0, 255).astype(np.uint8)


def to_rgb(im: Image.Image, background: tuple[int, int, int] = WHITE) -> Image.Image:
    """Any PIL mode -> RGB (rules in the module docstring)."""
    mode = im.mode
    if mode == "RGB":
        return im.copy() if im.readonly else im
    if mode == "P":
        has_alpha = "transparency" in im.info or (im.palette is not None and im.palette.mode == "RGBA")
        return to_rgb(im.convert("RGBA" if has_alpha else "RGB"), background)
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = im.convert("RGBA")
        bg = Image.new("RGBA", rgba.size, tuple(background) + (255,))
        return Image.alpha_composite(bg, rgba).convert("RGB")
    if mode.startswith("I") or mode == "F":
        grey = _scaled_to_uint8(np.asarray(im), mode)
        if grey.ndim == 3:
            grey = grey[..., 0]
        return Image.fromarray(grey, mode="L").convert("RGB")
    if mode in ("1", "L"):
        return im.convert("L").convert("RGB")
    return im.convert("RGB")
