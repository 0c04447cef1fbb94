"""Console sessions: sign in with a bearer token, a session cookie, CSRF checks, sign out.

* The cookie holds a random session id; Redis holds the session under the id's SHA-256 (as
  tokens are kept), so a copy of the database signs nobody in. The cookie is ``HttpOnly``,
  ``SameSite=Lax``, limited to ``/console`` and ``Secure`` whenever the request came over TLS
  (directly or through a proxy that says ``X-Forwarded-Proto: https``).
* A session is its principal as signed in: user, scopes, groups. Pages need the ``read``
  scope, cancelling ``submit``, sharing changes and revoking tokens ``manage`` (as the REST
  API's routes do).
* Sessions end when idle for :data:`IDLE_SECONDS`, at the latest :data:`MAX_SECONDS` after
  signing in or when the token they were opened with expires, on sign-out, and as soon as
  that token (a static one) is revoked.
* Every form carries the session's CSRF secret and every POST is checked against it (the
  sign-in form, before any session exists, against a double-submit cookie). A POST whose
  ``Origin`` names another host is refused too. A hand-written check rather than Flask-WTF:
  it is one comparison, and the console needs no forms library for it.
* Pages send a strict Content-Security-Policy (scripts and styles only from the console's own
  static files), so even markup that slipped through escaping could not run a script.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import time
from typing import Any
from urllib.parse import urlsplit

from flask import Response, abort, g, redirect, render_template, request, url_for
from werkzeug.exceptions import HTTPException, TooManyRequests, Unauthorized

from ..api.wire import reply
from ..auth import USER_PREFIX, Principal, UserName, authenticate, check_scope, hash_token
from ..context import fed
from ..scopes import READ, grants
from . import bp

COOKIE = "fc_console"
#: The session cookie is sent only to the console's own URLs.
COOKIE_PATH = "/console"
LOGIN_COOKIE = "fc_console_login"
#: A session unused this long ends (each request restarts the clock).
IDLE_SECONDS = 8 * 3600
#: A session ends this long after signing in, however busy.
MAX_SECONDS = 24 * 3600
#: Pages that need no session.
_OPEN = {"console.login", "console.login_form", "console.static"}
#: Paths of what the pages' script reads (JSON or events): errors as JSON, no redirects.
DATA_PATHS = ("/events", "/stats", "/rows")

CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
       "connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'")


def _digest(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


def _idle() -> int:
    return int(getattr(fed().settings, "console_session_idle", IDLE_SECONDS))


def _max_age() -> int:
    return int(getattr(fed().settings, "console_session_max", MAX_SECONDS))


def over_tls() -> bool:
    """The browser reached us over HTTPS (directly, or through a TLS-terminating proxy)."""
    forwarded = request.headers.get("X-Forwarded-Proto", "").split(",")[0].strip().lower()
    return request.is_secure or forwarded == "https"


def _set_cookie(response: Response, name: str, value: str, path: str, samesite: str,
                max_age: int | None = None) -> None:
    response.set_cookie(name, value, path=path, max_age=max_age, httponly=True,
                        samesite=samesite, secure=over_tls())


def _safe_next(target: str | None) -> str:
    """Where to go after signing in: a console path only (no open redirect)."""
    default = url_for("console.endpoints")
    if not target:
        return default
    parts = urlsplit(target)
    if (parts.scheme or parts.netloc or "\\" in target
            or not parts.path.startswith(bp.url_prefix + "/")):
        return default
    return target


# --- the current session ----------------------------------------------------------------

def current() -> dict[str, Any]:
    """The signed-in session: user (a ``UserName`` carrying its principal), csrf, token
    (hash of a static token, or ""), created, flash, key (the Redis key's hash)."""
    return g.console_session


def user() -> UserName:
    """The signed-in user's name (carrying its groups and scopes, as the API's is)."""
    return g.console_session["user"]


def require(scope: str) -> UserName:
    """The signed-in user, if the session's token grants ``scope`` (else 403)."""
    name = user()
    check_scope(name.principal, scope)
    return name


def flash(message: str) -> None:
    """Show ``message`` once, on the session's next page."""
    fed().store.set_flash(current()["key"], message)


def render(template: str, status: int = 200, **context: Any) -> tuple[str, int]:
    """A console page, with the session's pending message (shown once)."""
    session = g.get("console_session")
    message = ""
    if session and session.get("flash"):
        message = session["flash"]
        fed().store.clear_flash(session["key"])
    return render_template(template, flash=message, **context), status


@bp.app_template_global("csrf_token")
def csrf_token() -> str:
    session = g.get("console_session")
    return session["csrf"] if session else ""


@bp.app_template_global("can")
def can(scope: str) -> bool:
    """Whether the session's token grants ``scope`` (pages hide what it may not do)."""
    session = g.get("console_session")
    return bool(session) and grants(session["user"].principal.scopes, scope)


def _principal_fields(principal: Principal) -> dict[str, str]:
    return {"user": principal.name, "scopes": json.dumps(sorted(principal.scopes)),
            "groups": json.dumps(list(principal.groups)), "via": principal.via,
            "issuer": principal.issuer or "",
            "expires": "" if principal.expires is None else repr(principal.expires)}


def _principal(raw: dict[str, str]) -> Principal:
    return Principal(kind="user", name=raw["user"],
                     scopes=frozenset(json.loads(raw.get("scopes") or "[]")),
                     groups=tuple(json.loads(raw.get("groups") or "[]")),
                     via=raw.get("via") or "token", issuer=raw.get("issuer") or None,
                     expires=float(raw["expires"]) if raw.get("expires") else None)


def _load() -> dict[str, Any] | None:
    sid = request.cookies.get(COOKIE, "")
    if not sid or len(sid) > 128:
        return None
    key = _digest(sid)
    store = fed().store
    raw = store.get_session(key, _idle())
    if raw is None:
        return None
    principal = _principal(raw)
    now = time.time()
    if (now - float(raw.get("created") or 0) > _max_age()
            or (principal.expires is not None and principal.expires <= now)):
        store.delete_session(key)
        return None
    if raw.get("token"):
        found, _ = store.lookup_token(raw["token"])
        if found.get("kind") != "user" or found.get("name") != principal.name:
            store.delete_session(key)  # its token was revoked
            return None
    return {"user": UserName(principal), "csrf": raw["csrf"], "token": raw.get("token", ""),
            "flash": raw.get("flash", ""), "key": key}


def signed_in_user() -> UserName | None:
    """The user of the request's console session cookie, or None: for other parts of the
    service that accept a console session (its cookie reaches only :data:`COOKIE_PATH`)."""
    session = _load()
    return session["user"] if session else None


def same_origin() -> bool:
    """The request names no other origin than this service (or none at all)."""
    origin = request.headers.get("Origin")
    if not origin or origin == "null":
        return origin is None  # "null" comes from sandboxed or privacy-redirected contexts
    return urlsplit(origin).netloc == request.host


def _check_csrf(expected: str) -> None:
    sent = request.form.get("csrf", "")
    if not (expected and sent and hmac.compare_digest(sent, expected)) or not same_origin():
        abort(403, "the form has expired or did not come from this console; reload the page "
                   "and try again")


@bp.before_request
def _require_session() -> Response | None:
    if request.endpoint in _OPEN:
        return None
    session = _load()
    if session is None:
        if request.method == "GET" and not request.path.endswith(DATA_PATHS):
            return redirect(url_for("console.login_form", next=request.full_path.rstrip("?")))
        abort(401, "sign in to the console first")
    g.console_session = session
    check_scope(session["user"].principal, READ)
    if request.method == "POST":
        _check_csrf(session["csrf"])
    return None


@bp.after_request
def _headers(response: Response) -> Response:
    response.headers.setdefault("Content-Security-Policy", CSP)
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["X-Frame-Options"] = "DENY"
    response.headers["Referrer-Policy"] = "same-origin"
    if request.endpoint != "console.static":
        response.headers["Cache-Control"] = "no-store"
        response.vary.add("Cookie")
    return response


@bp.errorhandler(HTTPException)
def _error(exc: HTTPException) -> Response | tuple[str, int]:
    code = exc.code or 500
    if request.path.endswith(DATA_PATHS):
        return reply({"error": exc.name.lower().replace(" ", "_"),
                      "message": exc.description}, code)
    return render("console/error.html", status=code, code=code, name=exc.name,
                  message=exc.description)


# --- signing in and out -----------------------------------------------------------------

@bp.get("/login")
def login_form() -> Response:
    if _load() is not None:
        return redirect(_safe_next(request.args.get("next")))
    return _login_page()


def _login_page(error: str = "", status: int = 200) -> Response:
    nonce = secrets.token_urlsafe(32)
    body, _ = render("console/login.html", login_csrf=nonce, error=error,
                     next=_safe_next(request.values.get("next")))
    response = Response(body, status=status, mimetype="text/html")
    _set_cookie(response, LOGIN_COOKIE, nonce, url_for("console.login"), "Strict", 3600)
    return response


@bp.post("/login")
def login() -> Response:
    sent, expected = request.form.get("csrf", ""), request.cookies.get(LOGIN_COOKIE, "")
    if not (sent and expected and hmac.compare_digest(sent, expected)) or not same_origin():
        abort(403, "the sign-in form has expired; reload the page and try again")
    token = request.form.get("token", "").strip()
    if not token:
        return _login_page("Paste your token.", 400)
    try:
        principal = authenticate({"Authorization": f"Bearer {token}"})
    except TooManyRequests:
        return _login_page("Too many requests with this token; wait a moment.", 429)
    except Unauthorized as exc:
        return _login_page(f"That token is not valid: {exc.description}", 401)
    except HTTPException as exc:  # the identity provider cannot be asked (503)
        return _login_page(f"Cannot check that token now: {exc.description}", exc.code or 503)
    if principal.kind != "user":
        return _login_page("That is an endpoint credential; sign in with a user token "
                           f"(it starts with {USER_PREFIX}).", 401)
    store = fed().store
    token_hash = hash_token(token)
    known, _ = store.lookup_token(token_hash)  # a static token: its revocation ends the session
    sid = secrets.token_urlsafe(32)
    store.create_session(_digest(sid), {**_principal_fields(principal),
                                        "csrf": secrets.token_urlsafe(32),
                                        "token": token_hash if known else ""}, _idle())
    response = redirect(_safe_next(request.form.get("next")), 303)
    _set_cookie(response, COOKIE, sid, COOKIE_PATH, "Lax")
    response.delete_cookie(LOGIN_COOKIE, path=url_for("console.login"))
    return response


@bp.post("/logout")
def logout() -> Response:
    fed().store.delete_session(current()["key"])
    response = redirect(url_for("console.login_form"), 303)
    response.delete_cookie(COOKIE, path=COOKIE_PATH, httponly=True, samesite="Lax",
                           secure=over_tls())
    return response


@bp.get("/")
def home() -> Response:
    return redirect(url_for("console.endpoints"))
