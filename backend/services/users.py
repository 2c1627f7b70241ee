"""Users and bearer tokens: scrypt-hashed passwords, tokens stored only as an HMAC keyed by
the deployment's secret (so a leaked database does not yield usable tokens)."""

from __future__ import annotations

import functools
import hashlib
import hmac
import secrets
import threading
import time
from collections import deque
from datetime import UTC, datetime, timedelta

from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from backend.db.models import ApiToken, User
from backend.services.errors import Conflict, DomainError, InvalidInput, NotFound
from backend.settings import Settings, get_settings

#: OWASP's password storage recommendation for scrypt: N=2^17 (VLSTUDIO_SCRYPT_LOG_N), r=8, p=1
#: (128 MiB, 1 thread). Hashes with weaker parameters are verified with theirs and rehashed at
#: the next login.
SCRYPT_R, SCRYPT_P = 8, 1
MIN_PASSWORD = 8
# Each hash takes 128 MiB: a burst of logins must not multiply that by the thread count.
_HASH_SLOTS = threading.BoundedSemaphore(2)


class Unauthorized(DomainError):
    """Missing, unknown or expired credentials (HTTP 401)."""


class Forbidden(DomainError):
    """Authenticated but not allowed (HTTP 403)."""


class TooManyAttempts(DomainError):
    """Too many failed logins for this username or client address (HTTP 429)."""

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after


def _scrypt(password: str, salt: bytes, n: int, r: int, p: int) -> bytes:
    with _HASH_SLOTS:
        return hashlib.scrypt(password.encode(), salt=salt, n=n, r=r, p=p, maxmem=256 * n * r * p + 2**24)


def scrypt_n() -> int:
    return 2 ** get_settings().scrypt_log_n


def hash_password(password: str) -> str:
    salt, n = secrets.token_bytes(16), scrypt_n()
    digest = _scrypt(password, salt, n, SCRYPT_R, SCRYPT_P)
    return f"scrypt${n}${SCRYPT_R}${SCRYPT_P}${salt.hex()}${digest.hex()}"


def verify_password(password: str, stored: str) -> bool:
    try:
        algo, n, r, p, salt, digest = stored.split("$")
    except ValueError:
        return False
    if algo != "scrypt":
        return False
    got = _scrypt(password, bytes.fromhex(salt), int(n), int(r), int(p))
    return hmac.compare_digest(got.hex(), digest)


def needs_rehash(stored: str) -> bool:
    """Weaker than today's parameters (never downgrades a stronger hash)."""
    try:
        algo, n, r, p, _, _ = stored.split("$")
        return algo != "scrypt" or int(n) < scrypt_n() or int(r) < SCRYPT_R or int(p) < SCRYPT_P
    except ValueError:
        return True


class LoginThrottle:
    """Failed logins in a sliding window, per username and per client address (in this API
    process: with several replicas each counts its own)."""

    def __init__(self, window_s: float = 60.0) -> None:
        self.window = window_s
        self._failures: dict[str, deque[float]] = {}
        self._lock = threading.Lock()

    def _recent(self, key: str, now: float) -> deque[float]:
        q = self._failures.setdefault(key, deque())
        while q and q[0] <= now - self.window:
            q.popleft()
        return q

    def check(self, keys: list[str], limit: int) -> None:
        now = time.monotonic()
        with self._lock:
            for key in keys:
                q = self._recent(key, now)
                if len(q) >= limit:
                    wait = max(1, int(q[0] + self.window - now) + 1)
                    raise TooManyAttempts(f"too many failed logins; try again in {wait} s", wait)

    def failed(self, keys: list[str]) -> None:
        now = time.monotonic()
        with self._lock:
            for key in keys:
                self._recent(key, now).append(now)
            if len(self._failures) > 100_000:  # forget idle keys: bounded memory under a spray
                for k in [k for k, q in self._failures.items() if not q]:
                    del self._failures[k]

    def succeeded(self, username: str) -> None:
        with self._lock:
            self._failures.pop(f"user:{username}", None)


THROTTLE = LoginThrottle()


@functools.cache
def _dummy_hash(n: int) -> str:
    return hash_password("not-a-real-password")


def _token_hash(settings: Settings, token: str) -> str:
    return hmac.new(settings.secret_key.encode(), token.encode(), hashlib.sha256).hexdigest()


def create_user(session: Session, username: str, password: str, is_admin: bool = False) -> User:
    problems = []
    if not username or len(username) > 100 or not username.replace("-", "").replace("_", "").replace(".", "").isalnum():
        problems.append({"field": "username", "message": "1-100 letters, digits, '-', '_' or '.'"})
    if len(password) < MIN_PASSWORD:
        problems.append({"field": "password", "message": f"at least {MIN_PASSWORD} characters"})
    if problems:
        raise InvalidInput("invalid user", problems)
    if session.scalar(select(User).where(User.username == username)) is not None:
        raise Conflict(f"user {username!r} already exists")
    user = User(username=username, password_hash=hash_password(password), is_admin=is_admin)
    session.add(user)
    session.commit()
    return user


UNUSABLE = "!"  # the password hash of the embedded mode's local owner: no login until one is set


def ensure_first_admin(session: Session, settings: Settings) -> User | None:
    """At first start: the admin from settings. Without auth (embedded mode) a local admin
    owns everything, so ownership is recorded from day one and survives turning auth on: its
    password is then taken from VLSTUDIO_FIRST_ADMIN_PASSWORD."""
    admin = session.scalar(select(User).where(User.is_admin.is_(True)).order_by(User.id))
    if admin is not None or session.scalar(select(func.count()).select_from(User)):
        if admin is not None and admin.password_hash == UNUSABLE and settings.first_admin_password:
            set_password(session, admin, settings.first_admin_password)
        return admin
    password = settings.first_admin_password
    if password is None:
        if settings.auth_required:
            raise RuntimeError("no users yet: set VLSTUDIO_FIRST_ADMIN_PASSWORD to create the first admin")
        user = User(username=settings.first_admin_username, password_hash=UNUSABLE, is_admin=True)
        session.add(user)
        session.commit()
        return user
    return create_user(session, settings.first_admin_username, password, is_admin=True)


def local_owner(session: Session) -> User:
    user = session.scalar(select(User).where(User.is_admin.is_(True)).order_by(User.id))
    if user is None:
        raise NotFound("no admin user; the API creates one at start-up")
    return user


def issue_token(session: Session, settings: Settings, user: User, name: str, kind: str = "api") -> str:
    """A new bearer token; only its HMAC is stored, so it is shown to the user once."""
    token = "vls_" + secrets.token_urlsafe(32)
    expires = datetime.now(UTC) + timedelta(hours=settings.token_ttl_hours) if kind == "session" else None
    session.add(ApiToken(user_id=user.id, name=name[:100], kind=kind, token_hash=_token_hash(settings, token),
                         expires_at=expires))
    session.commit()
    return token


def login(session: Session, settings: Settings, username: str, password: str,
          client: str | None = None) -> tuple[str, User]:
    """A session token for a correct password; after VLSTUDIO_LOGIN_ATTEMPTS_PER_MINUTE
    failures for this username or this client address, 429 until the window has passed."""
    keys = [f"user:{username}"] + ([f"addr:{client}"] if client else [])
    THROTTLE.check(keys, settings.login_attempts_per_minute)
    user = session.scalar(select(User).where(User.username == username))
    # Verify against a dummy hash for unknown users so timing does not reveal who exists.
    ok = verify_password(password, user.password_hash if user else _dummy_hash(scrypt_n()))
    if user is None or not ok or not user.is_active:
        THROTTLE.failed(keys)
        raise Unauthorized("wrong username or password")
    THROTTLE.succeeded(username)
    if needs_rehash(user.password_hash):  # stored with older parameters: upgrade transparently
        user.password_hash = hash_password(password)
    return issue_token(session, settings, user, "login", kind="session"), user


def authenticate(session: Session, settings: Settings, token: str) -> User:
    row = session.scalar(select(ApiToken).where(ApiToken.token_hash == _token_hash(settings, token)))
    now = datetime.now(UTC)
    if row is None:
        raise Unauthorized("invalid or revoked token")
    expires = row.expires_at
    if expires is not None and (expires if expires.tzinfo else expires.replace(tzinfo=UTC)) < now:
        raise Unauthorized("token expired; log in again")
    user = session.get(User, row.user_id)
    if user is None or not user.is_active:
        raise Unauthorized("user disabled")
    return user


LINK_TTL_S = 900


def link_scope(path: str) -> str:
    """What a signed link may open: everything under one resource, ``/api/<kind>/<id>/``."""
    parts = path.split("/")
    return "/".join(parts[:4]) + "/" if len(parts) >= 4 and parts[1] == "api" else ""


def _link_mac(settings: Settings, user_id: int, expires: int, scope: str) -> str:
    msg = f"link|{user_id}|{expires}|{scope}".encode()
    return hmac.new(settings.secret_key.encode(), msg, hashlib.sha256).hexdigest()[:32]


def sign_link(settings: Settings, user: User, path: str, ttl_s: int = LINK_TTL_S) -> str:
    """A short-lived signature for GETs under ``path``'s resource (``?sig=``): what an
    ``<a href>`` or ``<img src>`` carries instead of a bearer token, which never goes in a URL."""
    scope = link_scope(path)
    if not scope:
        raise InvalidInput(f"{path!r}: not an /api/<resource>/<id>/ path", [{"field": "path", "message": "bad"}])
    expires = int(time.time()) + ttl_s
    return f"{user.id}.{expires}.{_link_mac(settings, user.id, expires, scope)}"


def verify_link(session: Session, settings: Settings, sig: str, path: str) -> User:
    try:
        uid, expires, mac = sig.split(".")
        user_id, exp = int(uid), int(expires)
    except ValueError:
        raise Unauthorized("malformed link signature") from None
    if not hmac.compare_digest(mac, _link_mac(settings, user_id, exp, link_scope(path))):
        raise Unauthorized("invalid link signature")
    if exp < time.time():
        raise Unauthorized("link expired; reload the page")
    user = session.get(User, user_id)
    if user is None or not user.is_active:
        raise Unauthorized("user disabled")
    return user


def revoke_token(session: Session, settings: Settings, token: str) -> None:
    session.execute(delete(ApiToken).where(ApiToken.token_hash == _token_hash(settings, token)))
    session.commit()


def list_tokens(session: Session, user: User) -> list[ApiToken]:
    return list(session.scalars(select(ApiToken).where(ApiToken.user_id == user.id, ApiToken.kind == "api")
                                .order_by(ApiToken.id)))


def delete_token(session: Session, user: User, token_id: int) -> None:
    row = session.get(ApiToken, token_id)
    if row is None or row.user_id != user.id:
        raise NotFound(f"token {token_id} not found")
    session.delete(row)
    session.commit()


def list_users(session: Session) -> list[User]:
    return list(session.scalars(select(User).order_by(User.id)))


def set_password(session: Session, user: User, password: str) -> None:
    if len(password) < MIN_PASSWORD:
        raise InvalidInput("invalid password", [{"field": "password", "message": f"at least {MIN_PASSWORD} characters"}])
    user.password_hash = hash_password(password)
    session.commit()


def change_password(session: Session, settings: Settings, user: User, current: str, new: str,
                    keep_token: str | None) -> None:
    """The user's own change: the current password must be right; every other login session of
    the user ends (API tokens for scripts stay: they are revoked one by one)."""
    if not verify_password(current, user.password_hash):
        raise InvalidInput("wrong current password", [{"field": "current_password", "message": "is not right"}])
    set_password(session, user, new)
    q = delete(ApiToken).where(ApiToken.user_id == user.id, ApiToken.kind == "session")
    if keep_token:
        q = q.where(ApiToken.token_hash != _token_hash(settings, keep_token))
    session.execute(q)
    session.commit()


def visible_to(user: User | None, owner_id: int | None) -> bool:
    """Ownership rule for every resource: admins see all, users their own; rows without an
    owner (the built-in demo model) are shared."""
    return user is None or user.is_admin or owner_id is None or owner_id == user.id
