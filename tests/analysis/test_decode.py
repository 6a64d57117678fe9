"""Tests for analysis.decode: sniffing, JPEG/PNG/DICOM decoding, limits and the typed-error contract.

pydicom's bundled test files are opened by PATH from the installed wheel, never through
``pydicom.data.get_testdata_file`` (which downloads missing files and hangs offline).
"""

from __future__ import annotations

import io
import logging
import math
import struct
import sys
import time
import zlib
from pathlib import Path

import cv2
import numpy as np
import pydicom
import pytest
from PIL import Image, ImageOps
from pydicom import uid
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate

import analysis.dicom_frames as dicom_frames
from analysis import dicom_pixels
from analysis.decode import FUNDUS_SOP_CLASSES, DecodedImage, DecodeLimits, decode, jpeg_reduction, sniff
from analysis.dicom_pixels import PixelHeader, decode_frames_isolated
from analysis.errors import (
    FoveaError,
    ImageTooSmall,
    PayloadTooLarge,
    UnreadableImage,
    UnsupportedDicom,
    UnsupportedMediaType,
)

TEST_FILES = Path(pydicom.__file__).parent / "data" / "test_files"

# SC_rgb*.dcm (100x100): ten 10-row stripes, sampled at column 50 (values from pydicom's own tests).
STRIPES = [
    (255, 0, 0), (255, 128, 128), (0, 255, 0), (128, 255, 128), (0, 0, 255),
    (128, 128, 255), (0, 0, 0), (64, 64, 64), (192, 192, 192), (255, 255, 255),
]  # fmt: skip
PATIENT_NAME = "DOE^JANE"
PATIENT_ID = "PID-998877"
TINY_OK = DecodeLimits(min_side=1)  # for tests that build few-pixel images on purpose


def _test_file(name: str) -> bytes:
    return (TEST_FILES / name).read_bytes()


def _assert_contract(images: list[DecodedImage]) -> None:
    assert images
    for im in images:
        assert im.rgb.dtype == np.uint8
        assert im.rgb.ndim == 3 and im.rgb.shape[2] == 3
        assert im.rgb.flags.c_contiguous and im.rgb.flags.owndata
        assert im.scale in (1.0, 2.0, 4.0, 8.0)
        assert im.rgb.shape[:2] == (math.ceil(im.height / im.scale), math.ceil(im.width / im.scale))


def _assert_stripes(rgb: np.ndarray, tol: int, expected: list[tuple[int, int, int]] = STRIPES) -> None:
    got = [tuple(int(v) for v in rgb[r, 50]) for r in range(5, 100, 10)]
    for g, e in zip(got, expected, strict=True):
        assert max(abs(a - b) for a, b in zip(g, e)) <= tol, (got, expected)


# ------------------------------------------------------------------------------------------------------------
# Builders
# ------------------------------------------------------------------------------------------------------------


def _quadrants(h: int = 48, w: int = 64) -> np.ndarray:
    """RGB test card: red / green top, blue / white bottom (W != H to catch transposition)."""
    rgb = np.zeros((h, w, 3), np.uint8)
    rgb[: h // 2, : w // 2] = (255, 0, 0)
    rgb[: h // 2, w // 2 :] = (0, 255, 0)
    rgb[h // 2 :, : w // 2] = (0, 0, 255)
    rgb[h // 2 :, w // 2 :] = (255, 255, 255)
    return rgb


def _quadrant_centres(rgb: np.ndarray) -> list[tuple[int, ...]]:
    h, w = rgb.shape[:2]
    pts = [(h // 4, w // 4), (h // 4, 3 * w // 4), (3 * h // 4, w // 4), (3 * h // 4, 3 * w // 4)]
    return [tuple(int(v) for v in rgb[y, x]) for y, x in pts]


QUADRANT_COLOURS = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 255)]


def _close(got: list[tuple[int, ...]], expected: list[tuple[int, ...]], tol: int) -> bool:
    return all(max(abs(a - b) for a, b in zip(g, e)) <= tol for g, e in zip(got, expected, strict=True))


def _jpeg(rgb: np.ndarray, quality: int = 95) -> bytes:
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality])
    assert ok
    return buf.tobytes()


def _png_pil(img: Image.Image) -> bytes:
    out = io.BytesIO()
    img.save(out, format="PNG")
    return out.getvalue()


def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def _png_claiming(width: int, height: int) -> bytes:
    """A syntactically valid PNG whose IHDR claims width x height (the IDAT is tiny)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", ihdr)
        + _png_chunk(b"IDAT", zlib.compress(b"\x00" * 16))
        + _png_chunk(b"IEND", b"")
    )


def _dicom(
    pixels: np.ndarray | None = None,
    *,
    pi: str = "RGB",
    bits_stored: int | None = None,
    sop_class: str = uid.OphthalmicPhotography8BitImageStorage,
    transfer_syntax: str = uid.ExplicitVRLittleEndian,
    **elements: object,
) -> Dataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = uid.generate_uid()
    meta.TransferSyntaxUID = transfer_syntax
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = uid.generate_uid()
    ds.SeriesInstanceUID = uid.generate_uid()
    ds.PatientName = PATIENT_NAME
    ds.PatientID = PATIENT_ID
    ds.PatientBirthDate = "19700101"
    ds.Modality = "OP"
    if pixels is not None:
        ds.set_pixel_data(pixels, pi, bits_stored or pixels.dtype.itemsize * 8, generate_instance_uid=False)
        ds.file_meta.TransferSyntaxUID = transfer_syntax
    for keyword, value in elements.items():
        setattr(ds, keyword, value)
    return ds


def _save(ds: Dataset) -> bytes:
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def _jpeg_dicom(
    rgb: np.ndarray, *, rows: int | None = None, cols: int | None = None, frame: bytes | None = None
) -> Dataset:
    """An Ophthalmic Photography 8-bit file with a JPEG-baseline (YBR_FULL_422) frame made by OpenCV."""
    ds = _dicom(sop_class=uid.OphthalmicPhotography8BitImageStorage, transfer_syntax=uid.JPEGBaseline8Bit)
    ds.Rows = rows or rgb.shape[0]
    ds.Columns = cols or rgb.shape[1]
    ds.SamplesPerPixel = 3
    ds.PhotometricInterpretation = "YBR_FULL_422"
    ds.PlanarConfiguration = 0
    ds.BitsAllocated = 8
    ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    ds.LossyImageCompression = "01"
    ds.PixelData = encapsulate([frame if frame is not None else _jpeg(rgb)])
    ds["PixelData"].VR = "OB"
    return ds


# ------------------------------------------------------------------------------------------------------------
# Sniffing
# ------------------------------------------------------------------------------------------------------------


def test_sniff_by_magic_bytes() -> None:
    assert sniff(_jpeg(_quadrants())) == "jpeg"
    assert sniff(_png_pil(Image.new("RGB", (4, 4)))) == "png"
    assert sniff(_test_file("SC_rgb_rle.dcm")) == "dicom"


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\x00" * 10,
        np.random.default_rng(0).bytes(4096),
        b"GIF89a" + b"\x00" * 64,
        b"DICM" + b"\x00" * 200,
    ],
    ids=["empty", "zeros", "random", "gif", "dicm-at-0"],
)
def test_sniff_and_decode_reject_other_bytes(data: bytes) -> None:
    with pytest.raises(UnsupportedMediaType) as err:
        sniff(data)
    assert "DICOM Part 10" in err.value.message and "JPEG" in err.value.message
    with pytest.raises(UnsupportedMediaType):
        decode(data)


def test_preamble_less_dicom_is_refused_as_media_type() -> None:
    with pytest.raises(UnsupportedMediaType, match="Part 10"):
        decode(_test_file("ExplVR_LitEndNoMeta.dcm"))


# ------------------------------------------------------------------------------------------------------------
# JPEG / PNG
# ------------------------------------------------------------------------------------------------------------


def test_jpeg_decodes_to_rgb_with_right_size_and_colours() -> None:
    [im] = decode(_jpeg(_quadrants()))
    _assert_contract([im])
    assert (im.source, im.width, im.height, im.frame_index, im.laterality) == ("jpeg", 64, 48, None, None)
    assert im.sop_class_uid is None and im.transfer_syntax_uid is None
    assert _close(_quadrant_centres(im.rgb), QUADRANT_COLOURS, tol=6)


def test_grayscale_jpeg_gives_three_equal_channels() -> None:
    ok, buf = cv2.imencode(".jpg", np.full((40, 60), 77, np.uint8))
    assert ok
    [im] = decode(buf.tobytes())
    assert im.rgb.shape == (40, 60, 3)
    assert np.all(np.abs(im.rgb.astype(int) - 77) <= 2)


def test_png_rgb_is_lossless() -> None:
    rgb = _quadrants()
    [im] = decode(_png_pil(Image.fromarray(rgb)))
    assert im.source == "png"
    np.testing.assert_array_equal(im.rgb, rgb)


def test_png_grayscale_rgba_palette() -> None:
    gray = np.tile(np.arange(0, 250, 10, dtype=np.uint8), (40, 2))
    [im] = decode(_png_pil(Image.fromarray(gray, mode="L")))
    np.testing.assert_array_equal(im.rgb, np.repeat(gray[:, :, None], 3, axis=2))

    rgba = np.dstack([_quadrants(), np.full((48, 64), 128, np.uint8)])
    [im] = decode(_png_pil(Image.fromarray(rgba, mode="RGBA")))
    np.testing.assert_array_equal(im.rgb, _quadrants())
    assert "alpha channel dropped" in im.notes

    palette = Image.fromarray(_quadrants()).convert("P", palette=Image.Palette.ADAPTIVE, colors=4)
    [im] = decode(_png_pil(palette))
    assert _close(_quadrant_centres(im.rgb), QUADRANT_COLOURS, tol=0)


def test_png_16_bit_is_scaled_to_8_bit() -> None:
    rgb16 = _quadrants().astype(np.uint16) * 257  # 255 -> 65535
    rgb16[0, 0] = (257 * 100, 257 * 50, 0)
    ok, buf = cv2.imencode(".png", cv2.cvtColor(rgb16, cv2.COLOR_RGB2BGR))
    assert ok
    [im] = decode(buf.tobytes())
    assert im.rgb.dtype == np.uint8
    assert tuple(im.rgb[0, 0]) == (100, 50, 0)
    assert _close(_quadrant_centres(im.rgb), QUADRANT_COLOURS, tol=0)

    gray16 = np.full((40, 42), 257 * 200, np.uint16)
    ok, buf = cv2.imencode(".png", gray16)
    [im] = decode(buf.tobytes())
    assert np.all(im.rgb == 200)


def test_pillow_fallback_gives_the_same_pixels(monkeypatch: pytest.MonkeyPatch) -> None:
    rgba = np.dstack([_quadrants(), np.full((48, 64), 255, np.uint8)])
    png = _png_pil(Image.fromarray(rgba, mode="RGBA"))
    jpeg = _jpeg(_quadrants())
    gray16 = np.full((40, 42), 257 * 200, np.uint16)
    _, png16 = cv2.imencode(".png", gray16)
    expected_jpeg = decode(jpeg)[0].rgb
    monkeypatch.setattr(cv2, "imdecode", lambda *a, **k: None)
    [im] = decode(png)
    np.testing.assert_array_equal(im.rgb, _quadrants())
    assert any("Pillow" in n for n in im.notes)
    [im] = decode(jpeg)
    assert np.abs(im.rgb.astype(int) - expected_jpeg.astype(int)).max() <= 3
    [im] = decode(png16.tobytes())
    assert np.all(im.rgb == 200)


@pytest.mark.parametrize("kind", ["jpeg", "png"])
def test_truncated_raster_is_unreadable(kind: str) -> None:
    noise = np.random.default_rng(1).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    data = _jpeg(noise) if kind == "jpeg" else _png_pil(Image.fromarray(noise))
    for cut in (len(data) // 2, len(data) - 20, 40):
        with pytest.raises(UnreadableImage):
            decode(data[:cut])


def test_corrupt_raster_is_unreadable() -> None:
    with pytest.raises(UnreadableImage):
        decode(b"\xff\xd8\xff\xe0" + b"\x00" * 100)
    with pytest.raises(UnreadableImage):
        decode(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)


def _exif_jpeg(rgb: np.ndarray, orientation: int, quality: int = 95) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    out = io.BytesIO()
    Image.fromarray(rgb).save(out, format="JPEG", quality=quality, exif=exif)
    return out.getvalue()


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_is_applied_like_pillow(orientation: int) -> None:
    data = _exif_jpeg(_quadrants(), orientation)
    with Image.open(io.BytesIO(data)) as im:
        expected = np.asarray(ImageOps.exif_transpose(im).convert("RGB"))
    [got] = decode(data)
    _assert_contract([got])
    assert (got.height, got.width) == expected.shape[:2]  # display size, axes swapped for 5-8
    assert np.abs(got.rgb.astype(int) - expected.astype(int)).max() <= 3
    if orientation == 1:
        assert not any("EXIF" in n for n in got.notes)
    else:
        assert any(f"EXIF orientation {orientation} applied" in n for n in got.notes)


def test_exif_rotated_jpeg_puts_red_where_the_viewer_sees_it() -> None:
    # Orientation 6: the stored image must be turned 90 degrees clockwise for display, so the stored
    # top-left red quadrant ends up top-right and the 64x48 photo is displayed 48x64.
    [im] = decode(_exif_jpeg(_quadrants(), 6))
    assert (im.width, im.height) == (48, 64)
    assert _close([tuple(int(v) for v in im.rgb[16, 36])], [(255, 0, 0)], tol=8)
    assert _close([tuple(int(v) for v in im.rgb[16, 12])], [(0, 0, 255)], tol=8)


def test_jpeg_with_trailing_bytes_after_eoi_still_decodes() -> None:
    [im] = decode(_jpeg(_quadrants()) + b"\x00\x00trailer")
    assert (im.width, im.height) == (64, 48)


def _jpeg_claiming(width: int, height: int) -> bytes:
    """A real (small) JPEG whose SOF0 header is patched to claim width x height."""
    data = bytearray(_jpeg(_quadrants()))
    sof = data.index(b"\xff\xc0")
    data[sof + 5 : sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def _forbid_decoding(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_decoding(*args: object, **kwargs: object) -> None:
        raise AssertionError("pixels must not be decoded")

    monkeypatch.setattr(cv2, "imdecode", no_decoding)
    monkeypatch.setattr(Image.Image, "load", no_decoding)
    monkeypatch.setattr(Image.Image, "convert", no_decoding)


@pytest.mark.parametrize("kind", ["jpeg", "png"])
def test_20000_square_header_is_413_quickly_without_decoding(
    kind: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = _jpeg_claiming(20_000, 20_000) if kind == "jpeg" else _png_claiming(20_000, 20_000)
    assert len(data) < 10_000
    _forbid_decoding(monkeypatch)
    start = time.perf_counter()
    with pytest.raises(PayloadTooLarge) as err:
        decode(data)
    assert time.perf_counter() - start < 0.5
    assert err.value.status == 413 and str(DecodeLimits().max_pixels) in err.value.message


@pytest.mark.parametrize("kind", ["jpeg", "png", "dicom"])
def test_one_pixel_image_is_too_small_and_says_the_minimum(kind: str) -> None:
    one = np.full((1, 1, 3), 200, np.uint8)
    if kind == "jpeg":
        data = _jpeg(one)
    elif kind == "png":
        data = _png_pil(Image.fromarray(one))
    else:
        data = _save(_dicom(one))
    with pytest.raises(ImageTooSmall) as err:
        decode(data)
    assert err.value.status == 422 and err.value.code == "image_too_small"
    assert "1x1" in err.value.message and "at least 32 pixels" in err.value.message
    [im] = decode(data, limits=TINY_OK)  # the limit is the only reason
    assert im.rgb.shape == (1, 1, 3)
    limits = DecodeLimits(min_side=48)
    assert decode(_jpeg(_quadrants()), limits=limits)  # 64x48: exactly the minimum passes
    with pytest.raises(ImageTooSmall, match="at least 49"):
        decode(_jpeg(_quadrants()), limits=DecodeLimits(min_side=49))


def test_cmyk_jpeg_gives_the_right_rgb_colours() -> None:
    out = io.BytesIO()
    Image.fromarray(_quadrants()).convert("CMYK").save(out, format="JPEG", quality=95)
    data = out.getvalue()
    with Image.open(io.BytesIO(data)) as im:
        assert im.mode == "CMYK"
    [im] = decode(data)
    _assert_contract([im])
    assert _close(_quadrant_centres(im.rgb), QUADRANT_COLOURS, tol=6)


def test_palette_png_with_transparency_keeps_colours_and_drops_alpha() -> None:
    palette = Image.fromarray(_quadrants()).convert("P", palette=Image.Palette.ADAPTIVE, colors=4)
    blue = palette.getpixel((5, 40))  # palette index of the blue quadrant
    out = io.BytesIO()
    palette.save(out, format="PNG", transparency=blue)  # blue becomes fully transparent (tRNS)
    [im] = decode(out.getvalue())
    assert _close(_quadrant_centres(im.rgb), QUADRANT_COLOURS, tol=0)  # stored colour kept under alpha 0
    assert "alpha channel dropped" in im.notes


def test_animated_png_gives_the_first_frame_with_a_note() -> None:
    frames = [Image.fromarray(_quadrants()), Image.fromarray(255 - _quadrants()), Image.new("RGB", (64, 48))]
    out = io.BytesIO()
    frames[0].save(out, format="PNG", save_all=True, append_images=frames[1:])
    [im] = decode(out.getvalue())
    np.testing.assert_array_equal(im.rgb, _quadrants())
    assert any("animated PNG with 3 frames" in n for n in im.notes)


def test_multi_picture_jpeg_gives_the_first_image_with_a_note() -> None:
    out = io.BytesIO()
    Image.fromarray(_quadrants()).save(
        out, format="MPO", save_all=True, append_images=[Image.fromarray(255 - _quadrants())]
    )
    [im] = decode(out.getvalue())
    assert _close(_quadrant_centres(im.rgb), QUADRANT_COLOURS, tol=6)
    assert any("multi-picture JPEG with 2 frames" in n for n in im.notes)


@pytest.mark.parametrize("animated", [False, True])
def test_gif_is_refused_by_name(animated: bool) -> None:
    frames = [Image.fromarray(_quadrants()), Image.fromarray(255 - _quadrants())]
    out = io.BytesIO()
    frames[0].save(out, format="GIF", save_all=animated, append_images=frames[1:] if animated else [])
    with pytest.raises(UnsupportedMediaType, match="GIF image, which is not accepted") as err:
        decode(out.getvalue())
    assert err.value.status == 415 and "PNG" in err.value.message


@pytest.mark.parametrize(("fmt", "name"), [("TIFF", "TIFF"), ("BMP", "BMP"), ("WEBP", "WebP")])
def test_other_image_formats_are_named_in_the_415(fmt: str, name: str) -> None:
    out = io.BytesIO()
    Image.fromarray(_quadrants()).save(out, format=fmt)
    with pytest.raises(UnsupportedMediaType, match=f"a {name} image"):
        decode(out.getvalue())


def test_oversize_headers_are_refused_before_decoding(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_decoding(*args: object, **kwargs: object) -> None:
        raise AssertionError("pixels must not be decoded")

    monkeypatch.setattr(cv2, "imdecode", no_decoding)
    with pytest.raises(PayloadTooLarge):  # 10^10 px: Pillow's own bomb guard fires while parsing the header
        decode(_png_claiming(100_000, 100_000))
    with pytest.raises(PayloadTooLarge, match="60000000"):  # 81 Mpx: over our limit, under Pillow's
        decode(_png_claiming(9_000, 9_000))
    with pytest.raises(PayloadTooLarge):
        decode(_jpeg(_quadrants()), limits=DecodeLimits(max_pixels=64 * 48 - 1))


def test_png_chunk_longer_than_the_upload_is_refused_before_opencv(monkeypatch: pytest.MonkeyPatch) -> None:
    # OpenCV 5 allocates a PNG chunk's declared length up front: 148 bytes claiming a 3.7 GB IDAT cost 3.7 GB.
    data = bytearray(_png_pil(Image.fromarray(_quadrants())))
    idat = data.index(b"IDAT") - 4
    data[idat : idat + 4] = struct.pack(">I", 0xE2000000)

    def no_decoding(*args: object, **kwargs: object) -> None:
        raise AssertionError("pixels must not be decoded")

    monkeypatch.setattr(cv2, "imdecode", no_decoding)
    with pytest.raises(UnreadableImage, match="chunk"):
        decode(bytes(data))


def test_upload_over_max_bytes() -> None:
    data = _jpeg(_quadrants())
    with pytest.raises(PayloadTooLarge):
        decode(data, limits=DecodeLimits(max_bytes=len(data) - 1))
    assert decode(data, limits=DecodeLimits(max_bytes=len(data)))


# ------------------------------------------------------------------------------------------------------------
# DICOM: pydicom's bundled files
# ------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "tol"),
    [
        ("SC_rgb_rle.dcm", 0),  # RLE, RGB
        ("SC_rgb_jpeg_dcmtk.dcm", 8),  # JPEG baseline, YBR_FULL
        ("SC_rgb_dcmtk_+eb+cy+np.dcm", 8),  # JPEG baseline, YBR_FULL_422
        ("SC_rgb_dcmtk_+eb+cr.dcm", 0),  # JPEG baseline, RGB (no colour transform)
        ("SC_ybr_full_422_uncompressed.dcm", 8),  # native YBR_FULL_422
        ("SC_rgb_jpeg_gdcm.dcm", 0),  # JPEG lossless (GDCM)
        ("SC_rgb_gdcm_KY.dcm", 0),  # JPEG 2000
        ("SC_rgb_jls_lossy_line.dcm", 8),  # JPEG-LS near-lossless
        ("SC_rgb_rle_16bit.dcm", 0),  # 16-bit RGB scaled to 8 bit
    ],
)
def test_dicom_colour_files_decode_to_rgb_once(name: str, tol: int) -> None:
    images = decode(_test_file(name))
    _assert_contract(images)
    [im] = images
    assert (im.source, im.width, im.height, im.frame_index) == ("dicom", 100, 100, None)
    assert im.sop_class_uid == uid.SecondaryCaptureImageStorage
    assert im.transfer_syntax_uid is not None
    _assert_stripes(im.rgb, tol)


def test_dicom_multi_frame_and_max_frames() -> None:
    data = _test_file("SC_rgb_rle_2frame.dcm")
    images = decode(data)
    assert [im.frame_index for im in images] == [0, 1]
    _assert_stripes(images[0].rgb, 0)
    _assert_stripes(images[1].rgb, 1, [tuple(255 - v for v in c) for c in STRIPES])  # frame 2 is inverted

    [only] = decode(data, limits=DecodeLimits(max_frames=1))
    assert only.frame_index == 0
    assert "1 of 2 frames skipped past the limit of 1 frame per upload (frame 0 was analysed)" in only.notes
    assert not any("skipped" in n for im in images for n in im.notes)


def _multi_frame_true_colour_sc() -> tuple[bytes, Dataset]:
    """pydicom's 30-frame JPEG-baseline YBR_FULL_422 ultrasound, relabelled Multi-frame True Color SC."""
    ds = pydicom.dcmread(io.BytesIO(_test_file("examples_ybr_color.dcm")))
    ds.SOPClassUID = uid.MultiFrameTrueColorSecondaryCaptureImageStorage
    ds.file_meta.MediaStorageSOPClassUID = uid.MultiFrameTrueColorSecondaryCaptureImageStorage
    return _save(ds), ds


def test_multi_frame_true_colour_secondary_capture_returns_every_frame() -> None:
    data, ds = _multi_frame_true_colour_sc()
    assert int(ds.NumberOfFrames) == 30 and ds.file_meta.TransferSyntaxUID == uid.JPEGBaseline8Bit
    expected = pydicom.pixels.pixel_array(io.BytesIO(data))  # pydicom's own decoding, YBR -> RGB

    images = decode(data, limits=DecodeLimits(max_frames=30))
    _assert_contract(images)
    assert [im.frame_index for im in images] == list(range(30))
    assert all(im.sop_class_uid == uid.MultiFrameTrueColorSecondaryCaptureImageStorage for im in images)
    for im, frame in zip(images, expected, strict=True):
        assert np.abs(im.rgb.astype(int) - frame.astype(int)).max() <= 1
    assert len({im.rgb[120, 160].tobytes() for im in images}) > 1  # frames differ: not one frame repeated
    assert not any("skipped" in n for n in images[0].notes)

    images = decode(data)  # default: 16 frames
    assert [im.frame_index for im in images] == list(range(16))
    note = "14 of 30 frames skipped past the limit of 16 frames per upload (frames 0-15 were analysed)"
    assert all(note in im.notes for im in images)


def test_total_pixel_budget_limits_frames_of_large_multi_frame_files() -> None:
    data, _ = _multi_frame_true_colour_sc()  # 320x240 = 76,800 px per frame
    images = decode(data, limits=DecodeLimits(max_frames=30, max_total_pixels=76_800 * 5 + 1))
    assert len(images) == 5
    assert "25 of 30 frames skipped past the limit of 384001 decoded pixels per upload" in images[0].notes[0]
    [one] = decode(data, limits=DecodeLimits(max_total_pixels=10))  # always at least one frame
    assert one.frame_index == 0


def test_ct_is_not_a_fundus_photograph() -> None:
    with pytest.raises(UnsupportedDicom, match="not a fundus photograph") as err:
        decode(_test_file("CT_small.dcm"))
    assert "CT Image Storage" in err.value.message
    assert err.value.status == 422


@pytest.mark.parametrize("name", ["rtplan.dcm", "test-SR.dcm", "reportsi.dcm"])
def test_non_image_dicom_is_unsupported(name: str) -> None:
    with pytest.raises(UnsupportedDicom):
        decode(_test_file(name))


def test_32_bit_and_12_bit_jpeg_are_unsupported() -> None:
    with pytest.raises(UnsupportedDicom, match="bit depth"):
        decode(_test_file("SC_rgb_rle_32bit.dcm"))
    with pytest.raises(UnsupportedDicom, match="12-bit"):
        decode(_test_file("JPEG-lossy.dcm"))


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize(
    "name", ["SC_rgb_rle.dcm", "SC_rgb_jpeg_dcmtk.dcm", "SC_rgb_gdcm_KY.dcm", "SC_rgb_dcmtk_+eb+cy+np.dcm"]
)
def test_truncated_dicom_raises_only_fovea_errors(name: str) -> None:
    data = _test_file(name)
    for cut in (133, 200, len(data) // 2, len(data) - 100, len(data) - 9):
        with pytest.raises((UnreadableImage, UnsupportedDicom)):
            decode(data[:cut])


# ------------------------------------------------------------------------------------------------------------
# DICOM: files built here
# ------------------------------------------------------------------------------------------------------------


def test_ophthalmic_photography_rgb_with_laterality() -> None:
    ds = _dicom(_quadrants(), pi="RGB", ImageLaterality="L", Laterality="R")
    [im] = decode(_save(ds))
    np.testing.assert_array_equal(im.rgb, _quadrants())
    assert im.laterality == "L"  # ImageLaterality wins over Laterality
    assert im.sop_class_uid == uid.OphthalmicPhotography8BitImageStorage
    assert im.study_instance_uid == ds.StudyInstanceUID
    assert im.series_instance_uid == ds.SeriesInstanceUID
    assert im.sop_instance_uid == ds.SOPInstanceUID
    assert im.photometric_interpretation == "RGB"
    assert im.transfer_syntax_uid == uid.ExplicitVRLittleEndian
    assert im.frame_index is None

    [im] = decode(_save(_dicom(_quadrants(), Laterality="R")))
    assert im.laterality == "R"
    [im] = decode(_save(_dicom(_quadrants(), ImageLaterality="B")))
    assert im.laterality is None


def test_jpeg_baseline_ophthalmic_dicom_is_converted_to_rgb_exactly_once() -> None:
    [im] = decode(_save(_jpeg_dicom(_quadrants())))
    assert im.photometric_interpretation == "YBR_FULL_422"
    assert _close(_quadrant_centres(im.rgb), QUADRANT_COLOURS, tol=6)


def test_jpeg_frame_that_disagrees_with_the_header_is_refused() -> None:
    with pytest.raises(UnreadableImage, match="header says"):  # codestream 64x48, header 40x36
        decode(_save(_jpeg_dicom(_quadrants(), rows=36, cols=40)))
    big = np.zeros((1000, 1000, 3), np.uint8)
    with pytest.raises(PayloadTooLarge):  # the codestream itself is over the limit
        decode(_save(_jpeg_dicom(big, rows=40, cols=40)), limits=DecodeLimits(max_pixels=10_000))
    truncated = _jpeg(_quadrants())[:-100]  # cut inside the entropy-coded scan
    with pytest.raises(UnreadableImage, match="truncated"):
        decode(_save(_jpeg_dicom(_quadrants(), frame=truncated)))


def test_monochrome1_is_inverted_and_monochrome2_windowed() -> None:
    gray = np.array([[0, 64, 128, 255]], np.uint8).repeat(3, axis=0)
    [im] = decode(_save(_dicom(gray, pi="MONOCHROME1")), limits=TINY_OK)
    np.testing.assert_array_equal(im.rgb[..., 0], 255 - gray)
    assert np.all(im.rgb[..., 0] == im.rgb[..., 2])

    [im] = decode(_save(_dicom(gray, pi="MONOCHROME2")), limits=TINY_OK)
    np.testing.assert_array_equal(im.rgb[..., 1], gray)

    # 12-bit data in 16 bits, window [1000, 3000]: below -> 0, above -> 255, centre -> ~128.
    values = np.array([[0, 1000, 2000, 3000, 4095]], np.uint16)
    ds = _dicom(values, pi="MONOCHROME2", bits_stored=12, WindowCenter=2000, WindowWidth=2000)
    [im] = decode(_save(ds), limits=TINY_OK)
    row = im.rgb[0, :, 0].astype(int).tolist()
    assert row[0] == 0 and row[1] <= 1 and abs(row[2] - 128) <= 1 and row[3] >= 254 and row[4] == 255


def test_palette_colour_goes_through_the_lut() -> None:
    ds = pydicom.dcmread(io.BytesIO(_test_file("examples_palette.dcm")))
    ds.SOPClassUID = uid.SecondaryCaptureImageStorage  # an US file; relabelled to pass the allow-list
    ds.file_meta.MediaStorageSOPClassUID = uid.SecondaryCaptureImageStorage
    [im] = decode(_save(ds))
    assert im.photometric_interpretation == "PALETTE COLOR"
    expected = pydicom.pixels.apply_color_lut(ds.pixel_array, ds)
    if expected.dtype == np.uint16:
        expected = np.rint(expected / 257.0).astype(np.uint8)
    np.testing.assert_array_equal(im.rgb, expected[..., :3])


def test_no_pixel_data_is_unsupported() -> None:
    with pytest.raises(UnsupportedDicom, match="no Pixel Data"):
        decode(_save(_dicom(None)))


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_truncation_is_told_apart_from_missing_pixel_data() -> None:
    data = _save(_jpeg_dicom(_quadrants()))
    pixel_tag = data.index(b"\xe0\x7f\x10\x00")
    with pytest.raises(UnreadableImage, match="truncated or corrupt: its Pixel Data"):
        decode(data[: pixel_tag + 20])  # the tag is there, its value cut off
    with pytest.raises(UnreadableImage, match="no data elements after its header"):
        decode(data[:140])  # cut inside the file meta


def test_header_dimensions_over_limit_refused_before_decoding() -> None:
    ds = _dicom(_quadrants())
    with pytest.raises(PayloadTooLarge):
        decode(_save(ds), limits=DecodeLimits(max_pixels=100))
    ds.Rows, ds.Columns = 60_000, 60_000  # 3.6 Gpx claimed by a ~10 kB file: refused from the header alone
    with pytest.raises(PayloadTooLarge):
        decode(_save(ds))


def test_unsupported_transfer_syntax_and_photometric_interpretation() -> None:
    ds = _dicom(_quadrants())
    ds.file_meta.TransferSyntaxUID = uid.HTJ2KLossless
    ds.PixelData = encapsulate([b"\xff\x4f\xff\x51" + b"\x00" * 60])
    with pytest.raises(UnsupportedDicom, match="transfer syntax") as err:
        decode(_save(ds))
    assert "JPEG Baseline" in err.value.message  # says what is accepted

    ds = _dicom(_quadrants(), PhotometricInterpretation="YBR_PARTIAL_420")
    with pytest.raises(UnsupportedDicom, match="YBR_PARTIAL_420"):
        decode(_save(ds))


def test_deflated_dicom_decodes_and_zip_bombs_are_refused() -> None:
    ds = _dicom(np.zeros((200, 300, 3), np.uint8), transfer_syntax=uid.DeflatedExplicitVRLittleEndian)
    data = _save(ds)
    assert len(data) < 10_000
    [im] = decode(data)
    assert im.rgb.shape == (200, 300, 3) and not im.rgb.any()
    with pytest.raises(PayloadTooLarge):
        decode(data, limits=DecodeLimits(max_inflated_bytes=50_000))


def test_messages_never_contain_patient_data() -> None:
    cases = [
        _dicom(None),
        _dicom(_quadrants(), sop_class=uid.CTImageStorage),
        _dicom(_quadrants(), PhotometricInterpretation="HSV"),
        _dicom(_quadrants(), BitsAllocated=32),
    ]
    for ds in cases:
        with pytest.raises(FoveaError) as err:
            decode(_save(ds), limits=DecodeLimits(max_pixels=10_000))
        for secret in (PATIENT_NAME, "DOE", PATIENT_ID, "19700101"):
            assert secret not in err.value.message
    data = _save(_dicom(_quadrants()))
    for cut in (300, len(data) // 2):
        with pytest.raises(FoveaError) as err:
            decode(data[:cut])
        assert PATIENT_NAME not in err.value.message and PATIENT_ID not in err.value.message


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_fuzzed_inputs_raise_only_fovea_errors() -> None:
    rng = np.random.default_rng(1234)
    seeds = [
        _save(_dicom(_quadrants())),
        _save(_jpeg_dicom(_quadrants())),
        _jpeg(_quadrants()),
        _png_pil(Image.fromarray(_quadrants())),
    ]
    for base in seeds:
        for _ in range(40):
            data = bytearray(base)
            start = 132 if base[128:132] == b"DICM" else 8
            for pos in rng.integers(start, len(data), size=rng.integers(1, 8)):
                data[pos] = int(rng.integers(0, 256))
            try:
                images = decode(bytes(data))
            except FoveaError:
                continue
            _assert_contract(images)


def test_fundus_allow_list_matches_pydicom_names() -> None:
    names = {uid.UID(u).name for u in FUNDUS_SOP_CLASSES}
    assert "Ophthalmic Photography 8 Bit Image Storage" in names
    assert "Wide Field Ophthalmic Photography 3D Coordinates Image Storage" in names
    assert len(FUNDUS_SOP_CLASSES) == 8


# ------------------------------------------------------------------------------------------------------------
# GDCM isolation
# ------------------------------------------------------------------------------------------------------------


def _header_of(ds: Dataset) -> PixelHeader:
    return PixelHeader(
        transfer_syntax=str(ds.file_meta.TransferSyntaxUID),
        rows=int(ds.Rows),
        columns=int(ds.Columns),
        samples_per_pixel=int(ds.SamplesPerPixel),
        bits_allocated=int(ds.BitsAllocated),
        bits_stored=int(ds.BitsStored),
        pixel_representation=int(ds.PixelRepresentation),
        photometric_interpretation=str(ds.PhotometricInterpretation),
        number_of_frames=int(ds.get("NumberOfFrames") or 1),
    )


def test_backends_used_and_gdcm_never_in_process(monkeypatch: pytest.MonkeyPatch) -> None:
    used: list[str] = []
    real = dicom_frames.decode_frames
    real_jpeg = dicom_frames.decode_jpeg_colour_frames

    def spy(ds: Dataset, header: PixelHeader, count: int, plugin: str) -> tuple[list[np.ndarray], list[str]]:
        used.append(plugin)
        return real(ds, header, count, plugin)

    def spy_jpeg(ds: Dataset, header: PixelHeader, count: int, scale: int) -> list[np.ndarray]:
        used.append("pillow-direct")
        return real_jpeg(ds, header, count, scale)

    monkeypatch.setattr(dicom_frames, "decode_frames", spy)
    monkeypatch.setattr(dicom_frames, "decode_jpeg_colour_frames", spy_jpeg)
    decode(_test_file("SC_rgb_jpeg_dcmtk.dcm"))  # colour JPEG baseline -> Pillow directly, in process
    decode(_test_file("SC_rgb_gdcm_KY.dcm"))  # JPEG 2000 -> pydicom's Pillow plugin, in process
    decode(_test_file("SC_rgb_rle.dcm"))  # RLE -> pydicom
    decode(_test_file("SC_rgb_jpeg_gdcm.dcm"))  # JPEG lossless -> GDCM, child process only
    assert used == ["pillow-direct", "pillow", "pydicom"]


def test_direct_jpeg_failure_falls_back_to_pydicom(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*args: object, **kwargs: object) -> None:
        raise OSError("simulated Pillow failure")

    expected = decode(_test_file("SC_rgb_jpeg_dcmtk.dcm"))[0].rgb
    monkeypatch.setattr(dicom_frames, "decode_jpeg_colour_frames", broken)
    [im] = decode(_test_file("SC_rgb_jpeg_dcmtk.dcm"), target=32)
    assert im.scale == 1.0  # the fallback decodes at full size
    assert np.abs(im.rgb.astype(int) - expected.astype(int)).max() <= 1


def test_a_gdcm_crash_is_contained_in_the_child() -> None:
    raw = _test_file("SC_rgb_jpeg_gdcm.dcm")  # JPEG lossless: GDCM only
    ds = pydicom.dcmread(io.BytesIO(raw))
    frame = pydicom.encaps.get_frame(ds.PixelData, 0, number_of_frames=1)
    offset = raw.index(frame) + 37
    assert raw[offset : offset + 2] == b"\xff\xc4"  # the first DHT marker
    data = bytearray(raw)
    data[offset] = 0x8E  # python-gdcm 3.2 aborts (std::terminate) on this codestream
    with pytest.raises(RuntimeError):  # the child died (or refused); this process did not
        decode_frames_isolated(bytes(data), _header_of(ds), 1, "gdcm", timeout_s=60)
    with pytest.raises(UnreadableImage):  # and decode() refuses it in process before any decoder runs
        decode(bytes(data))


def test_isolated_decoder_crash_or_hang_becomes_unreadable(monkeypatch: pytest.MonkeyPatch) -> None:
    data = _test_file("SC_rgb_jpeg_gdcm.dcm")
    monkeypatch.setattr(
        dicom_pixels, "_worker_command", lambda: [sys.executable, "-c", "import os; os.abort()"]
    )
    with pytest.raises(UnreadableImage, match="gdcm"):
        decode(data)
    monkeypatch.setattr(
        dicom_pixels, "_worker_command", lambda: [sys.executable, "-c", "import time; time.sleep(60)"]
    )
    start = time.monotonic()
    with pytest.raises(UnreadableImage, match="gdcm"):
        decode(data, limits=DecodeLimits(isolated_decode_timeout_s=1.0))
    assert time.monotonic() - start < 20


def test_isolated_decoder_stderr_is_never_logged(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # GDCM / pydicom diagnostics in the child can quote element values: only a fixed line + status is logged.
    leak = f"import sys; sys.stderr.write('PatientName={PATIENT_NAME} {PATIENT_ID}'); sys.exit(3)"
    monkeypatch.setattr(dicom_pixels, "_worker_command", lambda: [sys.executable, "-c", leak])
    caplog.set_level(logging.DEBUG)
    with pytest.raises(UnreadableImage) as err:
        decode(_test_file("SC_rgb_jpeg_gdcm.dcm"))
    assert "status 3" in caplog.text
    assert PATIENT_NAME not in caplog.text and PATIENT_ID not in caplog.text
    assert PATIENT_NAME not in err.value.message


# ------------------------------------------------------------------------------------------------------------
# Reduced-resolution decoding
# ------------------------------------------------------------------------------------------------------------


def _photo(h: int, w: int) -> np.ndarray:
    """A smooth colour image (gradients + a disc) whose downscaled versions are easy to compare."""
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    rgb = np.dstack([255 * x / w, 255 * y / h, 128 + 0 * x]).astype(np.uint8)
    cv2.circle(rgb, (w // 2, h // 2), min(h, w) // 3, (230, 120, 40), -1)
    return rgb


@pytest.mark.parametrize(
    ("size", "target", "scale"),
    [
        ((1000, 800), None, 1),
        ((1000, 800), 800, 1),  # not twice the target
        ((1000, 800), 400, 2),
        ((1000, 800), 399, 2),
        ((1000, 800), 200, 4),
        ((1000, 800), 100, 8),
        ((1000, 800), 1, 8),  # never more than libjpeg's 1/8
        ((801, 2000), 400, 2),  # the shorter side decides
    ],
)
def test_jpeg_reduction_keeps_the_short_side_at_or_above_target(
    size: tuple[int, int], target: int | None, scale: int
) -> None:
    assert jpeg_reduction(*size, target) == scale
    if target is not None:
        assert min(size) // scale >= target or scale == 1


@pytest.mark.parametrize("use_pillow", [False, True], ids=["opencv", "pillow"])
def test_reduced_jpeg_decode_matches_a_downscaled_full_decode(
    use_pillow: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    rgb = _photo(803, 1003)  # odd sizes: the last decoded row/column covers a partial block
    data = _jpeg(rgb, quality=95)
    [full] = decode(data)
    if use_pillow:
        monkeypatch.setattr(cv2, "imdecode", lambda *a, **k: None)
    for target, scale in ((400, 2), (200, 4), (100, 8)):
        [im] = decode(data, target=target)
        _assert_contract([im])
        assert (im.width, im.height, im.scale) == (1003, 803, float(scale))
        assert im.rgb.shape == (math.ceil(803 / scale), math.ceil(1003 / scale), 3)
        assert min(im.rgb.shape[:2]) >= target
        assert any(f"decoded at 1/{scale} resolution" in n for n in im.notes)
        # Same picture: compare on the whole blocks (INTER_AREA = the box average libjpeg's scaling is).
        h, w = 803 // scale, 1003 // scale
        ref = cv2.resize(full.rgb[: h * scale, : w * scale], (w, h), interpolation=cv2.INTER_AREA)
        assert np.abs(im.rgb[:h, :w].astype(int) - ref.astype(int)).mean() < 2.0


def test_reduced_decode_with_exif_rotation_reports_display_size() -> None:
    data = _exif_jpeg(_photo(600, 900), 8)  # stored 900x600, displayed 600x900
    [im] = decode(data, target=150)
    assert (im.width, im.height, im.scale) == (600, 900, 4.0)
    assert im.rgb.shape == (225, 150, 3)
    [full] = decode(data)
    assert (full.width, full.height, full.scale) == (600, 900, 1.0)


def test_png_ignores_target() -> None:
    [im] = decode(_png_pil(Image.fromarray(_photo(400, 500))), target=50)
    assert im.scale == 1.0 and im.rgb.shape == (400, 500, 3)


def test_target_must_be_positive() -> None:
    with pytest.raises(ValueError, match="target"):
        decode(_jpeg(_quadrants()), target=0)


def test_reduced_jpeg_dicom_decode() -> None:
    rgb = _photo(480, 640)
    data = _save(_jpeg_dicom(rgb))
    [full] = decode(data)
    [im] = decode(data, target=100)
    _assert_contract([full, im])
    assert (im.width, im.height, im.scale) == (640, 480, 4.0)
    assert im.rgb.shape == (120, 160, 3)
    ref = cv2.resize(full.rgb, (160, 120), interpolation=cv2.INTER_AREA)
    assert np.abs(im.rgb.astype(int) - ref.astype(int)).mean() < 2.0
    assert any("decoded at 1/4 resolution" in n for n in im.notes)


def test_monochrome_jpeg_dicom_is_not_reduced() -> None:
    gray = _photo(480, 640)[..., 0]
    _, buf = cv2.imencode(".jpg", gray)
    ds = _jpeg_dicom(_photo(480, 640), frame=buf.tobytes())
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    del ds.PlanarConfiguration
    [im] = decode(_save(ds), target=100)
    assert im.scale == 1.0 and im.rgb.shape == (480, 640, 3)
    assert np.abs(im.rgb[..., 1].astype(int) - gray.astype(int)).max() <= 8


def test_jpeg_dicom_with_rgb_component_ids_is_converted_by_its_photometric_interpretation() -> None:
    # Component IDs 'R','G','B' make libjpeg skip its YCbCr -> RGB conversion; the DICOM header says the
    # samples are YBR_FULL_422, so they must still be converted once (pydicom's rule), here by OpenCV.
    frame = bytearray(_jpeg(_quadrants()))
    app0 = frame.index(b"\xff\xe0")  # drop the JFIF marker: with it libjpeg would assume YCbCr anyway
    del frame[app0 : app0 + 2 + int.from_bytes(frame[app0 + 2 : app0 + 4], "big")]
    sof = frame.index(b"\xff\xc0")
    for c in range(3):
        frame[sof + 10 + 3 * c] = b"RGB"[c]
    sos = frame.index(b"\xff\xda")
    for c in range(3):
        frame[sos + 5 + 2 * c] = b"RGB"[c]
    data = _save(_jpeg_dicom(_quadrants(), frame=bytes(frame)))
    with Image.open(io.BytesIO(bytes(frame))) as im:
        assert dicom_pixels._component_ids(im) == [ord("R"), ord("G"), ord("B")]
    [im] = decode(data)
    assert _close(_quadrant_centres(im.rgb), QUADRANT_COLOURS, tol=6)
    [small] = decode(data, target=12)
    assert small.scale == 4.0 and _close(_quadrant_centres(small.rgb), QUADRANT_COLOURS, tol=6)


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_file_meta_written_in_implicit_vr_is_still_read() -> None:
    # Some writers encode group 0002 in Implicit VR (against PS3.10 7.1); pydicom reads them, so do we.
    ds = _dicom(_quadrants())
    body = io.BytesIO()
    ds.save_as(body, enforce_file_format=True)
    explicit = body.getvalue()

    def element(tag: int, value: bytes) -> bytes:
        value += b"\0" * (len(value) % 2)
        return struct.pack("<HHI", tag >> 16, tag & 0xFFFF, len(value)) + value

    meta = ds.file_meta
    implicit_meta = (
        element(0x00020001, b"\0\1")
        + element(0x00020002, meta.MediaStorageSOPClassUID.encode())
        + element(0x00020003, meta.MediaStorageSOPInstanceUID.encode())
        + element(0x00020010, meta.TransferSyntaxUID.encode())
    )
    dataset_start = (
        132 + 12 + int(pydicom.dcmread(io.BytesIO(explicit)).file_meta.FileMetaInformationGroupLength)
    )
    data = explicit[:132] + implicit_meta + explicit[dataset_start:]
    [im] = decode(data)
    np.testing.assert_array_equal(im.rgb, _quadrants())


# ---- hardening: sequence nesting and the decoding memory budget (issue 7) --------------------------------


def _nested_dicom(depth: int) -> bytes:
    """A Secondary Capture Part 10 file whose ContentSequence nests ``depth`` levels (undefined lengths)."""
    import struct

    def el(group: int, elem: int, vr: str, val: bytes) -> bytes:
        if vr in ("OB", "SQ"):
            return struct.pack("<HH2sHI", group, elem, vr.encode(), 0, len(val)) + val
        return struct.pack("<HH2sH", group, elem, vr.encode(), len(val)) + val

    sc = b"1.2.840.10008.5.1.4.1.1.7\x00"
    meta = (el(2, 1, "OB", b"\x00\x01") + el(2, 2, "UI", sc) + el(2, 3, "UI", b"1.2.3\x00")
            + el(2, 0x10, "UI", b"1.2.840.10008.1.2.1\x00"))
    head = b"\x00" * 128 + b"DICM" + el(2, 0, "UL", struct.pack("<I", len(meta))) + meta + el(8, 0x16, "UI", sc)
    open_ = struct.pack("<HH2sHI", 0x0040, 0xA730, b"SQ", 0, 0xFFFFFFFF) + struct.pack("<HHI", 0xFFFE, 0xE000,
                                                                                         0xFFFFFFFF)
    close = struct.pack("<HHI", 0xFFFE, 0xE00D, 0) + struct.pack("<HHI", 0xFFFE, 0xE0DD, 0)
    return head + open_ * depth + close * depth


@pytest.mark.parametrize("depth", [17, 60, 5000])
def test_deeply_nested_sequences_are_refused(depth: int) -> None:
    # 17: over the limit but parsed; 5000: pydicom's recursive reader hits RecursionError first.
    with pytest.raises(UnreadableImage, match="nests sequences deeper than 16"):
        decode(_nested_dicom(depth))


def test_shallow_nesting_gets_past_the_depth_check() -> None:
    # 16 levels is allowed: the file then fails later, for having no pixel data, not for its nesting.
    with pytest.raises(UnsupportedDicom, match="no Pixel Data"):
        decode(_nested_dicom(16))


def test_sequence_depth_counts_levels() -> None:
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence

    from analysis.dicom_header import sequence_depth

    ds = Dataset()
    assert sequence_depth(ds) == 0
    inner = Dataset()
    inner.ConceptNameCodeSequence = Sequence([Dataset()])
    ds.ContentSequence = Sequence([Dataset(), inner])
    assert sequence_depth(ds) == 2


def test_decoding_memory_budget_is_checked_before_decoding(monkeypatch: pytest.MonkeyPatch) -> None:
    import analysis.dicom_frames as dec

    data = _save(_dicom(_quadrants()))
    calls: list[int] = []
    monkeypatch.setattr(dec, "decode_frames", lambda *a, **k: calls.append(1) or ([], []))
    # one 64x48 RGB 8-bit frame needs 64*48*(3+3) bytes
    with pytest.raises(PayloadTooLarge, match="Decoding one frame"):
        decode(data, limits=DecodeLimits(max_decoded_bytes=64 * 48 * 6 - 1))
    assert not calls
    monkeypatch.undo()
    assert decode(data, limits=DecodeLimits(max_decoded_bytes=64 * 48 * 6))[0].rgb.shape == (48, 64, 3)


def test_png_decompression_bomb_is_refused_before_decoding(monkeypatch: pytest.MonkeyPatch) -> None:
    import zlib

    import analysis.raster as dec

    def chunk(kind: bytes, payload: bytes) -> bytes:
        return len(payload).to_bytes(4, "big") + kind + payload + zlib.crc32(kind + payload).to_bytes(4, "big")

    def png_with(idat_raw: bytes) -> bytes:
        ihdr = (64).to_bytes(4, "big") * 2 + bytes([8, 0, 0, 0, 0])  # 64x64 grayscale 8 bit
        return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(idat_raw, 9))
                + chunk(b"IEND", b""))

    monkeypatch.setattr(dec, "_cv2_decode", lambda *a, **k: pytest.fail("decoded a bomb"))
    with pytest.raises(UnreadableImage, match="decompression bomb"):
        decode(png_with(b"\x00" * (64 << 20)))  # 64 MiB behind a 64x64 header
    monkeypatch.undo()
    exact = png_with(b"\x00" * (64 * 65))  # exactly height * (1 + rowbytes): fine
    assert decode(exact)[0].rgb.shape == (64, 64, 3)


def test_inflated_size_stops_past_the_limit() -> None:
    import zlib

    from analysis.decode_checks import inflated_size

    stream = zlib.compress(b"\x00" * (50 << 20), 9)
    assert inflated_size(stream, 10 << 20, wbits=15) <= (11 << 20)
    assert inflated_size(stream, 100 << 20, wbits=15) == 50 << 20


def _streams() -> dict[str, tuple[bytes, int]]:
    import zlib

    image = bytes(range(256)) * 12 + b"\x00" * (5 << 20)  # incompressible head, then 5 MiB of zeros
    wrapped = zlib.compress(image, 6)
    raw = zlib.compressobj(6, zlib.DEFLATED, -15)
    deflated = raw.compress(image) + raw.flush()
    return {"zlib": (wrapped, 15), "zlib, trailing bytes": (wrapped + b"garbage", 15),
            "zlib, truncated": (wrapped[: len(wrapped) // 2], 15), "raw": (deflated, -15),
            "raw, trailing bytes": (deflated + b"xyz", -15), "raw, truncated": (deflated[: len(deflated) // 2], -15),
            "bomb": (zlib.compress(b"\x00" * (64 << 20), 9), 15), "empty": (b"", 15)}


@pytest.mark.parametrize("name", list(_streams()))
@pytest.mark.parametrize("limit", [1 << 20, 1 << 30])
def test_inflated_size_counts_what_zlib_inflates(name: str, limit: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """The check's inflater (ISA-L when installed) counts the bytes zlib's own inflate gives, to the end of the
    stream or just past the limit; trailing bytes are not counted; what a truncated stream gives counts."""
    import importlib.util
    import zlib

    import analysis.decode_checks as checks

    if importlib.util.find_spec("isal") is not None:
        assert checks.INFLATER.__name__.endswith("isal_zlib")  # what is compared with zlib below
    data, wbits = _streams()[name]
    inflater = zlib.decompressobj(wbits)
    whole = len(inflater.decompress(data) + inflater.flush())
    counted = checks.inflated_size(data, limit, wbits=wbits)
    assert counted == whole if whole <= limit else limit < counted <= limit + (1 << 20)
    monkeypatch.setattr(checks, "INFLATER", zlib)
    assert checks.inflated_size(data, limit, wbits=wbits) == counted


def test_a_corrupt_stream_raises_zlibs_error_from_either_inflater(monkeypatch: pytest.MonkeyPatch) -> None:
    import zlib

    import analysis.decode_checks as checks

    stream = zlib.compress(bytes(range(256)) * 64)
    for corrupt in (b"hello world", stream[:2] + b"\xff" * 20 + stream[22:], stream[:-4] + b"\x00\x00\x00\x00"):
        with pytest.raises(zlib.error):
            checks.inflated_size(corrupt, 1 << 30, wbits=15)
    monkeypatch.setattr(checks, "INFLATER", zlib)
    with pytest.raises(zlib.error):
        checks.inflated_size(b"hello world", 1 << 30, wbits=15)


def test_an_unknown_vr_is_unreadable_without_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    # Found by bench.fuzz: pydicom raises NotImplementedError when it first converts such an element.
    # (0020,0062) ImageLaterality is first read after the pixels are decoded.
    data = bytearray(_save(_dicom(_quadrants(), ImageLaterality="R")))
    at = data.find(b"\x20\x00\x62\x00CS")
    assert at > 0
    data[at + 4 : at + 6] = b"BS"
    with caplog.at_level(logging.WARNING, logger="analysis.decode"):
        with pytest.raises(UnreadableImage, match="unknown value representation"):
            decode(bytes(data))
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
