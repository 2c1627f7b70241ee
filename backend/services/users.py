"""Users and bearer tokens: scrypt-hashed passwords, tokens stored only as an HMAC keyed by
the deployment's secret (so a leaked database does not yield usable tokens)."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from datetime import UTC, datetime, timedelta

from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from backend.db.models import ApiToken, User
from backend.services.errors import Conflict, DomainError, InvalidInput, NotFound
from backend.settings import Settings

SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**14, 8, 1
MIN_PASSWORD = 8


class Unauthorized(DomainError):
    """Missing, unknown or expired credentials (HTTP 401)."""


class Forbidden(DomainError):
    """Authenticated but not allowed (HTTP 403)."""


def hash_password(password: str) -> str:
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, n=SCRYPT_N, r=SCRYPT_R, p=SCRYPT_P)
    return f"scrypt${SCRYPT_N}${SCRYPT_R}${SCRYPT_P}${salt.hex()}${digest.hex()}"


def verify_password(password: str, stored: str) -> bool:
    try:
        algo, n, r, p, salt, digest = stored.split("$")
    except ValueError:
        return False
    if algo != "scrypt":
        return False
    got = hashlib.scrypt(password.encode(), salt=bytes.fromhex(salt), n=int(n), r=int(r), p=int(p))
    return hmac.compare_digest(got.hex(), digest)


_DUMMY_HASH = hash_password("not-a-real-password")


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


def login(session: Session, settings: Settings, username: str, password: str) -> tuple[str, User]:
    user = session.scalar(select(User).where(User.username == username))
    # Verify against a dummy hash for unknown users so timing does not reveal who exists.
    ok = verify_password(password, user.password_hash if user else _DUMMY_HASH)
    if user is None or not ok or not user.is_active:
        raise Unauthorized("wrong username or password")
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


def visible_to(user: User | None, owner_id: int | None) -> bool:
    """Ownership rule for every resource: admins see all, users their own; rows without an
    owner (the built-in demo model) are shared."""
    return user is None or user.is_admin or owner_id is None or owner_id == user.id
