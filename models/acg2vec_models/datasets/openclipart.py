"""Open Clip Art Library (Debian's openclipart-png + openclipart-svg, public domain) as a tagged image set.

The PNGs are the images; the keyword tags live in each SVG's RDF metadata (`dc:subject`). Both packages come
from Debian's archive (bookworm, from the mirror apt is configured with, over HTTPS, SHA256-checked) and are
unpacked in Python (`acg2vec_models.registries.debian`: no apt or dpkg needed), and are described by one JSONL
manifest that the tagger training, the benchmarks and the bulk indexer read.
"""

from __future__ import annotations

import gzip
import json
import random
import re
import shutil
import tempfile
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from xml.etree import ElementTree

from acg2vec_models.registries import debian

PACKAGES = ("openclipart-png", "openclipart-svg")
MANIFEST_NAME = "manifest.jsonl"
_RDF_LI = "{http://www.w3.org/1999/02/22-rdf-syntax-ns#}li"
_DC = "{http://purl.org/dc/elements/1.1/}"
#: Placeholder keywords that say nothing about the picture.
_NOISE_TAGS = frozenset({"", "unsorted", "clip art", "clipart", "image", "media", "public domain", "png", "svg"})


@dataclass(frozen=True)
class ClipartRecord:
    """One illustration: a stable id (its path under the png root, no suffix), the PNG, tags and title."""

    id: str
    image: str
    tags: list[str] = field(default_factory=list)
    title: str = ""
    artist: str = ""


def default_cache_dir() -> Path:
    return Path(".cache") / "datasets" / "openclipart"


def fetch(cache_dir: Path | None = None) -> Path:
    """Download and unpack both packages once; return the manifest path (cached on later calls)."""
    cache_dir = (cache_dir or default_cache_dir()).resolve()
    manifest = cache_dir / MANIFEST_NAME
    if manifest.exists():
        return manifest
    cache_dir.mkdir(parents=True, exist_ok=True)
    root = cache_dir / "root"
    if root.exists():  # an earlier run stopped half-way
        shutil.rmtree(root)
    with tempfile.TemporaryDirectory(dir=cache_dir) as downloads:
        packages = debian.fetch_and_extract(list(PACKAGES), root, Path(downloads))
    (cache_dir / "packages.json").write_text(
        json.dumps({p.name: {"version": p.version, "sha256": p.sha256, "url": p.url} for p in packages.values()})
    )
    records = scan(root / "usr" / "share" / "openclipart")
    tmp_manifest = manifest.with_suffix(".tmp")
    write_manifest(records, tmp_manifest)
    tmp_manifest.replace(manifest)
    return manifest


def scan(root: Path) -> list[ClipartRecord]:
    """Pair every PNG under root/png with its SVG under root/svg and read the SVG's keywords and title."""
    records = []
    for png in sorted((root / "png").rglob("*.png")):
        rel = png.relative_to(root / "png").with_suffix("")
        svg = next((p for p in (root / "svg" / f"{rel}.svg", root / "svg" / f"{rel}.svgz") if p.exists()), None)
        tags, title, artist = read_svg_metadata(svg) if svg else ([], "", "")
        records.append(ClipartRecord(id=rel.as_posix(), image=str(png), tags=tags, title=title, artist=artist))
    return records


def read_svg_metadata(svg: Path) -> tuple[list[str], str, str]:
    """Keywords (normalised, deduplicated, in order), title and creator from an SVG's RDF metadata."""
    raw = svg.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        raw = gzip.decompress(raw)
    try:
        tree = ElementTree.fromstring(raw)
    except ElementTree.ParseError:
        return [], "", ""
    tags: list[str] = []
    for subject in tree.iter(f"{_DC}subject"):
        for li in subject.iter(_RDF_LI):
            for word in re.split(r"[,;]", li.text or ""):
                tag = normalise_tag(word)
                if tag not in _NOISE_TAGS and tag not in tags:
                    tags.append(tag)
    work_title = next((t.text or "" for t in tree.iter(f"{_DC}title") if (t.text or "").strip()), "")
    creator = next(tree.iter(f"{_DC}creator"), None)
    artist = next((t.text or "" for t in creator.iter(f"{_DC}title")), "") if creator is not None else ""
    return tags, work_title.strip(), artist.strip()


def normalise_tag(word: str) -> str:
    return " ".join(word.strip().lower().split())


def write_manifest(records: Iterable[ClipartRecord], path: Path) -> None:
    with path.open("w", encoding="utf-8") as out:
        for record in records:
            out.write(json.dumps(asdict(record), ensure_ascii=False) + "\n")


def read_manifest(path: Path) -> list[ClipartRecord]:
    with path.open(encoding="utf-8") as f:
        return [ClipartRecord(**json.loads(line)) for line in f if line.strip()]


def frequent_tags(records: Sequence[ClipartRecord], min_images: int = 20) -> list[str]:
    """Tags on at least `min_images` images, most frequent first (ties by name): the tagger's vocabulary."""
    counts = Counter(tag for record in records for tag in record.tags)
    return sorted((t for t, n in counts.items() if n >= min_images), key=lambda t: (-counts[t], t))


def split_by_image(
    records: Sequence[ClipartRecord], held_out: float = 0.2, seed: int = 0
) -> tuple[list[ClipartRecord], list[ClipartRecord]]:
    """A reproducible train / held-out split by image (sorted by id, then shuffled with `seed`)."""
    ordered = sorted(records, key=lambda r: r.id)
    random.Random(seed).shuffle(ordered)
    cut = round(len(ordered) * (1 - held_out))
    return ordered[:cut], ordered[cut:]


def unique_images(records: Sequence[ClipartRecord]) -> list[ClipartRecord]:
    """One record per distinct picture, sorted by id. The archive files about 1,200 pictures under several
    categories as symbolic links to one PNG; their tags are merged, the first id (by name) is kept, so that a
    picture never sits on both sides of a split nor twice in a retrieval gallery."""
    groups: dict[str, list[ClipartRecord]] = {}
    for record in sorted(records, key=lambda r: r.id):
        groups.setdefault(str(Path(record.image).resolve()), []).append(record)
    merged = []
    for group in groups.values():
        tags = list(dict.fromkeys(tag for record in group for tag in record.tags))
        first = group[0]
        merged.append(ClipartRecord(id=first.id, image=first.image, tags=tags, title=first.title, artist=first.artist))
    return sorted(merged, key=lambda r: r.id)
