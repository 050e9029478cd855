"""The ``tfguess`` command: argument parsing only; the work is done by the Python API."""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("GRPC_VERBOSITY", "ERROR")

from .config import TrainConfig  # noqa: E402


def _train_parser(sub) -> None:
    p = sub.add_parser("train", help="train a classifier on TF_FILES/data/<label>/*")
    p.add_argument("tf_files", help="folder that holds data/<label>/ and receives the model")
    p.add_argument("--image-dir", help="labelled photos folder (default: TF_FILES/data)")
    p.add_argument("--eval-dir", help="an extra labelled folder (<label>/ sub-folders) to evaluate on")
    p.add_argument("--backbone", default=TrainConfig.backbone,
                   help="see `tfguess backbones`; auto: the EfficientNet-Lite that cross-validates best "
                   "(one feature extraction per backbone, once)")
    p.add_argument("--weights", help="local weights file for a backbone that downloads its own")
    p.add_argument("--tfhub-module", help="TF Hub image feature-vector handle or local SavedModel dir")
    p.add_argument("--image-size", type=int, help="input size of a TF Hub module without static dims")
    p.add_argument("--validation-pct", type=float, default=TrainConfig.validation_pct)
    p.add_argument("--test-pct", type=float, default=TrainConfig.test_pct)
    p.add_argument("--epochs", type=int, default=TrainConfig.epochs)
    p.add_argument("--batch-size", type=int, default=TrainConfig.batch_size)
    p.add_argument("--learning-rate", type=float, default=TrainConfig.learning_rate)
    p.add_argument("--l2", type=float, default=TrainConfig.l2)
    p.add_argument("--dropout", type=float, default=TrainConfig.dropout)
    p.add_argument("--patience", type=int, default=TrainConfig.patience)
    p.add_argument("--no-class-weights", dest="class_weights", action="store_false")
    p.add_argument("--seed", type=int, default=TrainConfig.seed)
    p.add_argument("--engine", choices=["auto", "tflite", "keras"], default="auto",
                   help="how the frozen backbone runs (keras: the plain Keras path)")
    p.add_argument("--summaries-dir", help="write TensorBoard logs of training here")
    p.add_argument("--no-report", dest="report", action="store_false",
                   help="skip the HTML evaluation report")
    p.add_argument("--workers", type=int, default=0, help="decoding threads (default: one per core)")
    g = p.add_argument_group("accuracy beyond a frozen backbone")
    g.add_argument("--augment", choices=["none", "light", "strong"], default=TrainConfig.augment,
                   help="augmentation of the views and of fine-tuning")
    g.add_argument("--no-flip", action="store_true",
                   help="never mirror images (text, logos, left/right data)")
    g.add_argument("--views", type=int, default=TrainConfig.views,
                   help="fixed augmented views per training image, cached like the others")
    g.add_argument("--hidden-units", type=int, default=TrainConfig.hidden_units,
                   help="a hidden ReLU layer of this size in the head (0: none)")
    g.add_argument("--fine-tune", action="store_true",
                   help="then train the top of the backbone too (slower, most accurate)")
    g.add_argument("--fine-tune-blocks", type=int, default=TrainConfig.fine_tune_blocks)
    g.add_argument("--fine-tune-epochs", type=int, default=TrainConfig.fine_tune_epochs)
    g.add_argument("--fine-tune-lr", type=float, default=TrainConfig.fine_tune_lr)


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = argparse.ArgumentParser(
        prog="tfguess",
        description="Train an image classifier from a folder of labelled photos; guess, sort, export.",
    )
    parser.add_argument("--version", action="version", version=f"tfguess {__version__}")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _train_parser(sub)

    p = sub.add_parser("guess", help="print the labels with scores for images")
    p.add_argument("model", help="TF_FILES folder, model.keras, or an exported .tflite")
    p.add_argument("images", nargs="+")
    p.add_argument("--top-k", type=int, default=0, help="labels to print (default: all)")
    p.add_argument("--json", action="store_true")
    p.add_argument("--engine", choices=["auto", "tflite", "keras"], default="auto")
    p.add_argument("--tta", action="store_true", help="average in the mirror image's prediction")

    p = sub.add_parser("guess-dir", help="copy every image of SRC into DST as <label>-<score>.<ext>")
    p.add_argument("model")
    p.add_argument("src")
    p.add_argument("dst")
    p.add_argument("--recursive", action="store_true")
    p.add_argument("--by-label", action="store_true", help="copy into DST/<label>/")
    p.add_argument("--min-score", type=float, default=0.0, help="below it the label is 'unknown'")
    p.add_argument("--top-k", type=int, default=3, help="labels recorded in the manifest")
    p.add_argument("--engine", choices=["auto", "tflite", "keras"], default="auto")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--workers", type=int, default=0)
    p.add_argument("--tta", action="store_true", help="average in the mirror image's prediction")

    p = sub.add_parser("evaluate", help="write the HTML evaluation report of a trained TF_FILES")
    p.add_argument("tf_files")

    p = sub.add_parser("export", help="export the trained model (TFLite, Core ML, SavedModel, frozen graph)")
    p.add_argument("tf_files")
    p.add_argument("--format", dest="formats", action="append",
                   choices=["tflite", "coreml", "savedmodel", "frozen-graph"],
                   help="repeat for several (default: tflite)")
    p.add_argument("--quantize", choices=["none", "float16", "dynamic", "int8"], default="none")
    p.add_argument("--out", help="output folder (default: TF_FILES/export)")

    sub.add_parser("backbones", help="list the backbones and where their weights come from")
    return parser


def _run(args) -> int:
    progress = not args.quiet
    if args.command in ("train", "export"):
        from ._quiet import import_tensorflow

        import_tensorflow()
    if args.command == "train":
        from .train import train

        fields = {f.name for f in dataclasses.fields(TrainConfig)}
        config = TrainConfig(**{k: v for k, v in vars(args).items() if k in fields})
        result = train(args.tf_files, config, progress=progress)
        if config.report:
            from .report import write_report

            write_report(args.tf_files, progress=progress)
        return 0 if result else 1
    if args.command == "guess":
        from .predict import guess

        return 1 if guess(args.model, args.images, args.top_k, args.json, args.engine,
                          tta=args.tta) else 0
    if args.command == "guess-dir":
        from .predict import guess_dir

        result = guess_dir(args.model, args.src, args.dst, recursive=args.recursive,
                           by_label=args.by_label, min_score=args.min_score, top_k=args.top_k,
                           engine=args.engine, batch_size=args.batch_size, workers=args.workers,
                           progress=progress, tta=args.tta)
        return 1 if result.skipped else 0
    if args.command == "evaluate":
        from .report import write_report

        write_report(args.tf_files, progress=progress)
        return 0
    if args.command == "export":
        from .export import export

        for path in export(args.tf_files, args.formats or ["tflite"], quantize=args.quantize, out_dir=args.out):
            print(f"Wrote {path}")
        return 0
    if args.command == "backbones":
        from .backbones import describe_backbones

        rows = describe_backbones()
        cols = ["name", "input_size", "feature_dim", "preprocessing", "resize", "available", "weights_source"]
        widths = {c: max(len(c), *(len(str(r[c])) for r in rows)) for c in cols[:-1]}
        print("  ".join(c.ljust(widths.get(c, 0)) for c in cols))
        for r in rows:
            print("  ".join(str(r[c]).ljust(widths.get(c, 0)) for c in cols))
        return 0
    raise AssertionError(args.command)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from .backbones import WeightsUnavailableError
    from .dataset import DatasetError
    from .model import ModelError

    try:
        return _run(args)
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130
    except (DatasetError, ModelError, WeightsUnavailableError, FileNotFoundError, ValueError) as exc:
        print(f"tfguess {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
