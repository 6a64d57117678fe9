"""Build the hostile-file corpus: files that must never take the service down, with the expected answer of each.

    python -m tests.corpus.make_corpus            # (re)writes tests/corpus/files/ and tests/corpus/manifest.json
    python -m tests.corpus.make_corpus --big DIR  # also writes the large files (generated at test time) to DIR

Deterministic: fixed pixel sources (scikit-image's real retina photograph, downscaled), fixed UIDs, no
timestamps; running it twice gives the same bytes (a test checks). Small files are committed; the few large
ones (decompression bombs of a few hundred kB that would swell the repository) are generated at test time by
:func:`build_big`. The arithmetic-coded JPEG needs ``jpegtran`` (Debian ``libjpeg-turbo-progs``) to be
re-made; without it the committed copy is kept.

Each entry states the expected HTTP answer of ``POST /analyze`` with the file as the ``image`` field: a 4xx
status and error code, or 200 for files that are legitimate photographs in an unusual encoding (CMYK,
progressive, arithmetic coding, a DICOM preamble holding another format's magic: PS3.10 7.1 leaves the
preamble to the application, the decoder ignores it, and Fovea never stores or serves the upload itself;
:mod:`analysis.deid` zeroes the preamble of anything it writes, CVE-2019-11687). pydicom's malformed test
files (those shipped in its wheel) are part of the corpus by name, read through
``pydicom.data.get_testdata_file``.
"""

from __future__ import annotations

import argparse
import io
import json
import pickletools
import shutil
import struct
import subprocess
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

HERE = Path(__file__).resolve().parent
FILES = HERE / "files"
MANIFEST = HERE / "manifest.json"
OP_8BIT = "1.2.840.10008.5.1.4.1.1.77.1.5.1"  # Ophthalmic Photography 8 Bit Image Storage
EXPLICIT_LE = "1.2.840.10008.1.2.1"
JPEG_BASELINE = "1.2.840.10008.1.2.4.50"
DEFLATED = "1.2.840.10008.1.2.1.99"


@dataclass(frozen=True)
class Entry:
    """One corpus file: how to make it (``None``: a pydicom test file), and the expected answer."""

    name: str
    status: int
    code: str | None
    why: str
    make: Callable[[], bytes] | None = None
    big: bool = False


# ---- sources -----------------------------------------------------------------------------------------------


def photo(size: int = 256) -> np.ndarray:
    """scikit-image's retina photograph (a real fundus image), resized to ``size`` square, RGB uint8."""
    import skimage

    with Image.open(Path(skimage.__file__).parent / "data" / "retina.jpg") as im:
        return np.asarray(im.convert("RGB").resize((size, size), Image.Resampling.BILINEAR))


def jpeg(rgb: np.ndarray | None = None, **save: object) -> bytes:
    out = io.BytesIO()
    Image.fromarray(photo() if rgb is None else rgb).save(out, "JPEG", quality=90, **save)
    return out.getvalue()


def png(rgb: np.ndarray | None = None) -> bytes:
    out = io.BytesIO()
    Image.fromarray(photo() if rgb is None else rgb).save(out, "PNG")
    return out.getvalue()


def _el(group: int, elem: int, vr: str, value: bytes) -> bytes:
    """One Explicit VR Little Endian data element (even-padded value)."""
    if len(value) % 2:
        value += b"\x00" if vr in ("UI", "OB") else b" "
    if vr in ("OB", "OW", "SQ", "UN", "UT"):
        return struct.pack("<HH2sHI", group, elem, vr.encode(), 0, len(value)) + value
    return struct.pack("<HH2sH", group, elem, vr.encode(), len(value)) + value


def part10(dataset: bytes, *, ts: str = EXPLICIT_LE, preamble: bytes = b"") -> bytes:
    """A Part 10 file: ``preamble`` (padded to 128 bytes), DICM, the file meta, then ``dataset`` bytes."""
    meta = (_el(2, 1, "OB", b"\x00\x01") + _el(2, 2, "UI", OP_8BIT.encode()) + _el(2, 3, "UI", b"1.2.826.0.1.7")
            + _el(2, 0x10, "UI", ts.encode()) + _el(2, 0x12, "UI", b"1.2.826.0.1.8"))
    pre = preamble.ljust(128, b"\x00")[:128]
    return pre + b"DICM" + _el(2, 0, "UL", struct.pack("<I", len(meta))) + meta + dataset


def fundus_elements(rows: int, cols: int, *, pi: str = "RGB") -> bytes:
    """The elements of an 8-bit colour Ophthalmic Photography image, in tag order, up to Pixel Data."""
    u16 = lambda v: struct.pack("<H", v)  # noqa: E731
    return (_el(8, 0x16, "UI", OP_8BIT.encode()) + _el(8, 0x18, "UI", b"1.2.826.0.1.7")
            + _el(8, 0x60, "CS", b"OP") + _el(0x10, 0x10, "PN", b"CORPUS^TEST")
            + _el(0x20, 0x0D, "UI", b"1.2.826.0.1.1") + _el(0x20, 0x0E, "UI", b"1.2.826.0.1.2")
            + _el(0x28, 2, "US", u16(3)) + _el(0x28, 4, "CS", pi.encode()) + _el(0x28, 6, "US", u16(0))
            + _el(0x28, 0x10, "US", u16(rows)) + _el(0x28, 0x11, "US", u16(cols))
            + _el(0x28, 0x100, "US", u16(8)) + _el(0x28, 0x101, "US", u16(8)) + _el(0x28, 0x102, "US", u16(7))
            + _el(0x28, 0x103, "US", u16(0)))


def fundus_dicom(*, preamble: bytes = b"") -> bytes:
    """A JPEG-baseline Ophthalmic Photography file of the retina photograph (encapsulated, one fragment)."""
    codestream = jpeg()
    return part10(fundus_elements(256, 256, pi="YBR_FULL_422") + _encapsulated(codestream), ts=JPEG_BASELINE,
                  preamble=preamble)


def _encapsulated(frame: bytes) -> bytes:
    if len(frame) % 2:
        frame += b"\x00"
    items = struct.pack("<HHI", 0xFFFE, 0xE000, 0) + struct.pack("<HHI", 0xFFFE, 0xE000, len(frame)) + frame
    return (struct.pack("<HH2sHI", 0x7FE0, 0x10, b"OB", 0, 0xFFFFFFFF) + items
            + struct.pack("<HHI", 0xFFFE, 0xE0DD, 0))


def native_dicom(rows: int = 64, cols: int = 64) -> bytes:
    pixels = photo(max(rows, cols))[:rows, :cols].tobytes()
    return part10(fundus_elements(rows, cols) + _el(0x7FE0, 0x10, "OB", pixels))


def png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def png_declaring(width: int, height: int, idat: bytes, colour: int = 0) -> bytes:
    ihdr = struct.pack(">IIBBBBB", width, height, 8, colour, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", idat) + png_chunk(b"IEND", b"")


def jpeg_declaring(width: int, height: int) -> bytes:
    """The retina JPEG with its SOF0 dimensions rewritten (the scan still holds 256x256)."""
    data = bytearray(jpeg())
    sof = data.find(b"\xff\xc0")
    data[sof + 5 : sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def _zeros_deflated(total: int, *, raw: bool = False, row: int = 0) -> bytes:
    """``total`` zero bytes deflated at level 9, streamed (zlib or raw deflate); ``row``: PNG filter bytes."""
    comp = zlib.compressobj(9, zlib.DEFLATED, -15 if raw else 15)
    block = b"\x00" * (row if row else 1 << 20)
    out, left = [], total
    while left > 0:
        take = min(left, len(block))
        out.append(comp.compress(block[:take]))
        left -= take
    out.append(comp.flush())
    return b"".join(out)


# ---- hostile builders --------------------------------------------------------------------------------------


def harmless_pickle() -> bytes:
    """A pickle that would print a marker if anyone ever unpickled it (it must never be)."""
    data = b"cbuiltins\nprint\n(S'FOVEA-PICKLE-WAS-LOADED'\ntR."
    pickletools.dis(data, out=io.StringIO())  # a well-formed pickle
    return data


def zip_bomb() -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as z:
        info = zipfile.ZipInfo("photo.png", date_time=(2020, 1, 1, 0, 0, 0))
        z.writestr(info, b"\x00" * (16 << 20), compress_type=zipfile.ZIP_DEFLATED, compresslevel=9)
    return out.getvalue()


def nested_sequences(depth: int) -> bytes:
    open_ = struct.pack("<HH2sHI", 0x0040, 0xA730, b"SQ", 0, 0xFFFFFFFF) + struct.pack("<HHI", 0xFFFE, 0xE000,
                                                                                         0xFFFFFFFF)
    close = struct.pack("<HHI", 0xFFFE, 0xE00D, 0) + struct.pack("<HHI", 0xFFFE, 0xE0DD, 0)
    return part10(_el(8, 0x16, "UI", OP_8BIT.encode()) + open_ * depth + close * depth)


def dicom_element_overrun() -> bytes:
    """PatientName claims 65534 bytes; the file (Pixel Data included) ends long before."""
    body = fundus_elements(64, 64) + _el(0x7FE0, 0x10, "OB", b"\x00" * 64)
    at = body.find(b"PN")
    return part10(body[: at + 2] + struct.pack("<H", 0xFFFE) + body[at + 4 :])


def dicom_rows_columns(rows: int, cols: int) -> bytes:
    return part10(fundus_elements(rows, cols) + _el(0x7FE0, 0x10, "OB", b"\x00" * 4096))


def dicom_codestream_mismatch() -> bytes:
    """The DICOM header says 256x256; the JPEG codestream inside declares 60000x60000."""
    return part10(fundus_elements(256, 256, pi="YBR_FULL_422") + _encapsulated(jpeg_declaring(60000, 60000)),
                  ts=JPEG_BASELINE)


def arithmetic_jpeg() -> bytes:
    committed = FILES / "arithmetic.jpg"
    tool = shutil.which("jpegtran")
    if tool is None:
        return committed.read_bytes()
    return subprocess.run([tool, "-arithmetic", "-copy", "none"], input=jpeg(), capture_output=True,
                          check=True).stdout


def cmyk_jpeg() -> bytes:
    out = io.BytesIO()
    Image.fromarray(photo()).convert("CMYK").save(out, "JPEG", quality=90)
    return out.getvalue()


def deflate_bomb_dicom() -> bytes:
    """Deflated Explicit VR LE whose dataset inflates to 300 MB (the limit is 256 MiB)."""
    head = _el(8, 0x16, "UI", OP_8BIT.encode())
    comp = zlib.compressobj(9, zlib.DEFLATED, -15)
    pixel_header = struct.pack("<HH2sHI", 0x7FE0, 0x10, b"OB", 0, 300_000_000)
    body = [comp.compress(head + pixel_header)]
    block = b"\x00" * (1 << 20)
    for _ in range(300_000_000 // len(block)):
        body.append(comp.compress(block))
    body.append(comp.compress(b"\x00" * (300_000_000 % len(block))))
    body.append(comp.flush())
    return part10(b"".join(body), ts=DEFLATED)


def png_bomb() -> bytes:
    """A 20000 x 20000 grayscale PNG of zeros: 400 MB of pixels in ~400 kB."""
    return png_declaring(20000, 20000, _zeros_deflated(20000 * 20001, row=20001))


def png_idat_overflow() -> bytes:
    """Declares 64 x 64 grayscale but its IDAT inflates to 64 MB: a decoder must stop at 64 rows."""
    return png_declaring(64, 64, _zeros_deflated(64 << 20))


PYDICOM_MALFORMED = {
    # name: (status, code, why) - pydicom's own malformed / edge-case files that ship in its wheel
    "no_meta.dcm": (415, "unsupported_media_type", "no preamble / file meta: not Part 10"),
    "ExplVR_BigEndNoMeta.dcm": (415, "unsupported_media_type", "no preamble / file meta: not Part 10"),
    "ExplVR_LitEndNoMeta.dcm": (415, "unsupported_media_type", "no preamble / file meta: not Part 10"),
    "no_meta_group_length.dcm": (422, "unsupported_dicom", "meta without group length; a CT, not a fundus"),
    "meta_missing_tsyntax.dcm": (422, "unsupported_dicom", "file meta without Transfer Syntax UID; no SOP class"),
    "MR_truncated.dcm": (422, "unsupported_dicom", "truncated MR: refused as not a fundus before pixels"),
    "rtplan_truncated.dcm": (422, "unsupported_dicom", "truncated RT plan: not an image"),
    "badVR.dcm": (422, "unsupported_dicom", "an invalid VR; no fundus SOP class"),
    "UN_sequence.dcm": (422, "unsupported_dicom", "a sequence encoded as UN"),
    "nested_priv_SQ.dcm": (422, "unsupported_dicom", "nested private sequences; no image"),
    "priv_SQ.dcm": (422, "unsupported_dicom", "private sequence; no image"),
    "J2K_pixelrep_mismatch.dcm": (422, "unsupported_dicom", "PixelRepresentation disagrees with the J2K data"),
    "JPEG2000-embedded-sequence-delimiter.dcm": (413, "payload_too_large",
                                                 "delimiter inside a J2K fragment: garbage SIZ of 3.7e9 x 1024"),
    "reportsi_with_empty_number_tags.dcm": (422, "unsupported_dicom", "SR with empty IS/DS values"),
    "empty_charset_LEI.dcm": (422, "unsupported_dicom", "empty Specific Character Set"),
    "zipMR.gz": (415, "unsupported_media_type", "a gzip file, not DICOM"),
}


CORPUS: tuple[Entry, ...] = (
    Entry("empty.bin", 415, "unsupported_media_type", "0 bytes", lambda: b""),
    Entry("text.txt", 415, "unsupported_media_type", "plain text", lambda: b"this is not an image\n" * 4),
    Entry("page.html", 415, "unsupported_media_type", "an HTML page with a script",
          lambda: b"<!DOCTYPE html><html><body><script>alert('fovea')</script></body></html>\n"),
    Entry("payload.pickle", 415, "unsupported_media_type", "a pickle uploaded as a file is never unpickled",
          harmless_pickle),
    Entry("zip_bomb.png", 415, "unsupported_media_type", "a ZIP (16 MiB of zeros) named .png: sniffed by content",
          zip_bomb),
    Entry("truncated.jpg", 400, "unreadable_image", "the retina JPEG cut at 60 %",
          lambda: (d := jpeg())[: len(d) * 6 // 10]),
    Entry("truncated.png", 400, "unreadable_image", "the retina PNG cut at 60 %",
          lambda: (d := png())[: len(d) * 6 // 10]),
    Entry("truncated.dcm", 400, "unreadable_image", "a JPEG-baseline fundus DICOM cut inside its pixel data",
          lambda: (d := fundus_dicom())[: len(d) * 6 // 10]),
    Entry("png_chunk_length.png", 400, "unreadable_image", "an IDAT chunk claiming 2 GB in a tiny file",
          lambda: png_declaring(64, 64, b"")[:33] + struct.pack(">I", 0x7FFFFFF0) + b"IDAT" + b"\x00" * 64),
    Entry("dicom_element_length.dcm", 400, "unreadable_image", "an element length past the end of the file",
          dicom_element_overrun),
    Entry("jpeg_60000.jpg", 413, "payload_too_large", "SOF declares 60000 x 60000",
          lambda: jpeg_declaring(60000, 60000)),
    Entry("png_60000.png", 413, "payload_too_large", "IHDR declares 60000 x 60000",
          lambda: png_declaring(60000, 60000, zlib.compress(b"\x00" * 1024))),
    Entry("dicom_60000.dcm", 413, "payload_too_large", "Rows / Columns 60000 x 60000",
          lambda: dicom_rows_columns(60000, 60000)),
    Entry("dicom_codestream_60000.dcm", 413, "payload_too_large",
          "DICOM header 256 x 256, the JPEG codestream inside declares 60000 x 60000", dicom_codestream_mismatch),
    Entry("nested_sequences.dcm", 400, "unreadable_image", "ContentSequence nested 200 levels deep",
          lambda: nested_sequences(200)),
    Entry("preamble_pe.dcm", 200, None, "a valid fundus DICOM whose preamble is a PE (MZ) header",
          lambda: fundus_dicom(preamble=b"MZ\x90\x00\x03\x00\x00\x00\x04\x00\x00\x00\xff\xff" + b"PE\x00\x00")),
    Entry("preamble_html.dcm", 200, None, "a valid fundus DICOM whose preamble is an HTML page",
          lambda: fundus_dicom(preamble=b"<html><script>alert('fovea')</script></html>")),
    Entry("preamble_zip.dcm", 200, None, "a valid fundus DICOM whose preamble is a ZIP local header",
          lambda: fundus_dicom(preamble=b"PK\x03\x04\x14\x00\x00\x00\x08\x00")),
    Entry("cmyk.jpg", 200, None, "a real photograph as CMYK JPEG (Adobe APP14)", cmyk_jpeg),
    Entry("progressive.jpg", 200, None, "a real photograph as progressive JPEG",
          lambda: jpeg(progressive=True)),
    Entry("arithmetic.jpg", 200, None, "a real photograph, arithmetic-coded (libjpeg-turbo decodes it)",
          arithmetic_jpeg),
    Entry("png_bomb_20000.png", 413, "payload_too_large", "20000 x 20000 of zeros in ~400 kB (generated)",
          png_bomb, big=True),
    Entry("png_idat_overflow.png", 400, "unreadable_image",
          "64 x 64 declared, IDAT inflating to 64 MiB: refused before decoding (generated)", png_idat_overflow, big=True),
    Entry("deflate_bomb.dcm", 413, "payload_too_large", "deflated dataset inflating to 300 MB (generated)",
          deflate_bomb_dicom, big=True),
) + tuple(Entry(name, s, c, f"pydicom test file: {why}") for name, (s, c, why) in PYDICOM_MALFORMED.items())


def path_of(entry: Entry, big_dir: Path | None = None) -> Path:
    """Where ``entry``'s bytes are: committed files, ``big_dir`` for generated ones, pydicom's test data."""
    if entry.make is None:
        from pydicom.data import get_testdata_file

        found = get_testdata_file(entry.name, download=False)
        if found is None:
            raise FileNotFoundError(f"{entry.name} is not in pydicom's wheel")
        return Path(str(found))
    if entry.big:
        if big_dir is None:
            raise ValueError(f"{entry.name} is generated at test time: pass big_dir")
        return big_dir / entry.name
    return FILES / entry.name


def build(files: Path = FILES) -> None:
    """Write the committed files and the manifest."""
    files.mkdir(parents=True, exist_ok=True)
    for entry in CORPUS:
        if entry.make is not None and not entry.big:
            (files / entry.name).write_bytes(entry.make())
    manifest = {e.name: {"status": e.status, "code": e.code, "why": e.why,
                         "source": "pydicom" if e.make is None else ("generated" if e.big else "committed")}
                for e in CORPUS}
    (files.parent / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")


def build_big(out: Path) -> None:
    """Write the large, generated-at-test-time files to ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    for entry in CORPUS:
        if entry.big and entry.make is not None:
            (out / entry.name).write_bytes(entry.make())


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tests.corpus.make_corpus", description=__doc__.split("\n")[0])
    p.add_argument("--big", type=Path, help="also write the generated large files to this folder")
    args = p.parse_args(argv)
    build()
    if args.big:
        build_big(args.big)
    print(f"wrote {sum(1 for e in CORPUS if e.make and not e.big)} files to {FILES} and {MANIFEST}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
