"""``python -m localgateway.token``: mint an HS256 development token for ``?token=...``.

    export WS_AUTH_SECRET="$(python -c 'import secrets; print(secrets.token_urlsafe(32))')"
    make run                                    # the gateway's app sees WS_AUTH_SECRET
    TOKEN="$(.venv/bin/python -m localgateway.token --sub alice)"
    .venv/bin/python -m websockets "ws://127.0.0.1:8001/api?token=$TOKEN"

The secret comes from ``--secret-env`` (default ``WS_AUTH_SECRET``), never from the command line
(which ends up in shell history and ``ps``).  Development tooling only: production tokens come
from your identity provider (Cognito, OIDC), verified against ``WS_AUTH_JWKS_URL``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Mapping, Sequence
from typing import Any

MIN_SECRET_BYTES = 32  # RFC 7518 3.2: an HS256 key is at least 256 bits


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m localgateway.token", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sub", required=True, help="user id (the token's 'sub' claim)")
    p.add_argument("--ttl", type=int, default=3600, help="seconds until 'exp' (default: 3600)")
    p.add_argument("--aud", default=None, help="'aud' claim (match WS_AUTH_AUDIENCE)")
    p.add_argument("--iss", default=None, help="'iss' claim (match WS_AUTH_ISSUER)")
    p.add_argument("--secret-env", default="WS_AUTH_SECRET",
                   help="environment variable holding the HS256 secret (default: WS_AUTH_SECRET)")
    return p


def mint(
    secret: str,
    sub: str,
    *,
    ttl: int = 3600,
    audience: str | None = None,
    issuer: str | None = None,
    now: float | None = None,
) -> str:
    """An HS256 JWT with ``sub``, ``iat``, ``nbf``, ``exp`` (and ``aud``/``iss`` when given)."""
    import jwt

    issued = int(time.time() if now is None else now)
    claims: dict[str, Any] = {"sub": sub, "iat": issued, "nbf": issued, "exp": issued + ttl}
    if audience:
        claims["aud"] = audience
    if issuer:
        claims["iss"] = issuer
    return jwt.encode(claims, secret, algorithm="HS256")


def main(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    env = os.environ if environ is None else environ
    secret = env.get(args.secret_env, "")
    if len(secret.encode("utf-8")) < MIN_SECRET_BYTES:
        print(f"error: set {args.secret_env} to the app's secret (at least {MIN_SECRET_BYTES}"
              " bytes; the app refuses shorter ones)", file=sys.stderr)
        return 2
    if not args.sub or args.ttl < 1:
        print("error: --sub must be non-empty and --ttl positive", file=sys.stderr)
        return 2
    print(mint(secret, args.sub, ttl=args.ttl, audience=args.aud, issuer=args.iss))
    return 0


if __name__ == "__main__":
    sys.exit(main())
