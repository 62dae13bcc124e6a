"""The English text openclipart carries for each picture: title, description and keywords (SVG RDF metadata).

The openclipart manifest (datasets/openclipart.py) holds titles and keywords; descriptions (`dc:description`)
are read here from the same SVGs, so the image models' recipe (which fingerprints that module) is untouched.
"""

from __future__ import annotations

import gzip
import json
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from xml.etree import ElementTree

from acg2vec_models.datasets.openclipart import ClipartRecord

_DC = "{http://purl.org/dc/elements/1.1/}"
#: Titles that name no picture (archive placeholders and file names).
_NO_TITLE = re.compile(r"^(untitled|title|image|drawing|clipart|clip art|svg|png|\d+|.*\.(svg|png)|part of .*)$", re.I)
#: Descriptions that are an address or a link, not words about the picture.
_NOT_PROSE = re.compile(r"@|https?://|www\.", re.I)
#: "Clipart by <artist> - <title>": the archive's prefix, not part of the title.
_BY_PREFIX = re.compile(r"^clip ?art by [^-]+ - ", re.I)


@dataclass(frozen=True)
class PictureText:
    id: str
    title: str = ""
    description: str = ""
    keywords: str = ""  # the SVG keywords joined with ", "

    def training_texts(self) -> list[str]:
        """Each non-empty English text that describes this picture (one is sampled per step)."""
        return [t for t in (self.title, self.description, self.keywords) if t]


def clean(text: str, limit: int = 300) -> str:
    """One line, collapsed whitespace, cut at a word boundary near `limit` characters."""
    text = " ".join(text.split())
    if len(text) > limit:
        text = text[:limit].rsplit(" ", 1)[0]
    return text


def usable_title(title: str) -> str:
    title = clean(_BY_PREFIX.sub("", title.replace("_", " ")), 120)
    return "" if _NO_TITLE.match(title) or len(title) < 3 else title


def svg_path(record: ClipartRecord) -> Path | None:
    """The SVG beside a manifest record's PNG (…/openclipart/png/<id>.png -> …/openclipart/svg/<id>.svg[z])."""
    png = Path(record.image)
    base = png.parents[len(Path(record.id).parts) - 1].parent / "svg" / record.id
    candidates = (base.with_name(base.name + ".svg"), base.with_name(base.name + ".svgz"))
    return next((p for p in candidates if p.exists()), None)


def read_description(svg: Path | None) -> str:
    if svg is None:
        return ""
    raw = svg.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        raw = gzip.decompress(raw)
    try:
        tree = ElementTree.fromstring(raw)
    except ElementTree.ParseError:
        return ""
    text = clean(next((t.text or "" for t in tree.iter(f"{_DC}description") if (t.text or "").strip()), ""))
    return "" if _NOT_PROSE.search(text) else text


def picture_texts(records: list[ClipartRecord], cache: Path | None = None) -> dict[str, PictureText]:
    """id -> PictureText for each record (descriptions read once and kept in `cache`, a JSONL file)."""
    known: dict[str, PictureText] = {}
    if cache is not None and cache.exists():
        for line in cache.read_text(encoding="utf-8").splitlines():
            item = PictureText(**json.loads(line))
            known[item.id] = item
    missing = [r for r in records if r.id not in known]
    for record in missing:
        description = read_description(svg_path(record))
        known[record.id] = PictureText(
            record.id, usable_title(record.title), description if description != record.title else "",
            ", ".join(t.replace("_", " ") for t in record.tags),
        )  # fmt: skip
    if cache is not None and missing:
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_suffix(".tmp")
        tmp.write_text("".join(json.dumps(asdict(t), ensure_ascii=False) + "\n" for t in known.values()), "utf-8")
        tmp.replace(cache)
    return {r.id: known[r.id] for r in records}
