"""The one configuration object of a training run; CLI flags map onto its fields."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from tfguess.core.errors import ConfigError

# --resize: the recipes of images.RESIZES, or auto (squash or crop by the photos' shapes).
RESIZE_CHOICES = ("squash", "crop", "pad", "auto")

# Share of the photos held out as the test split, unless an --eval-dir folder is the test set.
DEFAULT_TEST_PCT = 10.0


@dataclass(frozen=True)
class TrainConfig:
    """Everything that decides what a training run produces. Saved beside the model."""

    backbone: str = "efficientnet_lite0"
    weights: str | None = None          # local weights file for backbones that download theirs
    tfhub_module: str | None = None     # TF Hub handle or local SavedModel dir (overrides backbone)
    image_size: int | None = None       # input size: EfficientNet-Lite at another than its own (finer
                                        # detail, slower), or a TF Hub module without static dims
    resize: str | None = "auto"         # squash | crop | pad | auto (by the photos' shapes): how
                                        # an image is made square; None: the backbone's own
    image_dir: str | None = None        # default: TF_FILES/data
    eval_dir: str | None = None         # an extra labelled folder to evaluate the model on
    validation_pct: float = 10.0
    test_pct: float | None = None       # default: 10, or 0 with eval_dir (that folder is the test)
    min_per_label: int = 2
    epochs: int = 300
    batch_size: int = 64
    learning_rate: float = 1e-3
    l2: float = 1e-4
    dropout: float = 0.2
    label_smoothing: float = 0.0
    patience: int = 20
    class_weights: bool = True
    seed: int = 0
    engine: str = "auto"                # auto | tflite | keras: how the frozen backbone is run
    precision: str = "auto"             # auto | float32 | int8: the TFLite engine's arithmetic
                                        # (auto: float32 features, int8 guessing where the CPU has
                                        # int8 dot-product instructions; see train.py)
    summaries_dir: str | None = None    # TensorBoard logs of training
    report: bool = True                 # write the evaluation report at the end of training
    workers: int = 0                    # image decoding threads; 0 = one per core
    ray: str | None = None              # extract bottlenecks on a Ray cluster: auto | ADDRESS
    ray_workers: int = 0                # Ray actors; 0 = one per CPU of the cluster
    keep_placeholders: bool = False     # use images the placeholder check would skip
    follow_links: bool = False          # follow links to folders outside a label folder
    # Accuracy beyond a frozen backbone (see augment.py, head.py, finetune.py)
    augment: str | None = None          # none | light | strong; default: light views, strong fine-tuning
    no_flip: bool = False               # never mirror (text, logos, left/right data)
    views: int = 2                      # fixed augmented views per training image (frozen path)
    hidden_units: int = 0               # a hidden ReLU layer in the head (0: softmax only)
    fine_tune: bool = False             # then train the top of the backbone too
    fine_tune_blocks: int = 6           # top blocks unfrozen (plus the head convolution)
    fine_tune_epochs: int = 10
    fine_tune_lr: float = 3e-4
    fine_tune_views: int | None = None  # cached augmented views an image (None: one per epoch
                                        # within memory; 0: fresh pixels through the whole backbone)
    time_limit: float | None = None     # seconds: train picks the best recipe that fits (plan.py)

    def __post_init__(self) -> None:
        if self.test_pct is None:
            object.__setattr__(self, "test_pct", 0.0 if self.eval_dir else DEFAULT_TEST_PCT)
        checks = [
            (0 <= self.validation_pct < 100, "validation_pct must be in [0, 100)"),
            (0 <= self.test_pct < 100, "test_pct must be in [0, 100)"),
            (self.validation_pct + self.test_pct < 100, "validation_pct + test_pct must be below 100"),
            (self.epochs >= 1, "epochs must be at least 1"),
            (self.batch_size >= 1, "batch_size must be at least 1"),
            (self.learning_rate > 0, "learning_rate must be positive"),
            (0 <= self.dropout < 1, "dropout must be in [0, 1)"),
            (self.resize in (None, *RESIZE_CHOICES),
             f"unknown resize {self.resize!r}: choose one of {', '.join(RESIZE_CHOICES)}"),
            (self.engine in ("auto", "tflite", "keras"), "engine must be auto, tflite or keras"),
            (self.precision in ("auto", "float32", "int8"), "precision must be auto, float32 or int8"),
            (not (self.precision == "int8" and self.engine == "keras"),
             "precision int8 needs the TFLite engine (--engine auto or tflite)"),
            (not (self.precision == "int8" and self.ray),
             "--ray runs the float32 engine only: leave out --precision int8"),
            (self.augment in (None, "none", "light", "strong"), "augment must be none, light or strong"),
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
            (not (self.fine_tune and self.ray),
             "--ray extracts with the stock backbone only: leave out --fine-tune"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(f"invalid setting: {message}")

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

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> TrainConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})
