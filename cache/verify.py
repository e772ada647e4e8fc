"""``python -m cache.verify [--repair]`` (``make verify [REPAIR=1]``): check every store under the data root.

For each dataset store and feature store: the metadata (kind, format version, attributes
every reader needs), the fingerprints (a dataset store's against its name, source and
options; a feature split's fields against its store and against the dataset store it was
extracted from), and every chunk of every array: present, of the size written, and with
the crc32c recorded when it was written. One line per problem: store, split/array, chunk,
what is wrong.

``--repair`` marks exactly the damaged chunks of a feature split for re-extraction (their
progress markers are dropped, the others kept, and the split marked incomplete), so the
same ``make extract`` rewrites only them; a damaged dataset store is marked incomplete, to be
rebuilt with ``make data``. Problems in metadata cannot be repaired in place: the line says
what to do. Exit status 0 when nothing is wrong (or everything found was repaired), 1
otherwise, 2 for bad usage.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import zarr

from cache.chunks import CHECKSUMS, check_chunk, chunk_count
from cache.dataset_store import dataset_fingerprint
from cache.durable import atomic_write, disk_errors
from cache.errors import MidprobeError, exits_on_error
from cache.feature_store import split_arrays
from cache.fingerprint import FINGERPRINT_FIELDS, FORMAT_VERSION
from cache.locks import FileLock
from cache.paths import DataRoot, data_root


@dataclass
class Problem:
    """One thing wrong with a store; ``chunk`` is ``None`` for metadata problems."""

    store: Path
    what: str
    split: str | None = None
    array: str | None = None
    chunk: int | None = None
    repaired: bool = False

    def line(self, root: Path) -> str:
        try:
            name = str(self.store.relative_to(root))
        except ValueError:
            name = str(self.store)
        place = "/".join(p for p in (self.split, self.array) if p)
        chunk = f" chunk {self.chunk}" if self.chunk is not None else ""
        return f"{name}{' ' + place if place else ''}{chunk}: {self.what}"


@dataclass
class Report:
    """What :func:`verify` found: problems, notes (nothing wrong, but worth knowing) and repairs made."""

    problems: list[Problem] = field(default_factory=list)
    notes: list[Problem] = field(default_factory=list)
    repaired: list[str] = field(default_factory=list)
    stores: int = 0

    @property
    def unrepaired(self) -> list[Problem]:
        return [p for p in self.problems if not p.repaired]


def _open(path: Path, report: Report, kind: str) -> Any | None:
    try:
        group = zarr.open_group(str(path), mode="r")
        attrs = dict(group.attrs)
    except Exception as exc:
        report.problems.append(Problem(path, f"metadata unreadable ({type(exc).__name__}: {exc}); "
                                             f"delete the store and rebuild it"))
        return None
    if attrs.get("kind") != kind:
        report.problems.append(Problem(path, f"not a {kind} store (kind={attrs.get('kind')!r})"))
        return None
    if attrs.get("midprobe_format") != FORMAT_VERSION:
        report.problems.append(Problem(path, f"format version {attrs.get('midprobe_format')!r}, this midprobe "
                                             f"reads {FORMAT_VERSION}; rebuild it (or use the midprobe that wrote it)"))
        return None
    return group


def _check_chunks(path: Path, split: str, group: Any, names: list[str], sums: dict[str, Any] | None,
                  chunks: list[int] | None, report: Report) -> set[int]:
    """Check the given chunks (all when ``None``) of each named array; returns the damaged chunk indices."""
    damaged: set[int] = set()
    for name in names:
        if name not in group:
            report.problems.append(Problem(path, "array missing", split, name))
            continue
        arr = group[name]
        recorded = (sums or {}).get(name)
        for index in (range(chunk_count(arr)) if chunks is None else chunks):
            if isinstance(recorded, dict):          # from a progress marker: {chunk: entry}
                entry = recorded.get(index)
            else:
                entry = recorded[index] if recorded and index < len(recorded) else None
            if sums is not None and entry is None:
                problem = "no checksum recorded for it"
            else:
                problem = check_chunk(arr, index, entry)
            if problem:
                report.problems.append(Problem(path, problem, split, name, index))
                damaged.add(index)
    return damaged


def verify_dataset_store(path: Path, report: Report, *, repair: bool) -> None:
    group = _open(path, report, "dataset")
    if group is None:
        return
    before = len(report.problems)
    attrs = dict(group.attrs)
    try:
        expected = dataset_fingerprint(name=attrs["name"], source=attrs["source"], options=attrs.get("options", {}))
    except KeyError as exc:
        expected = None
        report.problems.append(Problem(path, f"metadata lacks {exc}"))
    if expected is not None and attrs.get("fingerprint") != expected:
        report.problems.append(Problem(path, "fingerprint does not match the store's name, source and options "
                                             "(metadata edited or damaged)"))
    command = rebuild_command(attrs, path.stem)
    if not attrs.get("complete"):
        report.problems.append(Problem(path, f"incomplete; rerun `{command}`"))
    for split, sub in _readable_splits(path, group, report, command):
        sattrs = dict(sub.attrs)
        names = [*sattrs.get("per_image", []), *sattrs.get("relations", [])]
        for key in sattrs.get("per_image", []):
            if key in sub and sub[key].shape[0] != sattrs.get("num_images"):
                report.problems.append(Problem(path, f"holds {sub[key].shape[0]} images, the split "
                                                     f"{sattrs.get('num_images')}", split, key))
        sums = sattrs.get(CHECKSUMS)
        if sums is None:
            report.notes.append(Problem(path, "no chunk checksums recorded (written by an earlier midprobe): "
                                              "presence and sizes checked only", split))
        _check_chunks(path, split, sub, names, sums, None, report)
    found = report.problems[before:]
    if repair and found and all(p.chunk is not None for p in found):
        with FileLock(path.with_suffix(".lock"), timeout=0, what=f"dataset store {path}"), disk_errors(path):
            zarr.open_group(str(path), mode="r+").attrs["complete"] = False
        for problem in found:
            problem.repaired = True
        report.repaired.append(f"{path}: marked incomplete; rebuild it with `{command}` (its own options)")


def rebuild_command(attrs: dict[str, Any], stem: str) -> str:
    """The ``make data`` that rebuilds a dataset store as it was: its loader, its name and the options
    it records that differ from the loader's defaults (a plain ``make data DATASET=synthetic`` would
    render the default 1024/256 images at 224 px, and every feature store would go stale)."""
    import shlex

    from extract.datasets import LOADERS, option_defaults

    name = str(attrs.get("name", stem))
    loader = str(attrs.get("loader") or name.split("@")[0])
    if loader not in LOADERS:
        return f"make data DATASET={shlex.quote(loader)}"
    defaults = option_defaults(loader)
    options = {k: v for k, v in (attrs.get("options") or {}).items() if k in defaults and v != defaults[k]}
    words = [f"DATASET={loader}", *([f"NAME={name}"] if name != loader else [])]
    if options:
        text = " ".join(f"{k}={str(v).lower() if isinstance(v, bool) else v}" for k, v in options.items())
        words.append(f"OPTIONS={text}")
    return "make data " + " ".join(shlex.quote(w) for w in words)


def _fingerprint_problems(path: Path, split: str, fp: Any, root_attrs: dict[str, Any],
                          dataset_fps: dict[str, str | None]) -> list[str]:
    if not isinstance(fp, dict):
        return ["fingerprint missing"]
    out = []
    missing = [f for f in FINGERPRINT_FIELDS if f not in fp]
    if missing:
        out.append(f"fingerprint lacks {', '.join(missing)}")
    for key, want in (("split", split), ("model", root_attrs.get("model")), ("dataset", root_attrs.get("dataset")),
                      ("format_version", FORMAT_VERSION)):
        if key in fp and fp[key] != want:
            out.append(f"fingerprint has {key}={fp[key]!r}, the store {want!r}")
    current = dataset_fps.get(str(fp.get("dataset")))
    if current is not None and "dataset_fingerprint" in fp and fp["dataset_fingerprint"] != current:
        out.append(f"extracted from another version of dataset {fp.get('dataset')!r} (its fingerprint changed "
                   "since); delete the store and re-extract")
    return out


def _markers(progress: Path, num_chunks: int) -> dict[int, dict[str, Any]]:
    out = {}
    for index in range(num_chunks):
        marker = progress / str(index)
        if marker.exists():
            try:
                out[index] = json.loads(marker.read_text() or "{}")
            except ValueError:
                out[index] = {}
    return out


def _readable_splits(path: Path, group: Any, report: Report, command: str) -> list[tuple[str, Any]]:
    """The splits of a feature store whose metadata parses; each other one is a problem naming its
    damaged ``zarr.json`` and the commands that rebuild that split alone."""
    import json

    out = []
    for folder in sorted(p for p in path.iterdir() if p.is_dir() and (p / "zarr.json").is_file()):
        for meta in [folder / "zarr.json", *sorted(folder.glob("*/zarr.json"))]:
            try:
                json.loads(meta.read_bytes())
            except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                report.problems.append(Problem(path, f"{meta.relative_to(path)} is damaged ({type(exc).__name__}: "
                                                     f"{exc}); delete {folder} and rerun `{command} "
                                                     f"SPLIT={folder.name}` to extract that split again", folder.name))
                break
        else:
            out.append((folder.name, group[folder.name]))
    return out


def verify_feature_store(path: Path, report: Report, dataset_fps: dict[str, str | None], *, repair: bool) -> None:
    group = _open(path, report, "features")
    if group is None:
        return
    root_attrs = dict(group.attrs)
    command = f"make extract MODEL={root_attrs.get('model')} DATASET={root_attrs.get('dataset')}"
    for split, sub in _readable_splits(path, group, report, command):
        before = len(report.problems)
        attrs = dict(sub.attrs)
        for what in _fingerprint_problems(path, split, attrs.get("fingerprint"), root_attrs, dataset_fps):
            report.problems.append(Problem(path, what, split))
        try:
            names = split_arrays(attrs)
            n, k = int(attrs["num_images"]), int(attrs["chunk_images"])
        except (KeyError, TypeError, ValueError) as exc:
            report.problems.append(Problem(path, f"split metadata lacks {exc}; delete the store and re-extract", split))
            continue
        for name in names:
            if name in sub and (sub[name].shape[0] != n or sub[name].chunks[0] != k):
                report.problems.append(Problem(path, f"shape {sub[name].shape} / chunks {sub[name].chunks} disagree "
                                                     f"with the split ({n} images, {k} per chunk)", split, name))
        metadata_ok = len(report.problems) == before
        num_chunks = -(-n // k)
        progress = path.with_suffix(".progress") / split
        if attrs.get("complete"):
            sums = attrs.get(CHECKSUMS)
            if sums is None:
                report.notes.append(Problem(path, "no chunk checksums recorded (written by an earlier midprobe): "
                                                  "presence and sizes checked only", split))
            damaged = _check_chunks(path, split, sub, names, sums, None, report)
            markers = None
        else:
            markers = _markers(progress, num_chunks)
            damaged = set()
            for index, marker in markers.items():
                sums = {name: {index: entry} for name, entry in marker.items()} if marker else None
                damaged |= _check_chunks(path, split, sub, names, sums, [index], report)
        found = report.problems[before:]
        if repair and metadata_ok and damaged:
            _drop_markers(path, split, sub, names, damaged, markers, progress)
            for problem in found:
                problem.repaired = True
            report.repaired.append(f"{path} {split}: chunk{'s' if len(damaged) > 1 else ''} "
                                   f"{', '.join(map(str, sorted(damaged)))} marked for re-extraction; "
                                   f"rerun `{command}` to rewrite {'them' if len(damaged) > 1 else 'it'}")
        if markers is not None and num_chunks - len(markers) + len(damaged):
            report.problems.append(Problem(path, f"incomplete: {num_chunks - len(markers) + len(damaged)} of "
                                                 f"{num_chunks} chunks not extracted; rerun `{command}`", split))


def _drop_markers(path: Path, split: str, group: Any, names: list[str], damaged: set[int],
                  markers: dict[int, Any] | None, progress: Path) -> None:
    """Keep a progress marker (with its checksums) for every sound chunk, none for the damaged ones,
    and mark the split incomplete, so a resumed extraction rewrites exactly the damaged chunks."""
    with FileLock(path.with_suffix(".lock"), what=f"feature store {path}"), disk_errors(path):
        if markers is None:
            sums = group.attrs[CHECKSUMS]
            progress.mkdir(parents=True, exist_ok=True)
            for index in range(len(sums[names[0]])):
                if index not in damaged:
                    atomic_write(progress / str(index), json.dumps({k: sums[k][index] for k in names}, sort_keys=True))
            zarr.open_group(str(path), mode="r+")[split].attrs["complete"] = False
        else:
            for index in damaged:
                (progress / str(index)).unlink(missing_ok=True)


def _dataset_fingerprints(root: DataRoot, names: set[str]) -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for name in names:
        try:
            out[name] = zarr.open_group(str(root.dataset_store(name)), mode="r").attrs.get("fingerprint")
        except Exception:
            out[name] = None
    return out


def verify(root: DataRoot, *, repair: bool = False) -> Report:
    """Check (and with ``repair``, mark for rewriting) every store under ``root``."""
    report = Report()
    datasets = sorted(p for p in (root.root / "stores" / "datasets").glob("*.zarr") if p.is_dir())
    features = sorted(p for p in (root.root / "stores" / "features").glob("*/*.zarr") if p.is_dir())
    for path in datasets:
        verify_dataset_store(path, report, repair=repair)
    for path in sorted((root.root / "stores" / "datasets").glob("*.zarr.building")):
        report.notes.append(Problem(path, "a preparation still running, or left by one that failed or was killed "
                                          "(not a store); the next "
                                          f"`make data DATASET={path.name.split('.')[0]}` removes it"))
    fps = _dataset_fingerprints(root, {p.parent.name for p in features})
    for path in features:
        verify_feature_store(path, report, fps, repair=repair)
    report.stores = len(datasets) + len(features)
    return report


@exits_on_error
def main(argv: list[str] | None = None, prog: str = "python -m cache.verify") -> int:
    from midprobe import options

    p = options.command_parser(prog=prog, description=__doc__.split("\n\n")[0], raw=False,
                               parents=[options.data_option()])
    p.add_argument("--repair", action="store_true",
                   help="mark damaged feature chunks for re-extraction and damaged dataset stores for rebuilding")
    args = p.parse_args(argv)
    root = data_root(args.data)
    if not root.root.is_dir():
        raise MidprobeError(f"data root {root.root} does not exist; set MIDPROBE_DATA or DATA= to yours")
    report = verify(root, repair=args.repair)
    for problem in report.problems:
        print(problem.line(root.root))
    for note in report.notes:
        print(f"note: {note.line(root.root)}")
    for line in report.repaired:
        print(f"repaired: {line}")
    found, left = len(report.problems), len(report.unrepaired)
    summary = f"{found} problem{'s' if found != 1 else ''}" if found else "no problems"
    if args.repair and found:
        summary += f", {found - left} repaired"
    print(f"{report.stores} store{'s' if report.stores != 1 else ''} checked under {root.root}: {summary}")
    return 1 if left else 0


if __name__ == "__main__":
    raise SystemExit(main())
