"""The attribute judge and edit metrics: does an edit do what it says, and what else does it do?

The public entry to the edit evaluation, whose work lives in :mod:`conceptvae.evaluation`, one
job per module: image metrics (``metrics``), the judge (``judge``), the edit evaluation
(``edits``: :func:`evaluate`), the charts (``charts``, matplotlib) and the report (``report``:
:func:`write_report`). This module re-exports their public names; import from here.

A separate image classifier, the **judge**, is trained once on the data's images and labels
(:func:`train_judge`, saved in ``RUN/judge/``), and :func:`evaluate` asks it about decoded edits
of held-out faces: success over strength, leakage into other attributes, preservation (SSIM),
and the strength each method needs for 90% success. :func:`write_report` turns the result into
``report.json``, ``report.md`` and PNG charts. See :mod:`conceptvae.evaluation.edits` for what is
measured and what it costs.
"""

from __future__ import annotations

from conceptvae.calibration import strength_for
from conceptvae.evaluation.edits import METHODS, SYNTH_IDENTITY_TRAITS, evaluate
from conceptvae.evaluation.judge import (
    JUDGE_DIR,
    JUDGE_JSON,
    MIN_ACCURACY,
    Judge,
    JudgeConfig,
    JudgeNet,
    load_or_train_judge,
    train_judge,
)
from conceptvae.evaluation.metrics import psnr, ssim
from conceptvae.evaluation.report import calibrated_markdown, write_report

__all__ = [
    "JUDGE_DIR",
    "JUDGE_JSON",
    "METHODS",
    "MIN_ACCURACY",
    "SYNTH_IDENTITY_TRAITS",
    "Judge",
    "JudgeConfig",
    "JudgeNet",
    "calibrated_markdown",
    "evaluate",
    "load_or_train_judge",
    "psnr",
    "ssim",
    "strength_for",
    "train_judge",
    "write_report",
]
