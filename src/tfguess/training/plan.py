"""``train --time-limit``: the most accurate recipe that fits a time budget on this machine.

A recipe is a backbone, an input size, a number of cached augmented views and, optionally,
fine-tuning (blocks and epochs). :data:`RECIPES` holds what each one scored on the development
sets (validation accuracy of cub_songbirds22 and hymenoptera, the accuracy table of docs/benchmarks.md); a
recipe's value is the mean of the two. Its time is estimated from the number of images and this
machine's throughput (:mod:`tfguess.training.throughput`).

:func:`choose` takes the best recipe whose estimate fits :data:`HEADROOM` of the budget, with
fewer fine-tuning epochs when that is what fits; the training run then enforces the limit (the
fine-tuning stops at a deadline and keeps its average so far). When the budget holds more than
the best recipe, the plan adds an ensemble (:mod:`tfguess.training.ensemble`): a second
backbone, fine-tuned the same way at the same input size, whose probabilities are averaged with
the first's, planned when both runs and their refits fit. A plan of one backbone also names the
:attr:`Plan.alternatives` that fit the budget too (other backbones and input sizes, the same
fine-tuning or none): the run measures them against the plan's choice on the user's photos
(:func:`tfguess.training.choices.choose_planned_backbone`), paid from the reserve :data:`HEADROOM`
keeps (:func:`with_alternatives`). Nothing here imports TensorFlow.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, replace
from pathlib import Path

from tfguess.core.errors import ConfigError
from tfguess.training.throughput import Speed, costs, speed

# Share of the budget a plan may fill: the rest absorbs estimation errors (the run must end within
# the limit plus 10 %).
HEADROOM = 0.8
MIN_FINE_TUNE_EPOCHS = 3
# Seconds, whatever the data: importing TensorFlow, building and converting the backbone, fitting
# the head, saving; fine-tuning adds converting its lower blocks and the fine-tuned backbone.
FIXED_SECONDS = 25.0
FINE_TUNE_FIXED_SECONDS = 20.0
# The backbone and size a plan chose are measured against the alternatives on at most this many
# training and validation photos (a random sample of a larger set): enough for a sign test to see
# a difference of a few points, and at most about 25 s of extraction on 2 cores.
CHOICE_PHOTOS = 1000
# That measurement comes out of the reserve HEADROOM keeps, up to half of it (the default's runs on
# the eight development sets ended 6-20 % inside their plan's estimate, the measurement included).
CHOICE_HEADROOM = 0.9


@dataclass(frozen=True)
class Recipe:
    backbone: str
    image_size: int            # the input size it runs at
    views: int
    fine_tune: bool
    scores: tuple[float, float]  # val accuracy on (cub_songbirds22, hymenoptera)
    fine_tune_blocks: int = 6
    fine_tune_epochs: int = 10
    base: tuple[float, float] | None = None  # the scores without fine-tuning (fewer epochs)

    @property
    def extract_cost(self) -> float:
        """Time of one frozen extraction, relative to lite0 at 224 (:func:`costs`)."""
        return costs(self.backbone, self.image_size)[0]

    @property
    def views_cost(self) -> float:
        """Time of one cached fine-tuning view, relative to lite0 at 224."""
        return costs(self.backbone, self.image_size)[1]

    @property
    def fine_tune_cost(self) -> float:
        """Time of one fine-tuning image-epoch, relative to lite0 at 224."""
        return costs(self.backbone, self.image_size)[2]

    @property
    def value(self) -> float:
        """The mean dev-set accuracy, for fewer fine-tuning epochs a linear share of the gain
        (an assumption: only 10 epochs were measured)."""
        full = sum(self.scores) / len(self.scores)
        if not self.fine_tune or self.base is None or self.fine_tune_epochs >= 10:
            return full
        base = sum(self.base) / len(self.base)
        return base + (full - base) * self.fine_tune_epochs / 10

    @property
    def name(self) -> str:
        parts = [self.backbone.replace("efficientnet_", ""), f"{self.image_size} px",
                 f"{self.views} views" if self.views else "no views"]
        if self.fine_tune:
            parts.append(f"fine-tuning {self.fine_tune_blocks} blocks x {self.fine_tune_epochs} epochs")
        return ", ".join(parts)

    def settings(self) -> dict:
        """The TrainConfig fields this recipe sets."""
        own = {"efficientnet_lite0": 224, "efficientnet_lite1": 240, "efficientnet_lite2": 260}
        return {"backbone": self.backbone,
                "image_size": None if own.get(self.backbone) == self.image_size else self.image_size,
                "views": self.views, "fine_tune": self.fine_tune,
                "fine_tune_blocks": self.fine_tune_blocks, "fine_tune_epochs": self.fine_tune_epochs}


_L0 = "efficientnet_lite0"
_L2 = "efficientnet_lite2"


MIN_DURATION_S = 1   # a time limit is given in whole seconds or more


def parse_duration(text: str) -> float:
    """Seconds of ``90s``, ``10m``, ``1h30m``, ``1.5h`` or ``600`` (seconds)."""
    m = re.fullmatch(r"\s*(?:(\d+(?:\.\d+)?)h)?\s*(?:(\d+(?:\.\d+)?)m)?\s*(?:(\d+(?:\.\d+)?)s?)?\s*",
                     str(text).lower())
    seconds = None
    if m and any(m.groups()):
        h, mi, s = (float(g) if g else 0.0 for g in m.groups())
        seconds = 3600 * h + 60 * mi + s
    if not seconds or not math.isfinite(seconds):
        raise ConfigError(f"invalid duration {text!r}: give a positive time such as 90s, 10m or 1h30m")
    if seconds < MIN_DURATION_S:   # shown as "0 s" and too short for any recipe
        raise ConfigError(f"invalid duration {text!r}: give at least {MIN_DURATION_S} s, such as "
                          "90s, 10m or 1h30m")
    return seconds


# What each recipe scored (cub_songbirds22, hymenoptera val; docs/benchmarks.md, the fine-tuned
# ones with the views cached through the lower blocks, two runs averaged where there are two).
# Longer or bigger fine-tuning scored no higher on cub_songbirds22 (20 epochs 0.9152, 9 blocks
# 0.9136, 320 px x 15 epochs 0.9091, lite2 at 300 px 0.9136, mixup of the activations 0.9076), so
# a bigger budget buys the same recipe.
RECIPES = (
    Recipe(_L0, 224, 0, False, (0.8621, 0.9542)),
    Recipe(_L0, 224, 2, False, (0.8712, 0.9542)),
    Recipe(_L0, 288, 2, False, (0.8758, 0.9542)),
    Recipe(_L2, 260, 2, False, (0.8833, 0.9542)),
    Recipe(_L0, 224, 2, True, (0.8985, 0.9412), base=(0.8712, 0.9542)),
    Recipe(_L2, 260, 2, True, (0.9045, 0.9477), base=(0.8833, 0.9542)),
    Recipe(_L0, 288, 2, True, (0.9160, 0.9510), base=(0.8758, 0.9542)),
)


@dataclass(frozen=True)
class Estimate:
    recipe: Recipe
    seconds: float
    fine_tune_seconds: float   # of which the fine-tuning (views and epochs)
    after_seconds: float       # after the fine-tuning: features of the fine-tuned backbone, scoring
    choice_seconds: float = 0.0  # of which the alternatives' features (choose_planned_backbone)


def estimate(recipe: Recipe, images: int, train_images: int, eval_images: int, speed: Speed,
             resize_images: int = 0) -> Estimate:
    """The time of training ``recipe`` from nothing on ``images`` photos (``train_images`` of them
    in the training split) plus ``eval_images`` in an evaluation folder, and ``resize_images``
    extracted once more to choose the resize."""
    extract = recipe.extract_cost / speed.extract
    seconds = (FIXED_SECONDS * speed.slowdown
               + (images + resize_images + train_images * recipe.views + eval_images) * extract)
    ft = after = 0.0
    if recipe.fine_tune:
        epochs = recipe.fine_tune_epochs
        ft = train_images * (epochs * recipe.fine_tune_cost / speed.fine_tune
                             + epochs * recipe.views_cost / speed.views)
        after = (images + eval_images) * extract + FINE_TUNE_FIXED_SECONDS * speed.slowdown
        seconds += ft + after
    return Estimate(recipe, seconds, ft, after)


@dataclass(frozen=True)
class Plan:
    chosen: Estimate
    limit: float
    speed: Speed
    fits: bool                 # False: even the fastest recipe is estimated over the budget
    images: int = 0
    train_images: int = 0
    eval_images: int = 0
    second: Estimate | None = None   # the ensemble's second member (:func:`with_ensemble`)
    ensemble_seconds: float = 0.0    # both members and their refits
    # a second member the estimate does not fit: built if the time the first leaves holds it
    second_if_time: Estimate | None = None
    second_ratio: float = 0.0        # the second member's estimate with its refit / the first's
    # other backbones or sizes that fit too, to measure on the photos (choose_planned_backbone)
    alternatives: tuple[Estimate, ...] = ()
    kept: tuple[str, ...] = ()       # the recipe settings the user gave (TrainConfig.pinned)
    unmeasured: str = ""             # why there are alternatives but none is measured

    def summary(self) -> dict:
        """What run_summary.json records of the plan."""
        e = self.chosen
        out = {"limit_s": self.limit, "recipe": e.recipe.name, "settings": e.recipe.settings(),
               "estimated_s": round(e.seconds, 1), "fits": self.fits,
               "dev_accuracy": round(e.recipe.value, 4), "throughput": self.speed.source,
               "images": self.images}
        if self.second:
            out["ensemble"] = {"second": self.second.recipe.name,
                               "estimated_s": round(self.ensemble_seconds, 1)}
        elif self.second_if_time:
            out["ensemble"] = {"second": self.second_if_time.recipe.name, "if_time_left": True,
                               "estimated_s": round(self.ensemble_seconds, 1)}
        if self.alternatives:
            out["alternatives"] = [a.recipe.name for a in self.alternatives]
        if self.unmeasured:
            out["unmeasured"] = self.unmeasured
        return out

    def describe(self) -> str:
        e = self.chosen
        ft = (f", of which fine-tuning {e.fine_tune_seconds:.0f} s" if e.recipe.fine_tune else "")
        warn = "" if self.fits else " (over the budget: the fastest recipe there is)"
        text = (f"Time limit {format_seconds(self.limit)}: {e.recipe.name}; estimated "
                f"{format_seconds(e.seconds)}{ft}{warn}; dev-set accuracy of this recipe "
                f"{e.recipe.value:.3f}; throughput from {self.speed.source}")
        if self.second:
            text += (f"\n  then an ensemble: {self.second.recipe.name} as a second member, its "
                     f"probabilities averaged with the first's; both with their refits estimated "
                     f"{format_seconds(self.ensemble_seconds)} ({ENSEMBLE_EVIDENCE})")
        elif self.second_if_time:
            text += (f"\n  then an ensemble with {self.second_if_time.recipe.name} as a second "
                     "member if the time the first leaves holds it, by the first's time here")
        if self.alternatives:
            text += ("\n  measured on your photos against "
                     + ", ".join(pair_name(a.recipe) for a in self.alternatives)
                     + " (kept unless one is clearly better)")
        elif self.unmeasured:
            text += f"\n  its backbone and size {self.unmeasured}"
        return text


def format_seconds(seconds: float) -> str:
    seconds = round(seconds)
    return f"{seconds // 60} min {seconds % 60:02d} s" if seconds >= 60 else f"{seconds} s"


def candidates(recipe: Recipe) -> list[Recipe]:
    """``recipe``, and for fine-tuning the same with fewer epochs, down to the minimum."""
    if not recipe.fine_tune or recipe.fine_tune_epochs <= MIN_FINE_TUNE_EPOCHS:
        return [recipe]   # fewer epochs than the minimum are the user's (--fine-tune-epochs)
    return [replace(recipe, fine_tune_epochs=e)
            for e in range(recipe.fine_tune_epochs, MIN_FINE_TUNE_EPOCHS - 1, -1)]


def pair(recipe: Recipe) -> tuple[str, int]:
    """A recipe's backbone and input size: what :func:`choices.choose_planned_backbone` decides."""
    return recipe.backbone, recipe.image_size


def pair_name(recipe: Recipe) -> str:
    return f"{recipe.backbone.replace('efficientnet_', '')} at {recipe.image_size} px"


def choose(limit: float, images: int, train_images: int, eval_images: int, speed: Speed,
           recipes=RECIPES, resize_images: int = 0, validation_images: int | None = None,
           choice_images: int = 0) -> Plan:
    """The recipe of highest value whose estimate fits ``HEADROOM * limit``; the fastest one when
    none does. Ties go to the faster. ``resize_images``: the photos ``--resize auto`` extracts a
    second time to choose between crop and squash (:func:`choices.choose_resize`).
    ``validation_images`` (None: no ensemble) lets the plan add a second member
    (:func:`with_ensemble`). ``choice_images`` (0: none): the photos on which a plan of one
    backbone measures its alternatives (:func:`with_alternatives`)."""
    options = [estimate(r, images, train_images, eval_images, speed, resize_images)
               for recipe in recipes for r in candidates(recipe)]
    fitting = [e for e in options if e.seconds <= HEADROOM * limit]
    if not fitting:
        return Plan(min(options, key=lambda e: e.seconds), limit, speed, False, images,
                    train_images, eval_images)

    def value(e: Estimate):
        return round(e.recipe.value, 6), -e.seconds

    best = max(fitting, key=value)
    plan = Plan(best, limit, speed, True, images, train_images, eval_images)
    if validation_images is not None:
        plan = with_ensemble(plan, validation_images)
    if plan.second or not choice_images:
        return plan
    return with_alternatives(plan, sorted(fitting, key=value, reverse=True), choice_images)


def with_alternatives(plan: Plan, fitting: list[Estimate], choice_images: int) -> Plan:
    """``plan`` with its :attr:`Plan.alternatives`: the best of ``fitting`` (best first) of each
    other backbone and size with the chosen recipe's fine-tuning or none, whose frozen features of
    ``choice_images`` photos measure them against it (:func:`choices.choose_planned_backbone`).
    That is paid from the plan's reserve, never from the recipe (no epoch fewer): only when the
    recipe and the measurement fit :data:`CHOICE_HEADROOM` of the budget; else the plan says why
    its backbone stands unmeasured (:attr:`Plan.unmeasured`)."""
    best = plan.chosen
    alternatives: dict[tuple[str, int], Estimate] = {}
    for e in fitting:
        if e.recipe.fine_tune == best.recipe.fine_tune and pair(e.recipe) != pair(best.recipe):
            alternatives.setdefault(pair(e.recipe), e)
    if not alternatives:
        return plan
    choice = choice_images * sum(a.recipe.extract_cost for a in alternatives.values()) / plan.speed.extract
    if best.seconds + choice > CHOICE_HEADROOM * plan.limit:
        return replace(plan, unmeasured=(
            f"not measured against {', '.join(pair_name(a.recipe) for a in alternatives.values())}: "
            f"about {choice:.0f} s on {choice_images} photos, more than the time limit leaves "
            "beside the recipe"))
    return replace(plan, chosen=replace(best, seconds=best.seconds + choice, choice_seconds=choice),
                   alternatives=tuple(alternatives.values()))


# The ensemble's second member: EfficientNet-Lite2 (another backbone, so other mistakes) at the
# first member's input size, so that the model keeps one input (one preprocessing for guessing,
# one input tensor in every export). What it bought where it was measured (docs/benchmarks.md,
# "A larger budget"):
ENSEMBLE_EVIDENCE = ("on cub_songbirds22 two fine-tuned backbones averaged scored 617 of 660 "
                     "val photos against 608 for the better one")
ENSEMBLE_BACKBONE = _L2


def ensemble_member(first: Recipe) -> Recipe:
    """The second member of an ensemble whose first member is ``first``."""
    lite2 = next(r for r in RECIPES if r.backbone == ENSEMBLE_BACKBONE and r.fine_tune)
    return replace(lite2, image_size=first.image_size, views=first.views,
                   fine_tune_blocks=first.fine_tune_blocks, fine_tune_epochs=first.fine_tune_epochs)


def with_refit(e: Estimate, train_images: int, validation_images: int) -> float:
    """``e``'s time with its refit on the training and ``validation_images`` held-out photos
    (refit.py: the validation and, unless ``--hold-out-test``, the test photos): the fine-tuning
    again on more photos, then the new backbone's features."""
    if not e.recipe.fine_tune or not validation_images:
        return e.seconds
    scale = (train_images + validation_images) / max(1, train_images)
    return e.seconds + e.fine_tune_seconds * scale + e.after_seconds


def with_ensemble(plan: Plan, validation_images: int) -> Plan:
    """``plan`` with a second member (:func:`ensemble_member`) when its recipe is the full
    fine-tuning schedule of the best recipe (a larger budget has nothing better to buy for one
    backbone) and both members, each with its refit, fit ``HEADROOM`` of the budget. When they do
    not, the second member is :attr:`Plan.second_if_time`: the estimates come from reference
    rates until a run has measured this machine, so the run decides once the first member has
    (:func:`second_member_seconds`)."""
    first = plan.chosen
    best = max(RECIPES, key=lambda r: r.value)
    if not plan.fits or first.recipe != best or first.recipe.backbone == ENSEMBLE_BACKBONE:
        return plan
    second = estimate(ensemble_member(first.recipe), plan.images, plan.train_images,
                      plan.eval_images, plan.speed)
    first_s = with_refit(first, plan.train_images, validation_images)
    second_s = (with_refit(second, plan.train_images, validation_images)
                + plan.eval_images * second.recipe.extract_cost / plan.speed.extract)
    plan = replace(plan, ensemble_seconds=first_s + second_s, second_ratio=second_s / first_s)
    if first_s + second_s > HEADROOM * plan.limit:
        return replace(plan, second_if_time=second)
    return replace(plan, second=second)


def second_member_seconds(plan: Plan, first_timings: dict) -> float:
    """The time of :attr:`Plan.second_if_time` on this machine: what the first member took
    (``first_timings``: its run summary's ``timings_s``), less its choices of the resize and the
    backbone (the second member takes the first's), times the ratio of the two estimates."""
    own = (first_timings.get("total") or 0.0) - sum(
        first_timings.get(k) or 0.0 for k in ("choose_resize", "choose_backbone"))
    return max(0.0, own) * plan.second_ratio


def refit_pct(config) -> float:
    """The share of the photos (%) that a refit adds to the training ones (refit.py)."""
    return config.validation_pct + (0.0 if config.hold_out_test else config.test_pct)


def count_images(image_dir: Path) -> int:
    """Files in the label folders (not decoded: an upper bound of the usable images)."""
    n = 0
    for label in Path(image_dir).iterdir():
        if label.is_dir() and not label.name.startswith("."):
            for _root, dirs, files in os.walk(label):
                dirs[:] = [d for d in dirs if not d.startswith(".")]
                n += sum(1 for f in files if not f.startswith("."))
    return n


def plan_run(config, image_dir: Path, summary_path: Path, log=print):
    """``config`` with the recipe that fits ``config.time_limit`` for the photos in ``image_dir``
    (the previous run's summary at ``summary_path`` gives this machine's throughput), and the plan;
    ``(config, None)`` with ``--quick``, without a folder to plan for, or when the recipe settings
    the user gave (:meth:`TrainConfig.pinned`) match no recipe: the plan keeps those settings and
    chooses the rest."""
    if not config.plans:
        if config.quick:
            log(f"Quick recipe: {describe_config(config)} (no time plan)")
        return config, None
    if not Path(image_dir).is_dir():
        return config, None
    pinned = config.pinned()
    recipes = matching(RECIPES, pinned)
    if config.ray:   # a Ray cluster extracts with the stock backbone: no fine-tuning
        recipes = [r for r in recipes if not r.fine_tune]
    if not recipes:
        log(f"Your recipe: {describe_config(config)} (no recipe of the time plan has "
            f"{', '.join(f'{k}={v}' for k, v in pinned.items())}: no time plan)")
        return config, None
    images = count_images(image_dir)
    held_out = (config.validation_pct + config.test_pct) / 100
    train_images = round(images * (1 - held_out))
    eval_images = count_images(Path(config.eval_dir).expanduser()) if config.eval_dir and Path(
        config.eval_dir).expanduser().is_dir() else 0
    resize_images = images if config.resize == "auto" else 0
    # an ensemble only where the plan chooses everything and one backbone is not asked for: not
    # on a Ray cluster (no fine-tuning), nor with int8 features (no refit)
    ensemble = (not pinned and not config.ray and config.precision != "int8"
                and not config.one_backbone)
    # the backbone and size measured on the photos, where the plan chooses them: not where the
    # user named them or their weights, nor on a Ray cluster or with int8 features
    measure = ("backbone" not in pinned and "image_size" not in pinned and not config.weights
               and not config.ray and config.precision != "int8")
    plan = choose(config.time_limit, images, train_images, eval_images, speed(summary_path),
                  recipes, resize_images=resize_images,
                  validation_images=round(images * refit_pct(config) / 100) if ensemble
                  else None,
                  choice_images=min(CHOICE_PHOTOS, round(images * (1 - config.test_pct / 100)))
                  if measure else 0)
    log(plan.describe())
    if pinned:
        log(f"  kept from your settings: {', '.join(f'{k}={v}' for k, v in pinned.items())}")
    plan = replace(plan, kept=tuple(pinned))
    return with_recipe(config, plan.chosen.recipe, plan.kept), plan


def with_recipe(config, recipe: Recipe, kept=()):
    """``config`` with ``recipe``'s settings, except those the user gave (``kept``)."""
    return replace(config, **{k: v for k, v in recipe.settings().items() if k not in kept})


def matching(recipes, pinned: dict) -> list[Recipe]:
    """The recipes that agree with every pinned setting (a pinned number of fine-tuning blocks
    or epochs is put into the fine-tuning recipes; the plan may still take fewer epochs to fit)."""
    out = []
    for r in recipes:
        r = replace(r, **{k: pinned[k] for k in ("fine_tune_blocks", "fine_tune_epochs")
                          if k in pinned})
        values = {**r.settings(), "image_size": r.image_size, "tfhub_module": None,
                  "hidden_units": 0}
        if all(values[k] == v for k, v in pinned.items()):
            out.append(r)
    return out


def describe_config(config) -> str:
    """The recipe a config trains, e.g. ``efficientnet_lite0, 224 px, 2 views, no fine-tuning``."""
    size = config.image_size or {"efficientnet_lite1": 240, "efficientnet_lite2": 260}.get(
        config.backbone, 224)
    parts = [config.tfhub_module or config.backbone, f"{size} px",
             f"{config.views} views" if config.views else "no views"]
    if config.hidden_units:
        parts.append(f"{config.hidden_units} hidden units")
    parts.append(f"fine-tuning {config.fine_tune_blocks} blocks x {config.fine_tune_epochs} epochs"
                 if config.fine_tune else "no fine-tuning")
    return ", ".join(parts)


def fine_tune_deadline(start: float, limit: float, images: int, seconds_per_image: float,
                       slowdown: float = 1.0) -> float:
    """When fine-tuning must stop (a ``time.perf_counter()`` value) for a run that started at
    ``start`` to end within ``limit``: what follows it (the fine-tuned backbone's conversion and
    features of ``images`` photos at ``seconds_per_image``) is kept free, with a margin."""
    return start + limit - 1.25 * (FINE_TUNE_FIXED_SECONDS * slowdown + images * seconds_per_image)
