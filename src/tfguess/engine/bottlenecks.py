"""The bottleneck cache: one feature vector per image content, computed once.

Entries live in ``TF_FILES/bottlenecks/<key>/<digest[:2]>/<digest>.npy``; the key
(:attr:`features.BackboneRef.cache_key`) covers everything that changes a feature (backbone,
weights, input size, resize recipe, preprocessing version), the digest is the SHA-256 of the image file's bytes. Images that cannot be used are remembered too
(``<digest>.skip``, holding the reason), so a second run decodes nothing. Every write is atomic
(temporary file, then rename): an interrupted run leaves a usable cache.
"""

from __future__ import annotations

import io
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from tfguess.core.fsutil import atomic_write
from tfguess.data.pipeline import iter_batches, iter_loaded


class BottleneckCache:
    def __init__(self, root: Path, key: str) -> None:
        self.key = key
        self.dir = Path(root) / key

    def _path(self, digest: str, suffix: str) -> Path:
        return self.dir / digest[:2] / f"{digest}{suffix}"

    def get(self, digest: str) -> np.ndarray | str | None:
        """The cached features, the remembered reason the image was skipped, or None."""
        try:
            return np.load(self._path(digest, ".npy"), allow_pickle=False)
        except (FileNotFoundError, ValueError, EOFError, OSError):
            pass
        try:
            return self._path(digest, ".skip").read_text(encoding="utf-8")
        except FileNotFoundError:
            return None

    def _write(self, path: Path, data: bytes | str) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, data)

    def put(self, digest: str, features: np.ndarray) -> None:
        buf = io.BytesIO()
        np.save(buf, features.astype(np.float32), allow_pickle=False)
        self._write(self._path(digest, ".npy"), buf.getvalue())

    def put_skip(self, digest: str, reason: str) -> None:
        self._write(self._path(digest, ".skip"), reason)


@dataclass
class FeatureResult:
    features: dict[str, np.ndarray] = field(default_factory=dict)   # digest -> vector
    skipped: dict[str, str] = field(default_factory=dict)           # digest -> reason
    computed: int = 0
    cached: int = 0
    seconds: float = 0.0


def _is_placeholder_reason(reason: str) -> bool:
    return reason.startswith(("looks like a placeholder", "blank image"))


def compute_features(
    items: list[tuple[Path, str]],
    cache: BottleneckCache,
    make_extractor: Callable[[], Callable[[np.ndarray], np.ndarray]],
    size: int,
    resize: str,
    batch_size: int = 32,
    workers: int = 0,
    progress: bool = True,
    keep_placeholders: bool = False,
) -> FeatureResult:
    """Features for ``(path, digest)`` items: from the cache, else computed in batches and cached.

    ``make_extractor`` is only called when something must be computed. Images that look like
    placeholders are skipped (the reason cached), unless ``keep_placeholders``: then their
    features are computed but not cached, so a later run without it still skips them.
    """
    start = time.perf_counter()
    result = FeatureResult()
    todo: list[tuple[Path, str]] = []
    kept: list[tuple[Path, str]] = []  # placeholders used anyway (keep_placeholders)
    for path, digest in items:
        hit = cache.get(digest)
        if isinstance(hit, np.ndarray):
            result.features[digest] = hit
            result.cached += 1
        elif isinstance(hit, str) and keep_placeholders and _is_placeholder_reason(hit):
            kept.append((path, digest))
        elif isinstance(hit, str):
            result.skipped[digest] = hit
            result.cached += 1
        else:
            todo.append((path, digest))
    extractor = make_extractor() if todo or kept else None
    if todo:
        paths = [p for p, _ in todo]
        bar = _progress(len(todo), "bottlenecks", progress)
        for batch in iter_batches(
            iter_loaded(paths, size, resize, workers, reject_placeholders=True), batch_size
        ):
            good = [b for b in batch if b.pixels is not None]
            if good:
                feats = extractor(np.stack([b.pixels for b in good]))
                for b, f in zip(good, feats):
                    digest = todo[b.index][1]
                    cache.put(digest, f)
                    result.features[digest] = f
            for b in batch:
                if b.pixels is None:
                    digest = todo[b.index][1]
                    cache.put_skip(digest, b.error)
                    result.skipped[digest] = b.error
                    if keep_placeholders and _is_placeholder_reason(b.error or ""):
                        kept.append((b.path, digest))
            result.computed += len(batch)
            bar.update(len(batch))
        bar.close()
    for batch in iter_batches(iter_loaded([p for p, _ in kept], size, resize, workers), batch_size):
        good = [b for b in batch if b.pixels is not None]
        if good:
            for b, f in zip(good, extractor(np.stack([b.pixels for b in good]))):
                digest = kept[b.index][1]
                result.skipped.pop(digest, None)
                result.features[digest] = f
    result.seconds = time.perf_counter() - start
    return result


def _progress(total: int, desc: str, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="img", disable=not enabled, dynamic_ncols=True)
