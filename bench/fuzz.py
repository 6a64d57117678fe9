"""Mutation fuzzing of :func:`analysis.decode.decode`: only :class:`analysis.errors.FoveaError` may escape.

    python -m bench.fuzz --count 10000 --seed 1 --out fuzz-out/

Mutates valid seeds (the retina photograph as JPEG, progressive JPEG and PNG; fundus DICOM as JPEG baseline,
native RGB and RLE) with byte and bit flips, truncations, splices of two seeds, inserted / deleted runs, and
"interesting" integers written over header fields (PNG IHDR, JPEG SOF, DICOM Rows / Columns / Bits /
Samples / Number of Frames). Prints a Markdown report: inputs, time, inputs per second, the slowest input,
counts per outcome (decoded, each error class) and every escape (any other exception, or an input slower
than ``--slow`` seconds), whose reproducer is saved under ``--out`` as ``<kind>-<sha256[:16]>.bin``. The input
being decoded is written to ``--out/current.bin`` first, so a crash of the interpreter leaves its reproducer.

The same mutators drive the fixed-seed Hypothesis test (tests/analysis/test_decode_fuzz.py).
"""

from __future__ import annotations

import argparse
import hashlib
import io
import logging
import random
import signal
import struct
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

INTERESTING_16: tuple[int, ...] = (0, 1, 2, 3, 7, 8, 12, 16, 255, 256, 4095, 32767, 32768, 60000, 65535)
INTERESTING_32: tuple[int, ...] = (0, 1, 0x7F, 0xFFFF, 0x10000, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFE, 0xFFFFFFFF)
# DICOM header fields worth mutating, as their little-endian tag bytes (group, element).
DICOM_FIELDS: tuple[bytes, ...] = tuple(struct.pack("<HH", 0x0028, e) for e in (0x0002, 0x0008, 0x0010, 0x0011,
                                                                               0x0100, 0x0101, 0x0102, 0x0103))


def seeds() -> dict[str, bytes]:
    """The valid inputs mutations start from (deterministic)."""
    import pydicom
    from pydicom.data import get_testdata_file

    from tests.corpus.make_corpus import OP_8BIT, fundus_dicom, jpeg, native_dicom, photo, png

    rle = pydicom.dcmread(get_testdata_file("SC_rgb_rle.dcm", download=False))
    rle.SOPClassUID = rle.file_meta.MediaStorageSOPClassUID = OP_8BIT
    buf = io.BytesIO()
    rle.save_as(buf, enforce_file_format=True)
    return {
        "jpeg": jpeg(photo(128)),
        "jpeg-progressive": jpeg(photo(128), progressive=True),
        "png": png(photo(96)),
        "dicom-jpeg": fundus_dicom(),
        "dicom-native": native_dicom(48, 48),
        "dicom-rle": buf.getvalue(),
    }


# ---- mutators: (rng, data, other seed) -> bytes ---------------------------------------------------------------


def flip_bytes(rng: random.Random, data: bytes, _: bytes) -> bytes:
    out = bytearray(data)
    for _i in range(rng.randint(1, 8)):
        if out:
            out[rng.randrange(len(out))] = rng.randrange(256)
    return bytes(out)


def flip_bits(rng: random.Random, data: bytes, _: bytes) -> bytes:
    out = bytearray(data)
    for _i in range(rng.randint(1, 16)):
        if out:
            out[rng.randrange(len(out))] ^= 1 << rng.randrange(8)
    return bytes(out)


def truncate(rng: random.Random, data: bytes, _: bytes) -> bytes:
    return data[: rng.randrange(len(data) + 1)]


def splice(rng: random.Random, data: bytes, other: bytes) -> bytes:
    return data[: rng.randrange(len(data) + 1)] + other[rng.randrange(len(other) + 1):]


def insert_run(rng: random.Random, data: bytes, _: bytes) -> bytes:
    at = rng.randrange(len(data) + 1)
    run = bytes([rng.randrange(256)]) * rng.choice((1, 4, 64, 4096)) if rng.random() < 0.5 else rng.randbytes(
        rng.randint(1, 256))
    return data[:at] + run + data[at:]


def delete_run(rng: random.Random, data: bytes, _: bytes) -> bytes:
    at = rng.randrange(len(data) + 1)
    return data[:at] + data[at + rng.randint(1, 512):]


def header_field(rng: random.Random, data: bytes, _: bytes) -> bytes:
    """Overwrite a header field with an interesting integer: PNG IHDR, JPEG SOF, DICOM image pixel module."""
    out = bytearray(data)
    candidates: list[tuple[int, int, str]] = []  # (offset, size, byte order)
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        candidates += [(16, 4, ">"), (20, 4, ">"), (24, 1, ">"), (25, 1, ">"), (28, 1, ">")]
    sof = data.find(b"\xff\xc0") if data[:2] == b"\xff\xd8" or b"DICM" in data[:132] else -1
    if sof < 0:
        sof = data.find(b"\xff\xc2")
    if sof >= 0:
        candidates += [(sof + 2, 2, ">"), (sof + 4, 1, ">"), (sof + 5, 2, ">"), (sof + 7, 2, ">"), (sof + 9, 1, ">")]
    for tag in DICOM_FIELDS:
        at = data.find(tag)
        if at >= 0:
            candidates.append((at + 6, 2, "<"))  # explicit VR short form: tag(4) VR(2) length(2) value
            candidates.append((at + 8, 2, "<"))
    if not candidates:
        return flip_bytes(rng, data, b"")
    offset, size, order = rng.choice(candidates)
    if offset + size > len(out):
        return bytes(out)
    if size == 1:
        out[offset] = rng.choice((0, 1, 2, 3, 4, 5, 6, 7, 8, 16, 255))
    elif size == 2:
        out[offset : offset + 2] = struct.pack(order + "H", rng.choice(INTERESTING_16))
    else:
        out[offset : offset + 4] = struct.pack(order + "I", rng.choice(INTERESTING_32))
    return bytes(out)


MUTATORS: dict[str, Callable[[random.Random, bytes, bytes], bytes]] = {
    f.__name__: f for f in (flip_bytes, flip_bits, truncate, splice, insert_run, delete_run, header_field)
}


def mutate(rng: random.Random, data: bytes, pool: list[bytes], rounds: int | None = None) -> bytes:
    """Apply 1-3 random mutators (``rounds`` to fix the count)."""
    for _ in range(rounds if rounds is not None else rng.randint(1, 3)):
        data = rng.choice(list(MUTATORS.values()))(rng, data, rng.choice(pool))
    return data


class _Slow(BaseException):
    """Raised by SIGALRM; a BaseException so that decode's own ``except Exception`` cannot swallow it."""


class _WrappedCounter(logging.Handler):
    """Counts decode's "unexpected <type> while decoding" warnings (the catch-all that keeps the contract)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.counts: Counter[str] = Counter()

    def emit(self, record: logging.LogRecord) -> None:
        if record.msg.startswith("unexpected"):
            self.counts[f"{record.args[0]} ({record.args[1]})"] += 1  # type: ignore[index]


def run(count: int, seed: int, out: Path, slow_s: float = 10.0) -> dict[str, object]:
    """Decode ``count`` mutated inputs; see the module docstring for what is recorded."""
    from analysis.decode import decode
    from analysis.errors import FoveaError

    out.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    base = seeds()
    pool = list(base.values())
    names = list(base)
    outcomes: Counter[str] = Counter()
    escapes: list[tuple[str, str, str]] = []
    slowest = (0.0, "")

    def alarm(*_: object) -> None:
        raise _Slow()

    signal.signal(signal.SIGALRM, alarm)
    t0 = time.perf_counter()
    for _i in range(count):
        kind = rng.choice(names)
        data = mutate(rng, base[kind], pool)
        (out / "current.bin").write_bytes(data)
        t = time.perf_counter()
        signal.setitimer(signal.ITIMER_REAL, slow_s)
        try:
            decode(data, target=rng.choice((None, 32)))
            outcomes["decoded"] += 1
        except FoveaError as exc:
            outcomes[type(exc).__name__] += 1
        except _Slow:
            outcomes["ESCAPE slow"] += 1
            escapes.append(_save(out, kind, data, f"slower than {slow_s} s"))
        except Exception as exc:  # noqa: BLE001 - the point: anything else is an escape
            outcomes[f"ESCAPE {type(exc).__name__}"] += 1
            escapes.append(_save(out, kind, data, f"{type(exc).__name__}: {str(exc)[:120]}"))
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
        dt = time.perf_counter() - t
        if dt > slowest[0]:
            slowest = (dt, kind)
    seconds = time.perf_counter() - t0
    (out / "current.bin").unlink(missing_ok=True)
    return {"count": count, "seed": seed, "seconds": seconds, "outcomes": dict(outcomes), "escapes": escapes,
            "slowest": slowest}


def _save(out: Path, kind: str, data: bytes, why: str) -> tuple[str, str, str]:
    name = f"{kind}-{hashlib.sha256(data).hexdigest()[:16]}.bin"
    (out / name).write_bytes(data)
    return kind, name, why


def report(result: dict[str, object]) -> str:
    outcomes: dict[str, int] = result["outcomes"]  # type: ignore[assignment]
    escapes: list[tuple[str, str, str]] = result["escapes"]  # type: ignore[assignment]
    lines = [f"Fuzzed analysis.decode.decode with {result['count']} mutated inputs (seed {result['seed']}) in "
             f"{result['seconds']:.1f} s ({result['count'] / result['seconds']:.0f}/s); slowest input "
             f"{result['slowest'][0]:.2f} s ({result['slowest'][1]}).",  # type: ignore[index]
             "", "| outcome | inputs |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in sorted(outcomes.items(), key=lambda kv: -kv[1])]
    lines += ["", f"Escapes: {len(escapes)}"]
    lines += [f"- {kind}: `{name}`: {why}" for kind, name, why in escapes]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.fuzz", description=__doc__.split("\n")[0])
    p.add_argument("--count", type=int, default=10_000)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--out", type=Path, default=Path("fuzz-out"))
    p.add_argument("--slow", type=float, default=10.0,
                   help="seconds after which an input counts as an escape (GDCM's child process alone takes "
                        "0.5 s idle, ~3.5 s on a loaded 2-core machine)")
    args = p.parse_args(argv)
    import logging
    import warnings

    warnings.simplefilter("ignore")
    wrapped = _WrappedCounter()
    for name in ("analysis.decode", "analysis.dicom_pixels"):
        logging.getLogger(name).addHandler(wrapped)
        logging.getLogger(name).propagate = False
    import os

    saved = os.dup(2)
    os.dup2(os.open(os.devnull, os.O_WRONLY), 2)  # libjpeg / libpng print a warning per corrupt input
    try:
        result = run(args.count, args.seed, args.out, args.slow)
    finally:
        os.dup2(saved, 2)
    print(report(result))
    if wrapped.counts:
        print("\nThird-party exceptions the decoder's catch-all wrapped into UnreadableImage (not escapes; each a "
              "place a specific check could answer sooner):\n")
        print("\n".join(f"- {k}: {v}" for k, v in wrapped.counts.most_common()))
    return 1 if result["escapes"] else 0


if __name__ == "__main__":
    sys.exit(main())
