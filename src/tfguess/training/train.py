"""``train``: from a folder of labelled photos to a self-describing model in TF_FILES.

:func:`train` runs these stages in order, each a function (here or in the module named), the
slow ones timed into the run summary's ``timings_s`` by :func:`stage`:

1. plan: ``--time-limit`` picks the recipe (:mod:`plan`), ``--backbone auto`` the backbone
   (:mod:`choices`), before any heavy work;
2. backbone: its spec, the image folder and the weights: what cannot work is said first;
3. scan and split the photos (``dataset``); the features' ref: ``--resize auto`` by the photos'
   shapes (:mod:`choices`), the int8 calibration (:mod:`backbone_ref`);
4. features from the cache or the backbone (:mod:`extraction`), the usable images by split;
5. fit the head (:mod:`head`) on them and on augmented views (:mod:`views`);
6. fine-tune the top of the backbone (:mod:`finetune`), then its features again;
7. score the splits and an optional evaluation folder (:mod:`evaluation`);
8. save the model, with an int8 engine for guessing where it pays (:func:`_guess_engine`), its
   labels and history (:mod:`save`);
9. write the run summary into the run folder and say how it went (:mod:`summary`);
10. when the plan holds an ensemble, a second backbone in ``TF_FILES/ensemble`` (:mod:`ensemble`).
"""

from __future__ import annotations

import dataclasses
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from tfguess.core.config import TrainConfig
from tfguess.core.errors import DatasetError, WeightsUnavailableError
from tfguess.core.fsutil import display_path
from tfguess.core.locks import locked_run
from tfguess.core.runfolder import RunFolder
from tfguess.data.dataset import DatasetScan, label_folders, scan_dataset
from tfguess.engine.backbones import check_file
from tfguess.engine.features import BackboneRef, calibration_digest
from tfguess.engine.runtime import Head
from tfguess.training import unchanged
from tfguess.training.backbone_ref import (
    LazyBackbone,
    ModelBackbone,
    backbone_ref,
    calibration_images,
    calibration_pixels,
    resolve_backbone,
)
from tfguess.training.evaluation import classification_metrics, evaluate_folder
from tfguess.training.extraction import Features, SplitData, extract, refeature, split_data
from tfguess.training.guess_engine import guess_engine
from tfguess.training.head import FitResult, fit_head, tensorboard_writer
from tfguess.training.refit import held_out_figures
from tfguess.training.save import backbone_meta, save_model, write_labels_and_history
from tfguess.training.summary import before_refit, report, run_summary
from tfguess.training.views import with_views


@dataclass
class TrainResult:
    model_path: Path
    labels: list[str]
    metrics: dict
    summary: dict
    summary_path: Path
    unchanged: bool = False   # nothing new since the last run: its model, not trained again
    # split -> (digests, labels, probabilities) of the model's photos, for an ensemble (ensemble.py)
    heldout: dict = field(default_factory=dict, repr=False)


@contextmanager
def stage(timings: dict[str, float], name: str) -> Iterator[None]:
    """Times the block into ``timings[name]`` (seconds; the run summary's ``timings_s``)."""
    start = time.perf_counter()
    yield
    timings[name] = time.perf_counter() - start


@locked_run("train")  # one run at a time writes the cache, the model and the summary
def train(
    tf_files: str | Path,
    config: TrainConfig | None = None,
    *,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> TrainResult:
    """Train a classifier on ``TF_FILES/data/<label>/*`` (or ``config.image_dir``).

    Writes into ``tf_files``: the model, ``retrained_labels.txt``, ``run_summary.json``,
    ``history.csv`` and the bottleneck cache (``bottlenecks/``); an ensemble's second member's
    run folder in ``ensemble/``.
    """
    return _train(tf_files, config or TrainConfig(), progress, log)


def _train(tf_files: str | Path, config: TrainConfig, progress: bool, log: Callable[[str], None],
           member_plan=None, member: bool = False) -> TrainResult:
    """:func:`train`'s stages; ``member``: an ensemble's second member, under ``member_plan``."""
    from tfguess.training import ensemble

    t0 = time.perf_counter()
    timings: dict[str, float] = {}
    run = RunFolder.at(tf_files)
    # 0. nothing new since the last run (same photos, same settings): its model stands
    digest, last = _unchanged(run, config, log)
    if last:
        return last
    # 1. plan: the recipe that fits --time-limit, the backbone --backbone auto cross-validates
    # (--head-only: the model's own recipe); what cannot work is said first
    _check_first(config, run)
    was_ensemble = config.head_only and not member and ensemble.is_ensemble(run.model)
    config, model_ref = _head_only(config, run, log)
    config, time_plan = (config, member_plan) if member else _plan(config, run, log)
    config, auto_backbone = _auto_backbone(config, run, timings, progress, log)
    # 2. backbone: an unknown backbone or a missing weights file is reported before any other work
    spec = resolve_backbone(config)
    image_dir = _image_dir(config, run, must_exist=True)
    run.root.mkdir(parents=True, exist_ok=True)
    backbone, weights_id = _backbone(spec, config, run if model_ref else None)
    # 3. scan the photos; the features' ref (--resize auto, int8 calibration); a time plan's
    # backbone and size measured against the others that fit (choices.py)
    with stage(timings, "scan"):
        scan = _scan(image_dir, config, progress, log)
    ref, calibration, calibration_digests, auto_resize = model_ref or _feature_ref(
        run, scan, spec, weights_id, backbone, config, timings, progress, log)
    if time_plan and time_plan.alternatives and not member:
        config, time_plan, auto_backbone, (spec, backbone, weights_id, ref) = _measured_backbone(
            run, scan, (spec, backbone, weights_id, ref), config, time_plan, timings, progress, log)
    # 4. features: from the cache, else the backbone (or a Ray cluster)
    features = extract(run, ref, backbone, scan.items, config, progress, log, calibration,
                       ray=bool(config.ray))
    timings["features"] = features.result.seconds
    _log_features(features, config, log)
    data = split_data(scan, features.result, config, image_dir, log)
    # 5. the head, on the features and their augmented views
    fit = _fit_head(data, features, config, run, timings, progress, log)
    # 6. fine-tuning: the top of the backbone, then the fine-tuned backbone's features; under a
    # time plan, again on the training and held-out photos when there is time (refit.py)
    fine_tuned, refitted, features, data, backbone = _fine_tune_stage(
        run, spec, backbone, fit, data, features, config, time_plan, t0, timings, calibration,
        progress, log)
    head = (refitted.fine_tuned if refitted and refitted.fine_tuned else fine_tuned or fit).head
    # 7. evaluate (the splits a refit trained on: the model before it, refit.py)
    metrics, heldout = _evaluate(head, data, features, config, progress, log)
    saw_test = held_out_figures(refitted, metrics, heldout,
                                run.require_model() if config.head_only else None)
    # 8. save the model (and the int8 engine it guesses with), its labels and history
    with stage(timings, "save"):
        with stage(timings, "guess_engine"):
            guess_ref, precision = guess_engine(run, scan, data, head, features.ref, backbone,
                                                config, log)
            meta = backbone_meta(spec, features.ref, head, weights_id, guess_ref)
            if saw_test:   # a --head-only re-train marks its test figure (refit.py)
                meta["fine_tuned_on_test"] = True
        model_path = save_model(run, features.ref, backbone, head, data.labels, config, meta,
                                metrics, log, guess_ref)
        timings["backbone"] = backbone.seconds
        write_labels_and_history(run, data.labels, fit.history)
    timings["total"] = time.perf_counter() - t0
    # 9. the run summary
    choices = {"time_limit": time_plan.summary() if time_plan else None,
               "auto_backbone": auto_backbone, "auto_resize": auto_resize}
    summary = run_summary(run, config, image_dir, scan, data, features, fit, fine_tuned, metrics,
                          choices=choices, backbone=meta, precision=precision,
                          calibration_images=calibration_digests, timings=timings)
    summary = {**summary, "refit": refitted.summary if refitted else None,
               **before_refit(metrics, heldout)}
    summary_path = run.write_summary({**summary, "inputs": unchanged.record(run, digest)})
    result = TrainResult(model_path, data.labels, metrics, summary, summary_path, heldout=heldout)
    if not member:   # 10. an ensemble's second member
        result = ensemble.second_member(run, config, result, time_plan, was_ensemble, t0, digest,
                                        _train, progress, log)
    report(run, config, data, result.metrics, model_path, time.perf_counter() - t0, log)
    sys.stdout.flush()
    return result


def _check_first(config: TrainConfig, run: RunFolder) -> None:
    """An unknown backbone, a missing weights file, a missing image folder or an unusable label
    name, before any work (and before TensorFlow's seconds of start-up)."""
    if config.backbone != "auto" and not config.tfhub_module:
        resolve_backbone(config)
    if config.weights and not config.tfhub_module:
        check_file(config.weights, config.backbone if config.backbone != "auto" else "the backbone")
    label_folders(_image_dir(config, run, must_exist=True))


def _unchanged(run: RunFolder, config: TrainConfig,
               log: Callable[[str], None]) -> tuple[str | None, TrainResult | None]:
    """The digest of this run's inputs, and the last run's result when they are those it was
    trained on (:mod:`unchanged`) and ``--force`` is not given."""
    image_dir = _image_dir(config, run, must_exist=False)
    if not image_dir.is_dir():
        return None, None
    digest = unchanged.inputs_digest(config, image_dir)
    summary = None if config.force else unchanged.last_run_if_unchanged(run, digest)
    if summary is None:
        return digest, None
    test = (summary.get("metrics") or {}).get("test") or {}
    log(f"Nothing changed since the last run: the same photos in {display_path(image_dir)} and "
        f"the same settings. {run.model} stands (test accuracy {test.get('accuracy')}"
        f"{', before its last refit' if test.get('before_refit') else ''}); "
        "--force trains again")
    return digest, TrainResult(run.model, list(summary.get("labels", [])),
                               summary.get("metrics", {}), summary, run.summary, unchanged=True)


def _image_dir(config: TrainConfig, run: RunFolder, must_exist: bool) -> Path:
    """The folder of labelled photos: ``config.image_dir``, else ``TF_FILES/data``."""
    image_dir = Path(config.image_dir).expanduser().resolve() if config.image_dir else run.data
    if must_exist and not image_dir.is_dir():
        raise DatasetError(
            f"image folder not found: {image_dir}. Put your photos in {image_dir}/<label>/ "
            "(one sub-folder per label) or pass --image-dir"
        )
    return image_dir


def _plan(config: TrainConfig, run: RunFolder, log: Callable[[str], None]):
    """``--time-limit``: ``config`` with the recipe that fits the budget, and the plan (said
    before any heavy work); ``(config, None)`` without a limit."""
    from tfguess.training.plan import plan_run

    return plan_run(config, _image_dir(config, run, must_exist=False), run.summary, log)


def _auto_backbone(config: TrainConfig, run: RunFolder, timings: dict[str, float], progress: bool,
                   log: Callable[[str], None]) -> tuple[TrainConfig, dict | None]:
    """``--backbone auto``: ``config`` with the offline backbone whose cached features
    cross-validate best, and what the summary records of the choice (timed)."""
    if config.backbone != "auto":
        return config, None
    from tfguess.training.choices import choose_backbone

    with stage(timings, "choose_backbone"):
        return choose_backbone(_image_dir(config, run, must_exist=True), run.bottlenecks, config,
                               progress, log)


def _measured_backbone(run: RunFolder, scan: DatasetScan, current: tuple, config: TrainConfig,
                       time_plan, timings: dict[str, float], progress: bool,
                       log: Callable[[str], None]):
    """The time plan's backbone and size against the others that fit, on the photos
    (:func:`choices.choose_planned_backbone`): ``(config, plan, what the summary records, and
    the spec, backbone, weights id and features' ref, ``current``'s or the chosen one's)``."""
    from tfguess.training.choices import choose_planned_backbone

    ref = current[-1]
    with stage(timings, "choose_backbone"):
        config, time_plan, facts = choose_planned_backbone(run, scan, ref.resize, config,
                                                           time_plan, progress, log)
    if facts["chosen"] != facts["prior"]:
        spec = resolve_backbone(config)
        backbone, weights_id = _backbone(spec, config)
        current = (spec, backbone, weights_id,
                   backbone_ref(spec, weights_id, config.resize, auto_resize=ref.resize))
    return config, time_plan, facts, current


def _head_only(config: TrainConfig, run: RunFolder, log: Callable[[str], None]):
    """``--head-only``: ``config`` with the recipe of the model in the run folder, and the ref of
    its features (a fine-tuned backbone's own), as :func:`_feature_ref` returns it; ``(config,
    None)`` otherwise. A model whose features are int8 is trained again whole (its calibration
    belongs to the recipe)."""
    if not config.head_only:
        return config, None
    from tfguess.engine.model import read_meta

    meta = read_meta(run.require_model())
    ref = BackboneRef.from_meta(meta["backbone"])
    saved = TrainConfig.from_dict(meta.get("config", {}))
    keep = ("backbone", "tfhub_module", "image_size", "hidden_units", "dropout", "l2", "fine_tune",
            "fine_tune_blocks", "fine_tune_epochs", "views", "resize", "weights")
    config = dataclasses.replace(config, **{k: getattr(saved, k) for k in keep})
    if ref.precision != "float32":
        log(f"--head-only: {run.model.name} has int8 features; training its whole recipe again")
        return dataclasses.replace(config, head_only=False, quick=True), None
    if "fine-tuned" in str(meta["backbone"].get("weights_source")):
        config = dataclasses.replace(config, views=0)   # no views of a fine-tuned backbone cached
    log(f"--head-only: the head again on the features of {run.model.name}'s backbone "
        f"({meta['backbone'].get('weights_source')}, {ref.input_size} px, {ref.resize})")
    return config, (ref, None, [], None)


def _backbone(spec, config: TrainConfig,
              model_of: RunFolder | None = None) -> tuple[LazyBackbone, str]:
    """The backbone's Keras model, built only when features must be computed or the model cannot
    be saved without it, and its weights id: a missing weights file is reported now. With
    ``model_of`` (``--head-only``), the backbone of the model there, fine-tuned or not."""
    if model_of is not None:
        return ModelBackbone(spec, model_of.model), spec.weights_id(config.weights)
    backbone = LazyBackbone(spec, config.weights)
    try:
        weights_id = spec.weights_id(config.weights)
    except WeightsUnavailableError:
        backbone()  # a backbone that downloads its weights fetches them now, or says why not
        weights_id = spec.weights_id(config.weights)
    return backbone, weights_id


def _scan(image_dir: Path, config: TrainConfig, progress: bool,
          log: Callable[[str], None]) -> DatasetScan:
    """The photos of ``image_dir`` by label and split (file headers only)."""
    scan = scan_dataset(image_dir, validation_pct=config.validation_pct, test_pct=config.test_pct,
                        min_per_label=config.min_per_label, decode_check=False, progress=progress,
                        follow_links=config.follow_links)
    passed = f" ({len(scan.skipped)} other file(s) skipped, listed below)" if scan.skipped else ""
    log(f"Found {len(scan.items)} images in {len(scan.labels)} labels ({', '.join(scan.labels)}) in "
        f"{display_path(image_dir)}{passed}")
    for note in scan.notes:
        log(f"  note: {note}")
    return scan


def _feature_ref(run: RunFolder, scan: DatasetScan, spec, weights_id: str, backbone: LazyBackbone,
                 config: TrainConfig, timings: dict[str, float], progress: bool,
                 log: Callable[[str], None]):
    """The ref of the run's features: ``--resize auto`` measured on the photos (timed), an int8
    ref calibrated on training photos. Returns ``(ref, the calibration pixels or None, the
    calibration images' digests, what the summary records of the resize choice)``."""
    chosen, auto_resize = None, None
    if (config.resize or spec.resize) == "auto" and not config.ray:  # squash or crop, measured
        from tfguess.training.choices import choose_resize

        with stage(timings, "choose_resize"):
            chosen, auto_resize = choose_resize(run, scan, spec, weights_id, backbone, config,
                                                progress, log)
    # "auto" extracts float32 features; its int8 engine is for guessing only (_guess_engine).
    int8 = config.precision == "int8"
    ref = backbone_ref(spec, weights_id, config.resize, auto_resize=chosen,
                       precision="int8" if int8 else "float32")
    if not int8:
        return ref, None, [], auto_resize
    digests = calibration_images(run, scan, ref)
    ref = dataclasses.replace(ref, calibration=calibration_digest(digests))
    return ref, calibration_pixels(scan, digests, ref), digests, auto_resize


def _log_features(features: Features, config: TrainConfig, log: Callable[[str], None]) -> None:
    feats = features.result
    log(f"Bottlenecks: {feats.computed} computed, {feats.cached} from the cache "
        f"({feats.seconds:.1f} s, engine: {'tflite (ray)' if config.ray else features.extractor.name})")


def _fit_head(data: SplitData, features: Features, config: TrainConfig, run: RunFolder,
              timings: dict[str, float], progress: bool, log: Callable[[str], None]) -> FitResult:
    """The head, fitted on the training features and those of their augmented views (both timed;
    ``views`` only when there are any), early-stopped on the validation split."""
    x, y = data.arrays["train"]
    with stage(timings, "views"):
        fit_x, fit_y = with_views(x, y, data.splits["train"], config, features.ref,
                                  run.bottlenecks, features.extractor, progress, log)
    if len(fit_y) == len(y):
        del timings["views"]
    with stage(timings, "train_head"):
        on_epoch, close_writer = tensorboard_writer(config.summaries_dir)
        try:
            fit = fit_head(fit_x, fit_y, len(data.labels), config, data.arrays["validation"],
                           progress=progress, on_epoch=on_epoch)
        finally:
            close_writer()
    log(f"Trained the head: best epoch {fit.best_epoch} of {len(fit.history)}")
    return fit


def _fine_tune_stage(run: RunFolder, spec, backbone: LazyBackbone, fit: FitResult, data: SplitData,
                     features: Features, config: TrainConfig, time_plan, t0: float,
                     timings: dict[str, float], calibration, progress: bool,
                     log: Callable[[str], None]):
    """Fine-tune (timed), then the fine-tuned backbone's features; under a time plan, the same
    again on the training and validation photos when the time left allows it (:mod:`refit`).
    Returns ``(the fine-tuning, the refit or None, the features, data and backbone the model
    has)``: ``(None, None, ...)`` as they are without ``--fine-tune`` or with ``--head-only``."""
    if not config.fine_tune or config.head_only:
        return None, None, features, data, backbone
    with stage(timings, "fine_tune"):
        fine_tuned = _fine_tune(backbone, fit.head, data, features, config, time_plan, t0,
                                progress, log)
    if not fine_tuned.weights_id:
        fine_tuned.views_cache = None
        return fine_tuned, None, features, data, backbone
    stock = (features, data)
    features, data = refeature(run, features, fine_tuned.weights_id, backbone, data, config,
                               progress, log, calibration)
    timings["fine_tune_features"] = features.result.seconds
    if not time_plan:
        fine_tuned.views_cache = None
        return fine_tuned, None, features, data, backbone
    from tfguess.training.refit import refit

    with stage(timings, "refit"):
        refitted = refit(run, spec, config, fit.head, stock, (features, data, fine_tuned), t0,
                         timings, progress, log)
    fine_tuned.views_cache = None   # the cached views' activations are let go
    return (fine_tuned, refitted, refitted.features, refitted.data,
            refitted.backbone if refitted.fine_tuned else backbone)


def _fine_tune(backbone: LazyBackbone, head: Head, data: SplitData, features: Features,
               config: TrainConfig, time_plan, t0: float, progress: bool,
               log: Callable[[str], None]):
    """Fine-tune the top of the backbone with ``head`` on top; under ``--time-limit`` until the
    deadline that leaves time for what follows (the fine-tuned backbone's features)."""
    from tfguess.training.finetune import fine_tune

    deadline = None
    if time_plan:
        from tfguess.training.plan import fine_tune_deadline

        feats = features.result
        per_image = (feats.seconds / feats.computed if feats.computed >= 20
                     else time_plan.chosen.recipe.extract_cost / time_plan.speed.extract)
        deadline = fine_tune_deadline(t0, config.time_limit, len(data.usable) + time_plan.eval_images,
                                      per_image, time_plan.speed.slowdown)
    return fine_tune(backbone(), head, data.pairs("train"), data.pairs("validation"),
                     len(data.labels), config, features.ref.input_size, features.ref.resize,
                     progress, log, deadline=deadline)


def _evaluate(head: Head, data: SplitData, features: Features, config: TrainConfig,
              progress: bool, log: Callable[[str], None]) -> tuple[dict, dict]:
    """The metrics of each split, and of ``config.eval_dir`` when given; and each one's photos'
    ``(digests, labels, probabilities)``."""
    metrics, heldout = {}, {}
    for split, (x, y) in data.arrays.items():
        probs = head(x) if len(y) else np.zeros((0, len(data.labels)))
        metrics[split] = classification_metrics(y, probs, data.labels)
        heldout[split] = ([it.digest for it in data.splits[split]], y, probs)
    if config.eval_dir:
        ref = features.ref
        metrics["eval_dir"] = evaluate_folder(
            Path(config.eval_dir).expanduser().resolve(), data.labels, head, features.cache,
            features.extractor, ref.input_size, ref.resize, workers=config.workers,
            progress=progress, compute=features.compute, probs_out=heldout)
        log(f"Accuracy on {config.eval_dir}: {metrics['eval_dir']['accuracy']} "
            f"(n={metrics['eval_dir']['n']})")
    return metrics, heldout
