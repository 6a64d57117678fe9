"""analysis.decode over real DICOM test corpora: every file gives RGB frames or a clean, typed 4xx.

The corpora are the files that ship on disk with three packages (the ``dev`` extra installs them):

* ``pydicom``: its bundled ``pydicom/data/test_files`` folder;
* ``pydicom-data``: the ``data_store/data`` folder (pydicom's extra test files, offline);
* ``deid-data``: the ``deid_data/data`` folder (real camera photographs as JPEG-baseline Secondary Capture,
  ultrasound, CT, X-ray ...).

Files are found by walking those folders (the packages' RECORD for the two data packages), never through
``pydicom.data.get_testdata_file``: for a name not on disk that helper downloads, which hangs ~21 s
offline. Every file is one parametrized case (id = ``<corpus>/<relative path>``) with its own time limit.
"""

from __future__ import annotations

import importlib.metadata
import io
import math
import warnings
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom import uid

from analysis.decode import FUNDUS_SOP_CLASSES, DecodedImage, DecodeLimits, decode
from analysis.errors import (
    FoveaError,
    ImageTooSmall,
    PayloadTooLarge,
    UnreadableImage,
    UnsupportedDicom,
    UnsupportedMediaType,
)

LIMITS = DecodeLimits()
#: The issue's allow-list, written out here so the test does not trust the module's own constant.
FUNDUS_LIKE = {
    "1.2.840.10008.5.1.4.1.1.77.1.5.1",  # Ophthalmic Photography 8 Bit Image Storage
    "1.2.840.10008.5.1.4.1.1.77.1.5.2",  # Ophthalmic Photography 16 Bit Image Storage
    "1.2.840.10008.5.1.4.1.1.77.1.5.5",  # Wide Field Ophthalmic Photography Stereographic Projection
    "1.2.840.10008.5.1.4.1.1.77.1.5.6",  # Wide Field Ophthalmic Photography 3D Coordinates
    "1.2.840.10008.5.1.4.1.1.77.1.4",  # VL Photographic Image Storage
    "1.2.840.10008.5.1.4.1.1.7",  # Secondary Capture Image Storage
    "1.2.840.10008.5.1.4.1.1.7.2",  # Multi-frame Grayscale Byte Secondary Capture Image Storage
    "1.2.840.10008.5.1.4.1.1.7.4",  # Multi-frame True Color Secondary Capture Image Storage
}
#: pydicom's own stripe pattern of its SC_rgb* test images (100x100): ten 10-row stripes at column 50.
STRIPES = [
    (255, 0, 0), (255, 128, 128), (0, 255, 0), (128, 255, 128), (0, 0, 255),
    (128, 128, 255), (0, 0, 0), (64, 64, 64), (192, 192, 192), (255, 255, 255),
]  # fmt: skip


def _distribution_data(dist: str) -> tuple[Path | None, list[Path]]:
    """(``<package>/data`` folder, every file under it) of an installed data package, from its RECORD."""
    try:
        records = importlib.metadata.files(dist) or []
    except importlib.metadata.PackageNotFoundError:
        return None, []
    data = [f for f in records if len(f.parts) > 2 and f.parts[1] == "data" and "__pycache__" not in f.parts]
    if not data:
        return None, []
    root = Path(str(data[0].locate())).parents[len(data[0].parts) - 3]
    return root, sorted(p for p in (Path(str(f.locate())) for f in data) if p.is_file())


def _corpora() -> dict[str, tuple[Path | None, list[Path]]]:
    pydicom_root = Path(pydicom.__file__).parent / "data" / "test_files"
    pydicom_files = sorted(p for p in pydicom_root.rglob("*") if p.is_file() and "__pycache__" not in p.parts)
    return {
        "pydicom": (pydicom_root, pydicom_files),
        "pydicom-data": _distribution_data("pydicom-data"),
        "deid-data": _distribution_data("deid-data"),
    }


CORPORA = _corpora()
CASES = [
    pytest.param(path, id=f"{name}/{path.relative_to(root).as_posix()}")
    for name, (root, files) in CORPORA.items()
    if root is not None
    for path in files
]

# Outcomes asserted file by file (the generic rules below apply to every file as well).
DECODES: dict[str, tuple[int, int, int]] = {  # id -> (frames, rows, columns)
    # real camera photographs (cookies), JPEG baseline YBR_FULL_422 Secondary Capture, 2048x1536
    **{f"deid-data/dicom-cookies/image{i}.dcm": (1, 1536, 2048) for i in range(1, 8)},
    "deid-data/humans/ctbrain1.dcm": (1, 456, 510),  # a screenshot SC: SC is allowed, so it decodes
    "pydicom/SC_rgb_jpeg_dcmtk.dcm": (1, 100, 100),  # JPEG baseline YBR_FULL
    "pydicom/SC_rgb_dcmtk_+eb+cy+np.dcm": (1, 100, 100),  # JPEG baseline YBR_FULL_422
    "pydicom/SC_rgb_jpeg_app14_dcmd.dcm": (1, 256, 256),  # JPEG baseline with Adobe APP14
    "pydicom/SC_rgb_jpeg_gdcm.dcm": (1, 100, 100),  # JPEG lossless (GDCM, child process)
    "pydicom/SC_rgb_jls_lossy_line.dcm": (1, 100, 100),  # JPEG-LS near-lossless
    "pydicom/SC_rgb_gdcm_KY.dcm": (1, 100, 100),  # JPEG 2000 RGB
    "pydicom/GDCMJ2K_TextGBR.dcm": (1, 400, 400),  # JPEG 2000 lossless YBR_RCT
    "pydicom/SC_rgb_rle_2frame.dcm": (2, 100, 100),  # RLE, multi-frame
    "pydicom/SC_rgb_rle_16bit_2frame.dcm": (2, 100, 100),  # 16-bit colour
    "pydicom/SC_ybr_full_422_uncompressed.dcm": (1, 100, 100),  # native YBR_FULL_422
    "pydicom/image_dfl.dcm": (1, 512, 512),  # Deflated Explicit VR Little Endian, MONOCHROME2
    "pydicom/JPEG2000.dcm": (1, 1024, 256),  # 16-bit monochrome JPEG 2000
    "pydicom-data/SC_rgb_expb_2frame.dcm": (2, 100, 100),  # Explicit VR Big Endian
    "pydicom-data/SC_ybr_full_uncompressed.dcm": (1, 100, 100),  # native YBR_FULL
    "pydicom-data/JPEG-LL.dcm": (1, 1024, 256),  # 16-bit JPEG lossless (GDCM)
    "pydicom-data/mlut_18.dcm": (1, 512, 512),  # modality LUT
    "pydicom-data/vlut_04.dcm": (1, 512, 512),  # VOI LUT
}
REFUSES: dict[str, tuple[type[FoveaError], str]] = {  # id -> (error, text the message must contain)
    "pydicom/CT_small.dcm": (UnsupportedDicom, "CT Image Storage"),
    "pydicom/MR_small_jpeg_ls_lossless.dcm": (UnsupportedDicom, "MR Image Storage"),
    "pydicom/examples_ybr_color.dcm": (UnsupportedDicom, "Ultrasound Multi-frame Image Storage"),
    "pydicom/rtplan.dcm": (UnsupportedDicom, "RT Plan Storage"),
    "pydicom/waveform_ecg.dcm": (UnsupportedDicom, "12-lead ECG Waveform Storage"),
    "pydicom-data/RG1_J2KI.dcm": (UnsupportedDicom, "Computed Radiography Image Storage"),
    "pydicom-data/liver.dcm": (UnsupportedDicom, "Segmentation Storage"),
    "deid-data/animals/cat.dcm": (UnsupportedDicom, "Digital X-Ray Image Storage"),
    "deid-data/ultrasounds/RGB_IMAGE.dcm": (UnsupportedDicom, "Ultrasound Image Storage"),
    "pydicom/SC_rgb_rle_32bit.dcm": (UnsupportedDicom, "BitsAllocated 32"),
    "pydicom/JPEG-lossy.dcm": (UnsupportedDicom, "12-bit samples"),  # no permissive 12-bit JPEG decoder
    "pydicom/SC_rgb_small_odd.dcm": (ImageTooSmall, "at least 32 pixels"),  # 3x3
    "pydicom/JPEGLSNearLossless_08.dcm": (ImageTooSmall, "10x45"),
    # its J2K codestream header claims 3722445056x1024, inconsistent with the DICOM 256x1024
    "pydicom/JPEG2000-embedded-sequence-delimiter.dcm": (PayloadTooLarge, "the limit is"),
    "pydicom/no_meta.dcm": (UnsupportedMediaType, "Part 10"),  # no preamble
    "pydicom/README.txt": (UnsupportedMediaType, "not a recognised image format"),
    "deid-data/ultrasounds/RGB_CINE.zip": (UnsupportedMediaType, "not a recognised image format"),
}


def _case_id(path: Path) -> str:
    for name, (root, _) in CORPORA.items():
        if root is not None and path.is_relative_to(root):
            return f"{name}/{path.relative_to(root).as_posix()}"
    raise AssertionError(path)


def _header(data: bytes) -> pydicom.Dataset | None:
    """The test's own reading of the DICOM header (the oracle for the SOP class), None if unreadable."""
    if data[128:132] != b"DICM":
        return None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
    except Exception:  # noqa: BLE001 - some corpus files are deliberately malformed
        return None


def _check_decoded(images: list[DecodedImage], ds: pydicom.Dataset | None) -> None:
    assert images
    for i, im in enumerate(images):
        assert im.rgb.dtype == np.uint8 and im.rgb.ndim == 3 and im.rgb.shape[2] == 3
        assert im.rgb.flags.c_contiguous and im.rgb.flags.owndata
        assert im.rgb.shape[:2] == (math.ceil(im.height / im.scale), math.ceil(im.width / im.scale))
        assert min(im.width, im.height) >= LIMITS.min_side and im.width * im.height <= LIMITS.max_pixels
        assert im.source == "dicom" and im.sop_class_uid in FUNDUS_LIKE
        assert im.frame_index == (i if len(images) > 1 else None)
    assert len(images) <= LIMITS.max_frames
    if ds is not None:
        assert (images[0].height, images[0].width) == (int(ds.Rows), int(ds.Columns))
        assert len(images) == min(int(ds.get("NumberOfFrames") or 1), LIMITS.max_frames)


@pytest.mark.timeout(30)
@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("path", CASES)
def test_every_corpus_file_decodes_or_gives_a_clean_4xx(path: Path) -> None:
    case = _case_id(path)
    data = path.read_bytes()
    ds = _header(data)
    sop = str(ds.get("SOPClassUID", "")) if ds is not None else ""
    try:
        images = decode(data)
    except FoveaError as exc:
        assert 400 <= exc.status < 500 and exc.code and exc.message.strip()
        assert exc.to_json() == {"error": {"code": exc.code, "message": exc.message}}
        if ds is not None and str(ds.get("PatientName", "")).strip():  # no patient data in messages
            assert str(ds.PatientName) not in exc.message
        if data[128:132] != b"DICM":
            assert isinstance(exc, UnsupportedMediaType), case
        elif sop and sop not in FUNDUS_LIKE:
            # Non-fundus SOP classes are refused as such, and the message names the class.
            assert isinstance(exc, UnsupportedDicom) and "not a fundus photograph" in exc.message, case
            assert (uid.UID(sop).name if uid.UID(sop).is_valid else sop) in exc.message
        assert case not in DECODES, f"{case} should decode, got {type(exc).__name__}: {exc.message}"
        if case in REFUSES:
            error, text = REFUSES[case]
            assert isinstance(exc, error) and text in exc.message, (case, exc.message)
        return
    _check_decoded(images, ds)
    assert case not in REFUSES, f"{case} should be refused, but decoded"
    if case in DECODES:
        frames, rows, columns = DECODES[case]
        assert (len(images), images[0].height, images[0].width) == (frames, rows, columns)


TRUNCATION_CASES = [param for param in CASES if str(param.id) in DECODES]


@pytest.mark.timeout(30)
@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("path", TRUNCATION_CASES)
def test_truncated_corpus_files_give_typed_errors(path: Path) -> None:
    """Cut anywhere (header, pixel data, the last bytes), a decodable file still gives frames or a 4xx."""
    data = path.read_bytes()
    for cut in (140, 400, len(data) // 3, len(data) // 2, len(data) - 64, len(data) - 2):
        try:
            images = decode(data[:cut])
        except FoveaError as exc:
            assert 400 <= exc.status < 500 and exc.message.strip()
            continue
        _check_decoded(images, None)


def _pydicom_rgb8(path: Path) -> np.ndarray:
    """pydicom's own decoding (YBR -> RGB, 16 bit scaled by BitsStored) as (frames, rows, cols, 3) uint8."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = pydicom.dcmread(path)
        arr = ds.pixel_array
    arr = arr if int(ds.get("NumberOfFrames") or 1) > 1 else arr[None]
    bits = int(ds.BitsStored)
    return np.rint(arr.astype(np.float64) * (255 / (2**bits - 1))).astype(np.uint8)


COLOUR_CASES = [
    pytest.param(path, id=str(param.id))
    for param in CASES
    for path in param.values
    if (ds := _header(path.read_bytes())) is not None
    and str(ds.get("SOPClassUID", "")) in FUNDUS_LIKE
    and ds.get("PhotometricInterpretation") in ("RGB", "YBR_FULL", "YBR_FULL_422", "YBR_ICT", "YBR_RCT")
    and int(ds.get("BitsAllocated") or 0) in (8, 16)
    and min(int(ds.get("Rows") or 0), int(ds.get("Columns") or 0)) >= LIMITS.min_side
]


@pytest.mark.timeout(30)
@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("path", COLOUR_CASES)
def test_colour_files_equal_pydicoms_own_decoding(path: Path) -> None:
    """Every allow-listed colour file decodes to the same RGB as pydicom's reference path (any backend)."""
    try:
        images = decode(path.read_bytes())
    except (UnsupportedDicom, PayloadTooLarge, UnreadableImage) as exc:
        # Refused on purpose (12-bit JPEG, inconsistent codestream): covered by the test above.
        assert _case_id(path) in REFUSES or "12-bit" in exc.message, exc.message
        return
    expected = _pydicom_rgb8(path)
    assert len(images) == min(len(expected), LIMITS.max_frames)
    for im, frame in zip(images, expected, strict=False):
        assert np.abs(im.rgb.astype(np.int16) - frame.astype(np.int16)).max() <= 1


STRIPE_CASES = [
    param for param in COLOUR_CASES if "/SC_rgb" in str(param.id) and "small" not in str(param.id)
]


@pytest.mark.timeout(30)
@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("path", STRIPE_CASES)
def test_pydicom_stripe_images_have_the_right_colours(path: Path) -> None:
    """pydicom's SC_rgb* images are ten known colour stripes (frame 2 of a 2-frame file is inverted), in every
    transfer syntax and bit depth; lossy encodings are allowed a small error."""
    try:
        images = decode(path.read_bytes())
    except FoveaError as exc:
        assert "32" in exc.message  # the 32-bit variants are refused (bit depth)
        return
    if images[0].width != 100:  # the 256x256 SC_rgb_jpeg* files are not the stripe image
        return
    for index, im in enumerate(images):
        expected = STRIPES if index == 0 else [tuple(255 - v for v in c) for c in STRIPES]
        got = [tuple(int(v) for v in im.rgb[r, 50]) for r in range(5, 100, 10)]
        assert all(max(abs(a - b) for a, b in zip(g, e)) <= 10 for g, e in zip(got, expected)), got


@pytest.mark.timeout(30)
@pytest.mark.parametrize("image", [1, 4, 7])
def test_camera_photographs_decode_at_reduced_resolution(image: int) -> None:
    root, _ = CORPORA["deid-data"]
    assert root is not None
    data = (root / "dicom-cookies" / f"image{image}.dcm").read_bytes()
    [full] = decode(data)
    [small] = decode(data, target=320)
    assert (small.width, small.height, small.scale) == (2048, 1536, 4.0)
    assert small.rgb.shape == (384, 512, 3)
    assert full.rgb.std() > 10  # a photograph, not a blank frame
    reference = full.rgb.reshape(384, 4, 512, 4, 3).mean(axis=(1, 3))
    assert np.abs(small.rgb.astype(np.float64) - reference).mean() < 3.0


def test_the_module_allow_list_is_the_issues() -> None:
    assert FUNDUS_SOP_CLASSES == FUNDUS_LIKE


def test_the_corpora_are_installed_and_complete() -> None:
    """The ``dev`` extra installs both data packages; a missing one must fail here, not shrink the test."""
    counts = {name: len(files) for name, (_, files) in CORPORA.items()}
    assert counts["pydicom"] > 50, counts
    assert counts["pydicom-data"] > 60, f"pydicom-data is missing: pip install -e '.[dev]' ({counts})"
    assert counts["deid-data"] > 15, f"deid-data is missing: pip install -e '.[dev]' ({counts})"
    ids = {_case_id(p) for _, files in CORPORA.values() for p in files}
    missing = (set(DECODES) | set(REFUSES)) - ids
    assert not missing, f"expected files not found: {sorted(missing)}"
