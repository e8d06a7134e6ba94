"""Configuration from environment variables, validated once, with clear errors.

Every variable is documented in README.md ("Configuration").
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from chalicelib.errors import ConfigError
from chalicelib.welcome import MAX_DELAY_SECONDS

DEFAULT_STORE = "sqlite:///.local/connections.db"
#: What a token without the capability claim may do: everything, everywhere (v1's behaviour).
DEFAULT_CAPABILITY = '{"*": ["subscribe", "publish", "history", "presence"]}'

#: HS256 secrets shorter than this are refused (RFC 7518 3.2: at least the hash size, 256 bits).
MIN_SECRET_BYTES = 32
#: Default and ceiling of ``WS_AUTH_MAX_TOKEN_LIFETIME_SECONDS`` (``exp - iat``): 24 h, 30 days.
DEFAULT_MAX_TOKEN_LIFETIME_SECONDS = 86400
MAX_TOKEN_LIFETIME_CEILING_SECONDS = 30 * 86400
#: Values of Cognito's ``token_use`` claim.
TOKEN_USES = ("access", "id")
_LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})
#: ``WS_AUTH_SECRET_PARAMETER``: an SSM parameter name (``/a/b`` or ``a``) or its ARN.
_SSM_PARAMETER = re.compile(
    r"(arn:aws[a-z-]*:ssm:[a-z0-9-]+:\d{12}:parameter/)?/?[A-Za-z0-9_.\-/]{1,1011}")
#: ``WS_AUTH_SECRET_ARN``: a Secrets Manager secret ARN.
_SECRET_ARN = re.compile(
    r"arn:aws[a-z-]*:secretsmanager:[a-z0-9-]+:\d{12}:secret:[A-Za-z0-9/_+=.@-]+")


@dataclass(frozen=True)
class Settings:
    connections_store: str
    management_endpoint: str | None
    welcome_queue_url: str | None
    welcome_delay_seconds: int
    fanout_concurrency: int
    delivery_max_attempts: int
    sweep_idle_seconds: int
    sweep_batch: int
    region: str | None
    in_lambda: bool
    # ---- security (docs/security.md); repr=False keeps the secret out of logs and tracebacks
    auth_secret: str | None = field(default=None, repr=False)
    #: Where the HS256 secret is fetched from instead (chalicelib/secrets.py): an SSM parameter
    #: name or ARN, or a Secrets Manager secret ARN.  Names, not secrets.
    auth_secret_parameter: str | None = None
    auth_secret_arn: str | None = None
    auth_jwks_url: str | None = None
    auth_audience: str | None = None
    auth_issuer: str | None = None
    auth_leeway_seconds: int = 30
    auth_client_id: str | None = None
    auth_token_use: str | None = None
    #: 0 means no maximum (and ``iat`` is then not required).
    auth_max_token_lifetime_seconds: int = DEFAULT_MAX_TOKEN_LIFETIME_SECONDS
    allowed_origins: tuple[str, ...] = ()
    rate_limit: int = 100
    rate_window_seconds: int = 10
    max_rooms_per_connection: int = 20
    max_data_bytes: int = 32768
    #: Open connections per user (0: no cap): $connect answers 429 past it.
    max_connections_per_user: int = 10
    #: Members per room (0: no cap): join answers room_full past it.
    max_room_members: int = 0
    # ---- large rooms (chalicelib/fanout.py)
    fanout_queue_url: str | None = None
    fanout_inline_max: int = 500
    fanout_batch_size: int = 250
    # ---- protocol v2 (chalicelib/rooms.py)
    history_max_messages: int = 100
    history_ttl_seconds: int = 86400
    presence: bool = True
    dedupe_seconds: int = 86400
    # ---- room capabilities (chalicelib/capabilities.py)
    capability_claim: str = "rooms"
    default_capability: str = DEFAULT_CAPABILITY

    @property
    def auth_enabled(self) -> bool:
        return (self.auth_secret is not None or self.auth_jwks_url is not None
                or self.auth_secret_source is not None)

    @property
    def auth_secret_source(self) -> str | None:
        """The SSM parameter or Secrets Manager ARN the HS256 secret is fetched from."""
        return self.auth_secret_parameter or self.auth_secret_arn

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> Settings:
        """Read and validate the environment; raises :class:`ConfigError` naming the variable."""
        in_lambda = bool(environ.get("AWS_LAMBDA_FUNCTION_NAME"))
        store = environ.get("CONNECTIONS_STORE", "")
        if not store:
            if in_lambda:
                raise ConfigError(
                    "CONNECTIONS_STORE is not set: deployed stages need dynamodb://TABLE"
                )
            store = DEFAULT_STORE
        secret = environ.get("WS_AUTH_SECRET") or None
        jwks_url = (environ.get("WS_AUTH_JWKS_URL") or "").strip() or None
        parameter = (environ.get("WS_AUTH_SECRET_PARAMETER") or "").strip() or None
        secret_arn = (environ.get("WS_AUTH_SECRET_ARN") or "").strip() or None
        _check_secret_source(secret, jwks_url, parameter, secret_arn)
        fetched = parameter is not None or secret_arn is not None
        _check_auth(secret, jwks_url, in_lambda and not fetched)
        scope = _TokenScope.from_env(environ)
        if in_lambda:
            scope.check_deployed()
        return cls(
            connections_store=store,
            management_endpoint=environ.get("WS_MANAGEMENT_ENDPOINT") or None,
            welcome_queue_url=environ.get("WELCOME_QUEUE_URL") or None,
            welcome_delay_seconds=_int(environ, "WELCOME_DELAY_SECONDS", 1, 0, MAX_DELAY_SECONDS),
            fanout_concurrency=_int(environ, "FANOUT_CONCURRENCY", 32, 1, 512),
            delivery_max_attempts=_int(environ, "DELIVERY_MAX_ATTEMPTS", 4, 1, 10),
            sweep_idle_seconds=_int(environ, "SWEEP_IDLE_SECONDS", 300, 0, 86400),
            sweep_batch=_int(environ, "SWEEP_BATCH", 500, 1, 10000),
            region=environ.get("AWS_REGION") or environ.get("AWS_DEFAULT_REGION") or None,
            in_lambda=in_lambda,
            auth_secret=secret,
            auth_secret_parameter=parameter,
            auth_secret_arn=secret_arn,
            auth_jwks_url=jwks_url,
            auth_audience=scope.audience,
            auth_issuer=scope.issuer,
            auth_leeway_seconds=_int(environ, "WS_AUTH_LEEWAY_SECONDS", 30, 0, 300),
            auth_client_id=scope.client_id,
            auth_token_use=scope.token_use,
            auth_max_token_lifetime_seconds=_int(
                environ, "WS_AUTH_MAX_TOKEN_LIFETIME_SECONDS", DEFAULT_MAX_TOKEN_LIFETIME_SECONDS,
                0, MAX_TOKEN_LIFETIME_CEILING_SECONDS,
            ),
            allowed_origins=_origins(environ.get("WS_ALLOWED_ORIGINS", "")),
            rate_limit=_int(environ, "WS_RATE_LIMIT", 100, 0, 100000),
            rate_window_seconds=_int(environ, "WS_RATE_WINDOW_SECONDS", 10, 1, 3600),
            max_rooms_per_connection=_int(environ, "WS_MAX_ROOMS_PER_CONNECTION", 20, 1, 1000),
            max_data_bytes=_int(environ, "WS_MAX_DATA_BYTES", 32768, 1, 131072),
            max_connections_per_user=_int(environ, "WS_MAX_CONNECTIONS_PER_USER", 10, 0, 10000),
            max_room_members=_int(environ, "WS_MAX_ROOM_MEMBERS", 0, 0, 10_000_000),
            fanout_queue_url=environ.get("FANOUT_QUEUE_URL") or None,
            fanout_inline_max=_int(environ, "FANOUT_INLINE_MAX", 500, 1, 100000),
            fanout_batch_size=_int(environ, "FANOUT_BATCH_SIZE", 250, 1, 5000),
            history_max_messages=_int(environ, "HISTORY_MAX_MESSAGES", 100, 0, 1000),
            history_ttl_seconds=_int(environ, "HISTORY_TTL_SECONDS", 86400, 60, 1209600),
            presence=_switch(environ, "PRESENCE", True),
            dedupe_seconds=_int(environ, "DEDUPE_SECONDS", 86400, 0, 1209600),
            capability_claim=(environ.get("WS_CAPABILITY_CLAIM") or "rooms").strip(),
            default_capability=_capability(environ.get("WS_DEFAULT_CAPABILITY") or ""),
        )


def _int(environ: Mapping[str, str], name: str, default: int, low: int, high: int) -> int:
    raw = environ.get(name, "")
    if raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not an integer") from None
    if not low <= value <= high:
        raise ConfigError(f"{name}={value} is outside {low}..{high}")
    return value


def _capability(raw: str) -> str:
    """``WS_DEFAULT_CAPABILITY``: validated here so a bad value names the variable at start."""
    from chalicelib.capabilities import Capabilities, CapabilityError

    if not raw.strip():
        return DEFAULT_CAPABILITY
    try:
        Capabilities.parse_json(raw)
    except CapabilityError as exc:
        raise ConfigError(f"WS_DEFAULT_CAPABILITY {exc}") from None
    return raw.strip()


def _switch(environ: Mapping[str, str], name: str, default: bool) -> bool:
    raw = environ.get(name, "").strip().lower()
    if raw == "":
        return default
    if raw in ("on", "true", "1", "yes"):
        return True
    if raw in ("off", "false", "0", "no"):
        return False
    raise ConfigError(f"{name}={raw!r} must be on or off")


def _check_secret_source(
    secret: str | None, jwks_url: str | None, parameter: str | None, secret_arn: str | None
) -> None:
    """``WS_AUTH_SECRET_PARAMETER`` / ``WS_AUTH_SECRET_ARN``: one source, and no other mode."""
    given = [name for name, value in (
        ("WS_AUTH_SECRET", secret), ("WS_AUTH_JWKS_URL", jwks_url),
        ("WS_AUTH_SECRET_PARAMETER", parameter), ("WS_AUTH_SECRET_ARN", secret_arn),
    ) if value is not None]
    if (parameter is not None or secret_arn is not None) and len(given) > 1:
        raise ConfigError(
            f"{' and '.join(given)} are all set: choose one (a JWKS, the recommended mode; or"
            " an HS256 secret: WS_AUTH_SECRET_PARAMETER from SSM, WS_AUTH_SECRET_ARN from"
            " Secrets Manager, or WS_AUTH_SECRET)"
        )
    if parameter is not None and not _SSM_PARAMETER.fullmatch(parameter):
        raise ConfigError(
            f"WS_AUTH_SECRET_PARAMETER={parameter!r} is not an SSM parameter name or ARN"
            " (e.g. /ws-rooms/prod/auth-secret)"
        )
    if secret_arn is not None and not _SECRET_ARN.fullmatch(secret_arn):
        raise ConfigError(
            f"WS_AUTH_SECRET_ARN={secret_arn!r} is not a Secrets Manager secret ARN"
            " (arn:aws:secretsmanager:REGION:ACCOUNT:secret:NAME-SUFFIX)"
        )


def _check_auth(secret: str | None, jwks_url: str | None, in_lambda: bool) -> None:
    if secret is not None and jwks_url is not None:
        raise ConfigError(
            "WS_AUTH_SECRET and WS_AUTH_JWKS_URL are both set: choose one (HS256 with a shared"
            " secret, or RS256/ES256 against a JWKS)"
        )
    if secret is not None and len(secret.encode("utf-8")) < MIN_SECRET_BYTES:
        raise ConfigError(
            f"WS_AUTH_SECRET is shorter than {MIN_SECRET_BYTES} bytes; use a random secret of at"
            " least 256 bits (for example: python -c 'import secrets; print(secrets.token_urlsafe"
            "(32))')"
        )
    if jwks_url is not None:
        parts = urlsplit(jwks_url)
        local_http = parts.scheme == "http" and (parts.hostname or "") in _LOOPBACK_HOSTS
        if not parts.hostname or not (parts.scheme == "https" or local_http):
            raise ConfigError(
                f"WS_AUTH_JWKS_URL={jwks_url!r} must be an https:// URL (http:// only on"
                " 127.0.0.1/localhost, for tests)"
            )
    if in_lambda and secret is None and jwks_url is None:
        raise ConfigError(
            "authentication is not configured: a deployed stage (AWS_LAMBDA_FUNCTION_NAME is set)"
            " refuses to run without an HS256 secret (WS_AUTH_SECRET_PARAMETER from SSM,"
            " WS_AUTH_SECRET_ARN from Secrets Manager, or WS_AUTH_SECRET) or WS_AUTH_JWKS_URL"
            " (RS256/ES256, the recommended mode); see docs/security.md"
        )


@dataclass(frozen=True)
class _TokenScope:
    """Who a token must be for: ``aud``, ``iss``, Cognito's ``client_id`` and ``token_use``."""

    audience: str | None
    issuer: str | None
    client_id: str | None
    token_use: str | None

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> _TokenScope:
        """Read the four variables; raises :class:`ConfigError` for a bad combination."""
        scope = cls(
            audience=(environ.get("WS_AUTH_AUDIENCE") or "").strip() or None,
            issuer=(environ.get("WS_AUTH_ISSUER") or "").strip() or None,
            client_id=(environ.get("WS_AUTH_CLIENT_ID") or "").strip() or None,
            token_use=(environ.get("WS_AUTH_TOKEN_USE") or "").strip() or None,
        )
        if scope.token_use is not None and scope.token_use not in TOKEN_USES:
            raise ConfigError(
                f"WS_AUTH_TOKEN_USE={scope.token_use!r} must be one of {', '.join(TOKEN_USES)}"
                " (Cognito's token_use claim)"
            )
        if scope.token_use == "id" and scope.client_id is not None:
            raise ConfigError(
                "WS_AUTH_CLIENT_ID is checked against the client_id claim, which only Cognito"
                " access tokens carry; with WS_AUTH_TOKEN_USE=id set WS_AUTH_AUDIENCE to the app"
                " client id instead (ID tokens carry it in aud)"
            )
        return scope

    def check_deployed(self) -> None:
        """A deployed stage must pin the issuer and the app the token was minted for; raises
        :class:`ConfigError` naming the missing variables."""
        cognito = self.client_id is not None and self.token_use is not None
        missing = []
        if self.issuer is None:
            missing.append("WS_AUTH_ISSUER")
        if self.audience is None and not cognito:
            missing.append(
                "WS_AUTH_AUDIENCE (or WS_AUTH_CLIENT_ID and WS_AUTH_TOKEN_USE for Cognito access"
                " tokens)"
            )
        if missing:
            raise ConfigError(
                "token scope is not configured: a deployed stage (AWS_LAMBDA_FUNCTION_NAME is"
                " set) requires WS_AUTH_ISSUER and either WS_AUTH_AUDIENCE or WS_AUTH_CLIENT_ID +"
                " WS_AUTH_TOKEN_USE, so tokens minted for another app or tenant are refused;"
                f" missing: {'; '.join(missing)}; see docs/security.md"
            )


def _origins(raw: str) -> tuple[str, ...]:
    """``WS_ALLOWED_ORIGINS``: comma-separated origins, normalised like :func:`normalize_origin`."""
    origins = []
    for item in raw.split(","):
        item = item.strip()
        if not item:
            continue
        parts = urlsplit(item)
        if parts.scheme not in ("http", "https") or not parts.netloc or parts.path not in (
            "",
            "/",
        ) or parts.query or parts.fragment:
            raise ConfigError(
                f"WS_ALLOWED_ORIGINS: {item!r} is not an origin (expected scheme://host[:port],"
                " for example https://app.example.com)"
            )
        origins.append(normalize_origin(item))
    return tuple(sorted(set(origins)))


def normalize_origin(origin: str) -> str:
    """Lower-case, without a trailing slash: how origins are compared."""
    return origin.strip().rstrip("/").lower()
