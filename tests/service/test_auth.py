"""service.auth: hashed per-site keys, 401 vs 403, open paths, loopback-only without keys, reload on change."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from starlette.responses import JSONResponse
from starlette.testclient import TestClient

from service import auth
from service.auth import (AuthMiddleware, KeyEntry, KeysFileError, KeyStore, Site, current_site, hash_key,
                          load_keys, new_key, parse_keys, presented_key, required_role, save_keys, verify_key)


async def _echo(scope, receive, send) -> None:  # noqa: ANN001
    await JSONResponse({"site": current_site(), "path": scope["path"]})(scope, receive, send)


@pytest.fixture()
def keys(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    """A keys file with an analyze site (sha256), an admin-only site (scrypt) and their clear keys."""
    clinic, clinic_id = new_key()
    ops, ops_id = new_key()
    store = KeyStore({
        "clinic-a": Site("clinic-a", frozenset({"analyze"}), (KeyEntry(hash_key(clinic), clinic_id),)),
        "ops": Site("ops", frozenset({"admin"}), (KeyEntry(hash_key(ops, "scrypt"), ops_id),)),
    })
    path = tmp_path / "keys.yaml"
    save_keys(path, store)
    return path, {"clinic-a": clinic, "ops": ops}


def _client(path: Path | None, refusals: list | None = None, **kw) -> TestClient:  # noqa: ANN003
    hook = (lambda *a: refusals.append(a)) if refusals is not None else None
    return TestClient(AuthMiddleware(_echo, keys_file=path, on_refusal=hook), **kw)


def test_generated_keys_are_random_and_only_their_hash_is_stored(keys: tuple[Path, dict[str, str]]) -> None:
    path, clear = keys
    text = path.read_text()
    assert clear["clinic-a"] not in text and clear["ops"] not in text
    assert hashlib.sha256(clear["clinic-a"].encode()).hexdigest() in text
    assert path.stat().st_mode & 0o077 == 0  # owner-only
    a, b = new_key()[0], new_key()[0]
    assert a != b and len(a) > 50


@pytest.mark.parametrize("scheme", ["sha256", "scrypt"])
def test_verify_key(scheme: str) -> None:
    key, _ = new_key()
    stored = hash_key(key, scheme)
    assert verify_key(key, stored)
    assert not verify_key(key + "x", stored)
    assert not verify_key(key, "md5:abc")


def test_valid_key_passes_and_names_the_site(keys: tuple[Path, dict[str, str]]) -> None:
    path, clear = keys
    client = _client(path)
    r = client.post("/analyze", headers={"Authorization": f"Bearer {clear['clinic-a']}"})
    assert r.status_code == 200 and r.json()["site"] == "clinic-a"
    r = client.post("/analyze", headers={"X-API-Key": clear["clinic-a"]})
    assert r.status_code == 200 and r.json()["site"] == "clinic-a"
    # scrypt-hashed key, admin route
    r = client.get("/metrics", headers={"Authorization": f"bearer {clear['ops']}"})
    assert r.status_code == 200 and r.json()["site"] == "ops"


@pytest.mark.parametrize("headers", [
    {}, {"Authorization": "Bearer fov_00000000_nope"}, {"X-API-Key": "wrong"}, {"Authorization": "Basic abc"},
    {"Authorization": "Bearer"},
])
def test_missing_or_wrong_key_is_401(keys: tuple[Path, dict[str, str]], headers: dict[str, str]) -> None:
    refusals: list = []
    r = _client(keys[0], refusals).post("/analyze", headers=headers)
    assert r.status_code == 401
    assert r.json()["error"]["code"] == "unauthorized"
    assert r.headers["www-authenticate"].startswith("Bearer")
    # the refusal is audited (request id, no site, path, status) and the id is returned
    assert refusals == [(r.headers["x-request-id"], None, "/analyze", 401)]


def test_two_different_keys_in_one_request_are_401(keys: tuple[Path, dict[str, str]]) -> None:
    path, clear = keys
    r = _client(path).post("/analyze", headers={"Authorization": f"Bearer {clear['clinic-a']}",
                                                "X-API-Key": clear["ops"]})
    assert r.status_code == 401


def test_key_without_the_role_is_403(keys: tuple[Path, dict[str, str]]) -> None:
    path, clear = keys
    refusals: list = []
    client = _client(path, refusals)
    r = client.post("/analyze", headers={"Authorization": f"Bearer {clear['ops']}"})  # admin only
    assert r.status_code == 403 and r.json()["error"]["code"] == "forbidden"
    r2 = client.get("/metrics", headers={"Authorization": f"Bearer {clear['clinic-a']}"})  # analyze only
    assert r2.status_code == 403
    assert [(s, p, st) for _, s, p, st in refusals] == [("ops", "/analyze", 403), ("clinic-a", "/metrics", 403)]


@pytest.mark.parametrize("path", ["/readyz", "/livez", "/", "/index.html", "/ui/app.js"])
def test_probes_and_the_page_are_open(keys: tuple[Path, dict[str, str]], path: str) -> None:
    assert _client(keys[0]).get(path).status_code == 200


@pytest.mark.parametrize("path", ["/info", "/docs", "/jobs/analyze_study/get", "/dicomweb/studies", "/uix"])
def test_everything_else_needs_a_key(keys: tuple[Path, dict[str, str]], path: str) -> None:
    assert required_role(path) == "analyze"
    assert _client(keys[0]).get(path).status_code == 401


def test_revoked_key_stops_working_without_restart(keys: tuple[Path, dict[str, str]]) -> None:
    path, clear = keys
    client = _client(path)
    hdr = {"Authorization": f"Bearer {clear['clinic-a']}"}
    assert client.post("/analyze", headers=hdr).status_code == 200
    store = load_keys(path)
    site = store.sites["clinic-a"]
    save_keys(path, KeyStore({**store.sites, "clinic-a": Site(site.name, site.roles, ())}))
    assert client.post("/analyze", headers=hdr).status_code == 401


def test_a_broken_keys_file_keeps_the_last_good_keys(keys: tuple[Path, dict[str, str]]) -> None:
    path, clear = keys
    client = _client(path)
    hdr = {"Authorization": f"Bearer {clear['clinic-a']}"}
    path.write_text("clinic-a: [not, a, mapping]\n")
    assert client.post("/analyze", headers=hdr).status_code == 200
    assert client.post("/analyze").status_code == 401


def test_without_keys_auth_is_off_for_loopback_only(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level("WARNING", logger="fovea.auth"):
        local = _client(None, client=("127.0.0.1", 5000))
    assert "AUTHENTICATION IS OFF" in caplog.text
    r = local.post("/analyze")
    assert r.status_code == 200 and r.json()["site"] == auth.LOCAL_SITE
    assert _client(None, client=("::1", 5000)).post("/analyze").status_code == 200
    refusals: list = []
    remote = _client(None, refusals, client=("192.0.2.7", 5000))
    r = remote.post("/analyze")
    assert r.status_code == 403 and "loopback" in r.json()["error"]["message"]
    assert refusals and refusals[0][3] == 403
    assert remote.get("/readyz").status_code == 200  # probes stay open


def test_site_context_does_not_leak_outside_the_request(keys: tuple[Path, dict[str, str]]) -> None:
    path, clear = keys
    _client(path).post("/analyze", headers={"X-API-Key": clear["clinic-a"]})
    assert current_site() is None


def test_parse_keys_accepts_bare_hashes_and_json(tmp_path: Path) -> None:
    key = "a-key-chosen-elsewhere-with-enough-entropy"
    path = tmp_path / "keys.json"
    path.write_text(json.dumps({"pacs": {"roles": ["analyze", "admin"], "keys": [hash_key(key)]}}))
    store = load_keys(path)
    principal = store.authenticate(key)
    assert principal is not None and principal.site == "pacs" and principal.roles == {"analyze", "admin"}
    assert store.authenticate("another") is None


@pytest.mark.parametrize("data, problem", [
    ([1, 2], "mapping"), ({"s": {"roles": ["root"]}}, "roles"), ({"s": {"keys": ["plaintext-key"]}}, "hash"),
    ({"s": {"keys": [{"id": "x"}]}}, "hash"),
])
def test_parse_keys_rejects_bad_files(data: object, problem: str) -> None:
    with pytest.raises(KeysFileError, match=problem):
        parse_keys(data)


def test_presented_key() -> None:
    assert presented_key({}) is None
    assert presented_key({b"authorization": b"Bearer  k1 "}) == "k1"
    assert presented_key({b"x-api-key": b"k1", b"authorization": b"Bearer k1"}) == "k1"
    assert presented_key({b"x-api-key": b"k1", b"authorization": b"Bearer k2"}) == ""


def test_rate_limit_per_site(tmp_path: Path) -> None:
    key, key_id = new_key()
    path = tmp_path / "keys.yaml"
    save_keys(path, KeyStore({"s": Site("s", frozenset({"analyze"}), (KeyEntry(hash_key(key), key_id),), 3)}))
    assert load_keys(path).sites["s"].rate_per_minute == 3
    refusals: list = []
    client = _client(path, refusals)
    codes = [client.post("/analyze", headers={"X-API-Key": key}).status_code for _ in range(4)]
    assert codes == [200, 200, 200, 429]
    last = client.post("/analyze", headers={"X-API-Key": key})
    assert last.status_code == 429 and 1 <= int(last.headers["retry-after"]) <= 20
    assert refusals[-1][1:] == ("s", "/analyze", 429)


def test_token_bucket_refills() -> None:
    now = [0.0]
    buckets = auth._Buckets(clock=lambda: now[0])
    assert [buckets.take("s", 60) for _ in range(60)] == [0.0] * 60
    assert buckets.take("s", 60) == pytest.approx(1.0)  # one per second
    now[0] = 1.0
    assert buckets.take("s", 60) == 0.0
    assert buckets.take("other", None) == 0.0


def test_a_verified_scrypt_key_is_remembered_and_a_wrong_one_is_not() -> None:
    key, _ = new_key()
    stored = hash_key(key, "scrypt")
    auth._SCRYPT_VERIFIED.clear()
    assert not verify_key(key + "x", stored)
    assert auth._SCRYPT_VERIFIED == set()
    assert verify_key(key, stored)
    assert len(auth._SCRYPT_VERIFIED) == 1
    assert verify_key(key, stored) and not verify_key(key + "x", stored)
