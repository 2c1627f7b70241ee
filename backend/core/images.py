"""Image checks for dataset validation: safe path resolution and a cheap integrity check.

The check reads the header (format, width, height) and then does the least work that still
catches the files that make a training run crash later:

- PNG: the chunk CRCs are verified up to ``IEND`` (catches truncated and corrupted files
  without decompressing the pixels);
- JPEG: the file must end with the ``EOI`` marker; if it does not, the image is decoded at
  1/8 scale to tell trailing garbage (harmless) from a truncated scan (fatal);
- other formats: the image is decoded (rare in the released data).

``full_decode=True`` decodes every image completely (slow, exact).
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass

from PIL import Image

#: PIL's own default decompression-bomb threshold (about 9459 x 9459 pixels).
DEFAULT_MAX_PIXELS = 89_478_485


class ImageProblem(Exception):
    """An image a sample refers to cannot be used; ``code`` is the issue kind."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True)
class ImageInfo:
    width: int
    height: int
    format: str


def resolve_image(root_real: str, rel: str) -> str:
    """The real path of ``rel`` under ``root_real`` (an already resolved root).

    Refuses paths that leave the root: ``..`` components, absolute paths elsewhere and
    symbolic links whose target is outside the root. Absolute paths inside the root are
    accepted, since the reference joins them the same way.
    """
    if not rel or "\x00" in rel:
        raise ImageProblem("image_path", f"invalid image path {rel!r}")
    joined = os.path.join(root_real, rel)
    real = os.path.realpath(joined)
    if real == root_real or real.startswith(root_real.rstrip(os.sep) + os.sep):
        return real
    if os.path.isabs(rel):
        why = "is an absolute path outside the dataset root"
    elif ".." in rel.replace("\\", "/").split("/"):
        why = "uses '..' to leave the dataset root"
    else:
        why = "is a symbolic link pointing outside the dataset root"
    raise ImageProblem("image_path", f"image {rel!r} {why}")


def _jpeg_has_eoi(fp) -> bool:
    fp.seek(0, os.SEEK_END)
    size = fp.tell()
    fp.seek(max(0, size - 16))
    tail = fp.read().rstrip(b"\x00")  # some writers pad with zeros after EOI
    return tail.endswith(b"\xff\xd9")


def _integrity(im: Image.Image, full_decode: bool) -> None:
    fmt = im.format
    if full_decode:
        im.load()
    elif fmt == "PNG":
        im.verify()
    elif fmt in ("JPEG", "MPO"):
        if not _jpeg_has_eoi(im.fp):
            im.fp.seek(0)
            im.draft("RGB", (max(1, im.width // 8), max(1, im.height // 8)))
            im.load()
    else:
        im.load()


def check_image(path: str, rel: str, *, max_pixels: int = DEFAULT_MAX_PIXELS,
                full_decode: bool = False) -> ImageInfo:
    """Check one image file; raise :class:`ImageProblem` with a one-line reason."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                width, height, fmt = im.width, im.height, im.format or "?"
                if width * height > max_pixels:
                    raise ImageProblem("image_too_large", f"image {rel!r} is {width}x{height}, more than the "
                                       f"{max_pixels:,}-pixel limit (decompression bomb guard)")
                if width < 1 or height < 1:
                    raise ImageProblem("image_unreadable", f"image {rel!r} has no pixels ({width}x{height})")
                _integrity(im, full_decode)
    except ImageProblem:
        raise
    except FileNotFoundError:
        raise ImageProblem("image_missing", f"image {rel!r} not found") from None
    except IsADirectoryError:
        raise ImageProblem("image_missing", f"image {rel!r} is a directory") from None
    except Image.DecompressionBombError as e:
        # PIL's own guard fires in open() for more than twice its limit: say the size anyway.
        raise ImageProblem("image_too_large", f"image {rel!r} is too large for the decompression-bomb guard "
                           f"({str(e).split(',')[0]})") from None
    except Image.UnidentifiedImageError:
        raise ImageProblem("image_unreadable", f"{rel!r} is not an image file PIL can read") from None
    except PermissionError:
        raise ImageProblem("image_unreadable", f"image {rel!r} cannot be read (permission denied)") from None
    except Exception as e:  # PIL raises OSError, SyntaxError, ValueError, struct.error... for bad files
        reason = str(e).splitlines()[0][:120] if str(e) else type(e).__name__
        raise ImageProblem("image_unreadable", f"image {rel!r} is corrupt or truncated ({reason})") from None
    return ImageInfo(width, height, fmt)
