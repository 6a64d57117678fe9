"""The DICOM header, read once under the decode limits, and every check made before a pixel is decoded.

:func:`read_dicom_instance` parses a Part 10 file (pixel data stays encoded) with the deflate, size and
nesting limits of :class:`~analysis.decode_types.DecodeLimits`, then checks the SOP class, Pixel Data, the
transfer syntax, the Image Pixel module, the frame and memory budget and each encapsulated codestream
(:mod:`analysis.codestream`). The :class:`DicomInstance` it returns is what a receiver (STOW-RS, C-STORE)
keeps and what :func:`analysis.decode.decode` accepts instead of bytes, so an instance is parsed once.
"""

from __future__ import annotations

import hashlib
import io
import zlib
from dataclasses import dataclass
from functools import cached_property
from typing import Final

import pydicom
from pydicom import uid as dcm_uid
from pydicom.dataset import Dataset
from pydicom.filereader import read_dataset, read_preamble
from pydicom.pixels import get_decoder
from pydicom.sequence import Sequence
from pydicom.tag import BaseTag

from analysis.codestream import J2K_FAMILY, check_encapsulated_frames
from analysis.decode_checks import check_min_side, check_pixels, echo, inflated_size, uid_label
from analysis.decode_types import DecodeLimits
from analysis.dicom_pixels import PixelHeader
from analysis.errors import (
    FoveaError,
    PayloadTooLarge,
    UnreadableImage,
    UnsupportedDicom,
    UnsupportedMediaType,
)
from analysis.sniff import sniff

__all__ = [
    "ACCEPTED_PHOTOMETRIC_INTERPRETATIONS",
    "ACCEPTED_TRANSFER_SYNTAXES",
    "FUNDUS_SOP_CLASSES",
    "DicomInstance",
    "checked_header",
    "dataset_under",
    "decoded_bytes_per_frame",
    "file_meta_uids",
    "plugins_for",
    "read_dicom_header",
    "read_dicom_instance",
    "sequence_depth",
]

#: SOP classes Fovea analyses: fundus / visible-light photographs and secondary captures of them.
#: Anything else (CT, MR, OCT, US, SR, RT, ...) is refused with 422 "not a fundus photograph".
FUNDUS_SOP_CLASSES: Final[frozenset[str]] = frozenset(
    {
        dcm_uid.OphthalmicPhotography8BitImageStorage,  # 1.2.840.10008.5.1.4.1.1.77.1.5.1
        dcm_uid.OphthalmicPhotography16BitImageStorage,  # 1.2.840.10008.5.1.4.1.1.77.1.5.2
        dcm_uid.VLPhotographicImageStorage,  # 1.2.840.10008.5.1.4.1.1.77.1.4
        dcm_uid.SecondaryCaptureImageStorage,  # 1.2.840.10008.5.1.4.1.1.7
        dcm_uid.MultiFrameTrueColorSecondaryCaptureImageStorage,  # 1.2.840.10008.5.1.4.1.1.7.4
        dcm_uid.MultiFrameGrayscaleByteSecondaryCaptureImageStorage,  # 1.2.840.10008.5.1.4.1.1.7.2
        dcm_uid.WideFieldOphthalmicPhotographyStereographicProjectionImageStorage,  # ...77.1.5.5
        dcm_uid.WideFieldOphthalmicPhotography3DCoordinatesImageStorage,  # ...77.1.5.6
    }
)

#: Photometric interpretations we convert to RGB. YBR_ICT / YBR_RCT only occur with JPEG 2000.
ACCEPTED_PHOTOMETRIC_INTERPRETATIONS: Final[frozenset[str]] = frozenset(
    {"RGB", "YBR_FULL", "YBR_FULL_422", "YBR_ICT", "YBR_RCT", "PALETTE COLOR", "MONOCHROME1", "MONOCHROME2"}
)

# Decoding plugins allowed per encapsulated transfer syntax, in order of preference. Pillow runs in process
# and is faster than GDCM on JPEG baseline; GDCM runs in a child process (analysis.dicom_pixels), so it
# is the fallback (it reads some JPEG 2000 files Pillow/OpenJPEG refuses) or the only choice (JPEG lossless,
# JPEG-LS). Never "pylibjpeg" (its libjpeg backend is GPL). Native (uncompressed) syntaxes use pydicom itself:
# plugin "".
_PLUGIN_PREFERENCE: Final[dict[str, tuple[str, ...]]] = {
    dcm_uid.JPEGBaseline8Bit: ("pillow", "gdcm"),
    dcm_uid.JPEGExtended12Bit: ("pillow", "gdcm"),
    dcm_uid.JPEGLossless: ("gdcm",),
    dcm_uid.JPEGLosslessSV1: ("gdcm",),
    dcm_uid.JPEGLSLossless: ("gdcm",),
    dcm_uid.JPEGLSNearLossless: ("gdcm",),
    dcm_uid.JPEG2000Lossless: ("pillow", "gdcm"),
    dcm_uid.JPEG2000: ("pillow", "gdcm"),
    dcm_uid.RLELossless: ("pydicom",),
}

#: Transfer syntaxes we can decode with permissively licensed backends (GDCM, Pillow, pydicom).
#: JPEG Extended is accepted for 8-bit samples only (no such backend decodes 12-bit JPEG).
ACCEPTED_TRANSFER_SYNTAXES: Final[frozenset[str]] = frozenset(
    {
        dcm_uid.ImplicitVRLittleEndian,
        dcm_uid.ExplicitVRLittleEndian,
        dcm_uid.ExplicitVRBigEndian,
        dcm_uid.DeflatedExplicitVRLittleEndian,
    }
) | frozenset(_PLUGIN_PREFERENCE)

# (7FE0,0010) Pixel Data as encoded in little- and big-endian datasets.
_PIXEL_DATA_TAGS: Final = (b"\xe0\x7f\x10\x00", b"\x7f\xe0\x00\x10")


@dataclass(frozen=True, eq=False)
class DicomInstance:
    """A DICOM Part 10 instance parsed once, under limits, that passed every check made before a pixel is
    decoded. Made by :func:`read_dicom_instance`.

    ``data``: the Part 10 bytes; ``dataset``: their parse (pixel data still encoded; treat it as read-only:
    the analysis and the result builders read it); ``limits``: the limits it was read under. ``sha256``: the
    hex digest of ``data`` (computed on first use)."""

    data: bytes
    dataset: Dataset
    limits: DecodeLimits

    @cached_property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()


def read_dicom_instance(data: bytes, *, limits: DecodeLimits = DecodeLimits()) -> DicomInstance:
    """Parse a DICOM Part 10 upload once under ``limits`` and make every check :func:`analysis.decode.decode`
    makes before it decodes a pixel (size, Part 10 magic, file meta, deflated size, sequence depth, SOP class,
    Pixel Data present, transfer syntax, Image Pixel module, frame and memory budget, encapsulated
    codestreams). For receivers (STOW-RS, C-STORE) that accept or refuse an instance up front, and for the
    path that analyses it (:mod:`analysis.received`). Raises the same :class:`~analysis.errors.FoveaError`
    subclasses as :func:`~analysis.decode.decode`; JPEG/PNG bytes are
    :class:`~analysis.errors.UnsupportedMediaType` here (a DICOM instance is expected)."""
    if not isinstance(data, bytes):
        data = bytes(data)
    if len(data) > limits.max_bytes:
        raise PayloadTooLarge(f"The instance is {len(data)} bytes; the limit is {limits.max_bytes} bytes.")
    kind = sniff(data)
    if kind != "dicom":
        raise UnsupportedMediaType(f"The part is a {kind.upper()} image, not a DICOM Part 10 instance.")
    ds = read_dataset_limited(data, limits)
    checked_header(ds, data, limits)
    return DicomInstance(data=data, dataset=ds, limits=limits)


def read_dicom_header(data: bytes, *, limits: DecodeLimits = DecodeLimits()) -> Dataset:
    """The dataset of :func:`read_dicom_instance` (same checks, same errors)."""
    return read_dicom_instance(data, limits=limits).dataset


def dataset_under(instance: DicomInstance, limits: DecodeLimits) -> Dataset:
    """``instance.dataset`` when it was read under parse limits (upload size, inflated size, sequence depth)
    no looser than ``limits``'; otherwise ``instance.data`` parsed again under ``limits``, so a caller with
    tighter limits never works on a dataset its own limits would have refused to parse."""
    read, wanted = instance.limits, limits
    if (read.max_bytes <= wanted.max_bytes and read.max_inflated_bytes <= wanted.max_inflated_bytes
            and read.max_sequence_depth <= wanted.max_sequence_depth):
        return instance.dataset
    return read_dataset_limited(instance.data, limits)


def checked_header(ds: Dataset, data: bytes, limits: DecodeLimits) -> tuple[PixelHeader, int, str | None]:
    """Every pre-pixel check of a parsed dataset: ``(header, frames to decode, note on frames skipped)``."""
    try:
        header = _check_header(ds, limits, data)
        count, skipped = frames_to_decode(header, limits)
        check_encapsulated_frames(ds, header, count, limits)
    except FoveaError:
        raise
    except Exception as exc:
        raise UnreadableImage(
            f"The DICOM header could not be interpreted ({type(exc).__name__}); the file is corrupt."
        ) from exc
    return header, count, skipped


def _accepted_sops() -> str:
    return "; ".join(sorted(uid_label(u) for u in FUNDUS_SOP_CLASSES))


def _accepted_syntaxes() -> str:
    return "; ".join(sorted(uid_label(u) for u in ACCEPTED_TRANSFER_SYNTAXES if plugins_for(u)))


def read_dataset_limited(data: bytes, limits: DecodeLimits) -> Dataset:
    """Parse a Part 10 file fully (pixel data stays encoded); guard deflated datasets against zip bombs.

    One full parse instead of a ``stop_before_pixels`` pass plus a full pass: the bytes are already in memory
    (<= ``max_bytes``) and nothing is decoded until :func:`_check_header` has passed.
    """
    try:
        fp = io.BytesIO(data)
        read_preamble(fp, False)
        meta, dataset_offset = _read_file_meta(fp)
    except Exception as exc:
        raise UnreadableImage(
            "The DICOM file meta information could not be read; the file is corrupt or truncated."
        ) from exc

    if meta.get("TransferSyntaxUID") == dcm_uid.DeflatedExplicitVRLittleEndian:
        try:  # pydicom inflates with an unbounded zlib.decompress: bound it first
            inflated = inflated_size(data[dataset_offset:], limits.max_inflated_bytes, wbits=-zlib.MAX_WBITS)
        except zlib.error as exc:
            raise UnreadableImage("The deflated DICOM dataset could not be inflated; it is corrupt.") from exc
        if inflated > limits.max_inflated_bytes:
            raise PayloadTooLarge(
                f"The deflated DICOM dataset inflates to more than {limits.max_inflated_bytes} bytes."
            )

    try:
        # Security: force=False (never force=True): a file without the Part 10 header is refused, not guessed.
        ds = pydicom.dcmread(io.BytesIO(data), force=False)
    except RecursionError as exc:  # pydicom reads nested sequences recursively (~150 levels before this)
        raise UnreadableImage(
            f"The DICOM file nests sequences deeper than {limits.max_sequence_depth} levels; it is refused."
        ) from exc
    except Exception as exc:
        raise UnreadableImage("The DICOM file could not be parsed; it is corrupt or truncated.") from exc
    # Security: bound nesting before anything downstream (de-identification, SR, JSON) recurses into it.
    if sequence_depth(ds, stop_after=limits.max_sequence_depth) > limits.max_sequence_depth:
        raise UnreadableImage(
            f"The DICOM file nests sequences deeper than {limits.max_sequence_depth} levels; it is refused."
        )
    return ds


def sequence_depth(ds: Dataset, *, stop_after: int | None = None) -> int:
    """How deep sequences nest in ``ds`` (0: no sequence; 1: items without sequences inside ...), computed
    without recursion; stops early once ``stop_after`` is exceeded."""
    deepest = 0
    stack: list[tuple[Dataset, int]] = [(ds, 0)]
    while stack:
        current, depth = stack.pop()
        deepest = max(deepest, depth)
        if stop_after is not None and deepest > stop_after:
            return deepest
        for element in current.elements():  # raw elements stay raw (bytes): pydicom parses SQ while reading
            value = element.value
            if isinstance(value, Sequence):
                stack.extend((item, depth + 1) for item in value if isinstance(item, Dataset))
    return deepest


def _not_file_meta(tag: BaseTag, vr: str | None, length: int) -> bool:
    return tag.group != 0x0002


def _read_file_meta(fp: io.BytesIO) -> tuple[Dataset, int]:
    """The File Meta Information group (PS3.10 7.1) at ``fp`` and the offset of the dataset after it.

    Uses the public ``read_dataset`` with a stop condition (pydicom's public ``read_file_meta_info`` only
    takes a path). The group is Explicit VR Little Endian by the standard; some writers use Implicit VR
    (pydicom issue 503): if the explicit reading cannot be interpreted, read it again as implicit, as
    pydicom's own reader does.
    """
    start = fp.tell()
    for implicit in (False, True):
        fp.seek(start)
        meta = read_dataset(fp, is_implicit_VR=implicit, is_little_endian=True, stop_when=_not_file_meta)
        try:
            for element in meta:  # raises on a value that cannot be interpreted with this VR mode
                _ = element.value
        except NotImplementedError:
            continue
        return meta, fp.tell()
    raise ValueError("unreadable file meta")


def file_meta_uids(data: bytes) -> tuple[str, str]:
    """``(MediaStorageSOPClassUID, MediaStorageSOPInstanceUID)`` from the File Meta Information of a Part 10
    file, reading group 0002 only (never the dataset, so nothing is inflated or parsed past it): for naming an
    instance that was refused. ``("", "")`` when ``data`` has no readable file meta; the values are not
    validated."""
    if len(data) < 132 or data[128:132] != b"DICM":
        return "", ""
    try:
        fp = io.BytesIO(data)
        read_preamble(fp, False)
        meta, _ = _read_file_meta(fp)
        return str(meta.get("MediaStorageSOPClassUID", "")), str(meta.get("MediaStorageSOPInstanceUID", ""))
    except Exception:  # a refused file may be anything: no UIDs then
        return "", ""


def header_text(ds: Dataset, keyword: str) -> str | None:
    value = ds.get(keyword)
    if value is None:
        return None
    text = str(value).strip()
    return text or None


def sop_class_of(ds: Dataset) -> str | None:
    sop = header_text(ds, "SOPClassUID")
    if sop is None and getattr(ds, "file_meta", None) is not None:
        sop = header_text(ds.file_meta, "MediaStorageSOPClassUID")
    return sop


def laterality_of(ds: Dataset) -> str | None:
    """ImageLaterality (0020,0062), else Laterality (0020,0060); only ``"L"``/``"R"``."""
    for keyword in ("ImageLaterality", "Laterality"):
        value = (header_text(ds, keyword) or "").upper()
        if value in ("L", "R"):
            return value
    return None


def _int_attr(ds: Dataset, keyword: str) -> int:
    value = ds.get(keyword)
    if value is None or value == "":
        raise UnreadableImage(f"The DICOM Image Pixel module is incomplete: {keyword} is missing.")
    try:
        return int(value)
    except (TypeError, ValueError) as exc:
        raise UnreadableImage(f"The DICOM {keyword} value is not an integer.") from exc


def _check_header(ds: Dataset, limits: DecodeLimits, data: bytes = b"") -> PixelHeader:
    """Validate SOP class, pixel data presence, transfer syntax and the Image Pixel module, cheapest first.

    ``data``: the file's bytes, to tell a file without Pixel Data from one truncated inside it.
    """
    sop = sop_class_of(ds)
    if sop is None and len(ds) == 0:
        raise UnreadableImage("The DICOM file has no data elements after its header; it is truncated.")
    if sop is None:
        raise UnsupportedDicom(
            "The DICOM file is not a fundus photograph: it has no SOP Class UID. "
            f"Accepted SOP classes: {_accepted_sops()}."
        )
    if sop not in FUNDUS_SOP_CLASSES:
        raise UnsupportedDicom(
            f"The DICOM file is not a fundus photograph: its SOP class is {uid_label(sop)}. "
            f"Accepted SOP classes: {_accepted_sops()}."
        )

    if "PixelData" not in ds:
        if "FloatPixelData" in ds or "DoubleFloatPixelData" in ds:
            raise UnsupportedDicom(
                "The DICOM file has floating-point pixel data; only integer Pixel Data (7FE0,0010) is "
                "accepted."
            )
        if _PIXEL_DATA_TAGS[0] in data or _PIXEL_DATA_TAGS[1] in data:
            # pydicom stops quietly at the end of a truncated file: the tag is there but its value is not.
            raise UnreadableImage(
                "The DICOM file is truncated or corrupt: its Pixel Data (7FE0,0010) could not be read."
            )
        raise UnsupportedDicom(
            "The DICOM file contains no Pixel Data (7FE0,0010): there is no image to analyse "
            "(or the file was cut short before its pixels)."
        )

    file_meta = getattr(ds, "file_meta", None)
    ts = file_meta.get("TransferSyntaxUID") if file_meta is not None else None
    if not ts:
        raise UnsupportedDicom(
            f"The DICOM file meta has no Transfer Syntax UID (0002,0010). Accepted: {_accepted_syntaxes()}."
        )
    ts = pydicom.uid.UID(str(ts))
    if ts not in ACCEPTED_TRANSFER_SYNTAXES or not plugins_for(ts):
        raise UnsupportedDicom(
            f"The DICOM transfer syntax {uid_label(ts)} is not supported. Accepted: {_accepted_syntaxes()}."
        )

    rows = _int_attr(ds, "Rows")
    columns = _int_attr(ds, "Columns")
    if rows <= 0 or columns <= 0:
        raise UnreadableImage(f"The DICOM image has invalid dimensions {columns}x{rows}.")
    check_pixels(columns, rows, limits, "The DICOM image (Columns x Rows)")
    check_min_side(columns, rows, limits, "The DICOM image (Columns x Rows)")

    pi = (header_text(ds, "PhotometricInterpretation") or "").upper()
    if not pi:
        raise UnreadableImage(
            "The DICOM Image Pixel module is incomplete: PhotometricInterpretation is missing."
        )
    j2k_only = pi in ("YBR_ICT", "YBR_RCT") and ts not in J2K_FAMILY
    if pi not in ACCEPTED_PHOTOMETRIC_INTERPRETATIONS or j2k_only:
        raise UnsupportedDicom(
            f"The DICOM photometric interpretation {echo(pi, 32)!r} is not supported with {uid_label(ts)}. "
            "Accepted: "
            f"{', '.join(sorted(ACCEPTED_PHOTOMETRIC_INTERPRETATIONS))} "
            "(YBR_ICT / YBR_RCT with JPEG 2000 only)."
        )

    spp = _int_attr(ds, "SamplesPerPixel")
    expected_spp = 1 if pi in ("MONOCHROME1", "MONOCHROME2", "PALETTE COLOR") else 3
    if spp != expected_spp:
        raise UnsupportedDicom(
            f"The DICOM file has SamplesPerPixel {spp} with photometric interpretation {pi}; "
            f"{expected_spp} is required."
        )

    bits_allocated = _int_attr(ds, "BitsAllocated")
    bits_stored = _int_attr(ds, "BitsStored")
    pixel_representation = _int_attr(ds, "PixelRepresentation")
    if bits_allocated not in (8, 16) or not 1 <= bits_stored <= bits_allocated:
        raise UnsupportedDicom(
            f"The DICOM bit depth (BitsAllocated {bits_allocated}, BitsStored {bits_stored}) is not "
            "supported; accepted: BitsAllocated 8 or 16 with 1 <= BitsStored <= BitsAllocated."
        )
    if pixel_representation not in (0, 1):
        raise UnreadableImage(f"The DICOM PixelRepresentation {pixel_representation} is invalid (0 or 1).")
    if expected_spp == 3 and pixel_representation != 0:
        raise UnsupportedDicom(f"Signed colour pixel data ({pi}) is not supported; colour must be unsigned.")
    if pi.startswith("YBR_FULL") and bits_allocated != 8:
        raise UnsupportedDicom(f"{pi} pixel data must be 8 bit; found BitsAllocated {bits_allocated}.")
    if ts == dcm_uid.JPEGExtended12Bit and bits_stored > 8:
        raise UnsupportedDicom(
            f"{uid_label(ts)} with {bits_stored}-bit samples is not supported (no permissively licensed "
            "decoder); accepted: 8-bit JPEG, or a lossless transfer syntax."
        )

    number_of_frames = 1
    if ds.get("NumberOfFrames") not in (None, ""):
        try:
            number_of_frames = max(1, int(ds.NumberOfFrames))
        except (TypeError, ValueError) as exc:
            raise UnreadableImage("The DICOM NumberOfFrames value is not an integer.") from exc

    return PixelHeader(
        transfer_syntax=str(ts),
        rows=rows,
        columns=columns,
        samples_per_pixel=spp,
        bits_allocated=bits_allocated,
        bits_stored=bits_stored,
        pixel_representation=pixel_representation,
        photometric_interpretation=pi,
        number_of_frames=number_of_frames,
    )


def plugins_for(ts: str) -> tuple[str, ...]:
    """Allowed, installed decoding plugins for ``ts``, in preference order; ``("",)`` for native syntaxes."""
    try:
        decoder = get_decoder(ts)
    except NotImplementedError:
        return ()
    if decoder.is_native:
        return ("",)
    available = set(decoder.available_plugins)
    return tuple(p for p in _PLUGIN_PREFERENCE.get(ts, ()) if p in available)



def decoded_bytes_per_frame(header: PixelHeader) -> int:
    """Working memory to decode one frame, from the header: the stored samples (``BitsAllocated``), the RGB
    uint8 output, and for monochrome the float64 modality / VOI intermediate (:mod:`analysis.dicom_pixels`)."""
    pixels = header.rows * header.columns
    stored = pixels * header.samples_per_pixel * max(1, header.bits_allocated // 8)
    intermediate = pixels * 8 if header.photometric_interpretation.startswith("MONOCHROME") else 0
    return stored + pixels * 3 + intermediate


def frames_to_decode(header: PixelHeader, limits: DecodeLimits) -> tuple[int, str | None]:
    """How many leading frames to decode under ``max_frames`` and ``max_total_pixels`` (at least one), and
    the note for the frames skipped (``None`` when none are)."""
    total = header.number_of_frames
    per_frame = decoded_bytes_per_frame(header)
    if per_frame > limits.max_decoded_bytes:
        # Security: a memory budget checked from the header, before any pixel is decoded.
        raise PayloadTooLarge(
            f"Decoding one frame of this DICOM image needs about {per_frame} bytes; the limit is "
            f"{limits.max_decoded_bytes} bytes."
        )
    by_pixels = max(1, limits.max_total_pixels // (header.rows * header.columns))
    by_bytes = max(1, limits.max_decoded_bytes // per_frame)
    count = min(total, max(1, limits.max_frames), by_pixels, by_bytes)
    if count == total:
        return count, None
    if count == max(1, limits.max_frames):
        limit = f"the limit of {limits.max_frames} frame{'s' if limits.max_frames != 1 else ''} per upload"
    elif count == by_pixels:
        limit = f"the limit of {limits.max_total_pixels} decoded pixels per upload"
    else:
        limit = f"the decoding memory limit of {limits.max_decoded_bytes} bytes per upload"
    decoded = "frame 0 was" if count == 1 else f"frames 0-{count - 1} were"
    return count, f"{total - count} of {total} frames skipped past {limit} ({decoded} analysed)"

