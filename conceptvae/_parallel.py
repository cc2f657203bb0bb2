"""Worker processes for the data pipeline (rendering SynthFaces, preparing caches)."""

from __future__ import annotations

import multiprocessing
import sys
from multiprocessing.context import BaseContext


def worker_context() -> BaseContext:
    """The multiprocessing start method for data workers.

    On Linux, ``fork``: workers start instantly and a user's script works without an
    ``if __name__ == "__main__":`` guard (``spawn`` re-runs an unguarded script in every worker,
    which then crashes). The workers only run numpy, OpenCV and Pillow code, never torch, so
    forking a parent that has torch loaded is safe. Elsewhere (macOS, Windows) fork is unsafe or
    absent, so ``spawn``, and scripts there need the guard, as for any multiprocessing code.
    """
    if sys.platform.startswith("linux"):
        return multiprocessing.get_context("fork")
    return multiprocessing.get_context("spawn")
