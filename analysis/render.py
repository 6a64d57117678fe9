"""Saliency rendering: CAM → heatmap on the original image grid → overlay PNG with a caption (OpenCV)."""

from __future__ import annotations

import base64
import struct
import zlib
from collections.abc import Callable
from dataclasses import replace
from functools import lru_cache

import cv2
import numpy as np

from models.card import ModelCard, statement_kind
from models.preprocess import FundusTransform

try:
    from isal import isal_zlib as _isal_zlib
except ImportError:  # pragma: no cover - a platform without an isal wheel: zlib, about 4x slower
    _isal_zlib = None

#: Burned into every overlay (a picture travels without its JSON), chosen by the model card's intended use
#: (:func:`models.card.statement_kind`): trained on synthetic data; a research model trained on real data
#: (research use, not for clinical use); or a card that states neither.
CAPTION = "AI output - model trained on synthetic images - not for diagnosis"
CAPTION_RESEARCH = "AI output - research use only - not for clinical use"
CAPTION_REAL = "AI output - to be confirmed by a qualified reader"
#: The maps' PNGs are written here (:func:`png_bytes`): every row with PNG filter type 2 ("Up": the byte above
#: subtracted, one numpy subtraction for the whole image), then one deflate stream. Nearly all of an encoding's
#: time is the deflate's, so it is ISA-L's (the ``isal`` package) at this level when installed — about as many
#: bytes as zlib level 1 with the RLE strategy (the encoding used before, through OpenCV's libpng), in about a
#: quarter of the time — and zlib level 1 RLE otherwise. The measurements, and what was tried and not taken:
#: docs/performance.md.
_ISAL_LEVEL = 1
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


#: The heatmap and the overlay are drawn at most this many pixels on their long side (the web page's heatmap
#: canvas is no larger, HEATMAP_MAX_SIDE in service/web/app.js): a 4096 px lossless upload would otherwise be
#: blended and PNG-encoded at 16 Mpx. ``Saliency.scale`` states the resulting original pixels per PNG pixel.
RENDER_MAX_SIDE = 1024


def render_factor(height: int, width: int, max_side: int = RENDER_MAX_SIDE) -> int:
    """The smallest integer ``k`` with ``ceil(max(height, width) / k) <= max_side``: the maps are drawn on a grid
    ``k`` times coarser than the ``(height, width)`` image (``k`` image pixels per map pixel, exactly)."""
    if max_side < 1:
        raise ValueError(f"max_side must be positive, not {max_side}")
    return max(1, -(-max(height, width) // max_side))


def reduce_by(rgb: np.ndarray, k: int) -> np.ndarray:
    """``rgb`` block-averaged by the integer ``k``: ``(ceil(H / k), ceil(W / k)[, C])``, pixel ``(u, v)`` the mean
    of pixels ``[u*k, (u+1)*k)`` (the last, partial block averages its own pixels with the edge replicated).
    ``k == 1`` returns ``rgb`` itself."""
    if k == 1:
        return rgb
    h, w = rgb.shape[:2]
    ph, pw = -h % k, -w % k
    padded = cv2.copyMakeBorder(rgb, 0, ph, 0, pw, cv2.BORDER_REPLICATE) if ph or pw else rgb
    # INTER_AREA with an integer ratio is the exact block mean.
    return cv2.resize(padded, ((w + pw) // k, (h + ph) // k), interpolation=cv2.INTER_AREA)


def coarser(transform: FundusTransform, k: int) -> FundusTransform:
    """``transform`` onto the grid of :func:`reduce_by` ``(image, k)``: same model-input side, the crop origin
    and pixel pitch divided by ``k`` (exact in continuous coordinates), the target grid ``ceil(W / k)`` by
    ``ceil(H / k)``."""
    if k == 1:
        return transform
    return replace(transform, x0=transform.x0 / k, y0=transform.y0 / k, scale=transform.scale / k,
                   original_width=-(-transform.original_width // k),
                   original_height=-(-transform.original_height // k))


def cam_to_heatmap(cam: np.ndarray, transform: FundusTransform) -> np.ndarray:
    """``(h, w)`` class activation map → ``(H, W)`` float32 in [0, 1] on the original image grid.

    As Grad-CAM implementations do: negative evidence is cut (ReLU) and the map is min-max scaled, so a map
    that is flat over the field shows as flat rather than saturated. Upsampling is bicubic at model-input
    resolution; the map is kept to the fundus field (the circle inscribed in the crop — the corners are dark
    surround), then the preprocessing transform is inverted so it lands on the pixels it came from.
    """
    size = transform.size
    grid = cv2.resize(np.maximum(cam.astype(np.float32), 0.0), (size, size), interpolation=cv2.INTER_CUBIC)
    field = _field_mask(size)
    inside = grid[field]
    lo, hi = float(inside.min()), float(inside.max())
    grid = np.where(field, (grid - lo) / (hi - lo), 0.0).astype(np.float32) if hi - lo > 1e-12 else np.zeros_like(grid)
    return np.clip(transform.map_to_original(grid), 0.0, 1.0)


@lru_cache(maxsize=4)
def _field_mask(size: int) -> np.ndarray:
    """Boolean mask of the circle inscribed in a ``size``×``size`` crop (the fundus field after preprocessing);
    cached (one per model input size) and read-only."""
    yy, xx = np.mgrid[:size, :size]
    c = (size - 1) / 2.0
    mask = (xx - c) ** 2 + (yy - c) ** 2 <= (size / 2.0) ** 2
    mask.flags.writeable = False
    return mask


def caption_for(card: ModelCard) -> str:
    """The overlay caption that fits the model's intended-use statement."""
    return caption_for_use(card.intended_use)


def saliency_caption(caption: str, target_grade: int, evidence: bool) -> str:
    """The overlay's ``caption``, plus a note when the heatmap is blank because the explained grade has no
    positive evidence anywhere (a reader of the burned-in overlay, e.g. in a PACS, cannot tell that from a
    failed heatmap otherwise)."""
    return caption if evidence else f"{caption} - no evidence found for grade {target_grade}"


def caption_for_use(intended_use: str) -> str:
    """The overlay caption for a card's ``intended_use`` statement (see :data:`CAPTION`)."""
    kind = statement_kind(intended_use)
    return CAPTION if kind == "synthetic" else CAPTION_RESEARCH if kind == "research" else CAPTION_REAL


def heat_to_u8(heat: np.ndarray) -> np.ndarray:
    """[0, 1] float heatmap → uint8 (the heatmap PNG, and the overlay's input)."""
    return (heat * 255).astype(np.uint8)


def overlay(rgb: np.ndarray, heat_u8: np.ndarray, *, caption: str = CAPTION, alpha: float = 0.5) -> np.ndarray:
    """Blend a JET-coloured ``heat_u8`` over ``rgb`` (weight grows with heat) and burn in ``caption``."""
    colour = cv2.cvtColor(cv2.applyColorMap(heat_u8, cv2.COLORMAP_JET), cv2.COLOR_BGR2RGB)
    w = heat_u8.astype(np.float32) * np.float32(alpha / 255.0)
    # One C++ pass with per-pixel weights instead of three float32 temporaries of the full photograph.
    out = cv2.blendLinear(np.ascontiguousarray(rgb), colour, 1.0 - w, w)
    _caption(out, caption)
    return out


#: Lesion colours (RGB) and short labels, as the web page's legend; the label is drawn beside larger boxes so
#: the type never depends on colour alone.
LESION_STYLE: dict[str, tuple[tuple[int, int, int], str]] = {
    "microaneurysm": ((255, 64, 64), "MA"),
    "haemorrhage": ((255, 160, 0), "HE"),
    "hard_exudate": ((255, 255, 0), "EX"),
    "cotton_wool_spot": ((0, 255, 255), "CWS"),
}


def draw_lesions(img: np.ndarray, lesions: list[tuple[str, float, tuple[float, float, float, float]]],
                 *, scale: float = 1.0) -> None:
    """Draw ``(type, score, box)`` lesions (boxes in original pixels; the image is at ``scale`` original pixels
    per pixel) and a legend of the types present, in place."""
    h, w = img.shape[:2]
    thick = max(1, round(w / 700))
    font = max(0.35, w / 2200)
    present = []
    for kind, _score, (x0, y0, x1, y1) in lesions:
        colour, label = LESION_STYLE.get(kind, ((255, 255, 255), kind[:3].upper()))
        p0 = (int(np.floor(x0 / scale)) - 1, int(np.floor(y0 / scale)) - 1)
        p1 = (int(np.ceil(x1 / scale)), int(np.ceil(y1 / scale)))
        cv2.rectangle(img, p0, p1, colour, thick, cv2.LINE_8)  # crisp: a box edge is exact evidence
        if p1[0] - p0[0] >= 24:  # room for a label
            cv2.putText(img, label, (p0[0], max(10, p0[1] - 3)), cv2.FONT_HERSHEY_SIMPLEX, font, colour, 1,
                        cv2.LINE_AA)
        if kind not in present:
            present.append(kind)
    y = 8
    for kind in present:
        colour, label = LESION_STYLE.get(kind, ((255, 255, 255), kind[:3].upper()))
        text = f"{label}  {kind.replace('_', ' ')}"
        (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, font, 1)
        img[y:y + th + base + 6, 4:4 + tw + th + 16] = (img[y:y + th + base + 6, 4:4 + tw + th + 16] * 0.3
                                                        ).astype(np.uint8)
        cv2.rectangle(img, (8, y + 3), (8 + th, y + 3 + th), colour, -1)
        cv2.putText(img, text, (14 + th, y + th + 2), cv2.FONT_HERSHEY_SIMPLEX, font, (255, 255, 255), 1,
                    cv2.LINE_AA)
        y += th + base + 8


def _caption(img: np.ndarray, text: str) -> None:
    """Write ``text`` on a dark band at the bottom, sized to the image width (in place)."""
    h, w = img.shape[:2]
    scale = max(0.3, w / 1400)
    thick = max(1, round(scale * 1.5))
    (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, thick)
    if tw > w * 0.98:  # shrink to fit narrow images
        scale *= w * 0.98 / tw
        (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, thick)
    band = th + base + 8
    img[max(0, h - band):, :] = (img[max(0, h - band):, :] * 0.3).astype(np.uint8)
    cv2.putText(img, text, (4, h - base - 4), cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), thick, cv2.LINE_AA)


def png_base64(img: np.ndarray) -> str:
    """Encode an RGB or single-channel uint8 image as base64 PNG (:func:`png_bytes`)."""
    return base64.b64encode(png_bytes(img)).decode("ascii")


def png_bytes(img: np.ndarray, *, deflate: Callable[[bytes | memoryview], bytes] | None = None) -> bytes:
    """A lossless 8-bit PNG (ISO/IEC 15948) of an ``(H, W)`` grey or ``(H, W, 3)`` RGB uint8 image: IHDR, one
    IDAT of Up-filtered rows, IEND. ``deflate`` makes the zlib stream (default :func:`deflate_zlib`)."""
    if img.dtype != np.uint8 or not (img.ndim == 2 or (img.ndim == 3 and img.shape[2] == 3)) or 0 in img.shape:
        raise ValueError(f"expected a non-empty (H, W) or (H, W, 3) uint8 image, got {img.shape} {img.dtype}")
    h, w = img.shape[:2]
    rows = np.ascontiguousarray(img).reshape(h, -1)
    raw = np.empty((h, rows.shape[1] + 1), np.uint8)
    raw[:, 0] = 2  # filter type Up: each byte minus the byte above it, modulo 256 (the first row minus zeros)
    raw[0, 1:] = rows[0]
    np.subtract(rows[1:], rows[:-1], out=raw[1:, 1:])
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2 if img.ndim == 3 else 0, 0, 0, 0)  # 8 bit, RGB or grey, no interlace
    data = (deflate or deflate_zlib)(raw.data)
    return _PNG_SIGNATURE + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", data) + _png_chunk(b"IEND", b"")


def deflate_zlib(raw: bytes | memoryview) -> bytes:
    """A zlib stream (RFC 1950) of ``raw``: ISA-L's at :data:`_ISAL_LEVEL` when installed, else zlib level 1, RLE."""
    if _isal_zlib is not None:
        return _isal_zlib.compress(raw, _ISAL_LEVEL)
    return deflate_zlib_stdlib(raw)


def deflate_zlib_stdlib(raw: bytes | memoryview) -> bytes:
    """A zlib stream of ``raw`` by the standard library: level 1, the RLE strategy."""
    co = zlib.compressobj(1, zlib.DEFLATED, zlib.MAX_WBITS, 9, zlib.Z_RLE)
    return co.compress(raw) + co.flush()


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    """One PNG chunk: length, type, data, CRC-32 of type and data."""
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(data, zlib.crc32(kind)))
