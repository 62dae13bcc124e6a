"""Bearer-token authentication with scopes (read, write), as one gRPC server interceptor.

Tokens are configured as lines `NAME SCOPES TOKEN` (a tokens file, re-read when it changes, and/or the
ACG2VEC_AUTH_TOKENS env var). TOKEN is `sha256:<64 hex>` (recommended: the server then never holds the token
itself) or the plain token. A presented token is hashed and compared with every entry in constant time. Health
and reflection stay open so that probes and `grpcurl list` work without a token. See docs/security.md.
"""

from __future__ import annotations

import contextvars
import hashlib
import hmac
import logging
import re
import secrets
import threading
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import grpc

from acg2vec_server.transport.handlers import HandlerInterceptor, rebuild

log = logging.getLogger(__name__)

Scope = Literal["read", "write"]
SCOPES: tuple[Scope, ...] = ("read", "write")
#: Plain tokens shorter than this are refused: they could be guessed.
MIN_TOKEN_CHARS = 16
TOKEN_PREFIX = "acg2vec_"
#: Services every caller may use: Kubernetes probes and `grpcurl list/describe` carry no token.
OPEN_SERVICES = frozenset(
    {"grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection", "grpc.reflection.v1.ServerReflection"}
)
#: Every acg2vec RPC and the scope it needs. A method missing here is refused (fail closed); a test checks
#: that this table covers exactly the RPCs of the protos.
METHOD_SCOPES: dict[str, Scope] = {
    "/acg2vec.v1.TaggingService/TagImage": "read",
    "/acg2vec.v1.TaggingService/BatchTagImages": "read",
    "/acg2vec.v1.TaggingService/StreamTagImages": "read",
    "/acg2vec.v1.TaggingService/PredictPopularity": "read",
    "/acg2vec.v1.ImageFeatureService/ExtractImageFeature": "read",
    "/acg2vec.v1.ImageFeatureService/BatchExtractImageFeatures": "read",
    "/acg2vec.v1.ImageFeatureService/StreamExtractImageFeatures": "read",
    "/acg2vec.v1.TextFeatureService/ExtractTextFeature": "read",
    "/acg2vec.v1.TextFeatureService/BatchExtractTextFeatures": "read",
    "/acg2vec.v1.TextFeatureService/StreamExtractTextFeatures": "read",
    "/acg2vec.v1.SearchService/Search": "read",
    "/acg2vec.v1.SearchService/GetIllustration": "read",
    "/acg2vec.v1.SearchService/IndexIllustration": "write",
    "/acg2vec.v1.SearchService/StreamIndexIllustrations": "write",
    "/acg2vec.v1.SearchService/UpdateIllustrationMetadata": "write",
    "/acg2vec.v1.SearchService/DeleteIllustration": "write",
}
_HASHED = re.compile(r"sha256:([0-9a-fA-F]{64})")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}")

#: Name of the token that authenticated the current call ("-" when none): for the access log and per-client limits.
current_client: contextvars.ContextVar[str] = contextvars.ContextVar("acg2vec_client", default="-")


class AuthConfigError(ValueError):
    """The token configuration is unusable; the message says where and how to fix it (never the token)."""


@dataclass(frozen=True)
class TokenEntry:
    name: str
    scopes: frozenset[str]
    digest: bytes  # sha256 of the token


def hash_token(token: str) -> str:
    """The tokens-file form of a token: `sha256:<hex>`."""
    return "sha256:" + hashlib.sha256(token.encode()).hexdigest()


def make_token() -> str:
    """A new random token (256 bits)."""
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def parse_tokens(text: str, source: str) -> list[TokenEntry]:
    """Parses `NAME SCOPES TOKEN` lines (`#` comments, blank lines and `;` separators allowed)."""
    entries: list[TokenEntry] = []
    located = [
        (f"{source} line {n}" + (f" entry {k}" if ";" in line else ""), chunk.strip())
        for n, line in enumerate(text.splitlines(), 1)
        for k, chunk in enumerate(line.split(";"), 1)
    ]
    for where, line in located:
        if not line or line.startswith("#"):
            continue
        parts = line.split()
        if len(parts) != 3:
            raise AuthConfigError(f"{where}: expected 'NAME SCOPES TOKEN' (3 fields), found {len(parts)}")
        name, scope_list, token = parts
        if not _NAME.fullmatch(name):
            raise AuthConfigError(f"{where}: name {name!r} must be 1-64 of A-Z a-z 0-9 _ . @ -")
        scopes = frozenset(s for s in scope_list.split(",") if s)
        if not scopes or not scopes <= set(SCOPES):
            raise AuthConfigError(f"{where} ({name}): scopes must be a comma list of {', '.join(SCOPES)}")
        if hashed := _HASHED.fullmatch(token):
            digest = bytes.fromhex(hashed.group(1))
        elif token.startswith("sha256:"):
            raise AuthConfigError(f"{where} ({name}): a hashed token is 'sha256:' and 64 hex digits")
        elif len(token) < MIN_TOKEN_CHARS:
            raise AuthConfigError(
                f"{where} ({name}): the token is shorter than {MIN_TOKEN_CHARS} characters; "
                "make one with `acg2vec auth make-token`"
            )
        else:
            digest = hashlib.sha256(token.encode()).digest()
        if any(e.name == name for e in entries):
            raise AuthConfigError(f"{where}: the name {name!r} is used twice")
        if any(hmac.compare_digest(e.digest, digest) for e in entries):
            raise AuthConfigError(f"{where} ({name}): the same token is listed twice")
        entries.append(TokenEntry(name, scopes, digest))
    return entries


class TokenStore:
    """The configured tokens; the file is re-read (at most every `recheck_s`) when it changes.

    A changed file that does not parse keeps the previous tokens and logs why, so a bad edit locks nobody out.
    """

    def __init__(self, file: Path | None = None, inline: str = "", recheck_s: float = 2.0):
        self.file = file
        self.recheck_s = recheck_s
        self._inline = parse_tokens(inline, "ACG2VEC_AUTH_TOKENS") if inline.strip() else []
        self._from_file: list[TokenEntry] = []
        self._stamp: tuple[int, int, int] | None = None
        self._checked = 0.0
        self._lock = threading.Lock()
        if file is not None:
            self._from_file = self._read_file(file)
        self._check_unique(self._from_file)

    @staticmethod
    def _file_stamp(file: Path) -> tuple[int, int, int]:
        st = file.stat()  # follows symlinks: a Kubernetes Secret update swaps the link target
        return st.st_mtime_ns, st.st_size, st.st_ino

    def _read_file(self, file: Path) -> list[TokenEntry]:
        try:
            self._stamp = self._file_stamp(file)
            text = file.read_text(encoding="utf-8")
        except OSError as e:
            raise AuthConfigError(f"cannot read the tokens file {file}: {e.strerror}") from None
        return parse_tokens(text, str(file))

    def _check_unique(self, from_file: list[TokenEntry]) -> None:
        names = [e.name for e in self._inline + from_file]
        if len(names) != len(set(names)):
            twice = sorted({n for n in names if names.count(n) > 1})
            raise AuthConfigError(f"token names {twice} appear both in the tokens file and in ACG2VEC_AUTH_TOKENS")

    @property
    def entries(self) -> list[TokenEntry]:
        return self._inline + self._from_file

    def _maybe_reload(self) -> None:
        now = time.monotonic()
        if self.file is None or now - self._checked < self.recheck_s:
            return
        with self._lock:
            self._checked = now
            try:
                if self._file_stamp(self.file) == self._stamp:
                    return
                fresh = self._read_file(self.file)
                self._check_unique(fresh)
            except (OSError, AuthConfigError) as e:
                log.error("tokens file %s changed but is not usable, keeping the previous tokens: %s", self.file, e)
                return
            self._from_file = fresh
            log.info("tokens file %s re-read: %d tokens", self.file, len(self.entries))

    def authenticate(self, token: str) -> TokenEntry | None:
        """The entry of `token`, or None. Compares against every entry, so timing does not tell which matched."""
        self._maybe_reload()
        digest = hashlib.sha256(token.encode()).digest()
        found = None
        for entry in self.entries:
            if hmac.compare_digest(digest, entry.digest):
                found = entry
        return found


def _bearer(metadata: Iterable[Any] | None) -> str | None:
    """The raw `authorization` value (None when absent)."""
    for item in metadata or ():
        key, value = item
        if key == "authorization":
            return value if isinstance(value, str) else value.decode("latin-1")
    return None


Check = tuple[grpc.StatusCode, str] | TokenEntry


def check_call(store: TokenStore, method: str, metadata: Iterable[Any] | None) -> Check | None:
    """None for open methods, the token's entry when allowed, else (code, message) for the caller."""
    service = method.lstrip("/").split("/", 1)[0]
    if service in OPEN_SERVICES:
        return None
    header = _bearer(metadata)
    if header is None:
        return grpc.StatusCode.UNAUTHENTICATED, (
            f"{method} needs a token: send the metadata 'authorization: Bearer <token>' "
            "(ask the operator for a token; see docs/security.md)"
        )
    scheme, _, token = header.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        return grpc.StatusCode.UNAUTHENTICATED, "the authorization metadata must be 'Bearer <token>'"
    entry = store.authenticate(token) if len(token) <= 1024 else None
    if entry is None:
        return grpc.StatusCode.UNAUTHENTICATED, (
            "the token is not valid for this server (mistyped, revoked or for another deployment); "
            "ask the operator for a valid token"
        )
    scope = METHOD_SCOPES.get(method)
    if scope is None:
        return grpc.StatusCode.PERMISSION_DENIED, f"{method} has no scope assigned: no token may call it"
    if scope not in entry.scopes:
        return grpc.StatusCode.PERMISSION_DENIED, (
            f"token {entry.name!r} (scopes: {','.join(sorted(entry.scopes))}) lacks the {scope!r} scope that "
            f"{method} needs; ask the operator for a token with the {scope!r} scope"
        )
    return entry


def _deny(handler: grpc.RpcMethodHandler, code: grpc.StatusCode, message: str) -> grpc.RpcMethodHandler:
    """A handler of the same kind as `handler` that ends the call with `code` before reading any request."""

    async def unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
        await context.abort(code, message)

    async def stream(request: Any, context: grpc.aio.ServicerContext) -> Any:
        await context.abort(code, message)
        yield  # pragma: no cover - makes this an async generator; abort raises

    return rebuild(handler, unary=lambda _: unary, stream=lambda _: stream)


def _as_client(handler: grpc.RpcMethodHandler, name: str) -> grpc.RpcMethodHandler:
    """The same handler, with `current_client` set to the token's name while it runs."""

    def unary(fn: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
        async def run(request: Any, context: grpc.aio.ServicerContext) -> Any:
            current_client.set(name)
            return await fn(request, context)

        return run

    def stream(fn: Callable[..., Any]) -> Callable[..., Any]:
        async def run(request: Any, context: grpc.aio.ServicerContext) -> Any:
            current_client.set(name)
            async for response in fn(request, context):
                yield response

        return run

    return rebuild(handler, unary=unary, stream=stream)


class AuthInterceptor(HandlerInterceptor):
    """Checks the bearer token and its scope before a handler runs; the token itself is never logged."""

    def __init__(self, store: TokenStore):
        self.store = store

    def wrap(self, handler: grpc.RpcMethodHandler, details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler:
        verdict = check_call(self.store, details.method, details.invocation_metadata)
        if verdict is None:
            return handler
        if isinstance(verdict, TokenEntry):
            return _as_client(handler, verdict.name)
        return _deny(handler, *verdict)
