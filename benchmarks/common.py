"""Shared by the benchmark scripts: what machine ran them, and how results are written."""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import features


def machine() -> dict:
    """CPU, cores, load and library versions, recorded with every result."""
    cpu = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import cv2
    import PIL

    return {
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "cores_available": len(os.sched_getaffinity(0))
        if hasattr(os, "sched_getaffinity")
        else None,
        "load_average_at_start": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "numpy": np.__version__,
        "pillow": PIL.__version__,
        "libjpeg_turbo": bool(features.check_feature("libjpeg_turbo")),
        "opencv": cv2.__version__,
        "platform": platform.platform(),
    }


def write_report(out: str | os.PathLike, benchmark: str, machine_info: dict, **fields: Any) -> dict:
    """Write ``{"benchmark", "created", "machine", **fields}`` as JSON to ``out``; return it.

    ``machine_info`` is :func:`machine` called when the benchmark started (its load average).
    """
    report = {
        "benchmark": benchmark,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": machine_info,
        **fields,
    }
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nwrote {path}")
    return report


def open_run(run: str, data: str, judge_dir: str | os.PathLike | None = None):
    """What the edit benchmarks start from: ``(vae, bank, cache, judge, judged)`` for the model
    ``run`` (a folder or a shipped name) and the prepared cache ``data``; ``judge`` is read from
    ``judge_dir`` (None when not given) and ``judged`` lists the attributes it passes that the
    cache labels and the bank has a footprint for (every judged one when there is no judge)."""
    from attributes.bank import VectorBank
    from conceptvae.data.cache import open_cache
    from conceptvae.evaluate import Judge
    from conceptvae.model import ConceptVAE
    from conceptvae.pretrained import resolve

    path = resolve(run)
    vae = ConceptVAE.from_pretrained(path)
    bank = VectorBank.load(path, model_hash=vae.model_hash())
    cache = open_cache(data)
    judge = Judge.load(judge_dir) if judge_dir is not None else None
    judged = []
    if judge is not None:
        names = set(cache.attr_names)
        judged = [n for n in judge.judged() if n in names and n in bank.footprints]
    return vae, bank, cache, judge, judged
