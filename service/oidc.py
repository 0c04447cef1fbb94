"""OpenID Connect access tokens: which issuers the service trusts and how it checks a token.

(Longer than our ~400-line guide: configuration, discovery and key caching, and the token
checks are one security-critical path that reads best, and is reviewed, in one file.)

The file named by ``FEDCOMPUTE_OIDC_CONFIG`` (YAML or JSON) lists the issuers::

    issuers:
      - issuer: https://keycloak.example.org/realms/lab   # the tokens' "iss", exactly
        audience: fedcompute                # the tokens' "aud" must contain it
        client_id: fedcompute-cli           # the public client `fedcompute login --oidc` uses
        username_claim: preferred_username  # names the fedcompute user (default: sub)
        groups_claim: groups                # optional: for shared_with_groups
        allowed_domains: [example.org]      # optional: the user name must end in @<domain>

JSON Web Token access tokens are checked here: the signature against the issuer's JWKS
(cached; an unknown ``kid`` refetches it, at most once per ``jwks_min_refetch_seconds``, so
key rotation is followed without letting forged ``kid`` values hammer the provider), the
algorithm against a pinned list (never ``none`` or HMAC), and ``exp``, ``nbf``, ``iss`` and
``aud``. Opaque access tokens are introspected (RFC 7662) at the issuer's introspection
endpoint with the service's own client credentials, and the answer is cached briefly.

PyJWT (with ``cryptography``) does the JOSE work; this module decides which key and which
claims, and says clearly why a token is refused (:class:`TokenRejected`).
"""

from __future__ import annotations

import hashlib
import logging
import re
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import httpx
import jwt
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from .scopes import ADMIN, ENDPOINT, MANAGE, READ, SCOPES, SUBMIT, USER_SCOPES

log = logging.getLogger(__name__)

#: Asymmetric algorithms only: an HMAC "signature" made with the public key is a classic forgery.
SAFE_ALGORITHMS = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384",
                   "ES512", "EdDSA")
_USER_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}$")
_GROUP_NAME = re.compile(r"^[A-Za-z0-9_.@:/+=~-]{1,256}$")

#: Token scopes (the ``scope`` claim) -> fedcompute scopes, unless an issuer says otherwise.
DEFAULT_SCOPE_MAP: dict[str, list[str]] = {
    "fedcompute": sorted(USER_SCOPES),
    "fedcompute:all": sorted(USER_SCOPES),
    **{f"fedcompute:{s}": [s] for s in (SUBMIT, READ, MANAGE, ENDPOINT, ADMIN)},
}


class TokenRejected(Exception):
    """The token is not acceptable; the message says why (it goes back in the 401)."""


class ProviderUnavailable(Exception):
    """The identity provider could not be asked (discovery, JWKS or introspection failed)."""


class IssuerConfig(BaseModel):
    """One trusted issuer."""

    model_config = ConfigDict(extra="forbid")

    issuer: str = Field(description="the tokens' iss claim, exactly")
    discovery_url: str | None = Field(
        None, description="default: <issuer>/.well-known/openid-configuration")
    audience: str | list[str] = Field(description="the tokens' aud must contain one of these")
    client_id: str | None = Field(None, description="public client for the CLI's device flow")
    request_scopes: str = Field("openid offline_access fedcompute",
                                description="what the CLI asks for (space-separated)")
    username_claim: str = "sub"
    groups_claim: str | None = None
    allowed_domains: list[str] = Field(default_factory=list)
    domain_claim: str | None = Field(None, description="default: the username claim")
    user_prefix: str = Field("", description="prepended to user names (keeps issuers apart)")
    scope_map: dict[str, list[str]] = Field(default_factory=lambda: dict(DEFAULT_SCOPE_MAP))
    default_scopes: list[str] = Field(default_factory=list,
                                      description="granted to every token of this issuer")
    algorithms: list[str] = Field(default_factory=lambda: ["RS256", "PS256", "ES256", "EdDSA"])
    token_format: Literal["auto", "jwt", "opaque"] = "auto"
    introspection_client_id: str | None = None
    introspection_client_secret: str | None = None
    introspection_client_secret_file: str | None = None
    leeway: float = Field(30.0, ge=0, le=300, description="clock skew allowed, seconds")

    @field_validator("algorithms")
    @classmethod
    def _safe(cls, value: list[str]) -> list[str]:
        for alg in value:
            if alg not in SAFE_ALGORITHMS:
                raise ValueError(f"algorithm {alg!r} is not allowed: use {SAFE_ALGORITHMS}")
        return value

    @field_validator("scope_map")
    @classmethod
    def _known(cls, value: dict[str, list[str]]) -> dict[str, list[str]]:
        for granted in value.values():
            for scope in granted:
                if scope not in SCOPES:
                    raise ValueError(f"unknown fedcompute scope {scope!r}: use {SCOPES}")
        return value

    @field_validator("default_scopes")
    @classmethod
    def _known_default(cls, value: list[str]) -> list[str]:
        for scope in value:
            if scope not in SCOPES:
                raise ValueError(f"unknown fedcompute scope {scope!r}: use {SCOPES}")
        return value

    @property
    def audiences(self) -> list[str]:
        return [self.audience] if isinstance(self.audience, str) else list(self.audience)

    @property
    def introspects(self) -> bool:
        return self.token_format != "jwt" and bool(self.introspection_client_id)


class OIDCConfig(BaseModel):
    """The whole ``FEDCOMPUTE_OIDC_CONFIG`` file."""

    model_config = ConfigDict(extra="forbid")

    issuers: list[IssuerConfig] = Field(min_length=1)
    jwks_cache_seconds: float = Field(3600.0, gt=0)
    jwks_min_refetch_seconds: float = Field(60.0, ge=0)
    introspection_cache_seconds: float = Field(60.0, ge=0)
    http_timeout: float = Field(10.0, gt=0)
    verify_tls: bool | str = True


@dataclass(frozen=True)
class Identity:
    """Who a valid OIDC token stands for."""

    user: str
    issuer: str
    scopes: frozenset[str]
    groups: tuple[str, ...]
    expires: float | None


def load_config(path: str | Path) -> OIDCConfig:
    """Read and check the issuers file; ``ValueError`` naming the problem."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text()) or {}
        return OIDCConfig.model_validate(raw)
    except OSError as exc:
        raise ValueError(f"cannot read the OIDC configuration {path}: {exc}") from exc
    except (yaml.YAMLError, ValidationError) as exc:
        raise ValueError(f"invalid OIDC configuration {path}: {exc}") from exc


class _Issuer:
    """One issuer's metadata, keys and introspection cache."""

    def __init__(self, cfg: IssuerConfig, top: OIDCConfig):
        self.cfg = cfg
        self.top = top
        self.lock = threading.Lock()
        self.metadata: dict[str, Any] | None = None
        self.metadata_at = 0.0
        self.jwks: dict[str, dict] = {}   # kid -> JWK
        self.jwks_at = 0.0               # last successful fetch
        self.jwks_tried = 0.0            # last attempt (rate limit)
        self.introspected: OrderedDict[str, tuple[float, Any]] = OrderedDict()
        secret = cfg.introspection_client_secret
        if cfg.introspection_client_secret_file:
            secret = Path(cfg.introspection_client_secret_file).read_text().strip()
        self.introspection_secret = secret

    @property
    def discovery_url(self) -> str:
        return self.cfg.discovery_url or \
            f"{self.cfg.issuer.rstrip('/')}/.well-known/openid-configuration"

    def _get(self, url: str, **kwargs: Any) -> httpx.Response:
        try:
            with httpx.Client(timeout=self.top.http_timeout, verify=self.top.verify_tls) as http:
                response = http.request(kwargs.pop("method", "GET"), url, **kwargs)
        except httpx.HTTPError as exc:
            raise ProviderUnavailable(f"identity provider {self.cfg.issuer} is unreachable: "
                                      f"{exc}") from exc
        if response.status_code >= 500:
            raise ProviderUnavailable(f"identity provider {self.cfg.issuer} answered "
                                      f"{response.status_code} at {url}")
        return response

    def meta(self) -> dict[str, Any]:
        """The discovery document (cached like the JWKS)."""
        now = time.time()
        if self.metadata is None or now - self.metadata_at > self.top.jwks_cache_seconds:
            response = self._get(self.discovery_url)
            if response.status_code != 200:
                raise ProviderUnavailable(f"discovery {self.discovery_url} answered "
                                          f"{response.status_code}")
            doc = response.json()
            if doc.get("issuer") != self.cfg.issuer:
                # OpenID Connect Discovery 1.0 section 4.3: the document must name its issuer.
                raise ProviderUnavailable(f"discovery {self.discovery_url} names issuer "
                                          f"{doc.get('issuer')!r}, not {self.cfg.issuer!r}")
            self.metadata, self.metadata_at = doc, now
        return self.metadata

    # --- JWT ---------------------------------------------------------------------------

    def _fetch_jwks(self) -> None:
        self.jwks_tried = time.time()
        uri = self.meta().get("jwks_uri")
        if not uri:
            raise ProviderUnavailable(f"issuer {self.cfg.issuer} publishes no jwks_uri")
        response = self._get(uri)
        if response.status_code != 200:
            raise ProviderUnavailable(f"JWKS {uri} answered {response.status_code}")
        keys = {}
        for number, jwk in enumerate(response.json().get("keys", [])):
            if jwk.get("use", "sig") != "sig":
                continue
            keys[str(jwk.get("kid", f"#{number}"))] = jwk
        self.jwks, self.jwks_at = keys, time.time()
        log.info("JWKS of %s: %d signing keys (%s)", self.cfg.issuer, len(keys),
                 ", ".join(sorted(keys)))

    def key_for(self, kid: str | None, alg: str) -> jwt.PyJWK:
        """The issuer's key ``kid`` for ``alg``; refetches the JWKS when it is stale or does
        not know ``kid`` (rate-limited)."""
        with self.lock:
            now = time.time()
            if not self.jwks or now - self.jwks_at > self.top.jwks_cache_seconds:
                self._fetch_jwks()
            elif (kid is not None and kid not in self.jwks
                  and now - self.jwks_tried >= self.top.jwks_min_refetch_seconds):
                self._fetch_jwks()  # a rotated key: the provider published a new one
            if kid is None:
                if len(self.jwks) != 1:
                    raise TokenRejected("token has no key id (kid) and the issuer has "
                                        f"{len(self.jwks)} keys")
                jwk = next(iter(self.jwks.values()))
            elif kid in self.jwks:
                jwk = self.jwks[kid]
            else:
                raise TokenRejected(f"token signed with an unknown key (kid {kid[:64]!r}) of "
                                    f"issuer {self.cfg.issuer}")
        if jwk.get("alg") not in (None, alg):
            raise TokenRejected(f"token algorithm {alg} does not match its key's "
                                f"({jwk.get('alg')})")
        try:
            return jwt.PyJWK(jwk, algorithm=alg)
        except jwt.PyJWKError as exc:
            raise TokenRejected(f"token key {kid!r} cannot verify {alg}: {exc}") from exc

    def verify_jwt(self, token: str, header: dict) -> dict:
        alg = header.get("alg")
        if alg not in self.cfg.algorithms:
            raise TokenRejected(f"token algorithm {str(alg)[:16]!r} is not accepted "
                                f"(allowed: {', '.join(self.cfg.algorithms)})")
        key = self.key_for(header.get("kid"), alg)
        try:
            return jwt.decode(token, key, algorithms=[alg], audience=self.cfg.audiences,
                              issuer=self.cfg.issuer, leeway=self.cfg.leeway,
                              options={"require": ["exp", "iss", "aud"]})
        except jwt.ExpiredSignatureError as exc:
            raise TokenRejected("token expired; sign in again or refresh it "
                                "(fedcompute login --oidc)") from exc
        except jwt.ImmatureSignatureError as exc:
            raise TokenRejected("token is not yet valid (nbf or iat in the future)") from exc
        except jwt.InvalidAudienceError as exc:
            raise TokenRejected(f"token audience is not this service (expected "
                                f"{' or '.join(self.cfg.audiences)})") from exc
        except jwt.InvalidIssuerError as exc:
            raise TokenRejected("token issuer does not match its signing key's") from exc
        except jwt.InvalidSignatureError as exc:
            raise TokenRejected("token signature is invalid (forged or corrupted)") from exc
        except jwt.MissingRequiredClaimError as exc:
            raise TokenRejected(f"token lacks the {exc.claim!r} claim") from exc
        except jwt.InvalidTokenError as exc:
            raise TokenRejected(f"invalid token: {exc}") from exc

    # --- opaque tokens (RFC 7662) ------------------------------------------------------

    def introspect(self, token: str) -> dict | None:
        """The active token's claims, or None if the provider says it is not active."""
        digest = hashlib.sha256(token.encode()).hexdigest()
        now = time.time()
        with self.lock:
            hit = self.introspected.get(digest)
            if hit and hit[0] > now:
                return hit[1]
        uri = self.meta().get("introspection_endpoint")
        if not uri:
            raise ProviderUnavailable(f"issuer {self.cfg.issuer} has no introspection_endpoint")
        response = self._get(uri, method="POST",
                             data={"token": token, "token_type_hint": "access_token"},
                             auth=(self.cfg.introspection_client_id or "",
                                   self.introspection_secret or ""))
        if response.status_code != 200:
            raise ProviderUnavailable(f"introspection at {uri} answered "
                                      f"{response.status_code} (check the service's client "
                                      "credentials)")
        answer = response.json()
        claims = answer if answer.get("active") is True else None
        ttl = self.top.introspection_cache_seconds if claims else min(
            10.0, self.top.introspection_cache_seconds)
        if claims and claims.get("exp"):
            ttl = min(ttl, float(claims["exp"]) - now)
        with self.lock:
            if ttl > 0:
                self.introspected[digest] = (now + ttl, claims)
                while len(self.introspected) > 10_000:
                    self.introspected.popitem(last=False)
        return claims

    def check_introspected(self, claims: dict) -> None:
        now = time.time()
        if claims.get("exp") is not None and float(claims["exp"]) + self.cfg.leeway < now:
            raise TokenRejected("token expired; sign in again or refresh it")
        if claims.get("nbf") is not None and float(claims["nbf"]) - self.cfg.leeway > now:
            raise TokenRejected("token is not yet valid (nbf in the future)")
        if claims.get("iss") not in (None, self.cfg.issuer):
            raise TokenRejected("token issuer is not accepted by this service")
        aud = claims.get("aud")
        if aud is not None:
            auds = [aud] if isinstance(aud, str) else list(aud)
            if not set(auds) & set(self.cfg.audiences):
                raise TokenRejected(f"token audience is not this service (expected "
                                    f"{' or '.join(self.cfg.audiences)})")

    # --- claims -> identity ------------------------------------------------------------

    def identity(self, claims: dict) -> Identity:
        cfg = self.cfg
        name = claims.get(cfg.username_claim)
        if not isinstance(name, str) or not name:
            raise TokenRejected(f"token has no {cfg.username_claim!r} claim, which names "
                                "fedcompute users")
        if cfg.allowed_domains:
            domain_source = claims.get(cfg.domain_claim or cfg.username_claim)
            domain = domain_source.rpartition("@")[2].lower() \
                if isinstance(domain_source, str) and "@" in domain_source else None
            if domain not in {d.lower() for d in cfg.allowed_domains}:
                raise TokenRejected(f"user {name[:64]!r} is not in an allowed domain "
                                    f"({', '.join(cfg.allowed_domains)})")
        user = cfg.user_prefix + name
        if not _USER_NAME.match(user):
            raise TokenRejected(f"claim {cfg.username_claim!r} ({user[:64]!r}) is not a valid "
                                "fedcompute user name (letters, digits, _.@-; at most 64)")
        return Identity(user, cfg.issuer, self._scopes(claims), self._groups(claims),
                        float(claims["exp"]) if claims.get("exp") is not None else None)

    def _scopes(self, claims: dict) -> frozenset[str]:
        raw = claims.get("scope", claims.get("scp", ""))
        values = raw.split() if isinstance(raw, str) else [str(v) for v in raw or ()]
        granted = set(self.cfg.default_scopes)
        for value in values:
            granted.update(self.cfg.scope_map.get(value, ()))
        return frozenset(granted)

    def _groups(self, claims: dict) -> tuple[str, ...]:
        if not self.cfg.groups_claim:
            return ()
        raw = claims.get(self.cfg.groups_claim) or ()
        values = raw.split() if isinstance(raw, str) else raw
        if not isinstance(values, list | tuple):
            return ()
        return tuple(sorted({v for v in values if isinstance(v, str) and _GROUP_NAME.match(v)}))


class Verifier:
    """Checks OIDC access tokens against the configured issuers."""

    def __init__(self, config: OIDCConfig):
        self.config = config
        self.issuers = [_Issuer(c, config) for c in config.issuers]
        self.by_issuer = {i.cfg.issuer: i for i in self.issuers}

    def public_config(self) -> dict:
        """What ``GET /v1/auth/config`` tells clients (nothing secret)."""
        return {"issuers": [{"issuer": i.cfg.issuer, "discovery_url": i.discovery_url,
                             "client_id": i.cfg.client_id, "scopes": i.cfg.request_scopes,
                             "audience": i.cfg.audiences[0]} for i in self.issuers],
                "static_tokens": True}

    def verify(self, token: str) -> Identity:
        """The identity behind ``token``; :class:`TokenRejected` or
        :class:`ProviderUnavailable` otherwise."""
        try:
            header = jwt.get_unverified_header(token)
            unverified = jwt.decode(token, options={"verify_signature": False})
        except jwt.DecodeError:
            return self._verify_opaque(token)
        issuer = self.by_issuer.get(unverified.get("iss"))
        if issuer is None:
            raise TokenRejected(f"token issuer {str(unverified.get('iss'))[:200]!r} is not "
                                "accepted by this service")
        if issuer.cfg.token_format == "opaque":
            return self._verify_opaque(token, [issuer])
        return issuer.identity(issuer.verify_jwt(token, header))

    def _verify_opaque(self, token: str, issuers: list[_Issuer] | None = None) -> Identity:
        candidates = issuers or [i for i in self.issuers if i.cfg.introspects]
        if not candidates:
            raise TokenRejected("invalid token")
        for issuer in candidates:
            claims = issuer.introspect(token)
            if claims is not None:
                issuer.check_introspected(claims)
                return issuer.identity(claims)
        raise TokenRejected("token is not active (expired, revoked or unknown to the "
                            "identity provider)")


_verifiers: dict[str, Verifier] = {}
_verifiers_lock = threading.Lock()


def verifier(path: str) -> Verifier | None:
    """The process's verifier for the config file ``path`` (None if no file is configured)."""
    if not path:
        return None
    with _verifiers_lock:
        if path not in _verifiers:
            _verifiers[path] = Verifier(load_config(path))
        return _verifiers[path]
