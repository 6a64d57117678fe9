"""Per-site API keys, checked by an ASGI middleware in front of every route (DICOMweb mounts included).

Keys file (``FOVEA_API_KEYS_FILE``, YAML or JSON; written by ``python -m service.admin create-key``)::

    clinic-a:
      roles: [analyze]            # what the site's keys may do (ROUTE_ROLES)
      rate_per_minute: 120        # optional: more requests than that get 429 (per worker process)
      keys:
        - id: 3f9a1c2e            # the key's public id (it is also part of the key itself)
          hash: sha256:9b1f…      # or scrypt:16384:8:1:<salt hex>:<hash hex>; a bare string is a hash too
          created: "2026-12-01T10:00:00Z"
    pacs-gateway:
      roles: [analyze, admin]
      keys: ["sha256:…"]

Contract:

- A key travels as ``Authorization: Bearer <key>`` or ``X-API-Key: <key>``. No key, an unknown key, a revoked
  key (removed from the file) or two different keys in one request: **401** ``unauthorized`` (with
  ``WWW-Authenticate: Bearer``). A valid key whose site lacks the role the route needs: **403** ``forbidden``.
- Only hashes are stored. Generated keys carry 256 random bits, so an unsalted sha256 cannot be brute-forced;
  scrypt (stdlib :func:`hashlib.scrypt`) is accepted for keys chosen by other means. Comparison is
  :func:`hmac.compare_digest` (constant time) against every candidate hash, so timing reveals nothing of a hash.
- A site with ``rate_per_minute`` gets **429** ``too_many_requests`` (with ``Retry-After``) beyond that rate: a
  token bucket of that many requests, refilled continuously, kept in each worker process (so the service-wide
  ceiling is the rate times ``FOVEA_WORKERS``).
- The file is re-read when it changes (size or mtime), so a revoked key stops working without a restart.
- The authenticated site is available to the request's code as :func:`current_site` (a context variable, which
  BentoML's worker threads and background tasks inherit) and goes into the audit record.
- Without a keys file, authentication is off — the local development default (``make serve``), logged as a
  warning at start — and then only loopback connections are answered: a request from or to a non-loopback IP
  address gets **403**, as Orthanc refuses remote access while authentication is disabled.
- Open without a key: the probes (``/livez``, ``/readyz``) and the reader's page (``/``, ``/ui/…``); the page
  asks the reader for a key and sends it with every call.
"""

from __future__ import annotations

import contextvars
import hashlib
import hmac
import ipaddress
import json
import logging
import math
import os
import secrets
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping, MutableMapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio.to_thread
import yaml

log = logging.getLogger("fovea.auth")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

#: Paths answered without a key: the probes and the reader's page (its assets carry no data).
OPEN_PATHS = frozenset({"/livez", "/readyz", "/", "/index.html"})
OPEN_PREFIXES = ("/ui/",)
#: The role each route prefix needs; any other path needs ``analyze`` (the first match wins).
ROUTE_ROLES: tuple[tuple[str, str], ...] = (("/metrics", "admin"),)
DEFAULT_ROLE = "analyze"
ROLES = frozenset({"analyze", "admin"})
KEY_PREFIX = "fov"
SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**14, 8, 1
#: The site of requests served with authentication off.
LOCAL_SITE = "local"

_SITE: contextvars.ContextVar[str | None] = contextvars.ContextVar("fovea_site", default=None)


def current_site() -> str | None:
    """The site whose key authenticated the request being served (:data:`LOCAL_SITE` with authentication off,
    ``None`` outside a request)."""
    return _SITE.get()


class KeysFileError(ValueError):
    """The keys file cannot be read or has the wrong shape; the message names the file and the problem."""


# ---------------------------------------------------------------------------------------------- key hashing


def new_key() -> tuple[str, str]:
    """A fresh random key and its public id: ``("fov_<id>_<secret>", "<id>")`` (32 bits of id, 256 of secret)."""
    key_id = secrets.token_hex(4)
    return f"{KEY_PREFIX}_{key_id}_{secrets.token_urlsafe(32)}", key_id


def key_id_of(key: str) -> str | None:
    """The public id embedded in a generated key, ``None`` for a key of another form."""
    parts = key.split("_", 2)
    if len(parts) == 3 and parts[0] == KEY_PREFIX and len(parts[1]) == 8:
        return parts[1]
    return None


def hash_key(key: str, scheme: str = "sha256") -> str:
    """The stored form of ``key``: ``sha256:<hex>`` or ``scrypt:N:r:p:<salt hex>:<hash hex>``."""
    if scheme == "sha256":
        return "sha256:" + hashlib.sha256(key.encode()).hexdigest()
    if scheme == "scrypt":
        salt = secrets.token_bytes(16)
        digest = hashlib.scrypt(key.encode(), salt=salt, n=SCRYPT_N, r=SCRYPT_R, p=SCRYPT_P)
        return f"scrypt:{SCRYPT_N}:{SCRYPT_R}:{SCRYPT_P}:{salt.hex()}:{digest.hex()}"
    raise ValueError(f"unknown key hash scheme {scheme!r} (sha256 or scrypt)")


def check_hash(stored: str) -> None:
    """Raise ``ValueError`` unless ``stored`` is a well-formed :func:`hash_key` string."""
    parts = stored.split(":")
    if parts[0] == "sha256" and len(parts) == 2 and len(parts[1]) == 64:
        bytes.fromhex(parts[1])
        return
    if parts[0] == "scrypt" and len(parts) == 6:
        int(parts[1]), int(parts[2]), int(parts[3])
        bytes.fromhex(parts[4]), bytes.fromhex(parts[5])
        return
    raise ValueError("not a key hash (expected sha256:<64 hex> or scrypt:N:r:p:<salt>:<hash>)")


def verify_key(key: str, stored: str) -> bool:
    """Does ``key`` match the stored hash? Constant-time comparison of the digests."""
    parts = stored.split(":")
    if parts[0] == "sha256":
        computed = hashlib.sha256(key.encode()).hexdigest()
        return hmac.compare_digest(computed, parts[1])
    if parts[0] == "scrypt":
        # scrypt costs 50-200 ms of CPU: a key verified once is remembered (by its sha256, which reveals no
        # more than a sha256-hashed key file would) so a site's every request does not pay it again.
        fingerprint = (stored, hashlib.sha256(key.encode()).hexdigest())
        if fingerprint in _SCRYPT_VERIFIED:
            return True
        n, r, p, salt, expected = int(parts[1]), int(parts[2]), int(parts[3]), parts[4], parts[5]
        digest = hashlib.scrypt(key.encode(), salt=bytes.fromhex(salt), n=n, r=r, p=p, maxmem=128 * n * r * 2)
        ok = hmac.compare_digest(digest.hex(), expected)
        if ok and len(_SCRYPT_VERIFIED) < 4096:
            _SCRYPT_VERIFIED.add(fingerprint)
        return ok
    return False


_SCRYPT_VERIFIED: set[tuple[str, str]] = set()


# ---------------------------------------------------------------------------------------------- keys file


@dataclass(frozen=True)
class KeyEntry:
    hash: str
    id: str | None = None
    created: str | None = None


@dataclass(frozen=True)
class Site:
    name: str
    roles: frozenset[str]
    keys: tuple[KeyEntry, ...]
    rate_per_minute: int | None = None


@dataclass(frozen=True)
class Principal:
    """Who a valid key belongs to."""

    site: str
    roles: frozenset[str]
    key_id: str | None
    rate_per_minute: int | None = None


@dataclass(frozen=True)
class KeyStore:
    """The parsed keys file: site name -> :class:`Site`."""

    sites: Mapping[str, Site] = field(default_factory=dict)

    def authenticate(self, key: str) -> Principal | None:
        """The principal of ``key``, or ``None``. Keys with an embedded id are checked against that id's
        entries (one hash computation); other keys against every entry."""
        kid = key_id_of(key)
        match: Principal | None = None
        for site in self.sites.values():
            for entry in site.keys:
                if kid is not None and entry.id is not None and entry.id != kid:
                    continue
                # No early exit: every candidate is compared, so timing does not tell which one matched.
                if verify_key(key, entry.hash) and match is None:
                    match = Principal(site.name, site.roles, entry.id, site.rate_per_minute)
        return match

    def to_data(self) -> dict[str, Any]:
        """The file's content (the inverse of :func:`parse_keys`)."""
        out: dict[str, Any] = {}
        for site in self.sites.values():
            keys = [{k: v for k, v in (("id", e.id), ("hash", e.hash), ("created", e.created)) if v is not None}
                    for e in site.keys]
            out[site.name] = {"roles": sorted(site.roles), "keys": keys}
            if site.rate_per_minute is not None:
                out[site.name]["rate_per_minute"] = site.rate_per_minute
        return out


def parse_keys(data: Any, source: str = "keys file") -> KeyStore:
    """Validate the keys file's content (module docstring); :class:`KeysFileError` names the problem."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise KeysFileError(f"{source}: expected a mapping of site id -> {{roles, keys}}")
    sites: dict[str, Site] = {}
    for name, entry in data.items():
        where = f"{source}: site {name!r}"
        if not isinstance(name, str) or not name or len(name) > 64:
            raise KeysFileError(f"{source}: site ids are non-empty strings of at most 64 characters")
        if not isinstance(entry, dict):
            raise KeysFileError(f"{where}: expected a mapping with 'roles' and 'keys'")
        roles = entry.get("roles", [DEFAULT_ROLE])
        if not isinstance(roles, list) or not all(r in ROLES for r in roles):
            raise KeysFileError(f"{where}: roles must be a list drawn from {sorted(ROLES)}")
        keys: list[KeyEntry] = []
        for raw in entry.get("keys") or []:
            item = {"hash": raw} if isinstance(raw, str) else raw
            if not isinstance(item, dict) or not isinstance(item.get("hash"), str):
                raise KeysFileError(f"{where}: each key is a hash string or a mapping with 'hash'")
            try:
                check_hash(item["hash"])
            except ValueError as exc:
                raise KeysFileError(f"{where}: {exc}") from None
            keys.append(KeyEntry(hash=item["hash"], id=item.get("id"), created=item.get("created")))
        rate = entry.get("rate_per_minute")
        if rate is not None and (not isinstance(rate, int) or isinstance(rate, bool) or rate < 1):
            raise KeysFileError(f"{where}: rate_per_minute must be a positive integer")
        sites[name] = Site(name, frozenset(roles), tuple(keys), rate)
    return KeyStore(sites)


def load_keys(path: Path) -> KeyStore:
    """Read and validate the keys file at ``path`` (YAML, of which JSON is a subset)."""
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise KeysFileError(f"keys file {path}: cannot read it ({exc.__class__.__name__})") from None
    return parse_keys(data, f"keys file {path}")


def save_keys(path: Path, store: KeyStore) -> None:
    """Write ``store`` to ``path`` atomically (a temporary file renamed over it), readable by the owner only."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        if path.suffix == ".json":
            json.dump(store.to_data(), fh, indent=2)
        else:
            yaml.safe_dump(store.to_data(), fh, sort_keys=True)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


class _ReloadingKeys:
    """The keys file, re-read when its size or mtime changes (revocation without a restart). A file that
    becomes unreadable or invalid keeps the last good keys and logs an error (it never opens the service)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._stamp = self._stat()
        self.store = load_keys(path)

    def _stat(self) -> tuple[int, int, int]:
        st = os.stat(self.path)
        return st.st_ino, st.st_size, st.st_mtime_ns

    def get(self) -> KeyStore:
        try:
            stamp = self._stat()
        except OSError:
            log.error("keys file %s is gone: keeping the keys loaded before", self.path)
            return self.store
        if stamp != self._stamp:
            try:
                self.store = load_keys(self.path)
                log.info("keys file %s reloaded (%d sites)", self.path, len(self.store.sites))
            except KeysFileError as exc:
                log.error("%s: keeping the keys loaded before", exc)
            self._stamp = stamp
        return self.store


# ---------------------------------------------------------------------------------------------- middleware


class _Buckets:
    """Token buckets per site: ``rate`` requests per minute, bursts up to ``rate``."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.state: dict[str, tuple[float, float]] = {}  # site -> (tokens, last refill time)

    def take(self, site: str, rate: int | None) -> float:
        """Take one token; 0 if granted, else the seconds until one is available."""
        if rate is None:
            return 0.0
        now = self.clock()
        tokens, last = self.state.get(site, (float(rate), now))
        tokens = min(float(rate), tokens + (now - last) * rate / 60.0)
        if tokens >= 1.0:
            self.state[site] = (tokens - 1.0, now)
            return 0.0
        self.state[site] = (tokens, now)
        return (1.0 - tokens) * 60.0 / rate


def required_role(path: str) -> str | None:
    """The role a request path needs, ``None`` for an open path."""
    if path in OPEN_PATHS or path.startswith(OPEN_PREFIXES):
        return None
    for prefix, role in ROUTE_ROLES:
        if path == prefix or path.startswith(prefix + "/"):
            return role
    return DEFAULT_ROLE


def presented_key(headers: Mapping[bytes, bytes]) -> str | None:
    """The key of a request (``Authorization: Bearer`` or ``X-API-Key``); ``""`` when the two disagree or the
    Authorization header has another scheme; ``None`` when there is none."""
    found: set[str] = set()
    auth = headers.get(b"authorization")
    if auth is not None:
        scheme, _, value = auth.decode("latin-1").strip().partition(" ")
        found.add(value.strip() if scheme.lower() == "bearer" and value.strip() else "")
    api_key = headers.get(b"x-api-key")
    if api_key is not None:
        found.add(api_key.decode("latin-1").strip())
    if not found:
        return None
    return found.pop() if len(found) == 1 else ""


def _is_remote(addr: Any) -> bool:
    """Is this ASGI ``client``/``server`` address a non-loopback IP? (Unix sockets and test transports are
    local; so are names that are not IP addresses.)"""
    if not addr:
        return False
    try:
        return not ipaddress.ip_address(str(addr[0])).is_loopback
    except ValueError:
        return False


#: ``on_refusal(request_id, site, endpoint, status)``: record a refused request (the audit trail).
RefusalHook = Callable[[str, "str | None", str, int], None]


class AuthMiddleware:
    """See the module docstring. ``keys_file=None`` turns authentication off (loopback only)."""

    def __init__(self, app: ASGIApp, keys_file: Path | None = None, on_refusal: RefusalHook | None = None) -> None:
        self.app = app
        self.keys = _ReloadingKeys(Path(keys_file)) if keys_file is not None else None
        self.on_refusal = on_refusal
        self._buckets = _Buckets()
        if self.keys is None:
            log.warning("AUTHENTICATION IS OFF: no FOVEA_API_KEYS_FILE is configured, so no API key is required "
                        "and only loopback clients are answered. Configure per-site keys before serving a "
                        "network (python -m service.admin create-key --site NAME).")
        else:
            log.info("API keys required (%d sites in %s)", len(self.keys.store.sites), keys_file)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        path = scope.get("path", "")
        role = required_role(path)
        if role is None:
            await self.app(scope, receive, send)
            return
        site: str | None
        if self.keys is None:
            if _is_remote(scope.get("client")) or _is_remote(scope.get("server")):
                # Security: without keys the service must not be reachable from the network.
                await self._refuse(scope, send, None, 403, "forbidden",
                                   "authentication is not configured (FOVEA_API_KEYS_FILE), so this service "
                                   "answers loopback clients only")
                return
            site = LOCAL_SITE
        else:
            key = presented_key(dict(scope.get("headers") or []))
            principal = self.keys.get().authenticate(key) if key else None
            if principal is None:
                what = "no API key sent" if key is None else "invalid API key"
                await self._refuse(scope, send, None, 401, "unauthorized",
                                   f"{what}: send 'Authorization: Bearer <key>' (or 'X-API-Key: <key>')")
                return
            if role not in principal.roles:
                await self._refuse(scope, send, principal.site, 403, "forbidden",
                                   f"this site's key lacks the '{role}' role needed for {path[:64]}")
                return
            wait = self._buckets.take(principal.site, principal.rate_per_minute)
            if wait > 0:
                await self._refuse(scope, send, principal.site, 429, "too_many_requests",
                                   f"this site's rate limit is {principal.rate_per_minute} requests per minute",
                                   retry_after=wait)
                return
            site = principal.site
        token = _SITE.set(site)
        try:
            await self.app(scope, receive, send)
        finally:
            _SITE.reset(token)

    async def _refuse(self, scope: Scope, send: Send, site: str | None, status: int, code: str,
                      message: str, retry_after: float = 0.0) -> None:
        request_id = uuid.uuid4().hex
        if self.on_refusal is not None:
            # Committed before the answer, like every audit record (blocking I/O: off the event loop).
            await anyio.to_thread.run_sync(self.on_refusal, request_id, site, scope.get("path", "")[:128], status)
        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008})  # policy violation, before accepting
            return
        body = json.dumps({"error": {"code": code, "message": message}}).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                   (b"x-request-id", request_id.encode())]
        if status == 401:
            headers.append((b"www-authenticate", b'Bearer realm="fovea"'))
        if retry_after > 0:
            headers.append((b"retry-after", str(max(1, math.ceil(retry_after))).encode()))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})
