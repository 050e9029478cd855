"""Augmentation: the views, their determinism and cache, and --no-flip on left/right data."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image, ImageDraw

from tfguess.data import augment
from tfguess.data.augment import (
    POLICIES,
    ViewParams,
    apply_params,
    fixed_view,
    prepare,
    sample_params,
)
from tfguess.data.images import load_image


def arrow(path, direction: str, rng: np.random.Generator, size: int = 240) -> None:
    """A photo-like picture of an arrow pointing ``left`` or ``right`` (noise, random colours)."""
    bg = rng.integers(0, 256, 3)
    noise = rng.normal(0, 18, (size, size, 3))
    im = Image.fromarray(np.clip(bg + noise, 0, 255).astype(np.uint8))
    d = ImageDraw.Draw(im)
    cx, cy = rng.integers(90, size - 90, 2)
    length, half = int(rng.integers(50, 80)), int(rng.integers(10, 18))
    sign = 1 if direction == "right" else -1
    colour = tuple(int(c) for c in (255 - bg + rng.integers(-40, 40, 3)) % 256)
    tail, tip = cx - sign * length, cx + sign * length
    d.rectangle([min(tail, cx), cy - half // 2, max(tail, cx), cy + half // 2], fill=colour)
    d.polygon([(cx, cy - 2 * half), (cx, cy + 2 * half), (tip, cy)], fill=colour)
    im.save(path, quality=92)


def arrows(root, n: int, seed: int):
    rng = np.random.default_rng(seed)
    for direction in ("left", "right"):
        (root / direction).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            arrow(root / direction / f"{direction}_{i:03d}.jpg", direction, rng)
    return root


@pytest.mark.parametrize("policy", POLICIES)
def test_no_flip_never_mirrors_and_flip_sometimes_does(policy):
    rng = np.random.default_rng(0)
    assert not any(sample_params(rng, 300, 256, policy, no_flip=True).flip for _ in range(500))
    flips = sum(sample_params(rng, 300, 256, policy, no_flip=False).flip for _ in range(500))
    assert 180 < flips < 320


def test_views_stay_inside_the_image_and_policies_differ():
    rng = np.random.default_rng(1)
    for policy in ("light", "strong"):
        for _ in range(200):
            left, top, w, h = sample_params(rng, 341, 256, policy, False).box
            assert left >= 0 and top >= 0 and left + w <= 341 + 1e-6 and top + h <= 256 + 1e-6
    with pytest.raises(ValueError, match="unknown augmentation"):
        sample_params(rng, 10, 10, "wild", False)


def test_identity_view_is_the_evaluation_crop_and_flip_is_its_mirror(tmp_path):
    arrow(tmp_path / "a.jpg", "left", np.random.default_rng(2), size=300)
    im = prepare(Image.open(tmp_path / "a.jpg").convert("RGB"), 224)
    w, h = im.size
    side = min(w, h) * 0.875
    box = ((w - side) / 2, (h - side) / 2, side, side)
    plain = apply_params(im, ViewParams(box), 224)
    mirrored = apply_params(im, ViewParams(box, flip=True), 224)
    np.testing.assert_array_equal(mirrored, plain[:, ::-1])
    assert np.abs(plain.astype(int) - load_image(tmp_path / "a.jpg", 224)).mean() < 2


def test_fixed_views_are_deterministic_per_content_and_view(tmp_path):
    arrow(tmp_path / "a.jpg", "right", np.random.default_rng(3))
    p = tmp_path / "a.jpg"
    one = fixed_view(p, "d1", 1, 224, "crop", "strong", False)
    np.testing.assert_array_equal(one, fixed_view(p, "d1", 1, 224, "crop", "strong", False))
    assert not np.array_equal(one, fixed_view(p, "d1", 2, 224, "crop", "strong", False))
    assert not np.array_equal(one, fixed_view(p, "d2", 1, 224, "crop", "strong", False))
    # View 0 is the mirror image of the evaluation crop, except with no_flip.
    plain = load_image(p, 224)
    np.testing.assert_array_equal(fixed_view(p, "d1", 0, 224, "crop", "light", False), plain[:, ::-1])
    assert not np.array_equal(fixed_view(p, "d1", 0, 224, "crop", "light", True), plain[:, ::-1])
    assert augment.view_recipe(1, "light", True) != augment.view_recipe(1, "light", False)


@pytest.mark.slow
def test_no_flip_end_to_end_on_left_right_arrows(tmp_path, monkeypatch):
    """--no-flip on left/right data: no view is ever mirrored, in the cached views or fine-tuning.

    (Accuracy is not asserted: frozen pooled features of an image and of its mirror image are
    nearly the same (cosine 0.97-0.99 measured on these arrows, against 0.65-0.90 between two
    left arrows), so left/right is hardly learnable without fine-tuning.)
    """
    from tfguess.core.config import TrainConfig
    from tfguess.core.errors import ConfigError
    from tfguess.guess.predict import Predictor
    from tfguess.training.train import train

    made = []
    real_apply, real_load = augment.apply_params, augment.load_image

    def spy_apply(im, params, size):
        made.append(params.flip)
        return real_apply(im, params, size)

    def spy_load(*args, **kwargs):  # view 0 mirrors a plain load: it must not be asked for
        made.append("plain-load")
        return real_load(*args, **kwargs)

    monkeypatch.setattr(augment, "apply_params", spy_apply)
    monkeypatch.setattr(augment, "load_image", spy_load)
    data = arrows(tmp_path / "train", 12, seed=10)
    tf_files = tmp_path / "tf"
    config = TrainConfig(quick=True, image_dir=str(data), views=3, augment="strong", no_flip=True, report=False,
                         epochs=20, fine_tune=True, fine_tune_blocks=1, fine_tune_epochs=1)
    result = train(tf_files, config, progress=False, log=lambda *_: None)
    assert result.summary["mode"] == "fine-tuned+views"
    n_train = len(result.summary["splits"]["train"])
    # 3 cached views and one fine-tuning view per training image, none of them mirrored.
    assert len(made) >= 4 * n_train and "plain-load" not in made and not any(made)
    with pytest.raises(ConfigError, match="no-flip"):
        Predictor.load(tf_files, tta=True)
    # The views cost nothing the second time: every one is cached.
    made.clear()
    train(tf_files, TrainConfig(**{**config.to_dict(), "fine_tune": False}), progress=False,
          log=lambda *_: None)
    assert made == []


def test_cli_flags_reach_the_config():
    import dataclasses

    from tfguess.cli import build_parser
    from tfguess.core.config import TrainConfig

    args = build_parser().parse_args(["train", "tf", "--fine-tune", "--augment", "strong", "--no-flip",
                                      "--hidden-units", "8", "--views", "2", "--fine-tune-blocks", "3"])
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    config = TrainConfig(**{k: v for k, v in vars(args).items() if k in fields})
    assert (config.fine_tune, config.augment, config.no_flip, config.hidden_units, config.views,
            config.fine_tune_blocks) == (True, "strong", True, 8, 2, 3)
    assert config.mode == "fine-tuned+views+hidden"
    assert build_parser().parse_args(["guess", "tf", "a.jpg", "--tta"]).tta
    assert build_parser().parse_args(["guess-dir", "tf", "a", "b", "--tta"]).tta
    with pytest.raises(ValueError, match="augment"):
        TrainConfig(augment="wild")
    with pytest.raises(ValueError, match="augmented view"):
        TrainConfig(views=3, augment="none")


def test_tta_averages_the_image_and_its_mirror_image():
    from tfguess.guess.predict import _with_tta

    def probabilities(pixels):  # left half brighter -> class 0
        left = pixels[:, :, : pixels.shape[2] // 2].mean(axis=(1, 2, 3))
        right = pixels[:, :, pixels.shape[2] // 2:].mean(axis=(1, 2, 3))
        p0 = left / (left + right)
        return np.stack([p0, 1 - p0], axis=1)

    pixels = np.zeros((2, 4, 4, 3), np.float32)
    pixels[0, :, :2] = 200
    pixels[0, :, 2:] = 50
    pixels[1] = 100
    assert _with_tta(probabilities, False) is probabilities
    averaged = _with_tta(probabilities, True)(pixels)
    np.testing.assert_allclose(averaged, [[0.5, 0.5], [0.5, 0.5]])  # mirror-symmetric on average
    np.testing.assert_allclose(probabilities(pixels)[0], [0.8, 0.2])


def test_tta_is_refused_with_a_ray_predictor(tmp_path):
    from tfguess.core.errors import ConfigError
    from tfguess.guess.predict import guess_dir

    (tmp_path / "src").mkdir()
    with pytest.raises(ConfigError, match="--tta"):
        guess_dir("unused", tmp_path / "src", tmp_path / "dst", predictor=object(), tta=True,
                  progress=False, log=lambda *_: None)
