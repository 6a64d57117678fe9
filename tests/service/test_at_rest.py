"""Sealing at rest: round trip, tamper and purpose detection, key handling, durable writes."""

from __future__ import annotations

import base64
import os
import stat
from pathlib import Path

import pytest

from service.at_rest import KEY_ENV, Sealer, SealError, load_sealer, main, parse_key

KEY = bytes(range(32))


def test_round_trip_and_ciphertext_hides_plaintext() -> None:
    s = Sealer(KEY)
    data = b"PatientName=MARKER^SECRET" * 10
    blob = s.seal(data, b"q")
    assert b"MARKER" not in blob
    assert s.open(blob, b"q") == data
    assert s.seal(data, b"q") != blob  # fresh nonce every time


@pytest.mark.parametrize("mutate", [
    lambda b: b[:-1],                                   # truncated
    lambda b: b[:20] + bytes([b[20] ^ 1]) + b[21:],     # one bit flipped
    lambda b: b"XXXX" + b[4:],                          # not ours
    lambda b: b"",                                      # empty
])
def test_tampering_is_detected(mutate) -> None:
    s = Sealer(KEY)
    with pytest.raises(SealError):
        s.open(mutate(s.seal(b"data", b"q")), b"q")


def test_other_purpose_or_key_is_refused() -> None:
    blob = Sealer(KEY).seal(b"data", b"gateway-queue")
    with pytest.raises(SealError):
        Sealer(KEY).open(blob, b"results")
    with pytest.raises(SealError):
        Sealer(bytes(32)).open(blob, b"gateway-queue")


def test_write_is_atomic_private_and_readable(tmp_path: Path) -> None:
    s = Sealer(KEY)
    p = tmp_path / "q" / "item.bin"
    s.write(p, b"one")
    s.write(p, b"two")
    assert s.read(p) == b"two"
    assert stat.S_IMODE(p.stat().st_mode) == 0o600
    assert [f.name for f in p.parent.iterdir()] == ["item.bin"]  # no temporary files left behind


def test_key_file_created_once_with_mode_0600(tmp_path: Path) -> None:
    a = load_sealer({}, directory=tmp_path)
    b = load_sealer({}, directory=tmp_path)
    assert a.key == b.key
    assert stat.S_IMODE((tmp_path / "storage.key").stat().st_mode) == 0o600


def test_key_from_environment_and_bad_keys_named_without_the_key(tmp_path: Path) -> None:
    env = {KEY_ENV: base64.b64encode(KEY).decode()}
    assert load_sealer(env, directory=tmp_path).key == KEY
    assert not (tmp_path / "storage.key").exists()
    with pytest.raises(ValueError, match="32 bytes"):
        parse_key(base64.b64encode(b"short").decode())
    with pytest.raises(ValueError, match="not base64") as e:
        parse_key("not base64 at all!")
    assert "at all" not in str(e.value)


def test_new_key_cli(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["new-key"]) == 0
    assert len(parse_key(capsys.readouterr().out)) == 32
    assert main([]) == 2
