"""The report pages: ``report.md`` linking the figures, ``report.html`` holding them (one file to
share), plus CSV and markdown leaderboards."""

from __future__ import annotations

import os
import shutil
import sys
import time
from pathlib import Path

from cache import DataRoot
from cache.durable import disk_errors, fsync_dir, fsync_tree
from cache.progress import progress_bar
from probe.records import read_records
from probe.report.compare import attach_published, imagenet_axis, measured_vs_published, ranking_rows
from probe.report.figures import BoardFigures, draw_board, figure_count
from probe.report.intervals import HOW
from probe.report.html import markdown_section, write_html
from probe.report.studies import is_study_record, study_sections
from probe.report.tables import build_leaderboards, load_imagenet

DEFAULT_IMAGENET = "probe/report/imagenet_linear.csv"
DEFAULT_IMAGENET_NOTE = " (published values, each row citing its source; extend it for your own models)"
HEADLINES = ("Headline metrics in %: depth δ1, normals % within 11.25°, segmentation IoU, similarity F1, "
             "correspondence 2-D recall at 5 px. Mean ± std (population, over seeds) where several seeds ran, "
             "then the 95 % interval in brackets. " + HOW + " `collapsed`: the head predicts one value (or one "
             "class) at every test pixel — a failed run, not a score.")


def describe_protocol(protocol: str) -> str:
    from protocols import PROTOCOLS

    if protocol in PROTOCOLS:
        return PROTOCOLS[protocol].description + "."
    return "not a registered protocol (a variant, e.g. one of `make fidelity`'s); see the records' configs."


def build_report(root: DataRoot, *, imagenet_csv: str | None = None, imagenet_values: dict[str, float] | None = None,
                 quiet: bool = True) -> tuple[Path, dict[str, str]]:
    """Write ``reports/report.md`` and ``reports/report.html`` (and the figures and tables); returns
    the markdown page and the text leaderboards. Progress over the figures unless ``quiet``.

    Everything is written into a staging folder first and then renamed into place file by file,
    report.md last, so a killed build never leaves a half-written file; a full disk is one line.
    """
    try:
        with disk_errors(root.reports(), after="no file of the report is half-written"):
            return _build_report(root, imagenet_csv=imagenet_csv, imagenet_values=dict(imagenet_values or {}),
                                 quiet=quiet)
    finally:
        shutil.rmtree(_staging(root), ignore_errors=True)


def skipped_line(root: DataRoot, skipped: list[tuple[Path, str]]) -> str:
    """One line naming every result file left out of the report, and why."""
    return (f"Skipped {len(skipped)} result file(s): " +
            "; ".join(f"`{path.relative_to(root.root)}` ({why})" for path, why in skipped) + ".")


def _staging(root: DataRoot) -> Path:
    return root.reports() / f".staging-{os.getpid()}"


def _build_report(root: DataRoot, *, imagenet_csv: str | None, imagenet_values: dict[str, float],
                  quiet: bool) -> tuple[Path, dict[str, str]]:
    records, skipped = read_records(root)
    # study records (training subsets, corrupted test splits) have their own sections, not leaderboard cells
    plain = [r for r in records if not is_study_record(r)]
    boards = build_leaderboards(plain) if plain or not records else {}
    # the shipped sources' accuracies are the default axis; a user's CSV or MODEL=ACC names theirs
    sources = load_imagenet(None)
    user = {**(load_imagenet(imagenet_csv) if imagenet_csv else {}), **imagenet_values}
    for board in boards.values():
        attach_published(board)
    final = root.ensure_writable(root.reports())
    _drop_dead_stagings(final)
    folder = _staging(root)
    shutil.rmtree(folder, ignore_errors=True)
    figures = root.ensure_writable(folder / "figures")
    built = time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())
    lines = ["# midprobe report", "", f"Built {built} from {len(records)} result records under `{root.root}`.", "",
             *([skipped_line(root, skipped), ""] if skipped else []), HEADLINES, ""]
    if skipped and not quiet:
        print(f"[report] {skipped_line(root, skipped)}", file=sys.stderr)
    texts = {}
    drawn = []
    with progress_bar(total=sum(figure_count(b) for b in boards.values()), name="[report] figures", unit="fig",
                      quiet=quiet) as bar:
        for board in boards.values():
            axis_values, axis = imagenet_axis(board, sources, user)
            drawn.append(draw_board(board, axis_values, figures, progress=bar, axis=axis))
    for section in drawn:
        board = section.board
        csv_path = board.write_csv(folder / f"leaderboard_{board.slug}.csv")
        (folder / f"leaderboard_{board.slug}.md").write_text(board.markdown() + "\n")
        texts[board.label] = board.text()
        lines += [f"## Leaderboard — {board.label}", "",
                  f"Protocol `{board.protocol}`: {describe_protocol(board.protocol)}", "",
                  *([board.published_note[0].upper() + board.published_note[1:] + ".", ""] if board.published_note
                    else []),
                  board.markdown(), "", f"CSV: [{csv_path.name}]({csv_path.name})", "",
                  *measured_vs_published(board), *probe_lines(board),
                  "### Mid-level vs ImageNet linear accuracy", "", f"ImageNet axis: {section.axis}.", ""]
        lines += scatter_lines(section)
        path, note = section.correlations
        lines += ["### Task correlations", "", f"![correlations](figures/{path.name})" if path else
                  f"Not drawn — {note}.", ""]
        path, note = section.ranking
        lines += ["### Ranking", "", f"![ranking](figures/{path.name})" if path else f"Not drawn — {note}.", "",
                  "Mean rank over the tasks (1 = best), with its 95 % interval: the ranks recomputed in each "
                  "bootstrap resample (published points fixed). Mid-level score: over the tasks, the mean number "
                  "of models ranked below (0 = worst); high-level score: the number with a lower ImageNet "
                  "accuracy (on the paper's 22 alone, its ranking figure's high-level score exactly).", "",
                  *ranking_rows(board, section.imagenet), ""]
    studies = study_sections(records, figures)
    lines += studies
    imagenet_source = f"`{DEFAULT_IMAGENET}`" + DEFAULT_IMAGENET_NOTE + "; beside published points the paper's own " \
        "`IN1k_LP_BN` (`probe/report/published/paper_figure_values.csv`, read off its figures)"
    if imagenet_csv or imagenet_values:
        imagenet_source += "; yours: " + ", ".join([f"`{imagenet_csv}`"] * bool(imagenet_csv)
                                                  + [f"{m}={v:g}" for m, v in sorted(imagenet_values.items())])
    stores = feature_stores(root, records)
    lines += ["## Sources", "", f"ImageNet accuracies: {imagenet_source}.", "", "Feature stores:", ""]
    lines += [f"- `{path}` (weights `{w}`)" for path, w in stores]
    lines += ["", "Result records:", ""] + [f"- `{Path(r['path']).relative_to(root.root)}`" for r in records]
    (folder / "report.md").write_text("\n".join(lines) + "\n")
    write_html(folder / "report.html", sections=drawn, records=records, root=root, built=built, intro=HEADLINES,
               protocols={s.board.protocol: describe_protocol(s.board.protocol) for s in drawn}, stores=stores,
               imagenet_source=imagenet_source, studies=markdown_section(studies, folder))
    fsync_tree(folder)
    for path in sorted(folder.rglob("*"), key=lambda p: (p.name == "report.md", str(p))):
        if path.is_file():
            target = final / path.relative_to(folder)
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(path, target)
            fsync_dir(target.parent)
    return final / "report.md", texts


def scatter_lines(section: BoardFigures) -> list[str]:
    """The mid-level vs ImageNet figures; columns not drawn for the same reason share one line."""
    lines: list[str] = []
    skipped: dict[str, list[str]] = {}
    for column, (path, note) in section.scatter.items():
        if path:
            lines += [f"![{column}](figures/{path.name})", "", f"{column}: {note}.", ""]
        else:
            skipped.setdefault(note.split("; have")[0], []).append(column)
    for note, columns in skipped.items():
        which = "any task" if len(columns) == len(section.scatter) and len(columns) > 1 else ", ".join(columns)
        lines += [f"Not drawn for {which} — {note}.", ""]
    return lines


def probe_lines(board) -> list[str]:
    """How long each trained probe trained (optimiser steps) and what looks wrong with it."""
    rows = [f"| {m} | {c} | `{board.probe[m, c]}` | {board.steps.get((m, c)) or '–'} | "
            f"{' '.join(board.flags.get((m, c), [])) or '–'} |"
            for m in board.models for c in board.columns
            if (m, c) in board.probe and not board.is_published(m) and board.steps.get((m, c)) is not None]
    if not rows:
        return []
    return ["### Probes: training steps and flags", "", "| model | column | probe | steps | flags |",
            "|---|---|---|---|---|", *rows, ""]


def feature_stores(root: DataRoot, records: list[dict]) -> list[tuple[Path, str]]:
    """The feature stores the records were computed from, each with its weights' identity."""
    stores = sorted({(r["dataset"], r["model"], r["feature_fingerprint"].get("weights", "?"),
                      r["feature_fingerprint"].get("precision", "fp16")) for r in records})
    return [(root.feature_store(d, m, p), w) for d, m, w, p in stores]


def _drop_dead_stagings(folder: Path) -> None:
    """Remove staging folders left by report builds that were killed (their process is gone)."""
    for staging in folder.glob(".staging-*"):
        try:
            os.kill(int(staging.name.rsplit("-", 1)[1]), 0)
        except (ValueError, ProcessLookupError):
            shutil.rmtree(staging, ignore_errors=True)
        except PermissionError:     # a live process of another user
            continue
