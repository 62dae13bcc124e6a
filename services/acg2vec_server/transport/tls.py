"""TLS and mutual TLS for the gRPC port, from PEM files that are re-read when they change (certificate rotation).

gRPC calls the fetcher before every new connection's handshake; it only stats the files and re-reads them when
one changed, and a changed set that does not load keeps the previous certificate (and logs why).
"""

from __future__ import annotations

import logging
import ssl
import threading
from dataclasses import dataclass, field
from pathlib import Path

import grpc

log = logging.getLogger(__name__)


class TlsConfigError(ValueError):
    """The TLS files are unusable; the message names the file and the fix."""


def _no_password() -> str:
    raise TlsConfigError("encrypted private keys are not supported: decrypt it (openssl pkey -in KEY -out KEY)")


def _read(path: Path, what: str, setting: str) -> bytes:
    try:
        data = path.read_bytes()
    except OSError as e:
        raise TlsConfigError(f"cannot read the {what} {path} ({setting}): {e.strerror}") from None
    if b"-----BEGIN " not in data:
        raise TlsConfigError(f"the {what} {path} ({setting}) is not PEM (no '-----BEGIN' line)")
    return data


@dataclass
class CertificateFiles:
    cert: Path
    key: Path
    client_ca: Path | None = None
    _stamp: tuple = ()
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def _stamps(self) -> tuple:
        paths = [self.cert, self.key] + ([self.client_ca] if self.client_ca else [])
        out = []
        for p in paths:
            st = p.stat()  # follows symlinks (Kubernetes swaps a Secret volume's ..data link)
            out.append((st.st_mtime_ns, st.st_size, st.st_ino))
        return tuple(out)

    def load(self) -> grpc.ServerCertificateConfiguration:
        """Reads and checks the files (the pair must match; the CA must parse) with OpenSSL via `ssl`."""
        cert = _read(self.cert, "certificate", "tls_cert_file")
        key = _read(self.key, "private key", "tls_key_file")
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        try:
            context.load_cert_chain(self.cert, self.key, password=_no_password)
        except ssl.SSLError as e:
            raise TlsConfigError(
                f"the certificate {self.cert} and private key {self.key} do not load together ({e.reason or e}): "
                "check that the key belongs to the certificate and both are PEM"
            ) from None
        ca = None
        if self.client_ca is not None:
            ca = _read(self.client_ca, "client CA bundle", "tls_client_ca_file")
            try:
                context.load_verify_locations(cafile=self.client_ca)
            except ssl.SSLError as e:
                raise TlsConfigError(f"the client CA bundle {self.client_ca} does not load ({e.reason or e})") from None
        self._stamp = self._stamps()
        return grpc.ssl_server_certificate_configuration([(key, cert)], root_certificates=ca)

    def fetch(self) -> grpc.ServerCertificateConfiguration | None:
        """gRPC's per-handshake callback: a new configuration when a file changed, else None (keep the current)."""
        try:
            with self._lock:
                if self._stamps() == self._stamp:
                    return None
                config = self.load()
        except (OSError, TlsConfigError) as e:
            log.error("TLS files changed but do not load, keeping the previous certificate: %s", e)
            return None
        log.info("TLS certificate re-read from %s", self.cert)
        return config


def server_credentials(
    cert_file: Path | None, key_file: Path | None, client_ca_file: Path | None
) -> grpc.ServerCredentials | None:
    """TLS credentials (mutual when client_ca_file is given), or None for plaintext. Raises TlsConfigError."""
    if cert_file is None and key_file is None:
        if client_ca_file is not None:
            raise TlsConfigError(
                "tls_client_ca_file (mutual TLS) needs TLS: set tls_cert_file and tls_key_file as well"
            )
        return None
    if cert_file is None or key_file is None:
        missing = "tls_key_file" if key_file is None else "tls_cert_file"
        raise TlsConfigError(f"TLS needs tls_cert_file and tls_key_file: set {missing} (ACG2VEC_{missing.upper()})")
    files = CertificateFiles(cert_file, key_file, client_ca_file)
    return grpc.dynamic_ssl_server_credentials(
        files.load(), files.fetch, require_client_authentication=client_ca_file is not None
    )
