"""benchmarks/gpu.py's tiny CPU run: every stage runs, its numbers make sense, failures are
recorded with their message and the other stages still run; so the script is known to work
before a GPU is lent."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "benchmarks" / "gpu.py"
FAILED = "train 128px fp32"


def _no_nan(text: str):
    def refuse(name):
        raise AssertionError(f"{name} in the JSON")

    return json.loads(text, parse_constant=refuse)


def _positive(*values) -> bool:
    return all(isinstance(v, (int, float)) and math.isfinite(v) and v > 0 for v in values)


def test_tiny_run_measures_every_stage_and_records_a_failure(tmp_path):
    out = tmp_path / "gpu.json"
    docs = tmp_path / "benchmarks.md"
    docs.write_text(
        "# Benchmarks\n\nbefore\n<!-- gpu-table:begin -->\npending\n<!-- gpu-table:end -->\nafter\n"
    )
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="", OMP_NUM_THREADS="1")
    cmd = [sys.executable, str(SCRIPT), "--tiny", "--out", str(out), "--fail-stage", FAILED,
           "--update-docs", "--docs", str(docs), "--deadline", "900"]  # fmt: skip
    r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=1200)
    assert r.returncode == 0, r.stderr[-3000:]
    rep = _no_nan(out.read_text())
    st = rep["stages"]
    assert rep["tiny"] is True and rep["device"] == "cpu"

    data = st["data"]
    assert data["status"] == "ok" and data["n"] == 256
    for size in ("64", "128"):
        c = data["caches"][size]
        assert c["train"] > c["valid"] > 0 and c["train"] + c["valid"] <= 256

    fl = st["flops"]
    assert fl["status"] == "ok" and fl["peak_source"].startswith("measured: float32")
    per = fl["flops_per_image"]
    assert _positive(fl["peak_flops"], per["64"], per["128"])
    assert 1e8 < per["64"] < per["128"] < 1e10  # the default model: ~0.3 GFLOP at 64 px

    for name in ("train 64px fp32", "train 64px fp32 + channels_last", "train 128px fp32 + "
                 "channels_last"):  # fmt: skip
        t = st[name]
        assert t["status"] == "ok", (name, t)
        assert t["steps"] == 6 and t["batch_size"] == 16
        assert _positive(t["img_per_s"], t["percent_of_peak"], t["wall_s"], t["tflops"])
        assert 5.0 < t["psnr_valid"] < 60.0
        assert t["loss_last"] < t["loss_first"]  # six steps already lower the loss

    bad = st[FAILED]
    assert bad["status"] == "failed" and "--fail-stage" in bad["message"]
    assert "Traceback" in bad["traceback"]
    for name in ("train 64px bf16", "train 128px bf16 + channels_last + compile"):
        assert st[name]["status"] == "skipped" and "CUDA" in st[name]["message"]

    tr = st["torchrun"]
    assert tr["status"] == "ok", tr
    assert (tr["backend"], tr["world_size"], tr["all_reduce_ok"]) == ("gloo", 1, True)
    assert _positive(tr["img_per_s"]) and math.isfinite(tr["loss_last"])

    ed = st["edit"]
    assert ed["status"] == "ok", ed
    assert (ed["photo_side"], ed["batch_faces"]) == (1024, 256)
    d = ed["device"]
    assert _positive(d["photo_s"], d["batch_s"])
    assert math.isclose(d["faces_per_s"], 256 / d["batch_s"])

    table = out.with_suffix(".md").read_text()
    assert "| 64px | fp32 | 16 |" in table and f"{FAILED}: failed" in table
    assert "one 1024 px photo, end to end" in table
    text = docs.read_text()
    assert text.startswith("# Benchmarks\n\nbefore\n<!-- gpu-table:begin -->\n")
    assert text.endswith("<!-- gpu-table:end -->\nafter\n")
    assert "pending" not in text and table in text
