"""The web credential, sessions, the rate limit on sign-in, and CSRF tokens.

The page has a credential of its own, not the key file's passphrase: a
password, kept as an argon2id hash (PyNaCl's ``pwhash``) in ``web.json`` in
the node's home, mode 0600.  A session is a random token in an HttpOnly,
SameSite=Strict cookie; the node keeps its sessions in memory only, so a
cookie from another node (or from before a restart) opens nothing.  Each
session has its own CSRF token, which every form carries back.  A session
ends after :data:`IDLE_SECONDS` without a request, :data:`ABSOLUTE_SECONDS`
after sign-in whatever its use, and at its first request after the password
changed (:func:`credential_stamp`).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

from nacl import pwhash
from nacl.exceptions import InvalidkeyError

from fedrecord.storage.keyfile import write_private_file

COOKIE = "fr_session"
#: A session ends after this long without a request ("lock after inactivity").
IDLE_SECONDS = 15 * 60
#: A session ends this long after sign-in, however busy it is.
ABSOLUTE_SECONDS = 12 * 60 * 60
#: Wrong passwords allowed per client address in :data:`WINDOW_SECONDS`, then sign-in waits.
MAX_FAILURES = 5
#: Wrong passwords allowed from all addresses together in the window (a slow, spread-out guesser).
MAX_FAILURES_ALL = 50
WINDOW_SECONDS = 15 * 60
MIN_PASSWORD = 10


class CredentialError(Exception):
    """No web password is set, or the file holding it is damaged."""


def credential_path(home: Path) -> Path:
    return home / "web.json"


def set_password(home: Path, password: str, *, limits: tuple[int, int] | None = None) -> None:
    """Store the argon2id hash of ``password`` (mode 0600).

    Sessions opened under the previous password end at their next request: the
    :func:`credential_stamp` they were opened with no longer matches.

    Raises:
        ValueError: a password shorter than :data:`MIN_PASSWORD` characters.
    """
    if len(password) < MIN_PASSWORD:
        raise ValueError(f"the web password needs at least {MIN_PASSWORD} characters")
    ops, mem = limits or (pwhash.argon2id.OPSLIMIT_MODERATE, pwhash.argon2id.MEMLIMIT_MODERATE)
    hashed = pwhash.argon2id.str(password.encode(), opslimit=ops, memlimit=mem).decode()
    write_private_file(credential_path(home), json.dumps({"password": hashed}).encode())


def credential_stamp(home: Path) -> str:
    """A digest of the stored credential, which changes whenever the password is set again.

    The hash is salted, so setting even the same password again changes it.  ``""`` when no
    password is set (or the file cannot be read): no session opened under a password matches that.
    """
    try:
        stored = credential_path(home).read_bytes()
    except OSError:
        return ""
    return hashlib.sha256(b"fedrecord/web-credential\0" + stored).hexdigest()


def password_matches(home: Path, password: str) -> bool:
    """Check ``password`` against the stored hash.

    Raises:
        CredentialError: no password set.
    """
    try:
        stored = json.loads(credential_path(home).read_text())["password"].encode()
    except (FileNotFoundError, KeyError, ValueError):
        raise CredentialError("no web password is set: run `fedrecord web-password`") from None
    try:
        return bool(pwhash.verify(stored, password.encode()))
    except InvalidkeyError:
        return False


@dataclass
class Session:
    token: str
    csrf: str
    last_seen: float
    #: When it was opened (``time.monotonic()``): it ends :data:`ABSOLUTE_SECONDS` later.
    started: float = 0.0
    #: The :func:`credential_stamp` it was opened under (None: opened without one).
    stamp: str | None = None
    #: Messages for the next page shown ("Document accepted"): keys of the text catalog and their values.
    notices: list[tuple[str, dict[str, object]]] = field(default_factory=list)


@dataclass
class Sessions:
    """The open sessions of one node, in memory, and the sign-in rate limit.

    Given the node's ``home``, a session is opened under the credential's stamp read there and
    ends once the stamp read at a later request differs (the password was set again).  Without
    ``home`` a stamp may be passed to :meth:`start` and :meth:`find`.
    """

    idle_seconds: float = IDLE_SECONDS
    absolute_seconds: float = ABSOLUTE_SECONDS
    home: Path | None = None
    _open: dict[str, Session] = field(default_factory=dict)
    _failures: dict[str, deque[float]] = field(default_factory=dict)
    _all_failures: deque[float] = field(default_factory=deque)

    def _stamp(self, stamp: str | None) -> str | None:
        if stamp is not None:
            return stamp
        return credential_stamp(self.home) if self.home is not None else None

    def start(self, now: float | None = None, *, stamp: str | None = None) -> Session:
        """A new session, opened under ``stamp`` (default: the credential's stamp read in ``home``)."""
        now = time.monotonic() if now is None else now
        current = self._stamp(stamp)
        # A session whose browser never came back (closed, its cookie gone) is ended only here: the
        # page forgets it once it could no longer be used, so sign-ins do not pile up for ever.
        for token in [t for t, s in self._open.items() if self._ended(s, now, current)]:
            del self._open[token]
        session = Session(
            secrets.token_urlsafe(32), secrets.token_urlsafe(32), now, started=now, stamp=current
        )
        self._open[session.token] = session
        return session

    def _ended(self, session: Session, now: float, current: str | None) -> bool:
        """Unused for :attr:`idle_seconds`, opened :attr:`absolute_seconds` ago, or under another credential."""
        return (
            now - session.last_seen > self.idle_seconds
            or now - session.started > self.absolute_seconds
            or (current is not None and not same_token(session.stamp, current))
        )

    def find(self, token: str | None, now: float | None = None, *, stamp: str | None = None) -> Session | None:
        """The session of ``token`` if it is still open; touches it.

        It ends (and None is returned) when unused for :attr:`idle_seconds`, opened more than
        :attr:`absolute_seconds` ago, or opened under another credential than the current one
        (``stamp``, default: read in ``home``; not checked when neither is known).
        """
        if not token:
            return None
        now = time.monotonic() if now is None else now
        session = self._open.get(token)
        if session is None:
            return None
        if self._ended(session, now, self._stamp(stamp)):
            del self._open[token]
            return None
        session.last_seen = now
        return session

    def end(self, token: str | None) -> None:
        if token:
            self._open.pop(token, None)

    def end_all(self) -> None:
        self._open.clear()

    # --- rate limit -------------------------------------------------------------------------

    def _recent(self, queue: deque[float], now: float) -> int:
        while queue and now - queue[0] > WINDOW_SECONDS:
            queue.popleft()
        return len(queue)

    def wait_seconds(self, client: str, now: float | None = None) -> int:
        """Seconds before ``client`` may try a password again (0: now)."""
        now = time.monotonic() if now is None else now
        mine = self._failures.get(client)  # not kept for a client that has no failure to count
        if mine is not None and self._recent(mine, now) >= MAX_FAILURES:
            return int(WINDOW_SECONDS - (now - mine[0])) + 1
        if self._recent(self._all_failures, now) >= MAX_FAILURES_ALL:
            return int(WINDOW_SECONDS - (now - self._all_failures[0])) + 1
        return 0

    def failed(self, client: str, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        if client not in self._failures:
            # Clients whose failures are all out of the window are forgotten before another is kept:
            # the table holds at most the clients with a failure in the window (MAX_FAILURES_ALL).
            for stale in [c for c, queue in self._failures.items() if not self._recent(queue, now)]:
                del self._failures[stale]
        self._failures.setdefault(client, deque()).append(now)
        self._all_failures.append(now)

    def succeeded(self, client: str) -> None:
        """The password was right: forget ``client``'s failures, and this attempt, counted as one beforehand."""
        self._failures.pop(client, None)
        if self._all_failures:
            self._all_failures.pop()


def same_token(a: str | None, b: str | None) -> bool:
    """Constant-time comparison of two tokens (None never matches)."""
    return a is not None and b is not None and hmac.compare_digest(a.encode(), b.encode())
