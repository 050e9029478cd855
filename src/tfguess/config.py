"""The one configuration object of a training run; CLI flags map onto its fields."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from .errors import ConfigError


@dataclass(frozen=True)
class TrainConfig:
    """Everything that decides what a training run produces. Saved beside the model."""

    backbone: str = "efficientnet_lite0"
    weights: str | None = None          # local weights file for backbones that download theirs
    tfhub_module: str | None = None     # TF Hub handle or local SavedModel dir (overrides backbone)
    image_size: int | None = None       # input size for a TF Hub module without static dims
    image_dir: str | None = None        # default: TF_FILES/data
    eval_dir: str | None = None         # an extra labelled folder to evaluate the model on
    validation_pct: float = 10.0
    test_pct: float = 10.0
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
    precision: str = "float32"          # float32 | int8: the TFLite engine's arithmetic
    summaries_dir: str | None = None    # TensorBoard logs of training
    report: bool = True                 # write the evaluation report at the end of training
    workers: int = 0                    # image decoding threads; 0 = one per core
    ray: str | None = None              # extract bottlenecks on a Ray cluster: auto | ADDRESS
    ray_workers: int = 0                # Ray actors; 0 = one per CPU of the cluster
    keep_placeholders: bool = False     # use images the placeholder check would skip
    follow_links: bool = False          # follow links to folders outside a label folder

    def __post_init__(self) -> None:
        checks = [
            (0 <= self.validation_pct < 100, "validation_pct must be in [0, 100)"),
            (0 <= self.test_pct < 100, "test_pct must be in [0, 100)"),
            (self.validation_pct + self.test_pct < 100, "validation_pct + test_pct must be below 100"),
            (self.epochs >= 1, "epochs must be at least 1"),
            (self.batch_size >= 1, "batch_size must be at least 1"),
            (self.learning_rate > 0, "learning_rate must be positive"),
            (0 <= self.dropout < 1, "dropout must be in [0, 1)"),
            (self.engine in ("auto", "tflite", "keras"), "engine must be auto, tflite or keras"),
            (self.precision in ("float32", "int8"), "precision must be float32 or int8"),
            (not (self.precision == "int8" and self.engine == "keras"),
             "precision int8 needs the TFLite engine (--engine auto or tflite)"),
            (not (self.precision == "int8" and self.ray),
             "--ray runs the float32 engine only: leave out --precision int8"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(f"invalid setting: {message}")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> TrainConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})
