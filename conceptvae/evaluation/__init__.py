"""The edit evaluation, one job per module (the public names are in :mod:`conceptvae.evaluate`):

- :mod:`~conceptvae.evaluation.metrics`: SSIM and PSNR of image batches (torch);
- :mod:`~conceptvae.evaluation.judge`: the attribute judge: its network, training, thresholds,
  saving and loading;
- :mod:`~conceptvae.evaluation.edits`: :func:`evaluate`: reconstruction, prior samples, the
  vectors' quality, edit success, leakage and preservation, and the calibrated edits;
- :mod:`~conceptvae.evaluation.charts`: the report's charts (matplotlib, Agg);
- :mod:`~conceptvae.evaluation.report`: ``report.json``, ``report.md`` and the pictures.

Nothing is imported here, so importing one module does not load the others.
"""
