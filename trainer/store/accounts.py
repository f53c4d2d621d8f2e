"""People's accounts (migration 0007): a role, an argon2 password hash, a hashed API token, a disabled flag.

Passwords are hashed with argon2id (argon2-cffi's defaults, RFC 9106's
low-memory profile). API tokens are 32 random bytes: only their SHA-256 is
kept (a slow hash adds nothing to a random secret and would be paid on every
request); the token itself is shown once, when it is made. The previous
token's hash is kept after a rotation so that a caller still using it gets
"rotated", not a bare "wrong token".

Every change is one function run inside the store's write transaction
(``store.write(lambda db: ...)``), and checks before it writes, so a refused
change (the last admin demoted or disabled, an unknown name) leaves nothing
behind. A change that could remove an admin first locks the enabled admins'
rows (``SELECT ... FOR UPDATE`` on PostgreSQL; SQLite's one writer already
serialises), so two concurrent changes cannot each see "another admin is left"
and together leave none. The first enabled admin retires the shared bootstrap
token for good (the ``bootstrap_retired`` counter row): losing every admin
later never re-opens it; ``edgeloop users`` on the server's machine recovers. Plain portable SQL with ``?`` placeholders (trainer/store/sql.py).
No threads of its own; hashing a password takes tens of milliseconds.
"""

from __future__ import annotations

import hashlib
import re
import secrets
import time
from dataclasses import dataclass

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

ROLES = ("viewer", "reviewer", "publisher", "admin")
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
TOKEN_PREFIX = "elu_"  # recognisable in logs and secret scanners
MIN_PASSWORD = 10
MAX_PASSWORD = 1024
RETIRED = "bootstrap_retired"  # a counters row: present once the first admin existed
COLUMNS = "name, role, disabled, created_at, updated_at, token_created_at, password_hash IS NOT NULL"
_hasher = PasswordHasher()


class AccountError(ValueError):
    """A refused account change; ``status`` is the HTTP answer it maps to."""

    def __init__(self, detail: str, status: int = 422) -> None:
        super().__init__(detail)
        self.detail = detail
        self.status = status


@dataclass(frozen=True)
class Account:
    name: str
    role: str
    disabled: bool
    created_at: float
    updated_at: float
    token_created_at: float | None
    has_password: bool

    def to_dict(self) -> dict:
        return {"name": self.name, "role": self.role, "disabled": self.disabled, "created_at": self.created_at,
                "updated_at": self.updated_at, "token_created_at": self.token_created_at,
                "has_password": self.has_password}


def _account(row) -> Account:
    return Account(row[0], row[1], bool(row[2]), row[3], row[4], row[5], bool(row[6]))


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


def new_token() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def check_name(name: str) -> str:
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise AccountError("a user name is 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit")
    return name


def check_role(role: str) -> str:
    if role not in ROLES:
        raise AccountError(f"unknown role {role!r}: one of {', '.join(ROLES)}")
    return role


def hash_password(password: str) -> str:
    if not MIN_PASSWORD <= len(password) <= MAX_PASSWORD:
        raise AccountError(f"a password is {MIN_PASSWORD} to {MAX_PASSWORD} characters")
    return _hasher.hash(password)


# -- reads (any connection) -----------------------------------------------------------------------

def get(db, name: str) -> Account | None:
    row = db.execute(f"SELECT {COLUMNS} FROM accounts WHERE name = ?", [name]).fetchone()
    return _account(row) if row else None


def all_accounts(db) -> list[Account]:
    return [_account(r) for r in db.execute(f"SELECT {COLUMNS} FROM accounts ORDER BY name").fetchall()]


def active_admins(db) -> int:
    return db.execute("SELECT count(*) FROM accounts WHERE role = 'admin' AND disabled = 0").fetchone()[0]


def bootstrap_retired(db) -> bool:
    """Whether an admin account has ever existed (the shared token then never works again)."""
    return db.execute("SELECT 1 FROM counters WHERE name = ?", [RETIRED]).fetchone() is not None


def retire_bootstrap(db) -> None:
    db.execute("INSERT INTO counters (name, value) VALUES (?, 1) ON CONFLICT (name) DO NOTHING", [RETIRED])


def by_token(db, token: str) -> tuple[Account | None, bool]:
    """(the account whose current API token this is, or None; whether it is a rotated-out token)."""
    digest = token_hash(token)
    row = db.execute(f"SELECT {COLUMNS} FROM accounts WHERE token_hash = ?", [digest]).fetchone()
    if row:
        return _account(row), False
    old = db.execute("SELECT 1 FROM accounts WHERE previous_token_hash = ?", [digest]).fetchone()
    return None, old is not None


def verify_password(db, name: str, password: str) -> Account | None:
    """The account when ``password`` is its password (disabled or not: the caller says which), else None."""
    row = db.execute("SELECT password_hash FROM accounts WHERE name = ?", [name]).fetchone()
    if not row or not row[0]:
        _hasher.hash("x" * MIN_PASSWORD)  # same cost as a real check: no user enumeration by timing
        return None
    try:
        _hasher.verify(row[0], password)
    except (VerificationError, InvalidHashError):
        return None
    return get(db, name)


# -- writes (inside store.write) ------------------------------------------------------------------

def _require(db, name: str) -> Account:
    account = get(db, name)
    if account is None:
        raise AccountError(f"no user {name!r}", 404)
    return account


def _lock_admins(db) -> int:
    """Lock the enabled admins' rows until the transaction ends; how many there are."""
    return len(db.execute("SELECT name FROM accounts WHERE role = 'admin' AND disabled = 0 ORDER BY name"
                          + db.dialect.for_update()).fetchall())


def _keeps_an_admin(db, name: str, role: str | None, disabled: bool | None) -> Account:
    """The account (read under the admin lock); refuses a change that leaves no enabled admin."""
    admins = _lock_admins(db)
    current = _require(db, name)
    role = current.role if role is None else role
    disabled = current.disabled if disabled is None else disabled
    if current.role == "admin" and not current.disabled and (role != "admin" or disabled) and admins <= 1:
        raise AccountError(f"{name} is the last enabled admin: add or enable another admin first", 409)
    if role == "admin" and not disabled:
        retire_bootstrap(db)
    return current


def create(db, name: str, role: str, password_hash: str | None, now: float | None = None) -> str:
    """Add an account; its first API token (shown once). AccountError when the name is taken."""
    check_name(name)
    check_role(role)
    if get(db, name) is not None:
        raise AccountError(f"user {name!r} already exists", 409)
    now = time.time() if now is None else now
    token = new_token()
    # ON CONFLICT: two simultaneous adds of one name both pass the check above on PostgreSQL
    added = db.execute("INSERT INTO accounts (name, role, password_hash, token_hash, token_created_at, disabled,"
                       " created_at, updated_at) VALUES (?, ?, ?, ?, ?, 0, ?, ?) ON CONFLICT (name) DO NOTHING",
                       [name, role, password_hash, token_hash(token), now, now, now]).rowcount
    if added != 1:
        raise AccountError(f"user {name!r} already exists", 409)
    if role == "admin":
        retire_bootstrap(db)
    return token


def set_role(db, name: str, role: str, now: float | None = None) -> Account:
    check_role(role)
    _keeps_an_admin(db, name, role, None)
    db.execute("UPDATE accounts SET role = ?, updated_at = ? WHERE name = ?",
               [role, time.time() if now is None else now, name])
    return _require(db, name)


def set_disabled(db, name: str, disabled: bool, now: float | None = None) -> Account:
    _keeps_an_admin(db, name, None, disabled)
    db.execute("UPDATE accounts SET disabled = ?, updated_at = ? WHERE name = ?",
               [1 if disabled else 0, time.time() if now is None else now, name])
    return _require(db, name)


def set_password(db, name: str, password_hash: str, now: float | None = None) -> Account:
    _require(db, name)
    db.execute("UPDATE accounts SET password_hash = ?, updated_at = ? WHERE name = ?",
               [password_hash, time.time() if now is None else now, name])
    return _require(db, name)


def rotate_token(db, name: str, now: float | None = None) -> str:
    """A new API token for ``name`` (shown once); the old one stops working at once."""
    _require(db, name)
    now = time.time() if now is None else now
    token = new_token()
    db.execute("UPDATE accounts SET previous_token_hash = token_hash, token_hash = ?, token_created_at = ?,"
               " updated_at = ? WHERE name = ?", [token_hash(token), now, now, name])
    return token
