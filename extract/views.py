"""An augmented training split one view at a time: extracted when it is needed, dropped once read.

A cached augmented split holds ``K`` view-major copies of the dataset split (feature image
``v * n + i`` is view ``v`` of image ``i``) in chunks of ``k`` images. :class:`ViewSource` keeps
that exact geometry — the same fingerprint, number of images and chunking — in a store of its own
(``<data>/lockstep/<dataset>/<model>[@int8]/features.zarr``), but writes only the chunks that hold
the view being trained on (:func:`view_chunks`), with the extractor's own code, so every chunk it
writes has the bytes the cached split's chunk has, and a probe reading view ``v`` from it reads
what it would read from the cache. Zarr stores chunks as files, so the chunks never written take
no disk. :meth:`ViewSource.drop` deletes a view's chunks (those no kept view shares) marker
first, so a killed drop never leaves a marker vouching for a deleted chunk.

:meth:`ViewSource.prefetch` extracts a view in a background thread (on a GPU, view ``e + 1``
is extracted while the heads train on view ``e``: two views on disk at a time).
"""

from __future__ import annotations

import shutil
import threading
from pathlib import Path
from typing import Any, Iterable, Sequence

import zarr

from cache import MidprobeError
from cache.durable import fsync_dir
from cache.feature_store import FeatureSplit
from cache.paths import DataRoot, _safe
from extract.plan import SplitJob


def lockstep_dir(root: DataRoot, dataset: str, model: str, precision: str = "fp16") -> Path:
    """The lockstep workspace of one (dataset store, model): its view store and its training state."""
    suffix = "" if precision == "fp16" else f"@{precision}"
    return root.root / "lockstep" / _safe(dataset) / f"{_safe(model)}{suffix}"


def view_chunks(view: int, *, images: int, chunk_images: int) -> list[int]:
    """The chunks of a view-major split holding view ``view`` of ``images`` dataset images (a chunk
    straddling two views belongs to both)."""
    lo, hi = view * images, (view + 1) * images
    return list(range(lo // chunk_images, -(-hi // chunk_images)))


class ViewSource:
    """The augmented feature split ``job`` of ``backbone`` on dataset ``store``, view by view.

    ``extract(v)`` writes view ``v`` (resumable: durable chunks are kept), ``drop(v, keep=...)``
    deletes it but for the chunks the views in ``keep`` need, ``split`` is the
    :class:`~cache.feature_store.FeatureSplit` to train from (not marked complete: it never holds
    every view). ``extracted`` counts the images this object ran through the backbone.
    """

    def __init__(self, *, backbone: Any, store: Any, job: SplitJob, root: DataRoot, batch_size: int = 16,
                 device: str = "cpu", precision: str = "fp16", chunk_images: int | None = None,
                 progress: bool = False) -> None:
        from extract.runner import resolve_device

        if not job.training or not job.choices.augment_views:
            raise MidprobeError(f"feature split {job.name!r} is not an augmented training split; lockstep streams "
                                "only augmented views (AUGMENT=k or a protocol with augmented views)")
        self.backbone, self.store, self.job = backbone, store, job
        self.device = resolve_device(device)
        self.batch_size, self.precision, self.progress = batch_size, precision, progress
        self.chunk_option = chunk_images
        self.views = int(job.choices.augment_views)
        self.images = store.split(job.source).num_images
        self.dir = lockstep_dir(root, store.name, backbone.spec.name, precision)
        self.path = self.dir / "features.zarr"
        root.ensure_writable(self.dir)
        self.extracted = 0
        self._lock = threading.Lock()
        self._running: dict[int, tuple[threading.Thread, list[BaseException]]] = {}
        self._write([])                         # creates (or reopens and checks) the split
        self.chunk_images = int(self._group().attrs["chunk_images"])

    def _group(self) -> zarr.Group:
        return zarr.open_group(str(self.path), mode="r")[self.job.name]

    @property
    def split(self) -> FeatureSplit:
        return FeatureSplit(self.path, self.job.name, self._group())

    def chunks(self, view: int) -> list[int]:
        return view_chunks(view, images=self.images, chunk_images=self.chunk_images)

    def _write(self, chunks: Sequence[int]) -> None:
        from extract.runner import _extract_split

        self.backbone.module.to(self.device)
        report = _extract_split(self.backbone, self.store.split(self.job.source), self.job, self.store.name,
                                self.store.fingerprint, self.path, batch_size=self.batch_size, device=self.device,
                                shard=(0, 1), chunk_images=self.chunk_option, progress=self.progress,
                                precision=self.precision, chunks=list(chunks))
        with self._lock:
            self.extracted += report.images_written

    def extract(self, view: int) -> None:
        """Write view ``view`` (waiting for its prefetch when one is running)."""
        if view in self._running:
            thread, errors = self._running.pop(view)
            thread.join()
            if errors:
                raise errors[0]
        self._write(self.chunks(view))

    def prefetch(self, view: int) -> None:
        """Start extracting view ``view`` in a background thread; :meth:`extract` waits for it."""
        if view in self._running or not 0 <= view < self.views:
            return
        errors: list[BaseException] = []

        def work() -> None:
            try:
                self._write(self.chunks(view))
            except BaseException as exc:       # raised again by extract(view), in the caller's thread
                errors.append(exc)

        thread = threading.Thread(target=work, name=f"lockstep-view-{view}", daemon=True)
        self._running[view] = (thread, errors)
        thread.start()

    def wait(self) -> None:
        """Wait for every running prefetch (their errors are dropped: nothing will read them)."""
        for thread, _ in self._running.values():
            thread.join()
        self._running.clear()

    def present(self, view: int) -> bool:
        progress = self.path.with_suffix(".progress") / self.job.name
        return all((progress / str(i)).exists() for i in self.chunks(view))

    def drop(self, view: int, *, keep: Iterable[int] = ()) -> list[int]:
        """Delete view ``view``'s chunks but those of the views in ``keep``; returns the chunks deleted."""
        kept = {c for v in keep for c in self.chunks(v)}
        gone = [c for c in self.chunks(view) if c not in kept]
        progress = self.path.with_suffix(".progress") / self.job.name
        # markers first (made durable), so no marker ever outlives its chunk
        for c in gone:
            (progress / str(c)).unlink(missing_ok=True)
        if progress.exists():
            fsync_dir(progress)
        group = self._group()
        names = [name for name, _ in group.arrays()]
        for c in gone:
            for name in names:
                shutil.rmtree(self.path / self.job.name / name / "c" / str(c), ignore_errors=True)
        return gone

    def remove(self) -> None:
        """Delete the whole workspace store (after every record is written)."""
        self.wait()
        shutil.rmtree(self.path, ignore_errors=True)
        shutil.rmtree(self.path.with_suffix(".progress"), ignore_errors=True)
        self.path.with_suffix(".lock").unlink(missing_ok=True)
