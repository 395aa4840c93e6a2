"""Studio's sign-in in authenticated mode: IAM users with a console password (login profile).

A signed-in browser holds a random session id in a cookie (HttpOnly, SameSite=Strict, Secure
when served over https, scoped to /studio); the server keeps only its SHA-256 with the user's
name, a CSRF token and the end of the session, in the metadata store. Every form post carries
that token (a hidden field, or the `X-CSRF-Token` header for the page's scripts) and is refused
without it; the sign-in form, which comes before any session, carries a token of its own that
must match a cookie set with the form. While a page is served, `signed_in` names its user, so
every API call the page makes is authorized as that user (see `StudioApi`).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from http.cookies import SimpleCookie

import anyio.to_thread
from starlette.requests import Request
from starlette.responses import PlainTextResponse, RedirectResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from salvia.api.asgi import replay_body
from salvia.iam import AuditEvent, AuditTrail, IdentityStore, Principal
from salvia.iam.logins import LoginProfiles
from salvia.store.metadata import ListQuery, Record
from salvia.ui.api import Caller, signed_in
from salvia.ui.pages import CSRF_FIELD, FORM_LIMIT, PREFIX, Pages

SESSION_SECONDS = 12 * 3600  # as long as an AWS console session
SESSION_KIND = "studio-session"
COOKIE = "salvia-studio"
FORM_COOKIE = "salvia-studio-sign-in"  # the sign-in form's own token (double submit)
CSRF_HEADER = b"x-csrf-token"
OPEN_PATHS = (f"{PREFIX}/sign-in", f"{PREFIX}/static/")


@dataclass
class Session:
    user: str
    csrf: str
    expires: float
    principal: Principal | None = None  # the user's policies, renewed after any IAM change


def _digest(session_id: str) -> str:
    return hashlib.sha256(session_id.encode("utf-8")).hexdigest()


class Sessions:
    """Signed-in browsers, kept in the metadata store (a restart of the server, or another
    server process on the same database, knows them; only the id's SHA-256 is stored), with
    each session's principal cached here until an IAM change. Thread-safe."""

    def __init__(self, identities: IdentityStore, seconds: float = SESSION_SECONDS) -> None:
        self.identities = identities
        self.store = identities.store
        self.seconds = seconds
        self._principals: dict[str, Principal] = {}  # session key -> the user's principal
        self._next_prune = 0.0
        identities.on_change(self._principals.clear)

    def start(self, user: str) -> tuple[str, Session]:
        session_id = secrets.token_urlsafe(32)
        now = time.time()
        session = Session(user, secrets.token_urlsafe(32), now + self.seconds)
        key = _digest(session_id)
        self.store.create(
            Record(kind=SESSION_KIND, name=key, arn=f"salvia:studio-session/{key}",
                   creation_time=now, last_modified_time=now, parent=user.lower(),
                   body={"User": user, "Csrf": session.csrf, "Expires": session.expires})
        )  # fmt: skip
        self._prune(now)
        return session_id, session

    def find(self, session_id: str) -> tuple[Session, Principal] | None:
        """The live session of a cookie's id and its user's principal of now."""
        key = _digest(session_id)
        record = self.store.get(SESSION_KIND, key)
        if record is None:
            self._principals.pop(key, None)
            return None
        body = record.body
        session = Session(str(body["User"]), str(body["Csrf"]), float(body["Expires"]))
        if session.expires <= time.time():
            self.end(session_id)
            return None
        principal = self._principals.get(key)
        if principal is None:
            principal = self.identities.user_principal(session.user)
            if principal is None:  # the user was deleted
                self.end(session_id)
                return None
            self._principals[key] = principal
        session.principal = principal
        return session, principal

    def end(self, session_id: str) -> None:
        key = _digest(session_id)
        self._principals.pop(key, None)
        self.store.delete(SESSION_KIND, key)

    def _prune(self, now: float) -> None:
        """Sessions past their end go, at most once a minute (each is refused anyway)."""
        if now < self._next_prune:
            return
        self._next_prune = now + 60
        query = ListQuery(kind=SESSION_KIND, created_before=now - self.seconds, limit=500)
        for record in self.store.list_records(query).records:
            self.store.delete(SESSION_KIND, record.name)


# Guessing a password by trying is cut short: this many failed sign-ins of one user name (or
# from one address, against any names) within the window lock that name (or address) out for
# the window's length, right password or not.
LOCK_AFTER_USER = 5
LOCK_AFTER_ADDRESS = 20
LOCK_SECONDS = 15 * 60


class Lockouts:
    """Failed sign-ins per user name and per client address, in memory. Thread-safe."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._lock = threading.Lock()
        self._failures: dict[str, list[float]] = {}
        self._until: dict[str, float] = {}

    @staticmethod
    def keys(user: str, address: str) -> dict[str, int]:
        """The counters a sign-in attempt touches, with their limits."""
        return {f"user:{user.lower()}": LOCK_AFTER_USER, f"address:{address}": LOCK_AFTER_ADDRESS}

    def locked(self, keys: dict[str, int]) -> float:
        """Seconds until these counters allow a sign-in again; 0 when they do now."""
        now = self.clock()
        with self._lock:
            return max(0.0, *(self._until.get(key, 0.0) - now for key in keys))

    def failed(self, keys: dict[str, int]) -> None:
        now = self.clock()
        with self._lock:
            if len(self._failures) > 100_000:  # forget the quiet ones first
                self._failures = {k: v for k, v in self._failures.items() if v[-1] > now - 60}
            for key, limit in keys.items():
                recent = [t for t in self._failures.get(key, []) if t > now - LOCK_SECONDS]
                recent.append(now)
                if len(recent) >= limit:
                    self._until[key] = now + LOCK_SECONDS
                    recent = []
                self._failures[key] = recent

    def succeeded(self, user: str) -> None:
        with self._lock:
            self._failures.pop(f"user:{user.lower()}", None)


def _cookies(scope: Scope) -> dict[str, str]:
    jar: SimpleCookie = SimpleCookie()
    for name, value in scope["headers"]:
        if name == b"cookie":
            try:
                jar.load(value.decode("latin-1"))
            except Exception:  # a malformed cookie header is no session
                continue
    return {name: morsel.value for name, morsel in jar.items()}


def _cookie(scope: Scope, name: str, value: str, max_age: int) -> str:
    """A Set-Cookie value: HttpOnly, SameSite=Strict, scoped to Studio, Secure over https."""
    parts = [f"{name}={value}", f"Path={PREFIX}", f"Max-Age={max_age}", "HttpOnly",
             "SameSite=Strict"]  # fmt: skip
    if scope.get("scheme") == "https":
        parts.append("Secure")
    return "; ".join(parts)


def _same(given: str | None, expected: str) -> bool:
    return bool(given) and hmac.compare_digest(str(given).encode(), expected.encode())


async def _body(receive: Receive) -> bytes | None:
    chunks, size = [], 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > FORM_LIMIT:
            return None
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


class SignInGate:
    """In front of Studio's routes: a page needs a session (else the sign-in page), a post
    needs the session's CSRF token; while a page is served, `signed_in` names its user."""

    def __init__(self, app: ASGIApp, sessions: Sessions) -> None:
        self.app = app
        self.sessions = sessions

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path, method = scope["path"], scope["method"]
        posted = method not in ("GET", "HEAD")
        cookies = _cookies(scope)
        found = self.sessions.find(cookies.get(COOKIE, "")) if COOKIE in cookies else None
        if path.startswith(OPEN_PATHS):
            expected = cookies.get(FORM_COOKIE, "") if path == OPEN_PATHS[0] else None
            if posted and expected is not None:
                checked = await self._checked(scope, receive, send, expected)
                if checked is None:
                    return
                receive = checked
            await self.app(scope, receive, send)
            return
        if found is None:
            if posted:
                await _refuse("Sign in to Studio first.", 401)(scope, receive, send)
                return
            wanted = path + ("?" + scope["query_string"].decode("latin-1")
                             if scope.get("query_string") else "")  # fmt: skip
            target = f"{PREFIX}/sign-in?" + urllib.parse.urlencode({"next": wanted})
            await RedirectResponse(target, 303)(scope, receive, send)
            return
        session, principal = found
        if posted:
            checked = await self._checked(scope, receive, send, session.csrf)
            if checked is None:
                return
            receive = checked
        token = signed_in.set(Caller(principal, scope, session.csrf))
        try:
            await self.app(scope, receive, send)
        finally:
            signed_in.reset(token)

    async def _checked(
        self, scope: Scope, receive: Receive, send: Send, expected: str
    ) -> Receive | None:
        """The request's receive once its CSRF token matched; None when it was refused."""
        headers = dict(scope["headers"])
        given = headers.get(CSRF_HEADER, b"").decode("latin-1")
        content_type = headers.get(b"content-type", b"")
        if not given and content_type.startswith(b"application/x-www-form-urlencoded"):
            body = await _body(receive)
            if body is None:
                await _refuse("The form is too large.", 413)(scope, receive, send)
                return None
            fields = urllib.parse.parse_qs(body.decode("utf-8", "replace"))
            given = (fields.get(CSRF_FIELD) or [""])[-1]
            receive = replay_body(body, receive)
        if not expected or not _same(given, expected):
            message = (
                "Studio refuses a form posted without this session's CSRF token; reload the "
                "page and try again."
            )
            await _refuse(message, 403)(scope, receive, send)
            return None
        return receive


def _refuse(message: str, status: int) -> Response:
    return PlainTextResponse(message, status_code=status)


def _next(value: str) -> str:
    """Where to go after signing in: a Studio page, never another site."""
    if value.startswith(PREFIX + "/") and not value.startswith("//") and "\\" not in value:
        return value
    return f"{PREFIX}/home"


class SignIn:
    """The sign-in and sign-out pages, the sessions they open and close, and their audit
    events (`signin:ConsoleLogin`, as CloudTrail names a console sign-in)."""

    def __init__(self, identities: IdentityStore, audit: AuditTrail) -> None:
        self.sessions = Sessions(identities)
        self.logins = LoginProfiles(identities)
        self.lockouts = Lockouts()
        self.audit = audit

    def routes(self, pages: Pages) -> list[Route]:
        async def sign_in(request: Request) -> Response:
            if request.method == "GET":
                return self._form(pages, request, request.query_params.get("next", ""), "")
            form = urllib.parse.parse_qs((await request.body()).decode("utf-8", "replace"))
            user = (form.get("user") or [""])[-1].strip()
            password = (form.get("password") or [""])[-1]
            wanted = (form.get("next") or [""])[-1]
            keys = Lockouts.keys(user, request.client.host if request.client else "")
            wait = self.lockouts.locked(keys)
            if wait:
                minutes = int(-(-wait // 60))
                self._record(request, user, "Failure", "Locked out after failed sign-ins.")
                return self._form(
                    pages, request, wanted, "Too many failed sign-ins: try again in "
                    f"{minutes} minute{'s' if minutes != 1 else ''}.", 429,
                )  # fmt: skip
            name = await anyio.to_thread.run_sync(self.logins.verify, user, password)
            self._record(request, name or user, "Success" if name else "Failure")
            if name is None:
                self.lockouts.failed(keys)
                return self._form(
                    pages, request, wanted, "The user name or password is wrong.", 401
                )
            self.lockouts.succeeded(name)
            session_id, _ = self.sessions.start(name)
            answer = RedirectResponse(_next(wanted), 303)
            answer.headers.append("set-cookie", _cookie(request.scope, COOKIE, session_id,
                                                        SESSION_SECONDS))  # fmt: skip
            answer.headers.append("set-cookie", _cookie(request.scope, FORM_COOKIE, "", 0))
            return answer

        async def sign_out(request: Request) -> Response:
            session_id = request.cookies.get(COOKIE, "")
            self.sessions.end(session_id)
            answer = RedirectResponse(f"{PREFIX}/sign-in", 303)
            answer.headers.append("set-cookie", _cookie(request.scope, COOKIE, "", 0))
            return answer

        return [
            Route("/sign-in", sign_in, methods=["GET", "POST"]),
            Route("/sign-out", sign_out, methods=["POST"]),
        ]

    def _form(
        self, pages: Pages, request: Request, wanted: str, error: str, status: int = 200
    ) -> Response:
        token = secrets.token_urlsafe(32)
        answer = pages.render(
            request, "sign_in.html", http_status=status, title="Sign in", next=_next(wanted),
            form_token=token, error=error, user=request.query_params.get("user", ""),
        )  # fmt: skip
        answer.headers.append("set-cookie", _cookie(request.scope, FORM_COOKIE, token, 3600))
        return answer

    def _record(self, request: Request, user: str, outcome: str, message: str = "") -> None:
        client = request.client.host if request.client else ""
        self.audit.record(
            AuditEvent(
                time=time.time(),
                principal="",
                user=user[:64],
                access_key="",
                action="signin:ConsoleLogin",
                resource="*",
                source_ip=client,
                outcome=outcome,
                read_only=False,
                message=message or ("" if outcome == "Success" else "Wrong user name or password."),
            )
        )
