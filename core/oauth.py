"""OAuth 2.0 on the client side: signing in with the device authorization grant (RFC 8628),
refreshing access tokens silently, and revoking them (RFC 7009).

``fedcompute login --oidc`` runs :func:`start_device_flow` / :func:`finish_device_flow`
against an issuer the service names (``GET /v1/auth/config``) and keeps the resulting
:class:`OAuthSession` in the credentials file. :class:`RefreshingAuth` is the ``httpx.Auth``
that ``fedcompute.Client`` sends requests through: it puts the access token on each request,
refreshes it shortly before it expires, and once more if the service still answers 401.
A refresh is done under a file lock and re-reads the credentials file first, so that several
processes sharing one login (an Executor, an endpoint CLI, a notebook) do not spend each
other's rotated refresh tokens.

Plain ``httpx`` rather than an OAuth library: these are three form POSTs, and the core keeps
its dependencies small.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Generator
from contextlib import AbstractContextManager, nullcontext
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Protocol

import httpx

from . import errors

DEVICE_GRANT = "urn:ietf:params:oauth:grant-type:device_code"

#: Refresh this long before expiry at most (a quarter of the token's lifetime for short ones).
REFRESH_MARGIN = 60.0


@dataclass
class OAuthSession:
    """A signed-in user's tokens and where to refresh and revoke them."""

    issuer: str
    client_id: str
    token_endpoint: str
    access_token: str
    refresh_token: str | None = None
    expires_at: float | None = None
    lifetime: float | None = None
    revocation_endpoint: str | None = None
    scope: str = ""
    client_secret: str | None = field(default=None, repr=False)

    @classmethod
    def from_dict(cls, data: dict) -> OAuthSession:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    def to_dict(self) -> dict:
        return {k: v for k, v in asdict(self).items() if v is not None}

    def due(self, now: float | None = None) -> bool:
        """Whether the access token expires soon enough to be refreshed now."""
        if self.expires_at is None:
            return False
        margin = REFRESH_MARGIN if self.lifetime is None else min(REFRESH_MARGIN,
                                                                  self.lifetime / 4)
        return (now or time.time()) >= self.expires_at - margin

    def update(self, reply: dict, now: float | None = None) -> None:
        """Take a token endpoint's reply (RFC 6749 section 5.1)."""
        now = now or time.time()
        self.access_token = reply["access_token"]
        # A provider that does not rotate refresh tokens sends none back: keep ours.
        self.refresh_token = reply.get("refresh_token") or self.refresh_token
        expires_in = reply.get("expires_in")
        self.lifetime = float(expires_in) if expires_in is not None else None
        self.expires_at = now + float(expires_in) if expires_in is not None else None
        self.scope = reply.get("scope", self.scope)


class OAuthError(errors.AuthError):
    """The identity provider refused (``code`` is its ``error``, e.g. ``invalid_grant``)."""

    def __init__(self, message: str, code: str | None = None, status: int = 401):
        super().__init__(status, message, code)


def _http(verify: bool | str, timeout: float = 30.0) -> httpx.Client:
    return httpx.Client(timeout=timeout, verify=verify)


def _form(http: httpx.Client, url: str, data: dict, client_secret: str | None = None,
          client_id: str | None = None) -> httpx.Response:
    """POST a form, authenticating a confidential client with HTTP Basic (RFC 6749 2.3.1)."""
    auth = (client_id or "", client_secret) if client_secret else None
    try:
        return http.post(url, data=data, auth=auth, headers={"Accept": "application/json"})
    except httpx.HTTPError as exc:
        raise errors.ServiceError(0, f"cannot reach the identity provider at {url}: "
                                     f"{exc}") from exc


def _json_error(response: httpx.Response) -> tuple[str | None, str]:
    try:
        body = response.json()
    except ValueError:
        return None, response.text[:200]
    if not isinstance(body, dict):
        return None, str(body)[:200]
    return body.get("error"), body.get("error_description") or body.get("error") or ""


def discover(discovery_url: str, verify: bool | str = True) -> dict:
    """The provider's metadata (OpenID Connect Discovery / RFC 8414)."""
    with _http(verify) as http:
        try:
            response = http.get(discovery_url)
        except httpx.HTTPError as exc:
            raise errors.ServiceError(0, f"cannot reach {discovery_url}: {exc}") from exc
    if response.status_code != 200:
        raise errors.ServiceError(response.status_code,
                                  f"discovery at {discovery_url} failed: {response.text[:200]}")
    return response.json()


@dataclass(frozen=True)
class DeviceAuthorization:
    """What the user is shown: go to ``verification_uri`` and enter ``user_code``."""

    device_code: str
    user_code: str
    verification_uri: str
    verification_uri_complete: str | None
    expires_at: float
    interval: float


def start_device_flow(metadata: dict, client_id: str, scope: str,
                      verify: bool | str = True) -> DeviceAuthorization:
    """Ask for a device code (RFC 8628 section 3.1)."""
    endpoint = metadata.get("device_authorization_endpoint")
    if not endpoint:
        raise OAuthError(f"the identity provider {metadata.get('issuer')} does not offer the "
                         "device authorization flow (no device_authorization_endpoint)",
                         "unsupported_grant_type", 400)
    with _http(verify) as http:
        response = _form(http, endpoint, {"client_id": client_id, "scope": scope})
    if response.status_code != 200:
        code, text = _json_error(response)
        raise OAuthError(f"device authorization refused: {text}", code, response.status_code)
    body = response.json()
    return DeviceAuthorization(
        body["device_code"], body["user_code"],
        body.get("verification_uri") or body.get("verification_url", ""),
        body.get("verification_uri_complete"),
        time.time() + float(body.get("expires_in", 600)), float(body.get("interval", 5)))


def finish_device_flow(metadata: dict, client_id: str, grant: DeviceAuthorization,
                       verify: bool | str = True,
                       sleep: Callable[[float], None] = time.sleep) -> OAuthSession:
    """Poll the token endpoint until the user approves (RFC 8628 section 3.4-3.5)."""
    interval = grant.interval
    with _http(verify) as http:
        while True:
            if time.time() > grant.expires_at:
                raise OAuthError("the sign-in code expired before it was approved; run "
                                 "`fedcompute login --oidc` again", "expired_token")
            response = _form(http, metadata["token_endpoint"], {
                "grant_type": DEVICE_GRANT, "device_code": grant.device_code,
                "client_id": client_id})
            if response.status_code == 200:
                session = OAuthSession(metadata["issuer"], client_id, metadata["token_endpoint"],
                                       "", revocation_endpoint=metadata.get(
                                           "revocation_endpoint"))
                session.update(response.json())
                return session
            code, text = _json_error(response)
            if code == "authorization_pending":
                sleep(interval)
            elif code == "slow_down":
                interval += 5  # RFC 8628 section 3.5: for this and all later requests
                sleep(interval)
            elif code == "access_denied":
                raise OAuthError("sign-in was denied at the identity provider", code)
            elif code == "expired_token":
                raise OAuthError("the sign-in code expired; run `fedcompute login --oidc` "
                                 "again", code)
            else:
                raise OAuthError(f"sign-in failed: {text}", code, response.status_code)


def refresh(session: OAuthSession, verify: bool | str = True) -> OAuthSession:
    """A new access token from the refresh token (RFC 6749 section 6); updates ``session``."""
    if not session.refresh_token:
        raise OAuthError("the access token expired and there is no refresh token: sign in "
                         "again (fedcompute login --oidc)", "invalid_grant")
    data = {"grant_type": "refresh_token", "refresh_token": session.refresh_token,
            "client_id": session.client_id}
    with _http(verify) as http:
        response = _form(http, session.token_endpoint, data, session.client_secret,
                         session.client_id)
    if response.status_code != 200:
        code, text = _json_error(response)
        if code == "invalid_grant":
            raise OAuthError("your sign-in has expired or was revoked: run `fedcompute login "
                             f"--oidc` again ({text})", code)
        raise OAuthError(f"refreshing the access token failed: {text}", code,
                         response.status_code if response.status_code >= 400 else 401)
    session.update(response.json())
    return session


def revoke(session: OAuthSession, verify: bool | str = True) -> bool:
    """Revoke the refresh and access tokens (RFC 7009); False if the provider cannot."""
    if not session.revocation_endpoint:
        return False
    with _http(verify) as http:
        for token, hint in ((session.refresh_token, "refresh_token"),
                            (session.access_token, "access_token")):
            if not token:
                continue
            response = _form(http, session.revocation_endpoint,
                             {"token": token, "token_type_hint": hint,
                              "client_id": session.client_id},
                             session.client_secret, session.client_id)
            # RFC 7009 section 2.2: 200 also for tokens that were already invalid.
            if response.status_code != 200:
                code, text = _json_error(response)
                raise OAuthError(f"revoking the {hint} failed: {text}", code,
                                 response.status_code)
    return True


class TokenStore(Protocol):
    """Where a login's tokens are kept between processes (``config.FileTokenStore``)."""

    def lock(self) -> AbstractContextManager: ...

    def load(self) -> OAuthSession | None: ...

    def save(self, session: OAuthSession) -> None: ...


class RefreshingAuth(httpx.Auth):
    """Bearer auth with an access token that is refreshed before it expires and once after a
    401. Thread-safe: one refresh at a time, and threads that waited for it reuse its result.

    ``store``: where the tokens are persisted (refresh tokens may rotate on every refresh), so
    other processes and the next run see the new ones.
    """

    requires_request_body = True

    def __init__(self, session: OAuthSession, store: TokenStore | None = None,
                 verify: bool | str = True):
        self.session = session
        self.store = store
        self.verify = verify
        self._lock = threading.Lock()

    @classmethod
    def from_refresh_token(cls, refresh_token: str, token_endpoint: str, client_id: str, *,
                           client_secret: str | None = None, access_token: str = "",
                           verify: bool | str = True) -> RefreshingAuth:
        """Auth from a refresh token alone (e.g. an Airflow connection): the first request
        gets an access token."""
        return cls(OAuthSession("", client_id, token_endpoint, access_token, refresh_token,
                                expires_at=0.0 if not access_token else None,
                                client_secret=client_secret), verify=verify)

    def token(self) -> str:
        """A valid access token (refreshed first if it is about to expire)."""
        session = self.session
        if session.due() or not session.access_token:
            self._refresh(session.access_token)
        return self.session.access_token

    def _refresh(self, stale: str) -> None:
        with self._lock:
            if self.session.access_token != stale and not self.session.due():
                return  # another thread refreshed while we waited
            with self.store.lock() if self.store else nullcontext():
                latest = self.store.load() if self.store else None
                if latest is not None and latest.token_endpoint == self.session.token_endpoint:
                    if latest.access_token not in ("", stale) and not latest.due():
                        self.session = latest  # another process refreshed already
                        return
                    # It may hold a newer (rotated) refresh token than ours.
                    self.session.refresh_token = latest.refresh_token or \
                        self.session.refresh_token
                refresh(self.session, self.verify)
                if self.store:
                    self.store.save(self.session)

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response,
                                                              None]:
        token = self.token()
        request.headers["Authorization"] = f"Bearer {token}"
        response = yield request
        if response.status_code == 401 and self.session.refresh_token:
            # Expired early (clock skew, revoked at the provider, a key rotation): once more.
            self._refresh(token)
            request.headers["Authorization"] = f"Bearer {self.session.access_token}"
            yield request


def describe(session: OAuthSession) -> dict[str, Any]:
    """What ``fedcompute whoami`` shows of a login (never the tokens themselves)."""
    left = None if session.expires_at is None else round(session.expires_at - time.time())
    return {"issuer": session.issuer, "client_id": session.client_id,
            "access_token_expires_in": left, "refreshable": bool(session.refresh_token),
            "scope": session.scope}
