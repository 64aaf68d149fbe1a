"""the independent judge shares nothing with the classifiers that training, tuning or filtering
use, so a generator that fools those cannot raise its score."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import merged, repo_config, repo_params

from brainsynth.classifiers import judge
from brainsynth.classifiers.slice import accuracy, train_classifier
from brainsynth.config import ConfigError, validate

REPO = Path(__file__).resolve().parents[1]
RECIPE = repo_config().evaluate.judge


def phantoms(labels: np.ndarray, rng: np.random.Generator, size: int = 32, texture: bool = False) -> np.ndarray:
    """A bright 'brain' disc with a dark 'ventricle' whose radius is the class (anatomy). With
    ``texture``, the ventricle size is the same for every class and the class is a faint pixel
    pattern instead (a checkerboard or stripes): what a generator fooling a CNN might render."""
    yy, xx = np.mgrid[:size, :size]
    r = np.hypot(yy - size / 2, xx - size / 2)
    ventricle = (np.full(len(labels), 4.5) if texture else np.where(labels == 1, 7.0, 3.0)) + rng.normal(0, 0.4, len(labels))
    images = np.where(r[None] < size * 0.42, 190.0, 5.0) * np.ones((len(labels), 1, 1))
    images[r[None] < ventricle[:, None, None]] = 40.0
    if texture:
        pattern = np.where(labels[:, None, None] == 1, ((yy + xx) % 2)[None], (yy % 2)[None]) * 16.0
        images = images + pattern * (r[None] < size * 0.42)
    return np.clip(images + rng.normal(0, 4, images.shape), 0, 255).astype(np.uint8)


def test_the_judge_shares_no_code_with_the_in_loop_classifiers():
    """It loads only the anatomy masks of brainsynth.metrics (which CSF morphometry also uses), and no
    module of the CNN classifiers, the losses, the engine, tuning's objective or the export."""
    code = "import json, sys, brainsynth.classifiers.judge; print(json.dumps(sorted(n for n in sys.modules if n.startswith('brainsynth'))))"
    loaded = json.loads(subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True).stdout)
    assert set(loaded) == {"brainsynth", "brainsynth.classifiers", "brainsynth.classifiers.judge", "brainsynth.metrics"}
    assert (REPO / "src/brainsynth/classifiers/__init__.py").read_text().strip() == ""  # the package loads nothing
    source = (REPO / "src/brainsynth/classifiers/judge.py").read_text()
    assert "torch" not in source.replace("no torch", "")


def test_the_judge_never_shares_a_seed_with_the_cnn_classifiers():
    cfg = repo_config()
    cnn_seeds = {cfg.seed + 100 * i + offset for i in range(20) for offset in (0, 1000, 2000, 3000)}
    judge_seeds = {cfg.seed + 100 * i + judge.SEED_OFFSET for i in range(20)}
    assert not cnn_seeds & judge_seeds


def test_a_texture_that_fools_a_cnn_does_not_fool_the_judge():
    rng = np.random.default_rng(0)
    real_y, test_y = rng.integers(0, 2, 200), rng.integers(0, 2, 100)
    real, test = phantoms(real_y, rng), phantoms(test_y, rng)
    real_judge = judge.train_judge(real, real_y, 0, RECIPE)
    assert (real_judge.predict(test) == test_y).mean() > 0.9  # it reads the anatomy of real slices
    textured = phantoms(test_y, rng, texture=True)
    cnn = train_classifier(phantoms(real_y, rng, texture=True), real_y, 2, 40, 0, torch.device("cpu"), repo_config().evaluate.classifier)
    assert accuracy(cnn, textured, test_y) > 0.9  # a CNN trained on such samples "sees" the class in them
    assert abs((real_judge.predict(textured) == test_y).mean() - 0.5) < 0.2  # the judge does not: chance


def test_judge_settings_are_validated_with_one_line():
    with pytest.raises(ConfigError) as err:
        validate(merged(repo_params(), {"evaluate": {"judge": {"bins": 2}}}))
    assert "evaluate.judge.bins = 2" in str(err.value) and "\n" not in str(err.value)
