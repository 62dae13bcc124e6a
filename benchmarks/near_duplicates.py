"""Near-duplicates that survive every edit (issue 15, item 3): illust2vec reverse image search on openclipart with
edited copies as queries, R@1 / R@10 per edit family and per picture size (prints numbers; not a test).

Gallery: the distinct openclipart pictures within the build's pixel limit (6,883; `--gallery N` takes a seeded
subset). Queries: per edit family of `acg2vec_models.image.edits` (crop 50-80 % of the area, 1/4 size, JPEG
q40-70, mirror, brightness/contrast, greyscale, rotation 2-10 degrees, letterbox or plain canvas, overlaid text,
transparency on black), `--per-family` gallery pictures (seeded per family), half of them icons (longer side
< 128 px) and half larger, each turned into one edited copy. A query is a hit at k when its picture is among the k
nearest gallery vectors (cosine).

Duplicates: openclipart files some pictures twice under different ids (the same icon in two categories of an icon
theme; star polygons of 71 and 77 points that draw the same 100-px disc). A query whose hit is such a twin is
right, not wrong, so the main numbers count a hit on a duplicate of the picture; the strict numbers (only the very
id) are printed beside them. Two pictures are duplicates when, composited on white and cropped to their content,
their 32 x 32 grey thumbnails differ by less than 4/255 RMS and their aspect ratios by less than 5 % (pixels only,
no model; pairwise, so a chain of small differences does not join a group).

Steps (each a build-defaults recipe, on the features of this gallery; the projection is trained on the gallery's
train-split pictures and one view of each, as build-defaults does on the whole train split):
1. today's illust2vec: whole picture, projection trained on the older views (`near_duplicates.make_query`);
2. + content normalisation in the graph (`ImagePreprocessing.content = "trim"`: uniform borders stripped, a
   dark or coloured background whitened);
3. + projection trained on views from the edit families (the default recipe).
`--repository DIR` evaluates the illust2vec SavedModel installed there instead (encoded bytes through its serving
signature, as the service calls it).

    .venv/bin/python benchmarks/near_duplicates.py --gallery 1000 --per-family 100     # development subset
    .venv/bin/python benchmarks/near_duplicates.py --per-family 200                    # the whole gallery
    .venv/bin/python benchmarks/near_duplicates.py --per-family 200 --repository var/models --steps 0

Backbone features are cached under .cache/benchmarks/near_duplicates/.
"""

from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path

import numpy as np
from PIL import Image

from acg2vec_models.image import edits
from acg2vec_models.image.defaults import Recipe, cached, load_dataset, preprocessing
from acg2vec_models.image.edits import FAMILIES, edit
from acg2vec_models.image.near_duplicates import l2_normalise, load_rgb
from acg2vec_testing.paths import ROOT

ICON = 128  # longer side below this: an icon
STAR_SERIES = "shapes/stars/star_"
STEPS = {
    "today (whole picture, older views)": Recipe(content="full", view_kind="recipe"),
    "+ content normalisation (trim, whiten background)": Recipe(content="trim", view_kind="recipe"),
    "+ projection trained on the edit families (default)": Recipe(content="trim", view_kind="families"),
}
THUMBNAIL_STEP = len(STEPS)  # + the thumbnail part of the embedding (image.thumbnail)
RERANK_STEP = THUMBNAIL_STEP + 1  # + a verification re-rank (offline: the service has no stored thumbnails)
CACHE = ROOT / ".cache" / "benchmarks" / "near_duplicates"


def _code(*names: str) -> str:
    """A digest of the model code a cached feature depends on."""
    root = Path(edits.__file__).parent.parent
    return hashlib.sha256(b"".join((root / name).read_bytes() for name in names)).hexdigest()[:12]


def _key(*parts: object) -> str:
    return hashlib.sha256(json.dumps(parts, default=str).encode()).hexdigest()[:12]


PREPROCESSING_CODE = _code("preprocessing.py", "image/serving.py", "image/thumbnail.py")
EDITS_CODE = _code("image/edits.py")  # queries and views depend on it


# ------------------------------------------------------------------------------------------------ ground truth
def thumbnail(path: str) -> tuple[np.ndarray, float, int]:
    """(32 x 32 grey thumbnail of the content on white, aspect ratio of the content, longer side of the file)."""
    image = load_rgb(Path(path).read_bytes())
    longer = max(image.size)
    grey = image.convert("L")
    box = Image.eval(grey, lambda v: 255 - v).point(lambda v: 255 if v > 8 else 0).getbbox() or (0, 0, *grey.size)
    content = grey.crop(box)
    small = np.asarray(content.resize((32, 32), Image.Resampling.BILINEAR), dtype=np.float32)
    return small.reshape(-1), content.width / max(1, content.height), longer


def twins(thumbs: np.ndarray, aspects: np.ndarray, rows: np.ndarray, others: np.ndarray) -> np.ndarray:
    """[len(rows), others.shape[1]] bool: others[i, j] is a duplicate of rows[i] (itself included). Pairwise, not
    transitive: a chain of small differences (openclipart's star-polygon series) does not make a group."""
    a, b = thumbs[rows][:, None, :], thumbs[others]
    rms = np.sqrt(np.mean((a - b) ** 2, axis=-1))
    ratio = np.abs(np.log(aspects[rows][:, None] / aspects[others]))
    return (rms < 4.0) & (ratio < np.log(1.05))


def pictures_with_twins(thumbs: np.ndarray, aspects: np.ndarray) -> int:
    sq = (thumbs**2).sum(1)
    count = 0
    for start in range(0, len(thumbs), 512):
        block = thumbs[start : start + 512]
        d2 = (sq[start : start + 512, None] + sq[None, :] - 2 * block @ thumbs.T) / thumbs.shape[1]
        ratio = np.abs(np.log(aspects[start : start + 512, None] / aspects[None, :]))
        count += int((((d2 < 4.0**2) & (ratio < np.log(1.05))).sum(1) > 1).sum())
    return count


# ------------------------------------------------------------------------------------------------ queries
def _uniform(data: bytes) -> bool:
    """Whether a picture is one flat colour, but for JPEG noise."""
    return float(np.asarray(load_rgb(data).convert("L"), dtype=np.float32).std()) < 4.0


def choose_targets(longer: np.ndarray, per_family: int) -> dict[str, np.ndarray]:
    """Per family, per_family gallery rows (seeded by the family), half icons and half larger pictures."""
    icons, larger = np.flatnonzero(longer < ICON), np.flatnonzero(longer >= ICON)
    out = {}
    for f, family in enumerate(FAMILIES):
        rng = np.random.default_rng([7, f])
        half = per_family // 2
        picks = [rng.choice(icons, min(half, len(icons)), replace=False),
                 rng.choice(larger, min(per_family - half, len(larger)), replace=False)]  # fmt: skip
        out[family] = np.concatenate(picks)
    return out


def query_bytes(paths: list[str], targets: dict[str, np.ndarray]) -> tuple[list[bytes], list[str], np.ndarray]:
    images, families, rows = [], [], []
    for f, (family, chosen) in enumerate(targets.items()):
        for row in chosen:
            images.append(edit(Path(paths[row]).read_bytes(), family, np.random.default_rng([11, f, int(row)])))
            families.append(family)
            rows.append(int(row))
    return images, families, np.asarray(rows)


# ------------------------------------------------------------------------------------------------ embeddings
def descriptor_features(recipe: Recipe, sources, tag: str, key: str) -> np.ndarray:
    """Lite0 descriptors (the projection's input) under the recipe's preprocessing, cached."""
    from acg2vec_models.image.defaults import backbone
    from acg2vec_models.image.descriptor import descriptor_model
    from acg2vec_models.image.features import extract

    code = PREPROCESSING_CODE if recipe.content == "trim" else ""  # the whole picture: decode and resize only
    path = CACHE / f"{tag}-{recipe.content}-{_key(key, code)}.npz"

    def compute() -> dict[str, np.ndarray]:
        model = descriptor_model(backbone(recipe), recipe.descriptor)
        images = sources() if callable(sources) else sources
        return extract(lambda x: model(x, training=False), images, preprocessing(recipe), 32, tag)

    return cached(path, compute)["output"]


def step_embeddings(recipe, paths, train_rows, train_records, queries, key):
    """(gallery, query) embeddings of one step: descriptors, then the projection trained as build-defaults does.
    The train pictures' descriptors and views come from build-defaults' own feature cache (shared with it when the
    gallery is the whole set and the recipe is the default)."""
    from acg2vec_models.image.defaults import backbone, train_features
    from acg2vec_models.image.descriptor import feature_model
    from acg2vec_models.image.heads import train_projection

    clean, view = train_features(
        feature_model(backbone(recipe), recipe.descriptor), train_records, recipe, ROOT / ".cache"
    )
    others = np.setdiff1d(np.arange(len(paths)), train_rows)
    gallery = np.zeros((len(paths), clean["descriptor"].shape[1]), np.float32)
    gallery[train_rows] = clean["descriptor"]
    gallery[others] = descriptor_features(recipe, [paths[i] for i in others], "gallery-rest", key)
    query = descriptor_features(recipe, queries, "queries", _key(key, len(queries), EDITS_CODE))
    projection = train_projection(clean["descriptor"], view["descriptor"], recipe.projection)
    return np.asarray(projection(gallery)), np.asarray(projection(query))


def thumbnail_features(sources, tag: str, key: str) -> np.ndarray:
    """The embedding's thumbnail part (`image.thumbnail`), cached."""
    from acg2vec_models.image import thumbnail
    from acg2vec_models.image.features import extract

    layer = thumbnail.ThumbnailDescriptor()
    path = CACHE / f"{tag}-thumbnail-{_key(key, PREPROCESSING_CODE)}.npz"
    return cached(path, lambda: extract(lambda x: layer(x), sources, thumbnail.PREPROCESSING, 64, tag))["output"]


def fused(projected: np.ndarray, thumbs: np.ndarray, weight: float) -> np.ndarray:
    return np.concatenate([l2_normalise(projected) * (1 - weight) ** 0.5, thumbs * weight**0.5], axis=1)


def repository_embeddings(repository: Path, sources: list) -> np.ndarray:
    """The installed illust2vec's serving signature on encoded bytes, 32 at a time."""
    import tensorflow as tf

    from acg2vec_models import repository as repo

    version = max(repo.versions(repository, "illust2vec"))
    serve = tf.saved_model.load(str(repository / "illust2vec" / str(version))).signatures["serving_default"]
    out = []
    for start in range(0, len(sources), 32):
        batch = [s if isinstance(s, bytes) else Path(s).read_bytes() for s in sources[start : start + 32]]
        out.append(serve(image_bytes=tf.constant(batch))["embedding"].numpy())
    print(f"illust2vec version {version} from {repository}")
    return np.concatenate(out)


# ------------------------------------------------------------------------------------------------ report
def verification_thumbnails(sources, tag: str, key: str) -> dict[str, np.ndarray]:
    """64 x 64 grey thumbnails of the normalised content (padded white to a square) and the content's longer side:
    what a verification re-rank would keep per picture (4 KB)."""
    import tensorflow as tf

    from acg2vec_models.image.serving import smooth_resize
    from acg2vec_models.preprocessing import ImagePreprocessing, decode_rgb, normalise_content

    def one(encoded):
        content = normalise_content(decode_rgb(encoded))
        shape = tf.shape(content)[:2]
        small = smooth_resize(content, ImagePreprocessing(size=64))  # padded white to a square, as the network's
        return tf.reduce_sum(small * tf.constant([0.299, 0.587, 0.114]), axis=-1), tf.reduce_max(shape)

    def compute() -> dict[str, np.ndarray]:
        images = sources if all(isinstance(x, bytes) for x in sources) else [Path(x).read_bytes() for x in sources]
        ds = tf.data.Dataset.from_tensor_slices(tf.constant(images, dtype=tf.string)).map(one, num_parallel_calls=2)
        out = [(a.numpy(), int(b)) for a, b in ds]
        return {"thumbs": np.stack([o[0] for o in out]), "longer": np.array([o[1] for o in out])}

    return cached(CACHE / f"{tag}-verify-{_key(key, PREPROCESSING_CODE)}.npz", compute)


def _standardised(x: np.ndarray) -> np.ndarray:
    x = x.reshape(len(x), -1) - x.reshape(len(x), -1).mean(1, keepdims=True)
    return x / (np.linalg.norm(x, axis=1, keepdims=True) + 1e-6)


def _at(thumbs: np.ndarray, side: int) -> np.ndarray:
    """Thumbnails brought down to side x side (block means over a 64-px grid resampled by Pillow's box filter)."""
    if side >= 64:
        return thumbs
    return np.stack([np.asarray(Image.fromarray(t).resize((side, side), Image.Resampling.BOX)) for t in thumbs])


def verified(sims: np.ndarray, qv: dict, gv: dict, weight: float, top: int = 30) -> np.ndarray:
    """The top candidates re-scored by cosine + weight * (correlation of the thumbnails at the query's own
    resolution, the better of the candidate and its mirror image); the rest keep their order behind them."""
    order = np.argsort(-sims, axis=1)
    for i in range(len(sims)):
        cand = order[i, :top]
        side = int(min(64, max(8, qv["longer"][i])))
        q = _standardised(_at(qv["thumbs"][i : i + 1], side))
        c = _at(gv["thumbs"][cand], side)
        corr = np.maximum(_standardised(c) @ q[0], _standardised(c[:, :, ::-1].copy()) @ q[0])
        order[i, :top] = cand[np.argsort(-(sims[i, cand] + weight * corr))]
    return order


def first_hits(
    gallery: np.ndarray, query: np.ndarray, rows: np.ndarray, thumbs: dict[str, np.ndarray], rerank=None
) -> tuple:
    """(rank of the picture itself, rank of the first of its duplicates, itself included), 0-based, 99 past 10."""
    sims = l2_normalise(query.astype(np.float32)) @ l2_normalise(gallery.astype(np.float32)).T
    order = (rerank(sims) if rerank else np.argsort(-sims, axis=1))[:, :10]
    hit = order == rows[:, None]
    strict = np.where(hit.any(1), hit.argmax(1), 99)
    twin = twins(thumbs["thumbs"], thumbs["aspects"], rows, order) | hit
    return strict, np.where(twin.any(1), twin.argmax(1), 99)


def table(name: str, families: np.ndarray, masks: dict[str, np.ndarray], hits: tuple, share: float) -> dict:
    """Per family: icons (the star series and the others apart), larger, all (weighted by the gallery's share of
    icons), strict all; R@1 / R@10. `hits`: (strict, duplicate-aware) ranks; masks: "icon", "star", "flat" (the
    queries that are one flat colour)."""
    strict, group = hits
    icon, star, flat = masks["icon"], masks["star"], masks["flat"]

    def r(ranks: np.ndarray, k: int) -> float:
        return float(np.mean(ranks < k)) if len(ranks) else float("nan")

    def cell(ranks: np.ndarray, mask: np.ndarray) -> str:
        return f"{r(ranks[mask], 1):.3f} / {r(ranks[mask], 10):.3f}"

    def weighted(ranks: np.ndarray, mask: np.ndarray, k: int) -> float:
        return share * r(ranks[mask & icon], k) + (1 - share) * r(ranks[mask & ~icon], k)

    print(f"\n### {name}\n")
    print("| family | icons (< 128 px) | icons: star series | icons: others | larger | all (gallery-weighted) | "
          "all, strict id |\n" + "| --- " * 7 + "|")  # fmt: skip
    summary = {}
    rows = {f: families == f for f in FAMILIES} | {
        "black, a drawing left (not one flat colour)": families == "black",
        "every family": np.ones(len(families), bool),
    }
    rows["black, a drawing left (not one flat colour)"] &= ~flat
    for family, mask in rows.items():
        all1, all10 = weighted(group, mask, 1), weighted(group, mask, 10)
        s1, s10 = weighted(strict, mask, 1), weighted(strict, mask, 10)
        if family in FAMILIES or family == "every family":
            summary[family] = (all1, all10)
        print(f"| {family} | {cell(group, mask & icon)} | {cell(group, mask & icon & star)} | "
              f"{cell(group, mask & icon & ~star)} | {cell(group, mask & ~icon)} | "
              f"{all1:.3f} / {all10:.3f} | {s1:.3f} / {s10:.3f} |")  # fmt: skip
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--gallery", type=int, default=0, help="a seeded subset of this many pictures (0: all)")
    parser.add_argument("--per-family", type=int, default=200, help="queries per edit family (half icons)")
    parser.add_argument("--steps", default="0,1,2,3,4", help="which steps to run (indices, comma-separated)")
    parser.add_argument("--rerank-weights", default="0.3", help="weights of the re-rank's thumbnail score to try")
    parser.add_argument("--thumbnail-weights", default="0.1", help="weights of the thumbnail part to try")
    parser.add_argument("--repository", type=Path, default=None, help="evaluate this repository's illust2vec too")
    args = parser.parse_args()

    data = load_dataset(ROOT / ".cache", Recipe())
    gallery = sorted(data.train + data.held_out, key=lambda r: r.id)
    if args.gallery:
        keep = np.random.default_rng(5).choice(len(gallery), min(args.gallery, len(gallery)), replace=False)
        gallery = [gallery[i] for i in sorted(keep)]
    paths = [r.image for r in gallery]
    key = _key([r.id for r in gallery])
    train_ids = {r.id for r in data.train}
    train_records = [r for r in data.train if r.id in {g.id for g in gallery}]  # build-defaults' order
    position = {r.id: i for i, r in enumerate(gallery)}
    train_rows = np.array([position[r.id] for r in train_records])

    def thumbs() -> dict[str, np.ndarray]:
        made = [thumbnail(p) for p in paths]
        return {"thumbs": np.stack([m[0] for m in made]), "aspects": np.array([m[1] for m in made]),
                "longer": np.array([m[2] for m in made])}  # fmt: skip

    t = cached(CACHE / f"thumbs-{key}.npz", thumbs)
    longer = t["longer"]
    share = float(np.mean(longer < ICON))
    print(f"gallery {len(gallery)} pictures ({sum(r.id in train_ids for r in gallery)} train split), icons "
          f"(< {ICON} px) {share:.1%}; {pictures_with_twins(t['thumbs'], t['aspects'])} have a duplicate")  # fmt: skip

    targets = choose_targets(longer, args.per_family)
    queries, families, rows = query_bytes(paths, targets)
    families_a, icon = np.asarray(families), longer[rows] < ICON
    blank = [i for i, (f, q) in enumerate(zip(families, queries, strict=True)) if f == "black" and _uniform(q)]
    flat = np.zeros(len(queries), bool)
    flat[blank] = True
    stars = np.array([r.id.startswith(STAR_SERIES) for r in gallery])
    masks = {"icon": icon, "star": stars[rows], "flat": flat}
    n_icons, star_icons = int((longer < ICON).sum()), int((stars & (longer < ICON)).sum())
    print(f"the generated star-polygon series ({STAR_SERIES}*: 100-px polygons that differ by point count and step) "
          f"holds {int(stars.sum())} pictures, {star_icons} of the {n_icons} icons")  # fmt: skip
    print(f"{len(blank)} of the black-family queries are one flat colour (a dark drawing on transparency: nothing left"
          f" to find; {int(icon[blank].sum())} of them icons)")  # fmt: skip
    print(f"{len(queries)} queries: {len(FAMILIES)} families x {args.per_family} ({int(icon.sum())} from icons)")

    summaries = {}
    chosen = [int(s) for s in args.steps.split(",") if s.strip()]
    for i, (name, recipe) in enumerate(STEPS.items()):
        if i not in chosen:
            continue
        g, q = step_embeddings(recipe, paths, train_rows, train_records, queries, key)
        summaries[name] = table(f"step {i + 1}: {name}", families_a, masks, first_hits(g, q, rows, t), share)
    if THUMBNAIL_STEP in chosen:
        g, q = step_embeddings(list(STEPS.values())[-1], paths, train_rows, train_records, queries, key)
        tg = thumbnail_features(paths, "gallery", key)
        tq = thumbnail_features(queries, "queries", _key(key, len(queries), EDITS_CODE))
        for weight in [float(w) for w in args.thumbnail_weights.split(",")]:
            name = f"+ thumbnail part, weight {weight}"
            hits = first_hits(fused(g, tg, weight), fused(q, tq, weight), rows, t)
            summaries[name] = table(f"step {THUMBNAIL_STEP + 1}: {name}", families_a, masks, hits, share)
    if RERANK_STEP in chosen:
        g, q = step_embeddings(list(STEPS.values())[-1], paths, train_rows, train_records, queries, key)
        gv = verification_thumbnails(paths, "gallery", key)
        qv = verification_thumbnails(queries, "queries", _key(key, len(queries), EDITS_CODE))
        for weight in [float(w) for w in args.rerank_weights.split(",")]:
            name = f"+ verification re-rank of the top 30, weight {weight} (not in the service)"
            hits = first_hits(g, q, rows, t, lambda sims, w=weight: verified(sims, qv, gv, w))
            summaries[name] = table(f"step {RERANK_STEP + 1}: {name}", families_a, masks, hits, share)
    if args.repository is not None:
        g = repository_embeddings(args.repository, paths)
        q = repository_embeddings(args.repository, queries)
        name = f"installed illust2vec ({args.repository})"
        summaries[name] = table(name, families_a, masks, first_hits(g, q, rows, t), share)

    print("\n### What each step buys (R@1 / R@10, duplicates count as hits, gallery-weighted)\n")
    print("| step | " + " | ".join(FAMILIES) + " | every family |")
    print("| --- " * (len(FAMILIES) + 2) + "|")
    for name, summary in summaries.items():
        print(f"| {name} | " + " | ".join(f"{a:.2f} / {b:.2f}" for a, b in summary.values()) + " |")


if __name__ == "__main__":
    main()
