"""service.admin: create-key prints the key once (last line) and stores its hash; revoke; verify-audit exits
non-zero naming the first broken record; purge keeps the trail verifiable."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from service.admin import main
from service.audit import AuditLog
from service.auth import load_keys

REPO = Path(__file__).resolve().parents[2]


def test_create_key_prints_the_key_last_and_stores_only_its_hash(tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    keys = tmp_path / "keys.yaml"
    assert main(["create-key", "--site", "clinic-a", "--keys-file", str(keys)]) == 0
    key = capsys.readouterr().out.strip().splitlines()[-1]
    assert key.startswith("fov_") and key not in keys.read_text()
    store = load_keys(keys)
    principal = store.authenticate(key)
    assert principal is not None and principal.site == "clinic-a" and principal.roles == {"analyze"}
    # a second key (alias add-key, scrypt, extra role) for the same site; both work
    assert main(["add-key", "--site", "clinic-a", "--role", "admin", "--scrypt", "--keys-file", str(keys)]) == 0
    key2 = capsys.readouterr().out.strip().splitlines()[-1]
    store = load_keys(keys)
    assert store.authenticate(key) is not None and store.authenticate(key2) is not None
    assert store.sites["clinic-a"].roles == {"analyze", "admin"}
    assert "scrypt:" in keys.read_text()


def test_revoke_key(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    keys = tmp_path / "keys.yaml"
    main(["create-key", "--site", "s", "--keys-file", str(keys)])
    key = capsys.readouterr().out.strip().splitlines()[-1]
    key_id = key.split("_")[1]
    assert main(["list-keys", "--keys-file", str(keys)]) == 0
    listing = capsys.readouterr().out
    assert key_id in listing and "sha256" not in listing
    assert main(["revoke-key", "--site", "s", "--id", "deadbeef", "--keys-file", str(keys)]) == 2
    assert main(["revoke-key", "--site", "s", "--id", key_id, "--keys-file", str(keys)]) == 0
    assert load_keys(keys).authenticate(key) is None


def test_keys_file_from_settings_or_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.delenv("FOVEA_API_KEYS_FILE", raising=False)
    monkeypatch.delenv("FOVEA_CONFIG", raising=False)
    assert main(["create-key", "--site", "s"]) == 2
    assert "FOVEA_API_KEYS_FILE" in capsys.readouterr().err
    monkeypatch.setenv("FOVEA_API_KEYS_FILE", str(tmp_path / "k.yaml"))
    assert main(["create-key", "--site", "s"]) == 0
    assert (tmp_path / "k.yaml").is_file()


def _cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "service.admin", *args], cwd=REPO, capture_output=True, text=True,
                          env={**os.environ, **env}, timeout=120)


def test_verify_audit_and_purge_from_the_command_line(tmp_path: Path) -> None:
    db = tmp_path / "audit.sqlite"
    env = {"FOVEA_AUDIT_PATH": str(db)}
    log = AuditLog(f"sqlite:///{db}")
    for i in range(4):
        log.append(request_id=f"r{i}", site="s", endpoint="/analyze", status=200)
    ok = _cli("verify-audit", env=env)
    assert ok.returncode == 0, ok.stderr
    assert "OK: 4 records, head seq=4" in ok.stdout
    # purge everything (an anchor stays), then the trail still verifies
    purged = _cli("purge", "--older-than", "0", env=env)
    assert purged.returncode == 0 and "4 records" in purged.stdout
    assert _cli("verify-audit", env=env).returncode == 0
    log.append(request_id="after", site="s", endpoint="/analyze", status=200)
    with log.engine.begin() as conn:  # an attacker edits the last record
        conn.exec_driver_sql("DROP TRIGGER audit_records_no_update")
        conn.exec_driver_sql("UPDATE audit_records SET status = 403 WHERE request_id = 'after'")
    broken = _cli("verify-audit", "--database-url", f"sqlite:///{db}", env={})
    assert broken.returncode == 1
    assert "BROKEN at record seq=6" in broken.stderr and "request_id=after" in broken.stderr


def test_verify_audit_refuses_a_missing_database(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["verify-audit", "--database-url", f"sqlite:///{tmp_path / 'typo.sqlite'}"]) == 2
    assert "no audit database" in capsys.readouterr().err
    assert not (tmp_path / "typo.sqlite").exists()
