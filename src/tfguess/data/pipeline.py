"""Decoding images in a pool of threads, in input order, with bounded look-ahead; batching.

Shared by everything that runs a network over many files (feature extraction, guessing): the
decoding overlaps with inference, and at most ``prefetch`` decoded images wait at any time, so
memory does not grow with the number of images.
"""

from __future__ import annotations

import itertools
import os
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tfguess.data.images import ImageError, load_image


def default_workers() -> int:
    """The number of cores this process may run on (respects CPU affinity, e.g. ``taskset``)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


@dataclass
class Loaded:
    """One input of a batch: its position in the input list and its pixels, or why it failed."""

    index: int
    path: Path
    pixels: np.ndarray | None
    error: str | None = None


def load_pixels(path: Path | str, size: int, resize: str, *, data: bytes | None = None,
                reject_placeholders: bool = False) -> tuple[np.ndarray | None, str | None]:
    """``(pixels, None)``, or ``(None, reason)`` for a file that cannot be used: the one place
    that turns a decoding failure into the reason every command reports."""
    extra = {"data": data} if data is not None else {}
    try:
        return load_image(path, size, resize, reject_placeholders=reject_placeholders,
                          **extra), None
    except ImageError as exc:
        return None, exc.reason
    except OSError as exc:
        return None, f"cannot read: {exc.strerror or exc}"


def iter_loaded(
    paths: Iterable[Path],
    size: int,
    resize: str,
    workers: int = 0,
    prefetch: int = 64,
    reject_placeholders: bool = False,
) -> Iterator[Loaded]:
    """Decode ``paths`` in a thread pool, yielding results in input order with bounded look-ahead.

    At most ``prefetch`` images are decoded and not yet taken by the consumer; ``paths`` may be a
    generator. Unreadable files come back with ``pixels=None`` and the reason in ``error``.
    """

    def load(i: int, path: Path) -> Loaded:
        pixels, error = load_pixels(path, size, resize, reject_placeholders=reject_placeholders)
        return Loaded(i, Path(path), pixels, error)

    items = enumerate(paths)
    with ThreadPoolExecutor(max_workers=workers or default_workers()) as pool:
        pending: deque[Future[Loaded]] = deque(
            pool.submit(load, i, p) for i, p in itertools.islice(items, max(1, prefetch))
        )
        try:
            while pending:
                yield pending.popleft().result()
                for i, p in itertools.islice(items, 1):
                    pending.append(pool.submit(load, i, p))
        finally:  # the consumer stopped early: do not decode what nobody will read
            for future in pending:
                future.cancel()


def iter_batches(loaded: Iterable[Loaded], batch_size: int) -> Iterator[list[Loaded]]:
    """Group decoded inputs into batches; failed ones travel in the batch with ``pixels=None``."""
    batch: list[Loaded] = []
    n_ok = 0
    for item in loaded:
        batch.append(item)
        n_ok += item.pixels is not None
        if n_ok >= batch_size:
            yield batch
            batch, n_ok = [], 0
    if batch:
        yield batch
