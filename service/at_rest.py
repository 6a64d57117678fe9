"""Encryption at rest for identifiable DICOM that Fovea keeps beyond one request (SECURITY.md, "Patient data").

The gateway's store-and-forward queue and the DICOMweb result store hold instances that must keep their patient
module (results are filed by the PACS in the patient's own study), so they are *sealed* rather than
de-identified: AES-256-GCM (authenticated: a flipped bit or a swapped file is detected, not decrypted into
garbage), a fresh 96-bit nonce per blob, and the blob's purpose bound in as associated data so a queue file
cannot be replayed as a result file.

Blob layout (version 1): ``b"FVA1" | nonce (12 bytes) | ciphertext + GCM tag (16 bytes)``.

The key comes from ``FOVEA_STORAGE_KEY`` (base64 of 32 bytes; ``python -m service.at_rest new-key`` prints one)
or, when that is unset, from ``<data dir>/storage.key``, created on first use with mode 0600. Losing the key
loses the sealed data: that is the point; back it up separately from the data.
"""

from __future__ import annotations

import base64
import binascii
import os
import secrets
import sys
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

MAGIC = b"FVA1"
NONCE_BYTES = 12
KEY_BYTES = 32
KEY_ENV = "FOVEA_STORAGE_KEY"
DATA_DIR_ENV = "FOVEA_DATA_DIR"
#: Where Fovea keeps what outlives a request (queue, results, audit DB, key file) unless configured.
DEFAULT_DATA_DIR = Path("var")
KEY_FILE_NAME = "storage.key"


class SealError(ValueError):
    """A blob cannot be opened: not sealed by Fovea, truncated, tampered with, or sealed with another key or
    purpose. The message never contains the data."""


@dataclass(frozen=True)
class Sealer:
    """Seals and opens blobs with one AES-256-GCM key. ``purpose`` (e.g. ``b"gateway-queue"``) is
    authenticated with every blob: opening with another purpose fails."""

    key: bytes = field(repr=False)

    def __post_init__(self) -> None:
        if len(self.key) != KEY_BYTES:
            raise ValueError(f"a storage key is {KEY_BYTES} bytes, not {len(self.key)}")

    def seal(self, data: bytes, purpose: bytes = b"") -> bytes:
        """``data`` encrypted and authenticated, as a self-describing blob."""
        nonce = secrets.token_bytes(NONCE_BYTES)  # random 96-bit nonces: safe far beyond 2**32 blobs per key
        return MAGIC + nonce + AESGCM(self.key).encrypt(nonce, data, MAGIC + purpose)

    def open(self, blob: bytes, purpose: bytes = b"") -> bytes:
        """The plaintext of a blob made by :meth:`seal` with the same key and purpose; :class:`SealError`
        otherwise."""
        if len(blob) < len(MAGIC) + NONCE_BYTES + 16 or not blob.startswith(MAGIC):
            raise SealError("not a Fovea sealed file (wrong header or too short)")
        nonce = blob[len(MAGIC):len(MAGIC) + NONCE_BYTES]
        try:
            return AESGCM(self.key).decrypt(nonce, blob[len(MAGIC) + NONCE_BYTES:], MAGIC + purpose)
        except InvalidTag as exc:
            raise SealError("the sealed file fails authentication: tampered with, truncated, or sealed with "
                            "another key") from exc

    def write(self, path: Path, data: bytes, purpose: bytes = b"") -> None:
        """Seal ``data`` into ``path`` durably (:func:`atomic_write`)."""
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, self.seal(data, purpose))

    def read(self, path: Path, purpose: bytes = b"") -> bytes:
        """The plaintext of a file written by :meth:`write`."""
        return self.open(path.read_bytes(), purpose)


def fsync_dir(path: Path) -> None:
    """Flush a folder's entries (a rename or a new file in it) to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` atomically and durably, mode 0600: written to a temporary file beside it,
    fsynced, renamed over ``path`` (atomic on POSIX), and the folder fsynced, so a crash leaves the old file or
    the new one, never a mix."""
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def data_dir(environ: dict[str, str] | None = None) -> Path:
    """Fovea's data folder: ``FOVEA_DATA_DIR`` or ``./var``."""
    env = os.environ if environ is None else environ
    return Path(env.get(DATA_DIR_ENV, "").strip() or DEFAULT_DATA_DIR)


def parse_key(text: str) -> bytes:
    """A base64 (standard or URL-safe) 32-byte key; ``ValueError`` naming the problem, never the key."""
    try:
        key = base64.b64decode(text.strip().replace("-", "+").replace("_", "/"), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ValueError(f"{KEY_ENV} is not base64") from exc
    if len(key) != KEY_BYTES:
        raise ValueError(f"{KEY_ENV} must decode to {KEY_BYTES} bytes, not {len(key)}")
    return key


def load_sealer(environ: dict[str, str] | None = None, *, directory: Path | None = None) -> Sealer:
    """The sealer of this installation: the key from ``FOVEA_STORAGE_KEY``, else from ``storage.key`` in
    ``directory`` (default :func:`data_dir`), created there with mode 0600 when absent."""
    env = os.environ if environ is None else environ
    if env.get(KEY_ENV, "").strip():
        return Sealer(parse_key(env[KEY_ENV]))
    folder = directory if directory is not None else data_dir(env)
    path = folder / KEY_FILE_NAME
    if not path.exists():
        folder.mkdir(parents=True, exist_ok=True)
        try:
            # O_EXCL: two processes starting together cannot both create (and use different) keys.
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(base64.b64encode(secrets.token_bytes(KEY_BYTES)).decode() + "\n")
                f.flush()
                os.fsync(f.fileno())
        except FileExistsError:
            pass
    try:
        return Sealer(parse_key(path.read_text(encoding="ascii")))
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from exc


def main(argv: list[str] | None = None) -> int:
    """``python -m service.at_rest new-key``: print a fresh base64 key for ``FOVEA_STORAGE_KEY``."""
    args = sys.argv[1:] if argv is None else argv
    if args != ["new-key"]:
        print("usage: python -m service.at_rest new-key", file=sys.stderr)
        return 2
    print(base64.b64encode(secrets.token_bytes(KEY_BYTES)).decode())
    return 0


if __name__ == "__main__":
    sys.exit(main())
