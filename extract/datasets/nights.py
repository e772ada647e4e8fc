"""NIGHTS (DreamSim) 2AFC triplets for mid-level similarity: test split, >= 6 agreeing votes, 224 x 224.

Raw files under ``RAW`` (default ``data/raw/nights``): ``nights.zip`` extracted, giving
``data.csv`` and ``ref/<group>/<item>.png``, ``distort/<group>/<item>_0.png``, ``distort/<group>/<item>_1.png``.
``data.csv`` columns used (by name): ``id``, ``right_vote`` (the share of annotators who
found the right image closer), ``votes``, ``ref_path``, ``left_path``, ``right_path``,
``split``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from cache import DataRoot, MidprobeError, create_dataset_store
from extract.datasets.raw import raw_fingerprint, read_csv, read_image, require, resize

SIZE = 224
COLUMNS = ("id", "right_vote", "votes", "ref_path", "left_path", "right_path", "split")


def read_triplets(csv_path: Path, *, split: str = "test", min_votes: int = 6) -> list[dict[str, str]]:
    """The rows of ``data.csv`` in ``split`` with at least ``min_votes`` votes, in file order."""
    header, records = read_csv(csv_path, "NIGHTS' data.csv")
    missing = [c for c in COLUMNS if c not in header]
    if missing:
        raise MidprobeError(f"{csv_path} lacks columns {', '.join(missing)}; expected NIGHTS' data.csv header")
    rows = []
    for line, row in enumerate(records, start=2):
        if any(row.get(c) is None for c in COLUMNS):
            raise MidprobeError(f"{csv_path} line {line} has fewer fields than the header; expected a complete row")
        try:
            votes, right, ident = float(row["votes"]), float(row["right_vote"]), float(row["id"])
        except ValueError:
            raise MidprobeError(f"{csv_path} line {line}: id/votes/right_vote are not numbers") from None
        # float() also reads "nan" and "inf": a NaN vote count would drop the row silently, a NaN
        # share would become the answer "left"
        if not (np.isfinite([votes, ident]).all() and 0 <= right <= 1):
            raise MidprobeError(f"{csv_path} line {line}: id {row['id']}, votes {row['votes']}, right_vote "
                                f"{row['right_vote']}; expected finite numbers, right_vote a share in [0, 1]")
        if votes >= min_votes and row["split"] == split:
            rows.append(row)
    if not rows:
        raise MidprobeError(f"{csv_path} has no {split!r} triplets with >= {min_votes} votes")
    return rows


def prepare_nights(*, root: DataRoot, raw: str | None = None, name: str = "nights", split: str = "test",
                   min_votes: int = 6, progress: bool = True) -> Path:
    """Write ``stores/datasets/<name>.zarr``: split ``triplets`` of (reference, left, right) images."""
    from cache.progress import tqdm_like as tqdm

    raw_dir = Path(raw) if raw else root.raw("nights")
    csv_path = raw_dir / "data.csv"
    rows = read_triplets(csv_path, split=split, min_votes=min_votes)
    files = [[raw_dir / row[k] for k in ("ref_path", "left_path", "right_path")] for row in rows]
    for triplet in files:
        for f in triplet:
            require(f, "a NIGHTS image named in data.csv")
    options = {"split": split, "min_votes": min_votes, "size": SIZE, "resample": "bicubic"}
    path = root.dataset_store(name)
    root.ensure_writable(path.parent)
    writer = create_dataset_store(path, name=name, source=f"raw:{raw_fingerprint(raw_dir, [csv_path], sum(files, []))}",
                                  options=options, attrs={"loader": "nights", "tasks": ["similarity"]})
    out = writer.split("triplets", num_images=3 * len(rows), height=SIZE, width=SIZE,
                       fields={"images": ((SIZE, SIZE, 3), "uint8")})
    for triplet in tqdm(files, unit="triplet", desc=name, disable=not progress, file=sys.stderr):
        out.append({"images": np.stack([resize(read_image(f), (SIZE, SIZE), resample="bicubic") for f in triplet])})
    out.put_relation("triplets", np.arange(3 * len(rows), dtype=np.int32).reshape(-1, 3))
    # right_vote is the share preferring the right image; after the vote filter it is 0 or 1
    out.put_relation("triplet_answer", np.array([float(r["right_vote"]) >= 0.5 for r in rows], dtype=np.int8),
                     meaning="index (0 = left, 1 = right) of the candidate closer to the reference")
    out.put_relation("triplet_id", np.array([int(float(r["id"])) for r in rows], dtype=np.int64))
    writer.finish()
    return path
