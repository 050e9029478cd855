"""The typed, frozen configuration of each command: ``TrainConfig`` (saved beside the model),
``GuessConfig``, ``ExportConfig`` and ``ServeConfig``.

Each field carries its command-line flag as metadata (:func:`option`): the CLI generates its
flags from these fields, so a setting's name, default, choices and help live here only. An API
function takes its config plus keyword overrides (:func:`configure`), as Ultralytics' ``model.train(**kw)`` does.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from tfguess.core.errors import ConfigError

# --resize: the recipes of images.RESIZES, or auto (squash or crop, measured on the photos).
RESIZE_CHOICES = ("squash", "crop", "pad", "auto")
ENGINE_CHOICES = ("auto", "tflite", "keras")
PRECISION_CHOICES = ("auto", "float32", "int8")
AUGMENT_CHOICES = ("none", "light", "strong")
QUANTIZE_CHOICES = ("none", "float16", "dynamic", "int8")

# Share of the photos held out as the test split, unless an --eval-dir folder is the test set.
DEFAULT_TEST_PCT = 10.0
# ``train`` with no flags plans the best recipe for this long (docs/guide/time-budget.md says why).
DEFAULT_TIME_LIMIT = 300.0
# The settings a time plan chooses; any of them set to another value than its default is the
# user's and the plan keeps it (:func:`TrainConfig.pinned`).
RECIPE_FIELDS = ("backbone", "tfhub_module", "image_size", "views", "hidden_units", "fine_tune",
                 "fine_tune_blocks", "fine_tune_epochs")


def option(default=None, help: str | None = None, *, flag: str | None = None, cli: bool = True,
           group: str | None = None, convert: str | None = None, env: str | None = None,
           **argparse_kwargs):
    """A config field with its command-line flag: ``flag`` (default ``--field-name``), its
    ``help``, an argparse ``group``, ``choices``/``metavar``/``action`` as argparse takes them,
    ``convert`` (a named parser the CLI applies to the text, e.g. ``duration``) and ``env`` (an
    environment variable that gives the default). ``cli=False``: an API-only setting."""
    meta = {"help": help, "flag": flag, "cli": cli, "group": group, "convert": convert, "env": env,
            "argparse": argparse_kwargs}
    return dataclasses.field(default=default, metadata=meta)


def check(checks: list[tuple[bool, str]]) -> None:
    """Raise :class:`ConfigError` with the first failed check's message."""
    for ok, message in checks:
        if not ok:
            raise ConfigError(f"invalid setting: {message}")


def configure(cls, config=None, overrides: dict | None = None):
    """``config`` (default: ``cls()``) with ``overrides`` applied and validated; an unknown
    name is a :class:`ConfigError` that lists the valid ones."""
    config = config if config is not None else cls()
    if not overrides:
        return config
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise ConfigError(f"unknown setting {', '.join(unknown)} for {cls.__name__}: choose from "
                          f"{', '.join(sorted(known))}")
    return dataclasses.replace(config, **overrides)


ACCURACY = "accuracy beyond a frozen backbone"


@dataclass(frozen=True)
class TrainConfig:
    """Everything that decides what a training run produces. Saved beside the model."""

    backbone: str = option(
        "efficientnet_lite0", "see `tfguess backbones`; auto: the EfficientNet-Lite that "
        "cross-validates best (one feature extraction per backbone, once)")
    weights: str | None = option(None, "local weights file for a backbone that downloads its own")
    tfhub_module: str | None = option(  # overrides backbone
        None, "TF Hub image feature-vector handle or local SavedModel dir")
    image_size: int | None = option(
        None, "input size in pixels: larger than an EfficientNet-Lite's own (224, 240, 260) shows "
        "it finer detail at (size/own)^2 the time, e.g. 288 for fine-grained labels or small "
        "objects; required for a TF Hub module without static dims")
    resize: str | None = option(  # None: the backbone's own
        "auto", "how a photo is made square for the backbone: squash (the whole photo, distorted; "
        "what MediaPipe does), crop (the central 87.5%%), pad (the whole photo on grey 127), auto "
        "(the default: the backbone's own of squash and crop unless the other is clearly better "
        "on your photos, out of fold; one more feature extraction)",
        metavar="|".join(RESIZE_CHOICES))
    image_dir: str | None = option(None, "labelled photos folder (default: TF_FILES/data)")
    eval_dir: str | None = option(
        None, "an extra labelled folder (<label>/ sub-folders) to evaluate on")
    validation_pct: float = option(10.0)
    test_pct: float | None = option(  # None: 10, or 0 with eval_dir (that folder is the test)
        None, f"share held out as the test split (default {DEFAULT_TEST_PCT:g}; 0 with "
        "--eval-dir, which is then the test set)")
    min_per_label: int = option(2, cli=False)
    epochs: int = option(300)
    batch_size: int = option(64)
    learning_rate: float = option(1e-3)
    l2: float = option(1e-4)
    dropout: float = option(0.2)
    label_smoothing: float = option(0.0, cli=False)
    patience: int = option(20)
    class_weights: bool = option(True, flag="--no-class-weights")
    seed: int = option(0, "seeds every random draw of training (the head, the augmented views, the "
                       "fine-tuning's dropout): the same photos and settings train the same model on "
                       "the same machine")
    engine: str = option("auto", "how the frozen backbone runs (keras: the plain Keras path)",
                         choices=ENGINE_CHOICES)
    precision: str = option(
        "auto", "the TFLite engine's arithmetic (int8: calibrated on the training photos, faster; "
        "auto: float32 features, and guessing runs an int8 engine where the CPU has int8 "
        "dot-product instructions; default auto)", choices=PRECISION_CHOICES)
    summaries_dir: str | None = option(None, "write TensorBoard logs of training here")
    report: bool = option(True, "skip the HTML evaluation report", flag="--no-report")
    workers: int = option(0, "decoding threads (default: one per core)")
    ray: str | None = option(
        None, "extract the bottlenecks on a Ray cluster (auto: this machine's, else a local one; "
        "needs pip install 'tfguess[ray]'; see docs/scale.md)", metavar="auto|ADDRESS")
    ray_workers: int = option(0, "Ray actors (default: one per CPU of the cluster)")
    keep_placeholders: bool = option(
        False, "use images that look like placeholders (flat background with a little text or an "
        "icon) instead of skipping them")
    follow_links: bool = option(
        False, "follow links to folders outside a label folder (by default not followed)")
    # Accuracy beyond a frozen backbone (see augment.py, head.py, finetune.py)
    augment: str | None = option(  # None: light views, strong fine-tuning
        None, "augmentation of the views (default light) and of fine-tuning (default strong)",
        group=ACCURACY, choices=AUGMENT_CHOICES)
    no_flip: bool = option(False, "never mirror images (text, logos, left/right data)",
                           group=ACCURACY)
    views: int = option(2, "fixed augmented views per training image, cached like the others",
                        group=ACCURACY)
    hidden_units: int = option(0, "a hidden ReLU layer of this size in the head (0: none)",
                               group=ACCURACY)
    fine_tune: bool = option(False, "then train the top of the backbone too (slower, most accurate)",
                             group=ACCURACY)
    fine_tune_blocks: int = option(6, group=ACCURACY)  # top blocks unfrozen (+ the head conv)
    fine_tune_epochs: int = option(10, group=ACCURACY)
    fine_tune_lr: float = option(3e-4, group=ACCURACY)
    fine_tune_views: int | None = option(
        None, "augmented views an image cached through the frozen lower blocks (default: one per "
        "epoch, within memory; 0: fresh views through the whole backbone every epoch, slower)",
        group=ACCURACY)
    time_limit: float | None = option(  # seconds: train picks the best recipe that fits (plan.py)
        DEFAULT_TIME_LIMIT, "the most accurate recipe (backbone, size, views, fine-tuning) that "
        "fits this time on this machine, e.g. 90s, 10m, 1h30m (default 5m); the plan is printed "
        "first. Recipe flags you give (--backbone, --image-size, --views, --fine-tune, ...) are "
        "kept: the plan chooses the rest", group=ACCURACY, metavar="DURATION", convert="duration")
    one_backbone: bool = option(
        False, "one backbone even when the time limit holds an ensemble of two (a model half the "
        "size and twice as fast to guess with, e.g. for a phone)", group=ACCURACY)
    hold_out_test: bool = option(
        False, "never train on the test split: the test figure is then the saved model's own, "
        "at the cost of fewer training photos (by default a time plan's last refit adds the "
        "test photos, and the test figure is that of the model before it, said so)",
        group=ACCURACY)
    quick: bool = option(
        False, "no time plan: the quick recipe (efficientnet_lite0, 224 px, 2 cached views, no "
        "fine-tuning; seconds once the features are cached), or the one your flags give",
        group=ACCURACY)
    head_only: bool = option(
        False, "re-fit only the head, on the features of the model already in TF_FILES (its "
        "backbone, fine-tuned or not, its size and resize): seconds when the features are "
        "cached, as after moving photos between labels (the review page's Re-train)",
        group=ACCURACY)
    force: bool = option(
        False, "train again even when the photos and the settings are those of the model there "
        "(by default such a run does nothing)")

    def __post_init__(self) -> None:
        if self.test_pct is None:
            object.__setattr__(self, "test_pct", 0.0 if self.eval_dir else DEFAULT_TEST_PCT)
        check([
            (0 <= self.validation_pct < 100, "validation_pct must be in [0, 100)"),
            (0 <= self.test_pct < 100, "test_pct must be in [0, 100)"),
            (self.validation_pct + self.test_pct < 100, "validation_pct + test_pct must be below 100"),
            (self.epochs >= 1, "epochs must be at least 1"),
            (self.batch_size >= 1, "batch_size must be at least 1"),
            (self.learning_rate > 0, "learning_rate must be positive"),
            (0 <= self.dropout < 1, "dropout must be in [0, 1)"),
            (self.resize in (None, *RESIZE_CHOICES),
             f"unknown resize {self.resize!r}: choose one of {', '.join(RESIZE_CHOICES)}"),
            (self.engine in ENGINE_CHOICES, "engine must be auto, tflite or keras"),
            (self.precision in PRECISION_CHOICES, "precision must be auto, float32 or int8"),
            (not (self.precision == "int8" and self.engine == "keras"),
             "precision int8 needs the TFLite engine (--engine auto or tflite)"),
            (not (self.precision == "int8" and self.ray),
             "--ray runs the float32 engine only: leave out --precision int8"),
            (self.augment in (None, *AUGMENT_CHOICES), "augment must be none, light or strong"),
            (self.views >= 0, "views must be 0 or more"),
            (not (self.views > 1 and self.view_augment == "none"),
             "more than one augmented view needs --augment light or strong"),
            (self.hidden_units >= 0, "hidden_units must be 0 or more"),
            (self.fine_tune_blocks >= 0, "fine_tune_blocks must be 0 or more"),
            (self.fine_tune_epochs >= 1, "fine_tune_epochs must be at least 1"),
            (self.fine_tune_lr > 0, "fine_tune_lr must be positive"),
            (self.fine_tune_views is None or self.fine_tune_views >= 0,
             "fine_tune_views must be 0 or more"),
            (self.time_limit is None or self.time_limit > 0, "time_limit must be positive"),
            (not (self.quick and self.time_limit not in (None, DEFAULT_TIME_LIMIT)),
             "--quick trains without a time plan: leave out --time-limit (or --quick)"),
            (not (self.fine_tune and self.ray),
             "--ray extracts with the stock backbone only: leave out --fine-tune"),
        ])

    @property
    def view_augment(self) -> str:
        """The augmentation of the cached views: ``--augment``, else light."""
        return self.augment or "light"

    @property
    def fine_tune_augment(self) -> str:
        """The augmentation while fine-tuning: ``--augment``, else strong (fresh views every epoch
        keep a backbone from memorising a small data set)."""
        return self.augment or "strong"

    @property
    def mode(self) -> str:
        """How the model is trained, e.g. ``frozen``, ``frozen+views+hidden``, ``fine-tuned``."""
        parts = ["fine-tuned" if self.fine_tune else "frozen"]
        if self.views:
            parts.append("views")
        if self.hidden_units:
            parts.append("hidden")
        return "+".join(parts)

    def pinned(self) -> dict:
        """The recipe settings (:data:`RECIPE_FIELDS`) given another value than the default:
        the user's, which a time plan keeps."""
        defaults = TrainConfig.__dataclass_fields__
        return {name: getattr(self, name) for name in RECIPE_FIELDS
                if getattr(self, name) != defaults[name].default}

    @property
    def plans(self) -> bool:
        """Whether ``train`` picks the recipe by the time budget (not ``--quick``)."""
        return bool(self.time_limit) and not self.quick and not self.head_only

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> TrainConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


@dataclass(frozen=True)
class GuessConfig:
    """How ``guess`` and ``guess-dir`` classify and copy (``guess`` uses the first four)."""

    top_k: int = option(3, "labels recorded in the manifest")
    engine: str = option("auto", choices=ENGINE_CHOICES)
    tta: bool = option(False, "average in the mirror image's prediction")
    min_score: float = option(
        0.0, "below it the label is 'unknown' ('_unknown' when the model has a label called "
        "'unknown')")
    recursive: bool = option(False)
    by_label: bool = option(False, "copy into DST/<label>/")
    batch_size: int = option(32)
    workers: int = option(0)
    ray: str | None = option(
        None, "classify on a Ray cluster (auto: this machine's, else a local one; needs pip "
        "install 'tfguess[ray]'; see docs/scale.md)", metavar="auto|ADDRESS")
    ray_workers: int = option(0, "Ray actors (default: one per CPU of the cluster)")
    again: bool = option(
        False, "copy every image again, also those an earlier run into DST copied (a re-run "
        "otherwise resumes; nothing is ever overwritten)")
    follow_links: bool = option(
        False, "follow links to folders outside SRC (by default only those inside SRC)")
    wait: bool = option(
        True, "when another run is writing into DST, stop (exit 2) instead of waiting for it",
        flag="--no-wait")

    def __post_init__(self) -> None:
        check([
            (self.top_k >= 0, "top_k must be 0 or more"),
            (self.engine in ENGINE_CHOICES, "engine must be auto, tflite or keras"),
            (self.min_score >= 0, "min_score must not be negative"),  # above 1: all unknown
            (self.batch_size >= 1, "batch_size must be at least 1"),
            (self.workers >= 0, "workers must be 0 or more"),
            (self.ray_workers >= 0, "ray_workers must be 0 or more"),
        ])


@dataclass(frozen=True)
class ExportConfig:
    """What ``export`` writes; the formats are :data:`tfguess.export.formats.FORMAT_NAMES`."""

    formats: tuple[str, ...] = option(
        ("tflite",), "repeat for several (default: tflite)", flag="--format", action="append")
    quantize: str = option("none", choices=QUANTIZE_CHOICES)
    out_dir: str | None = option(None, "output folder (default: TF_FILES/export)", flag="--out")
    quiet: bool = option(False, cli=False)  # the converters' own progress bars and warnings

    def __post_init__(self) -> None:
        if isinstance(self.formats, str) or not isinstance(self.formats, tuple):
            object.__setattr__(self, "formats", (self.formats,) if isinstance(self.formats, str)
                               else tuple(self.formats))
        check([(bool(self.formats), "give at least one format"),
               (self.quantize in QUANTIZE_CHOICES,
                f"unknown quantization {self.quantize!r}: choose from {', '.join(QUANTIZE_CHOICES)}")])


@dataclass(frozen=True)
class ServeConfig:
    """Where ``serve`` listens, who may call it, how much it accepts, and the inbox page."""

    host: str = option("127.0.0.1", "address to listen on (default: this machine only; 0.0.0.0 "
                       "exposes it to the network)")
    port: int = option(8080)
    max_upload_mb: float = option(32.0, "request body limit (default 32)")
    max_files: int | None = option(None, cli=False)  # images a request (default: queue_size, <= 64)
    max_batch: int = option(32, "images per network batch (default 32)")
    max_wait_ms: float = option(10.0, "how long a batch waits to fill (default 10)")
    queue_size: int = option(256, "images in flight; 503 beyond (default 256)")
    timeout_s: float = option(60.0, "seconds per request (default 60)", flag="--timeout")
    inbox: str | None = option(
        None, "the inbox page (/inbox): sort this folder of unlabelled photos (only read) into "
        "TF_FILES/data/<label>/, uncertain ones first", metavar="DIR")
    inbox_every: int = option(
        20, "the inbox re-trains by itself every N labels (0: only on request)", metavar="N")
    api_key: str | None = option(
        None, "required on every request and page (Authorization: Bearer KEY); default: "
        "$TFGUESS_API_KEY. Needed to listen beyond this machine", env="TFGUESS_API_KEY")
    no_auth: bool = option(
        False, "listen beyond this machine without an API key (anyone can change the data set)")
    cors_origins: tuple[str, ...] = option(
        (), "a web origin (https://host[:port]) whose pages may call the API; repeat for several "
        "(default: none)", flag="--cors-origin", action="append", metavar="ORIGIN")
    access_log: bool = option(False, "print one line per request")

    def __post_init__(self) -> None:
        object.__setattr__(self, "cors_origins", tuple(self.cors_origins))
        check([(0 <= self.port <= 65535, "port must be in [0, 65535]"),
               (self.inbox_every >= 0, "inbox_every must be 0 or more")])
