"""DICOM pixel decoding for :mod:`analysis.decode`: decoded frames -> RGB uint8, and the GDCM sandbox.

Not a public API: :mod:`analysis.decode` validates the dataset (SOP class, transfer syntax, Image Pixel module,
limits, codestream headers) and then calls :func:`decode_jpeg_colour_frames` (colour 8-bit JPEG, Pillow,
optionally at reduced resolution), :func:`decode_frames` (pydicom, in process) or
:func:`decode_frames_isolated` (pydicom + GDCM, in a child process).

Why a child process for GDCM
----------------------------
python-gdcm is not safe on untrusted input in process: fuzzing pydicom 3.0 + python-gdcm 3.2 with a few
corrupted bytes in JPEG baseline, JPEG lossless, JPEG-LS and JPEG 2000 codestreams aborts the interpreter
(uncaught C++ exception -> ``std::terminate``, SIGABRT) or segfaults in roughly 1-5 % of mutated files. One
such upload would kill a serving worker. So plugins in :data:`IN_PROCESS_PLUGINS` (pydicom's own native and
RLE decoders, Pillow) run here, and ``"gdcm"`` only ever runs in a short-lived child process
(``python -c <bootstrap>``, see :func:`_worker_command`) with a timeout: a crash or a hang there becomes
``UnreadableImage``. The child costs about 0.5 s of start-up, paid only for JPEG lossless / JPEG-LS (GDCM
only) or when Pillow could not decode a JPEG / JPEG 2000 frame. It silences warnings and logging, and its
stderr is discarded, never logged: pydicom warnings and GDCM diagnostics can quote element values (possibly
patient data). The parent logs a fixed message with the exit status only.
"""

from __future__ import annotations

import io
import json
import logging
import os
import subprocess
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Final

import cv2
import numpy as np
from PIL import Image
from pydicom.dataset import Dataset
from pydicom.encaps import get_frame
from pydicom.pixels import apply_color_lut, apply_modality_lut, apply_voi, apply_windowing, get_decoder

from analysis.errors import FoveaError, UnreadableImage, UnsupportedDicom

logger = logging.getLogger(__name__)

#: pydicom decoding plugins that may run inside the serving process ("" = native, uncompressed data).
IN_PROCESS_PLUGINS: Final = frozenset({"", "pydicom", "pillow"})
#: Plugins that only run in the child process (see the module docstring).
ISOLATED_PLUGINS: Final = frozenset({"gdcm"})


@dataclass(frozen=True)
class PixelHeader:
    """The validated Image Pixel module of a dataset (as checked by :mod:`analysis.decode`)."""

    transfer_syntax: str
    rows: int
    columns: int
    samples_per_pixel: int
    bits_allocated: int
    bits_stored: int
    pixel_representation: int
    photometric_interpretation: str
    number_of_frames: int


# ------------------------------------------------------------------------------------------------------------
# Array helpers (also used by analysis.decode for JPEG / PNG)
# ------------------------------------------------------------------------------------------------------------


def finish_rgb(rgb: np.ndarray) -> np.ndarray:
    """Enforce the output contract: ``(H, W, 3)`` uint8, C-contiguous, owning its memory."""
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise UnreadableImage(f"Decoding produced an unexpected array {rgb.shape} {rgb.dtype}.")
    out = np.ascontiguousarray(rgb)
    return out if out.flags.owndata and out.flags.writeable else out.copy()


def scale_uint_to_u8(arr: np.ndarray, max_value: int) -> np.ndarray:
    """Linearly map unsigned integers ``[0, max_value]`` to ``[0, 255]`` (rounded, saturated)."""
    if arr.dtype == np.uint8 and max_value == 255:
        return arr
    src = np.ascontiguousarray(arr)
    if src.dtype not in (np.uint8, np.uint16):  # cv2 does 8/16-bit only; rare here
        return np.clip(np.rint(src.astype(np.float64) * (255.0 / max_value)), 0, 255).astype(np.uint8)
    return cv2.convertScaleAbs(src, alpha=255.0 / max_value)


def linear_to_u8(values: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Linearly map ``[lo, hi]`` to ``[0, 255]`` (rounded, clipped). An empty range maps to 0."""
    if not np.isfinite(lo) or not np.isfinite(hi) or hi <= lo:
        return np.zeros(values.shape, dtype=np.uint8)
    out = (values.astype(np.float32) - np.float32(lo)) * np.float32(255.0 / (hi - lo))
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


# ------------------------------------------------------------------------------------------------------------
# In-process decoding
# ------------------------------------------------------------------------------------------------------------


def decode_frames(
    ds: Dataset, header: PixelHeader, count: int, plugin: str
) -> tuple[list[np.ndarray], list[str]]:
    """Decode frames ``0..count-1`` of ``ds`` with one pydicom plugin and convert them to RGB uint8.

    Raises :class:`FoveaError` for unsupported content, any other exception if the plugin fails (the caller
    tries the next plugin).
    """
    decoder = get_decoder(header.transfer_syntax)
    notes: list[str] = []
    # raw=False + as_rgb=True: pydicom converts YBR_FULL / YBR_FULL_422 to RGB and reports the resulting
    # photometric interpretation in the returned properties, which is what to_rgb8 trusts: RGB exactly once.
    frames = [
        to_rgb8(arr, props, ds, header, notes)
        for arr, props in decoder.iter_array(
            ds, indices=range(count), raw=False, validate=True, decoding_plugin=plugin, as_rgb=True
        )
    ]
    if len(frames) != count:
        raise ValueError(f"expected {count} frames, got {len(frames)}")
    return frames, list(dict.fromkeys(notes))


def decode_jpeg_colour_frames(ds: Dataset, header: PixelHeader, count: int, scale: int) -> list[np.ndarray]:
    """Decode colour 8-bit JPEG (baseline / extended) frames ``0..count-1`` with Pillow at ``1/scale``.

    Colour follows pydicom's rule - the DICOM Photometric Interpretation says what the samples are (RGB kept,
    YBR_FULL / YBR_FULL_422 converted to RGB exactly once) - unless the codestream has an Adobe APP14 marker,
    whose transform libjpeg follows (as with pydicom's Pillow plugin). The conversion is done by libjpeg
    when it takes the samples as YCbCr anyway (SIMD, fastest), else by OpenCV with the same JPEG full-range
    BT.601 matrix; both are much faster than pydicom's numpy conversion, and the output equals pydicom's
    (checked on every colour JPEG of the test corpora). ``scale`` in (1, 2, 4, 8) uses libjpeg's DCT scaling:
    each frame comes back as ``ceil(rows / scale) x ceil(columns / scale)``.

    The caller has already checked each codestream's SOF against the header. Raises any exception on a frame
    Pillow cannot decode (the caller falls back to pydicom's plugins at full size).
    """
    size = (-(-header.columns // scale), -(-header.rows // scale))
    convert = header.photometric_interpretation in ("YBR_FULL", "YBR_FULL_422")
    frames: list[np.ndarray] = []
    for index in range(count):
        codestream = get_frame(ds.PixelData, index, number_of_frames=header.number_of_frames)
        with Image.open(io.BytesIO(codestream), formats=["JPEG"]) as im:
            if im.mode != "RGB":  # e.g. CMYK / L, inconsistent with SamplesPerPixel 3 + this PI
                raise ValueError(f"unexpected JPEG mode {im.mode}")
            # Without APP14, libjpeg takes the samples as YCbCr (and converts them to RGB, SIMD, fastest)
            # unless there is no JFIF marker and the component IDs are 'R','G','B' (libjpeg's
            # default_decompress_parms). pydicom's rule is that the DICOM PI says what the samples are:
            raw = "adobe_transform" not in im.info
            libjpeg_ycc = raw and ("jfif" in im.info or _component_ids(im) != [ord("R"), ord("G"), ord("B")])
            # - libjpeg sees YCbCr, PI RGB: ask for raw samples (no conversion); PI YBR: let libjpeg convert;
            # - libjpeg sees RGB (no conversion either way): take the samples, convert here if PI is YBR;
            # - APP14 present: libjpeg follows the marker's transform, the result is RGB.
            mode = "YCbCr" if libjpeg_ycc and not convert else "RGB"
            request = (header.columns // scale, header.rows // scale) if scale > 1 else None
            im.draft(mode, request)
            if im.size != size:
                raise ValueError(f"Pillow decoded {im.size}, expected {size}")
            arr = np.asarray(im)
        if arr.shape != (size[1], size[0], 3) or arr.dtype != np.uint8:
            raise ValueError(f"unexpected decoded array {arr.shape} {arr.dtype}")
        if raw and convert and not libjpeg_ycc:
            arr = cv2.cvtColor(arr[..., [0, 2, 1]], cv2.COLOR_YCrCb2RGB)  # Y Cb Cr -> Y Cr Cb -> RGB
        frames.append(finish_rgb(arr))
    return frames


def _component_ids(im: Image.Image) -> list[int]:
    """Component identifiers of a JPEG's SOF (Pillow's ``layer``: ints in recent Pillow, 1-byte bytes before)."""
    return [c if isinstance(c, int) else ord(c) for c, *_ in getattr(im, "layer", [])]


def to_rgb8(
    arr: np.ndarray, props: dict[str, Any], ds: Dataset, header: PixelHeader, notes: list[str]
) -> np.ndarray:
    """One decoded frame (as pydicom returns it) to ``(H, W, 3)`` uint8 RGB."""
    pi = str(props.get("photometric_interpretation", header.photometric_interpretation)).upper()
    bits_stored = int(props.get("bits_stored", header.bits_stored))
    if arr.shape[:2] != (header.rows, header.columns):
        raise UnreadableImage(
            f"A decoded frame is {arr.shape[1]}x{arr.shape[0]}, "
            f"the header says {header.columns}x{header.rows}."
        )
    if pi == "RGB":
        if arr.ndim != 3 or arr.shape[2] != 3:
            raise UnreadableImage(f"The decoded RGB frame has an unexpected shape {arr.shape}.")
        return finish_rgb(scale_uint_to_u8(arr, 2**bits_stored - 1))
    if pi in ("YBR_FULL", "YBR_FULL_422", "YBR_ICT", "YBR_RCT"):
        # pydicom / the backends convert these; still YBR here would mean a missing conversion.
        raise UnsupportedDicom(
            f"The DICOM pixel data stayed in {pi} after decoding; only RGB output is usable."
        )
    if arr.ndim != 2:
        raise UnreadableImage(f"The decoded {pi} frame has an unexpected shape {arr.shape}.")
    if pi == "PALETTE COLOR":
        return finish_rgb(_palette_to_rgb8(arr, ds))
    if pi in ("MONOCHROME1", "MONOCHROME2"):
        gray = _monochrome_to_u8(arr, ds, header, notes)
        if pi == "MONOCHROME1":
            gray = 255 - gray
        return finish_rgb(cv2.cvtColor(np.ascontiguousarray(gray), cv2.COLOR_GRAY2RGB))
    raise UnsupportedDicom(f"The DICOM photometric interpretation {pi!r} is not supported.")


def _palette_to_rgb8(arr: np.ndarray, ds: Dataset) -> np.ndarray:
    try:
        rgb = apply_color_lut(arr, ds)
        depth = int(ds.RedPaletteColorLookupTableDescriptor[2])
    except Exception as exc:
        raise UnsupportedDicom(
            "The DICOM PALETTE COLOR lookup table is missing or not supported (a standard 8/16-bit palette "
            "in the Image Pixel module is required)."
        ) from exc
    return scale_uint_to_u8(rgb[..., :3], 255 if depth <= 8 else 65535)  # [..., :3]: drop palette alpha


def _monochrome_to_u8(arr: np.ndarray, ds: Dataset, header: PixelHeader, notes: list[str]) -> np.ndarray:
    """Modality LUT / rescale, then the first VOI LUT or window, then to uint8.

    Final scaling range: the VOI LUT's nominal range, or the window's output range (pydicom's definition:
    the modality output range). Without a VOI transform, unsigned data of <= 8 bits without a modality
    transform is kept as stored; anything else is min-max stretched per frame.
    """
    has_modality = bool(ds.get("ModalityLUTSequence")) or ("RescaleSlope" in ds and "RescaleIntercept" in ds)
    values = apply_modality_lut(arr, ds)

    voi_items = ds.get("VOILUTSequence")
    has_voi_lut = bool(voi_items) and all(
        voi_items[0].get(k) is not None for k in ("LUTDescriptor", "LUTData")
    )
    has_window = ds.get("WindowCenter") is not None and ds.get("WindowWidth") is not None
    try:
        if has_voi_lut:
            depth = int(voi_items[0].LUTDescriptor[2])
            return linear_to_u8(apply_voi(values, ds, 0), 0, 2**depth - 1)
        if has_window:
            lo, hi = _window_output_range(ds, header)
            return linear_to_u8(apply_windowing(values, ds, 0), lo, hi)
    except Exception:
        logger.debug("VOI transform failed; falling back to min-max", exc_info=True)
        notes.append("the VOI LUT / window could not be applied; intensities were min-max stretched")

    if not has_modality and header.pixel_representation == 0 and header.bits_stored <= 8:
        return linear_to_u8(values, 0, 2**header.bits_stored - 1)
    return linear_to_u8(values, float(np.min(values)), float(np.max(values)))


def _window_output_range(ds: Dataset, header: PixelHeader) -> tuple[float, float]:
    """Output range of pydicom's ``apply_windowing`` (PS3.3 C.11.2.1.2: the modality output range)."""
    if ds.get("ModalityLUTSequence"):
        depth = int(ds.ModalityLUTSequence[0].LUTDescriptor[2])
        return 0.0, float(2**depth - 1)
    bits = header.bits_stored
    if header.pixel_representation == 0:
        lo, hi = 0.0, float(2**bits - 1)
    else:
        lo, hi = float(-(2 ** (bits - 1))), float(2 ** (bits - 1) - 1)
    slope, intercept = ds.get("RescaleSlope"), ds.get("RescaleIntercept")
    if slope is not None and intercept is not None:
        lo, hi = lo * float(slope) + float(intercept), hi * float(slope) + float(intercept)
    return min(lo, hi), max(lo, hi)


# ------------------------------------------------------------------------------------------------------------
# Isolated decoding (child process)
# ------------------------------------------------------------------------------------------------------------


_PACKAGE: Final = __name__.rpartition(".")[0] or "analysis"
# The child imports this module WITHOUT running the package's __init__ (which may import the whole service):
# it registers a bare package object pointing at this directory, then imports <package>.dicom_pixels.
_BOOTSTRAP: Final = (
    "import sys, types\n"
    "name, path = sys.argv[1], sys.argv[2]\n"
    "pkg = types.ModuleType(name); pkg.__path__ = [path]; sys.modules[name] = pkg\n"
    "from importlib import import_module\n"
    "sys.exit(import_module(name + '.dicom_pixels')._worker_main())\n"
)


def _worker_command() -> list[str]:
    return [sys.executable, "-c", _BOOTSTRAP, _PACKAGE, str(Path(__file__).resolve().parent)]


def decode_frames_isolated(
    data: bytes, header: PixelHeader, count: int, plugin: str, *, timeout_s: float
) -> tuple[list[np.ndarray], list[str]]:
    """Like :func:`decode_frames`, but in a child process that re-reads ``data`` (a Part 10 file).

    A crash, a hang past ``timeout_s`` or a garbled reply raises :class:`RuntimeError` (the caller reports
    ``UnreadableImage``); a :class:`FoveaError` raised in the child is re-raised here with the same class.
    """
    request = json.dumps({"header": asdict(header), "count": count, "plugin": plugin}).encode() + b"\n"
    try:
        # stderr is discarded, not captured: GDCM / pydicom diagnostics can quote patient data, and nothing
        # here may log them (only the fixed message + exit status below).
        proc = subprocess.run(
            _worker_command(),
            input=request + data,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            timeout=timeout_s,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:  # subprocess.run kills the child
        logger.warning("isolated %s decoder timed out after %g s", plugin, timeout_s)
        raise RuntimeError(f"isolated {plugin} decoder timed out after {timeout_s:g} s") from exc
    if proc.returncode != 0:
        logger.warning("isolated %s decoder exited with status %s", plugin, proc.returncode)
        raise RuntimeError(f"isolated {plugin} decoder exited with status {proc.returncode}")
    return _parse_reply(proc.stdout, header, count)


def _parse_reply(out: bytes, header: PixelHeader, count: int) -> tuple[list[np.ndarray], list[str]]:
    line, sep, body = out.partition(b"\n")
    if not sep:
        raise RuntimeError("isolated decoder gave no reply")
    reply = json.loads(line)
    if not reply.get("ok"):
        cls = {c.__name__: c for c in (UnreadableImage, UnsupportedDicom)}.get(reply.get("error", ""))
        if cls is not None:
            raise cls(str(reply.get("message", "")))
        raise RuntimeError(f"isolated decoder failed: {reply.get('error')}")
    frame_bytes = header.rows * header.columns * 3
    if reply.get("frames") != count or len(body) != count * frame_bytes:
        raise RuntimeError("isolated decoder reply has the wrong size")
    shape = (header.rows, header.columns, 3)
    frames = [
        np.frombuffer(body, np.uint8, frame_bytes, i * frame_bytes).reshape(shape).copy()
        for i in range(count)
    ]
    return frames, [str(n) for n in reply.get("notes", [])]


def _worker_main() -> int:
    """Child process: stdin = JSON request line + Part 10 bytes; stdout = JSON reply line + raw RGB frames."""
    import io
    import warnings

    import pydicom

    warnings.simplefilter("ignore")  # pydicom warnings quote element values; nothing here may echo them
    logging.disable(logging.CRITICAL)
    reply_fd = os.dup(1)
    os.dup2(2, 1)  # native libraries that print to stdout must not corrupt the reply
    with os.fdopen(reply_fd, "wb") as reply:
        try:
            raw = sys.stdin.buffer.read()
            line, _, data = raw.partition(b"\n")
            request = json.loads(line)
            header = PixelHeader(**request["header"])
            if request["plugin"] not in ISOLATED_PLUGINS | IN_PROCESS_PLUGINS:
                raise ValueError("unknown plugin")
            ds = pydicom.dcmread(io.BytesIO(data), force=False)
            frames, notes = decode_frames(ds, header, int(request["count"]), request["plugin"])
        except FoveaError as exc:
            error = {"ok": False, "error": type(exc).__name__, "message": exc.message}
            reply.write(json.dumps(error).encode() + b"\n")
            return 0
        except Exception as exc:  # noqa: BLE001 - reported as a failed plugin by the parent
            reply.write(json.dumps({"ok": False, "error": type(exc).__name__}).encode() + b"\n")
            return 0
        reply.write(json.dumps({"ok": True, "frames": len(frames), "notes": notes}).encode() + b"\n")
        for frame in frames:
            reply.write(frame.data.cast("B"))  # C-contiguous uint8 (finish_rgb): no copy
    return 0


if __name__ == "__main__":
    sys.exit(_worker_main())
