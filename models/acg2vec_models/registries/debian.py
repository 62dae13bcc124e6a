"""Debian packages without apt or dpkg.

Where from: the mirrors configured for apt (/etc/apt/sources.list and sources.list.d/*.list one-line entries,
sources.list.d/*.sources deb822 entries; `deb` types, enabled ones), in their order, then Debian's own
https://deb.debian.org/debian. Always over HTTPS: an `http://` mirror is asked as `https://` (Debian's mirrors serve
both), and one that does not answer is skipped. The suite is pinned (bookworm by default, the release the default
models were measured on), so that every machine, Debian or not, builds from the same packages.

How: the suite's `Packages.xz` index for the machine's architecture (it lists `Architecture: all` packages too) gives
each package's newest version (dpkg's version order), its file and its SHA256; the .deb is downloaded and checked
against that SHA256 and size. A .deb is an `ar` archive (debian-binary, control.tar.*, data.tar.*); `extract`
unpacks data.tar.{xz,gz,bz2,zst} (zst needs the `zstandard` module; Debian's packages use xz) with tarfile's `data`
filter, as `dpkg-deb -x` would, without running any maintainer script.

Trust: apt also checks the suite's signed InRelease file with the archive keyring; that needs gpg, which this module
does not assume, so authenticity rests on HTTPS to the mirror and the index's SHA256 of every package.
"""

from __future__ import annotations

import bz2
import gzip
import hashlib
import io
import lzma
import platform
import string
import tarfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from acg2vec_models.registries import http

DEFAULT_MIRROR = "https://deb.debian.org/debian"
SUITE = "bookworm"
COMPONENT = "main"
APT_DIR = Path("/etc/apt")
#: platform.machine() -> Debian architecture
ARCHITECTURES = {
    "x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64", "armv7l": "armhf",
    "ppc64le": "ppc64el", "s390x": "s390x", "i686": "i386", "i386": "i386", "riscv64": "riscv64",
}  # fmt: skip


@dataclass(frozen=True)
class Package:
    name: str
    version: str
    architecture: str
    filename: str
    sha256: str
    size: int
    mirror: str

    @property
    def url(self) -> str:
        return f"{self.mirror}/{self.filename}"


def architecture() -> str:
    machine = platform.machine().lower()
    if machine not in ARCHITECTURES:
        raise RuntimeError(f"no Debian architecture known for this machine ({machine})")
    return ARCHITECTURES[machine]


# ------------------------------------------------------------------------------------------------ sources


def _one_line_uris(text: str) -> Iterator[str]:
    """URIs of `deb [options] uri suite [components]` lines."""
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line.startswith("deb "):
            continue
        rest = line[4:].strip()
        if rest.startswith("["):
            rest = rest.split("]", 1)[1].strip() if "]" in rest else ""
        if rest:
            yield rest.split()[0]


def _deb822_uris(text: str) -> Iterator[str]:
    """URIs of deb822 paragraphs with Types: deb (and not Enabled: no)."""
    for paragraph in text.split("\n\n"):
        fields: dict[str, str] = {}
        key = ""
        for line in paragraph.splitlines():
            if line.startswith("#") or not line.strip():
                continue
            if line[0] in " \t" and key:  # a continuation line
                fields[key] += " " + line.strip()
                continue
            key, _, value = line.partition(":")
            key = key.strip().lower()
            fields[key] = value.strip()
        if "deb" in fields.get("types", "").split() and fields.get("enabled", "yes").lower() != "no":
            yield from fields.get("uris", "").split()


def configured_mirrors(apt_dir: Path = APT_DIR) -> list[str]:
    """The mirrors apt is configured with, in order, as HTTPS URLs (no duplicates), then Debian's own."""
    uris: list[str] = []
    listing = apt_dir / "sources.list.d"
    if (apt_dir / "sources.list").is_file():
        uris += _one_line_uris((apt_dir / "sources.list").read_text(errors="replace"))
    for path in sorted(listing.glob("*.list")) if listing.is_dir() else []:
        uris += _one_line_uris(path.read_text(errors="replace"))
    for path in sorted(listing.glob("*.sources")) if listing.is_dir() else []:
        uris += _deb822_uris(path.read_text(errors="replace"))
    mirrors: list[str] = []
    for uri in [*uris, DEFAULT_MIRROR]:
        if uri.startswith("http://"):
            uri = "https://" + uri[len("http://") :]
        if uri.startswith("https://") and uri.rstrip("/") not in mirrors:
            mirrors.append(uri.rstrip("/"))
    return mirrors


# ------------------------------------------------------------------------------------------------ versions


def _order(c: str) -> int:
    if c == "" or c in string.digits:
        return 0
    if c in string.ascii_letters:
        return ord(c)
    if c == "~":
        return -1
    return ord(c) + 256


def _verrevcmp(a: str, b: str) -> int:
    """dpkg's verrevcmp (lib/dpkg/version.c): non-digit runs by _order, digit runs numerically."""
    i = j = 0
    while i < len(a) or j < len(b):
        while (i < len(a) and a[i] not in string.digits) or (j < len(b) and b[j] not in string.digits):
            ac, bc = _order(a[i] if i < len(a) else ""), _order(b[j] if j < len(b) else "")
            if ac != bc:
                return ac - bc
            i, j = i + 1, j + 1
        di = i
        while i < len(a) and a[i] in string.digits:
            i += 1
        dj = j
        while j < len(b) and b[j] in string.digits:
            j += 1
        x, y = int(a[di:i] or 0), int(b[dj:j] or 0)
        if x != y:
            return 1 if x > y else -1
    return 0


def _split_version(version: str) -> tuple[int, str, str]:
    epoch, _, rest = version.rpartition(":") if ":" in version else ("0", "", version)
    upstream, _, revision = rest.rpartition("-") if "-" in rest else (rest, "", "")
    return int(epoch or 0), upstream, revision


def compare_versions(a: str, b: str) -> int:
    """<0, 0 or >0 as Debian version a sorts before, with or after b (epoch, upstream version, revision)."""
    (ea, ua, ra), (eb, ub, rb) = _split_version(a), _split_version(b)
    if ea != eb:
        return ea - eb
    return _verrevcmp(ua, ub) or _verrevcmp(ra, rb)


# ------------------------------------------------------------------------------------------------ index


def parse_index(text: Iterator[str], names: set[str], mirror: str) -> dict[str, Package]:
    """The newest version of each wanted package in a Packages index (deb822 paragraphs)."""
    found: dict[str, Package] = {}
    fields: dict[str, str] = {}

    def finish() -> None:
        if fields.get("package") in names:
            package = Package(
                fields["package"], fields["version"], fields.get("architecture", ""), fields["filename"],
                fields["sha256"], int(fields["size"]), mirror,
            )  # fmt: skip
            current = found.get(package.name)
            if current is None or compare_versions(package.version, current.version) > 0:
                found[package.name] = package

    for line in text:
        line = line.rstrip("\n")
        if not line:
            finish()
            fields = {}
        elif line[0] not in " \t":
            key, _, value = line.partition(":")
            fields[key.lower()] = value.strip()
    finish()
    return found


def find(
    names: list[str], suite: str = SUITE, component: str = COMPONENT, apt_dir: Path = APT_DIR
) -> dict[str, Package]:
    """Each package's newest version in the first mirror that serves the suite's index."""
    arch, tried = architecture(), []
    for mirror in configured_mirrors(apt_dir):
        base = f"{mirror}/dists/{suite}/{component}/binary-{arch}/Packages"
        try:
            compressed = http.get(base + ".xz")
        except http.DownloadError as e:
            tried.append(f"{mirror} ({e})")
            continue
        with io.TextIOWrapper(lzma.LZMAFile(io.BytesIO(compressed)), encoding="utf-8") as text:
            found = parse_index(text, set(names), mirror)
        missing = sorted(set(names) - set(found))
        if missing:
            raise RuntimeError(f"{', '.join(missing)} not in {suite}/{component} of {mirror} ({arch})")
        return found
    raise RuntimeError(
        f"no mirror served Debian {suite}/{component} over HTTPS; tried: {'; '.join(tried)}. Add an HTTPS Debian "
        "mirror to /etc/apt/sources.list.d/ or make https://deb.debian.org reachable"
    )


def fetch(packages: Iterable[Package], directory: Path) -> dict[str, Path]:
    """Downloads the packages' .deb files into `directory` (kept, and re-checked, for later calls)."""
    paths: dict[str, Path] = {}
    for package in packages:
        target = directory / Path(package.filename).name
        if target.is_file() and target.stat().st_size == package.size and _sha256(target) == package.sha256:
            paths[package.name] = target
            continue
        digest = http.download(package.url, target, "sha256")
        if digest != package.sha256 or target.stat().st_size != package.size:
            target.unlink(missing_ok=True)
            raise RuntimeError(f"{package.url}: SHA256 {digest} does not match the index's {package.sha256}")
        paths[package.name] = target
    return paths


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


# ------------------------------------------------------------------------------------------------ .deb


class _Member(io.RawIOBase):
    """A read-only window on one member of an ar archive."""

    def __init__(self, file: BinaryIO, offset: int, size: int):
        self.file, self.left = file, size
        file.seek(offset)

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:  # type: ignore[no-untyped-def]
        chunk = self.file.read(min(len(buffer), self.left))
        buffer[: len(chunk)] = chunk
        self.left -= len(chunk)
        return len(chunk)


def ar_members(file: BinaryIO) -> dict[str, tuple[int, int]]:
    """name -> (offset, size) of every member of an ar archive (the common format dpkg writes)."""
    if file.read(8) != b"!<arch>\n":
        raise ValueError("not an ar archive (a .deb starts with !<arch>)")
    members, offset = {}, 8
    while True:
        file.seek(offset)
        header = file.read(60)
        if len(header) < 60:
            return members
        if header[58:60] != b"`\n":
            raise ValueError(f"damaged ar member header at byte {offset}")
        name = header[:16].decode().strip().rstrip("/")
        size = int(header[48:58].decode().strip())
        members[name] = (offset + 60, size)
        offset += 60 + size + (size % 2)  # members are 2-byte aligned


def _decompressed(name: str, raw: BinaryIO) -> BinaryIO:
    if name.endswith(".xz"):
        return lzma.LZMAFile(raw)  # type: ignore[return-value]
    if name.endswith(".gz"):
        return gzip.GzipFile(fileobj=raw)  # type: ignore[return-value]
    if name.endswith(".bz2"):
        return bz2.BZ2File(raw)  # type: ignore[return-value]
    if name.endswith(".zst"):
        try:
            import zstandard
        except ImportError:
            raise RuntimeError(
                f"{name} is zstd-compressed (Ubuntu's packages are): install the `zstandard` Python module, or fetch "
                "from a Debian mirror (whose packages use xz)"
            ) from None
        return zstandard.ZstdDecompressor().stream_reader(raw)  # type: ignore[return-value]
    if name == "data.tar":
        return raw
    raise ValueError(f"unknown compression of {name}")


def extract(deb: Path, target: Path) -> list[str]:
    """Unpacks a .deb's data.tar.* into `target` (as `dpkg-deb -x`); returns the member names it held."""
    target.mkdir(parents=True, exist_ok=True)
    with deb.open("rb") as file:
        members = ar_members(file)
        if "debian-binary" not in members:
            raise ValueError(f"{deb}: no debian-binary member: not a Debian package")
        data = [name for name in members if name.startswith("data.tar")]
        if len(data) != 1:
            raise ValueError(f"{deb}: expected one data.tar member, found {sorted(members)}")
        offset, size = members[data[0]]
        stream = io.BufferedReader(_Member(file, offset, size), buffer_size=1 << 20)
        with tarfile.open(fileobj=_decompressed(data[0], stream), mode="r|") as tar:
            names = []
            for member in tar:
                names.append(member.name)
                tar.extract(member, target, filter="data")
    return names


def fetch_and_extract(names: list[str], target: Path, downloads: Path) -> dict[str, Package]:
    """The packages found, downloaded into `downloads` (kept) and unpacked into `target`."""
    packages = find(names)
    paths = fetch(packages.values(), downloads)
    for name in names:
        extract(paths[name], target)
    return packages
