"""DICOM CT slices as 8-bit grayscale images: stored values are rescaled to Hounsfield units
and windowed. Every file this cannot use raises ValueError with a one-line reason, which the
caller reports as `skipped: reason`."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
from PIL import Image
from pydicom.errors import InvalidDicomError
from pydicom.pixels import get_decoder
from pydicom.uid import UID


def read_dicom(path: Path, center: float, width: float) -> Image.Image:
    """The slice at `path` as an "L" image: HU in center - width/2 .. center + width/2 mapped
    linearly to 0..255, clipped, rounded half up."""
    try:
        ds = pydicom.dcmread(path)
    except InvalidDicomError:
        raise ValueError("not a DICOM file (no DICM header)") from None
    if "PixelData" not in ds:
        raise ValueError("DICOM without pixel data")
    frames = int(_number(ds, "NumberOfFrames", 1))
    if frames > 1:
        raise ValueError(f"multi-frame DICOM ({frames} frames); export single slices")
    photometric = ds.get("PhotometricInterpretation", "no PhotometricInterpretation")
    if ds.get("SamplesPerPixel", 1) != 1 or photometric not in ("MONOCHROME1", "MONOCHROME2"):
        raise ValueError(f"not a grayscale DICOM ({photometric}); CT slices are MONOCHROME1 "
                         "or MONOCHROME2")
    syntax = ds.file_meta.get("TransferSyntaxUID")
    if syntax is None:
        raise ValueError("DICOM without a transfer syntax")
    try:
        stored = ds.pixel_array
    except Exception as e:  # each decoder plugin raises its own types; all mean "unreadable"
        raise _decode_error(syntax, e) from None
    if stored.ndim != 2:  # the header checks should rule this out; the window needs one plane
        raise ValueError(f"multi-frame DICOM ({stored.shape[0]} frames); export single slices")
    hu = (stored.astype(np.float64) * _number(ds, "RescaleSlope", 1.0)
          + _number(ds, "RescaleIntercept", 0.0))
    low = center - width / 2
    # multiplying before dividing keeps exact halves exact (HU -600 in the lung window is
    # 127.5), so they all round the same way: up, not to even
    scaled = np.floor((hu - low) * 255 / width + 0.5)
    pixels = np.clip(scaled, 0, 255).astype(np.uint8)
    if photometric == "MONOCHROME1":
        # MONOCHROME1 is inverted at display, after the window (DICOM PS3.3 C.7.6.3.1.2), so the
        # HU and the window stay as stored and only the 8-bit result flips
        pixels = 255 - pixels
    return Image.fromarray(pixels)


def modality(path: Path) -> str | None:
    """The DICOM file's Modality ("CT", "MR", ...), read from its header alone; None for a file
    that is not DICOM or does not say."""
    try:
        return pydicom.dcmread(path, stop_before_pixels=True).get("Modality") or None
    except (InvalidDicomError, OSError):
        return None


def _number(ds: pydicom.Dataset, keyword: str, default: float) -> float:
    value = ds.get(keyword)
    return default if value in (None, "") else float(value)


def _decode_error(syntax: UID, error: Exception) -> ValueError:
    try:
        decoder = get_decoder(syntax)
    except NotImplementedError:  # a private or unknown syntax: no plugin would help
        return ValueError(f"unsupported transfer syntax {syntax.name}")
    if not decoder.is_available:
        plugins = ", ".join(d.split(" - ")[0] for d in decoder.missing_dependencies)
        return ValueError(f"{syntax.name} pixel data needs a decoder plugin "
                          f"({plugins or 'pylibjpeg, pillow or gdcm'}; see pydicom's docs)")
    if syntax.is_compressed:
        # the plugins' messages name in-memory objects, which would make reports differ per run
        return ValueError(f"cannot decode {syntax.name} pixel data (corrupt, or not supported "
                          "by the installed decoder)")
    reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return ValueError(f"cannot decode {syntax.name} pixel data: {reason}")
