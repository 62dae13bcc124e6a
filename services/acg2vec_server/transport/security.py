"""Turns the security settings into server credentials and the auth interceptor, or refuses to start.

Rules (docs/security.md): auth is on by default and needs at least one token; `auth=none` is for local use and
is refused on an address beyond loopback unless mutual TLS authenticates every client; plaintext tokens on a
non-loopback address are allowed (a mesh may terminate TLS) but warned about.
"""

from __future__ import annotations

import ipaddress
import logging
from dataclasses import dataclass

import grpc

from acg2vec_server.settings import Settings
from acg2vec_server.transport.auth import AuthConfigError, AuthInterceptor, TokenStore
from acg2vec_server.transport.tls import TlsConfigError, server_credentials

log = logging.getLogger(__name__)


class SecurityConfigError(ValueError):
    """The server must not start with this configuration; the message says what to change."""


def is_loopback(listen: str) -> bool:
    """True when host:port binds only the loopback interface (127.0.0.0/8, ::1, localhost)."""
    host = listen.rsplit(":", 1)[0].strip("[]").lower()
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a hostname, "" or 0.0.0.0-like wildcard: assume reachable from outside


@dataclass
class Security:
    credentials: grpc.ServerCredentials | None
    interceptor: AuthInterceptor | None
    warnings: list[str]

    @property
    def tls(self) -> bool:
        return self.credentials is not None

    @classmethod
    def from_settings(cls, s: Settings) -> Security:
        """Checks and loads everything (files included) without side effects; raises SecurityConfigError."""
        try:
            credentials = server_credentials(s.tls_cert_file, s.tls_key_file, s.tls_client_ca_file)
        except TlsConfigError as e:
            raise SecurityConfigError(str(e)) from None
        mutual = s.tls_client_ca_file is not None
        if s.auth == "none":
            if not is_loopback(s.listen) and not mutual:
                raise SecurityConfigError(
                    f"auth=none would let anyone who reaches {s.listen} read and write without a token; it is "
                    "allowed on loopback only (listen on 127.0.0.1) or with mutual TLS (tls_client_ca_file). "
                    "Configure tokens instead: ACG2VEC_AUTH_TOKENS_FILE (see docs/security.md)"
                )
            if mutual:
                warning = f"auth=none: any client with a certificate from {s.tls_client_ca_file} may read and write"
            else:
                warning = "auth=none: no authentication (local mode, loopback only; see docs/security.md)"
            return cls(credentials, None, [warning])
        try:
            store = TokenStore(s.auth_tokens_file, s.auth_tokens.get_secret_value())
        except AuthConfigError as e:
            raise SecurityConfigError(str(e)) from None
        if not store.entries:
            where = f"the tokens file {s.auth_tokens_file} has no entries" if s.auth_tokens_file else ""
            raise SecurityConfigError(
                f"auth is on (the default) but no tokens are configured{where and ' (' + where + ')'}: "
                "make one with `acg2vec auth make-token NAME "
                "--scopes read,write`, put its line into a tokens file and set ACG2VEC_AUTH_TOKENS_FILE (or "
                "--auth-tokens-file); for local use only, ACG2VEC_AUTH=none on 127.0.0.1. See docs/security.md"
            )
        warnings = []
        if credentials is None and not is_loopback(s.listen):
            warnings.append(
                f"tokens travel in plaintext on {s.listen}: turn TLS on (ACG2VEC_TLS_CERT_FILE, ACG2VEC_TLS_KEY_FILE) "
                "unless a proxy or mesh terminates TLS in front of this server"
            )
        return cls(credentials, AuthInterceptor(store), warnings)

    def log_summary(self) -> None:
        for warning in self.warnings:
            log.warning("%s", warning)
        if self.interceptor is not None:
            entries = self.interceptor.store.entries
            names = ", ".join(f"{e.name}({','.join(sorted(e.scopes))})" for e in entries)
            log.info("token auth on: %d tokens: %s", len(entries), names)
