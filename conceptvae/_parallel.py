"""Worker processes for the data pipeline (rendering SynthFaces, preparing caches)."""

from __future__ import annotations

import contextlib
import multiprocessing
import sys
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor

_MISSING = object()


@contextlib.contextmanager
def worker_pool(
    workers: int, initializer: Callable[[], None] | None = None
) -> Iterator[ProcessPoolExecutor]:
    """A process pool whose workers are started fresh (``spawn``) and run only our code.

    Why not ``fork``: a forked worker inherits the parent's thread pools in whatever state they
    were (OpenCV's, torch's), and the first call into them can deadlock; this happened in our
    test suite. Why hide ``__main__``: ``spawn`` normally re-runs the user's script in every
    worker, so a plain script calling ``write_synthfaces`` without an
    ``if __name__ == "__main__":`` guard would crash. The workers only need functions from
    conceptvae modules, so while the pool is alive the main module is made to look like an
    interactive session, which spawn does not re-import. The pool is shut down on exit,
    cancelling what has not started.
    """
    with _main_module_hidden():
        executor = ProcessPoolExecutor(
            workers, mp_context=multiprocessing.get_context("spawn"), initializer=initializer
        )
        try:
            yield executor
        finally:
            executor.shutdown(wait=True, cancel_futures=True)


@contextlib.contextmanager
def _main_module_hidden() -> Iterator[None]:
    main = sys.modules.get("__main__")
    if main is None:
        yield
        return
    saved_file = main.__dict__.get("__file__", _MISSING)
    saved_spec = main.__dict__.get("__spec__", _MISSING)
    if saved_file is not _MISSING:
        del main.__file__
    main.__spec__ = None
    try:
        yield
    finally:
        if saved_file is not _MISSING:
            main.__file__ = saved_file
        if saved_spec is _MISSING:
            del main.__spec__
        else:
            main.__spec__ = saved_spec
