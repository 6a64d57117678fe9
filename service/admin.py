"""Administration: API keys and the audit trail. ``python -m service.admin COMMAND``.

- ``create-key --site NAME [--role analyze] [--role admin] [--scrypt]`` (alias ``add-key``): a new random key
  for the site, whose hash is stored in the keys file (``--keys-file`` or ``FOVEA_API_KEYS_FILE``, created if
  missing, mode 0600). The key itself is printed once, alone on the last line of output, and stored nowhere.
- ``revoke-key --site NAME --id KEY_ID`` (or ``--all``): remove keys; the running service re-reads the file.
- ``list-keys``: sites, roles and key ids (never hashes).
- ``verify-audit``: walk the audit trail's hash chain; exit 0 with the head (keep it elsewhere), or exit 1
  naming the first broken record.
- ``purge --older-than DAYS``: retention; deletes older records behind an anchor that keeps the chain
  verifiable (:meth:`service.audit.AuditLog.purge`).

The audit store is the service's (``FOVEA_DATABASE_URL`` / ``FOVEA_AUDIT_PATH``), or ``--database-url``.
Exit codes: 0 success, 1 a broken audit trail, 2 a usage or configuration error.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

from service.auth import KeyEntry, KeysFileError, KeyStore, Site, hash_key, load_keys, new_key, save_keys
from service.settings import SettingsError, load_settings


def _keys_path(args: argparse.Namespace) -> Path:
    if args.keys_file:
        return Path(args.keys_file)
    path = load_settings().api_keys_file
    if path is None:
        raise KeysFileError("no keys file: pass --keys-file PATH or set FOVEA_API_KEYS_FILE")
    return Path(path)


def _load(path: Path) -> KeyStore:
    return load_keys(path) if path.exists() else KeyStore({})


def create_key(args: argparse.Namespace) -> int:
    path = _keys_path(args)
    store = _load(path)
    key, key_id = new_key()
    entry = KeyEntry(hash=hash_key(key, "scrypt" if args.scrypt else "sha256"), id=key_id,
                     created=datetime.now(UTC).isoformat(timespec="seconds"))
    roles = frozenset(args.role or ["analyze"])
    old = store.sites.get(args.site)
    site = Site(args.site, roles | (old.roles if old else frozenset()), (old.keys if old else ()) + (entry,))
    save_keys(path, KeyStore({**store.sites, args.site: site}))
    print(f"site {args.site}: new key id {key_id} (roles {', '.join(sorted(site.roles))}) stored in {path}")
    print("the key is shown once; send it as 'Authorization: Bearer <key>':")
    print(key)
    return 0


def revoke_key(args: argparse.Namespace) -> int:
    path = _keys_path(args)
    store = _load(path)
    site = store.sites.get(args.site)
    if site is None:
        print(f"no site {args.site!r} in {path}", file=sys.stderr)
        return 2
    kept = () if args.all else tuple(k for k in site.keys if k.id != args.id)
    if len(kept) == len(site.keys):
        print(f"site {args.site!r} has no key with id {args.id!r}", file=sys.stderr)
        return 2
    save_keys(path, KeyStore({**store.sites, args.site: replace(site, keys=kept)}))
    print(f"site {args.site}: {len(site.keys) - len(kept)} key(s) revoked, {len(kept)} left")
    return 0


def list_keys(args: argparse.Namespace) -> int:
    path = _keys_path(args)
    for site in _load(path).sites.values():
        ids = ", ".join(f"{k.id or '(no id)'} {k.created or ''}".strip() for k in site.keys) or "no keys"
        print(f"{site.name}: roles {', '.join(sorted(site.roles))}; keys: {ids}")
    return 0


def _audit(args: argparse.Namespace):  # noqa: ANN202 (AuditLog; imported late: SQLAlchemy is not needed for keys)
    from service.audit import AuditLog

    settings = load_settings()
    if args.database_url:
        return AuditLog(args.database_url, salt=settings.audit_salt)
    return AuditLog.from_settings(settings)


def verify_audit(args: argparse.Namespace) -> int:
    audit = _audit(args)
    db = audit.engine.url.database
    if audit.dialect == "sqlite" and db and not Path(db).is_file():
        # A mistyped path must not pass as an empty, intact trail.
        print(f"no audit database at {db}", file=sys.stderr)
        return 2
    result = audit.verify()
    print(f"{audit.describe()}: {result.describe()}", file=sys.stdout if result.ok else sys.stderr)
    return 0 if result.ok else 1


def purge(args: argparse.Namespace) -> int:
    if args.older_than < 0:
        print("--older-than must be >= 0 days", file=sys.stderr)
        return 2
    audit = _audit(args)
    cutoff = datetime.now(UTC) - timedelta(days=args.older_than)
    n = audit.purge(cutoff)
    print(f"{audit.describe()}: {n} records older than {cutoff.isoformat(timespec='seconds')} purged"
          + (" (an anchor record keeps the chain verifiable)" if n else ""))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m service.admin", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    def keys_cmd(name: str, fn, help_: str, aliases: tuple[str, ...] = ()) -> argparse.ArgumentParser:  # noqa: ANN001
        p = sub.add_parser(name, help=help_, aliases=list(aliases))
        p.add_argument("--keys-file", help="the keys file (default: FOVEA_API_KEYS_FILE)")
        p.set_defaults(func=fn)
        return p

    p = keys_cmd("create-key", create_key, "create a key for a site and print it once", ("add-key",))
    p.add_argument("--site", required=True)
    p.add_argument("--role", action="append", choices=["analyze", "admin"], help="repeatable; default analyze")
    p.add_argument("--scrypt", action="store_true", help="store an scrypt hash instead of sha256")
    p = keys_cmd("revoke-key", revoke_key, "remove a site's key (by id) or all its keys")
    p.add_argument("--site", required=True)
    group = p.add_mutually_exclusive_group(required=True)
    group.add_argument("--id")
    group.add_argument("--all", action="store_true")
    keys_cmd("list-keys", list_keys, "list sites, roles and key ids")

    for name, fn, help_ in (("verify-audit", verify_audit, "verify the audit trail's hash chain"),
                            ("purge", purge, "delete audit records older than a retention period")):
        p = sub.add_parser(name, help=help_)
        p.add_argument("--database-url", help="SQLAlchemy URL (default: the service's settings)")
        p.set_defaults(func=fn)
        if name == "purge":
            p.add_argument("--older-than", type=float, required=True, metavar="DAYS")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except (KeysFileError, SettingsError) as exc:
        print(str(exc), file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
