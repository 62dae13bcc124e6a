"""Downloads over HTTPS with retries, hashed while they stream, for the registry fetchers."""

from __future__ import annotations

import hashlib
import os
import ssl
import time
import urllib.error
import urllib.request
from collections.abc import Iterable
from pathlib import Path

USER_AGENT = "acg2vec-build (+https registry client in Python)"
TIMEOUT_S = 60
ATTEMPTS = 3
#: Transient answers worth another try; anything else (404, 403, ...) is final.
RETRY_STATUS = {408, 429, 500, 502, 503, 504}


class DownloadError(RuntimeError):
    """A download failed for good (not found, refused, or still failing after retries)."""

    def __init__(self, url: str, reason: str, status: int | None = None):
        super().__init__(f"{url}: {reason}")
        self.url, self.status = url, status


def _context() -> ssl.SSLContext:
    context = ssl.create_default_context()
    if not context.get_ca_certs():  # a system without a CA store: the certifi bundle pip and requests use
        try:
            import certifi

            context.load_verify_locations(certifi.where())
        except ImportError:
            pass
    return context


def _open(url: str) -> urllib.request.addinfourl:
    if not url.startswith("https://"):
        raise DownloadError(url, "only HTTPS is used: nothing downloaded here is signed, so the transport must be")
    request = urllib.request.Request(url, headers={"User-Agent": USER_AGENT})
    return urllib.request.urlopen(request, timeout=TIMEOUT_S, context=_context())


def _attempts(url: str) -> Iterable[int]:
    for attempt in range(ATTEMPTS):
        if attempt:
            time.sleep(2**attempt)
        yield attempt


def get(url: str) -> bytes:
    """The body of `url` (small documents: registry JSON, indexes)."""
    error: Exception | None = None
    for _ in _attempts(url):
        try:
            with _open(url) as response:
                return response.read()
        except urllib.error.HTTPError as e:
            if e.code not in RETRY_STATUS:
                raise DownloadError(url, f"HTTP {e.code} {e.reason}", e.code) from None
            error = e
        except (urllib.error.URLError, TimeoutError, ConnectionError) as e:
            error = e
    raise DownloadError(url, f"failed {ATTEMPTS} times, last: {error}; is the registry reachable from here?")


def download(url: str, target: Path, algorithm: str) -> str:
    """Streams `url` into `target` (through a temporary file next to it); returns the body's digest (raw hex)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f".{target.name}.{os.getpid()}.part")
    error: Exception | None = None
    try:
        for _ in _attempts(url):
            digest = hashlib.new(algorithm)
            try:
                with _open(url) as response, partial.open("wb") as out:
                    while chunk := response.read(1 << 20):
                        digest.update(chunk)
                        out.write(chunk)
                os.replace(partial, target)
                return digest.hexdigest()
            except urllib.error.HTTPError as e:
                if e.code not in RETRY_STATUS:
                    raise DownloadError(url, f"HTTP {e.code} {e.reason}", e.code) from None
                error = e
            except (urllib.error.URLError, TimeoutError, ConnectionError) as e:
                error = e
        raise DownloadError(url, f"failed {ATTEMPTS} times, last: {error}; is the registry reachable from here?")
    finally:
        partial.unlink(missing_ok=True)
