"""Every GPU check in one run: training modes, torchrun + NCCL, editing; under 8 minutes.

A lent GPU is available for about 15 minutes, so this script does all of its checks in one go,
each stage guarded (a failure is recorded with its message and the rest still run) and the
whole run under a global deadline (``--deadline``, default 450 s; a stage that would start too
late is recorded as skipped, and a stage still running at the deadline is recorded as killed).

1. data: ``--n`` SynthFaces (default 20,000, rendered with every core) prepared at 64 and at
   128 px, or reused from ``--data DIR`` when an earlier run left them there.
2. flops: FLOPs of one training step (forward + backward of the default model's loss) per image
   at each size, counted by ``FlopCounterMode``, and the peak they are compared with: the GPU's
   bf16 dense peak from a table by device name (for every mode, fp32 included), or on a CPU or
   an unknown GPU a large matmul measured here (float32 on a CPU, bf16 on a GPU).
3. train: the default model (``model_config_for`` the cache) trained with ``train()`` for
   ``--steps`` steps at batch ``--batch-size`` in each mode: fp32, fp32 + channels_last, bf16
   autocast, bf16 + channels_last (what ``conceptvae train`` does on CUDA), that plus
   ``--compile``, and bf16 + channels_last at batch ``--big-batch``. Reported: images/s
   (median of the logged windows after the first, which holds the warm-up and compilation),
   the ratio to fp32 in the same run, % of the peak, valid PSNR of the posterior-mean
   reconstructions after training, and the wall time of the whole call.
4. torchrun: ``torchrun --nproc-per-node 1`` running this script's DDP worker: NCCL on CUDA
   (gloo on a CPU), an all-reduce checked against its known answer, then a few
   DistributedDataParallel steps of the default model. (``train()`` itself forms a process
   group only with 2 or more processes, and NCCL refuses two ranks on one GPU.)
5. edit: the shipped ``synthfaces64`` editing one 1024 x 1024 photo end to end (read, detect,
   align, encode, edit, paste, write) and a batch of 256 aligned 64 px faces (encode, add a
   vector, decode), on the device and, as the reference, on the CPU in the same run.

    python benchmarks/gpu.py                   # on a CUDA machine: the full run
    python benchmarks/gpu.py --tiny            # anywhere: a small run of every stage (~30 s)
    python benchmarks/gpu.py --update-docs     # also rewrite the GPU block of docs/benchmarks.md

Without CUDA it runs the tiny version (a few hundred images, a few steps at batch 16, gloo; the
bf16 and compile modes are recorded as skipped). Writes benchmarks/results/gpu.json (after every
stage, so a killed run leaves what it measured) and benchmarks/results/gpu.md, and prints the
table.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

# benchmarks/attributes.py would shadow the ``attributes`` package: import the packages with
# this folder off the path, then put the folder back for ``common`` and ``edit``.
HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != HERE]
import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

from conceptvae._fs import atomic_write_json, atomic_write_text  # noqa: E402
from conceptvae.data.cache import PreparedCache, is_cache, open_cache, prepare  # noqa: E402
from conceptvae.data.celeba import read_celeba  # noqa: E402
from conceptvae.data.synth import write_synthfaces  # noqa: E402
from conceptvae.model import ConceptVAE  # noqa: E402
from conceptvae.train import METRICS_NAME, TrainConfig, model_config_for, train  # noqa: E402

sys.path.insert(0, str(HERE))
from common import machine  # noqa: E402

ROOT = HERE.parent
DOCS = ROOT / "docs" / "benchmarks.md"
BEGIN, END = "<!-- gpu-table:begin -->", "<!-- gpu-table:end -->"
# bf16 dense tensor-core peaks in FLOP/s (vendor data sheets, no sparsity); first match wins.
BF16_PEAKS = (
    ("H200", 989e12),
    ("H100 PCIe", 756e12),
    ("H100", 989e12),  # SXM
    ("A100", 312e12),
)
FULL = {"n": 20000, "sizes": (64, 128), "batch": 64, "big_batch": 512, "steps": 300}
TINY = {"n": 256, "sizes": (64, 128), "batch": 16, "big_batch": 32, "steps": 6}
# (name, bf16 autocast, channels_last, compile, big batch)
MODES = (
    ("fp32", False, False, False, False),
    ("fp32 + channels_last", False, True, False, False),
    ("bf16", True, False, False, False),
    ("bf16 + channels_last", True, True, False, False),
    ("bf16 + channels_last, big batch", True, True, False, True),
    ("bf16 + channels_last + compile", True, True, True, False),
)


# ---------------------------------------------------------------------------------------------
# the guard


class Run:
    """Results by stage, written to JSON after each stage; a stage never stops the others."""

    def __init__(self, out: Path, deadline_s: float, info: dict[str, Any]) -> None:
        self.out = out
        self.t0 = time.monotonic()
        self.deadline_s = deadline_s
        self.report: dict[str, Any] = {**info, "stages": {}}
        self.current: str | None = None
        self._lock = threading.Lock()

    def left(self) -> float:
        return self.deadline_s - (time.monotonic() - self.t0)

    def write(self) -> None:
        with self._lock:
            self.report["elapsed_s"] = round(time.monotonic() - self.t0, 2)
            self.out.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_json(self.out, _finite(self.report))

    def stage(self, name: str, fn: Callable[[], dict[str, Any]], needs_s: float = 0.0) -> dict:
        """Run ``fn`` as stage ``name``: its dict with ``status`` ok, or failed with a
        ``message``, or skipped when fewer than ``needs_s`` seconds are left."""
        if self.left() < needs_s:
            rec = {
                "status": "skipped",
                "message": f"{self.left():.0f} s left before the deadline, {needs_s:.0f} s needed",
            }
        else:
            self.current = name
            print(f"[{time.monotonic() - self.t0:6.1f} s] {name} ...", flush=True)
            t, cpu = time.perf_counter(), time.process_time()
            try:
                rec = {"status": "ok", **fn()}
            except Exception as e:  # recorded, and the next stage runs
                rec = {
                    "status": "failed",
                    "message": f"{type(e).__name__}: {e}".strip()[:2000],
                    "traceback": traceback.format_exc()[-3000:],
                }
                print(f"    FAILED: {rec['message']}", flush=True)
            rec["seconds"] = round(time.perf_counter() - t, 2)
            rec["cpu_s"] = round(time.process_time() - cpu, 2)  # this process's CPU time
            self.current = None
        self.report["stages"][name] = rec
        self.write()
        return rec

    def watchdog(self) -> threading.Timer:
        """At the deadline (plus a grace for the last writes): record the running stage as
        killed, write the JSON and exit, whatever the stage is doing (a hang included)."""

        def fire() -> None:
            name = self.current or "(between stages)"
            self.report["stages"][name] = {
                "status": "failed",
                "message": f"killed: still running at the global deadline of {self.deadline_s:g} s",
            }
            self.report["killed_at_deadline"] = True
            self.write()
            print(f"deadline: {name} killed; wrote {self.out}", file=sys.stderr, flush=True)
            os._exit(3)

        t = threading.Timer(self.deadline_s + 15.0, fire)
        t.daemon = True
        t.start()
        return t


def _finite(obj: Any) -> Any:
    """JSON-safe: NaN and infinities become None (so a broken number reads as missing)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _check_fail(name: str, fail: set[str]) -> None:
    if name in fail:  # --fail-stage: how the guard is tested
        raise RuntimeError(f"failure asked for with --fail-stage {name}")


# ---------------------------------------------------------------------------------------------
# stages


def stage_data(data: Path, n: int, sizes: tuple[int, ...], workers: int) -> dict[str, Any]:
    """SynthFaces in ``data``, prepared at each size; reused when already there."""
    raw = data / f"synth-n{n}-seed0"
    out: dict[str, Any] = {"n": n, "caches": {}}
    if (raw / "list_attr_celeba.txt").is_file():
        out["render"] = {"reused": str(raw)}
    else:
        r = write_synthfaces(raw, n=n, seed=0, workers=workers, force=True, progress=False)
        out["render"] = {"seconds": round(r["seconds"], 2), "images_per_s": r["images_per_s"]}
    for s in sizes:
        path = data / f"cache-n{n}-{s}px"
        t = time.perf_counter()
        if is_cache(path) and len(open_cache(path)) == n:
            c, how = open_cache(path), "reused"
        else:
            c = prepare(read_celeba(raw), path, image_size=s, workers=workers, force=True,
                        progress=False)  # fmt: skip
            how = "prepared"
        out["caches"][str(s)] = {
            "path": str(path),
            how: True,
            "seconds": round(time.perf_counter() - t, 2),
            "train": int(c.split("train").size),
            "valid": int(c.split("valid").size),
        }
    return out


def step_flops(cache: PreparedCache, device: torch.device, batch: int = 4) -> float:
    """FLOPs per image of one training step (forward + backward of the loss)."""
    from torch.utils.flop_counter import FlopCounterMode

    vae = ConceptVAE(model_config_for(cache)).to(device).train()
    idx = cache.split("train")[:batch]
    x = cache.batch(idx).to(device)
    y = cache.batch_labels(idx).to(device) if vae.config.attr_dim else None
    with FlopCounterMode(display=False) as counter:
        vae.loss(x, labels=y)["loss"].backward()
    return counter.get_total_flops() / batch


def measured_peak(device: torch.device) -> float:
    """A large matmul's FLOP/s here: float32 on a CPU, bf16 on a GPU (median of 5)."""
    n, dtype = (1024, torch.float32) if device.type == "cpu" else (8192, torch.bfloat16)
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    a @ b
    _sync(device)
    times = []
    for _ in range(5):
        t = time.perf_counter()
        a @ b
        _sync(device)
        times.append(time.perf_counter() - t)
    return 2 * n**3 / statistics.median(times)


def stage_flops(caches: dict[int, PreparedCache], device: torch.device) -> dict[str, Any]:
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    peak, source = None, None
    for key, value in BF16_PEAKS:
        if device.type == "cuda" and key.lower() in name.lower():
            peak, source = value, f"table: {key} bf16 dense"
            break
    if peak is None:
        peak = measured_peak(device)
        kind = "float32" if device.type == "cpu" else "bf16"
        source = f"measured: {kind} matmul on {name}"
    per_image = {str(s): step_flops(c, device) for s, c in caches.items()}
    return {"device_name": name, "peak_flops": peak, "peak_source": source,
            "flops_per_image": per_image}  # fmt: skip


@torch.inference_mode()
def valid_psnr(vae: ConceptVAE, cache: PreparedCache, n: int = 2000) -> float:
    """Mean PSNR (dB) of posterior-mean reconstructions of the first ``n`` valid images."""
    vae.eval()
    idx = cache.split("valid")[:n]
    values = []
    for i in range(0, idx.size, 256):
        x = cache.batch(idx[i : i + 256]).to(vae.device)
        mse = (vae.reconstruct(x).float() - x).square().flatten(1).mean(1)
        values.append(10 * torch.log10(1.0 / mse.clamp_min(1e-10)))
    return float(torch.cat(values).mean())


def stage_train(
    cache: PreparedCache,
    work: Path,
    device: torch.device,
    steps: int,
    batch: int,
    bf16: bool,
    channels_last: bool,
    compile: bool,
    flops: float | None,
    peak: float | None,
) -> dict[str, Any]:
    """``train()`` for ``steps`` steps; img/s from its metrics log, PSNR on valid."""
    log_every = max(1, steps // 12)
    cfg = TrainConfig(
        epochs=max(1, math.ceil(steps * batch / max(1, cache.split("train").size))),
        max_steps=steps,
        batch_size=batch,
        device=str(device),
        log_every=log_every,
        probe=False,
        sample_every_epoch=False,
        kl_warmup_steps=min(2000, steps),
        bf16=bf16,
        channels_last=channels_last,
        compile=compile,
    )
    out = work / f"run-{cache.image_size}-{int(bf16)}{int(channels_last)}{int(compile)}-{batch}"
    t = time.perf_counter()
    vae = train(cache, out, model_config_for(cache), cfg, progress=False)
    _sync(device)
    wall = time.perf_counter() - t
    lines = [json.loads(s) for s in (out / METRICS_NAME).read_text().splitlines() if s.strip()]
    windows = [r for r in lines if "img_per_s" in r]
    losses = [r["loss"] for r in windows]
    if not windows:
        raise RuntimeError(f"{out / METRICS_NAME} has no img/s line after {steps} steps")
    # train() restarts its img/s clock after each epoch's evaluation, so a window with an epoch
    # end inside it counts steps from before the restart: leave those out, and the first one
    # (warm-up, compilation)
    spe = cache.split("train").size // batch
    starts = [0] + [r["step"] for r in windows[:-1]]
    clean = [
        r["img_per_s"]
        for a, r in zip(starts[1:], windows[1:])
        if not any(a < e * spe < r["step"] for e in range(1, r["step"] // spe + 1))
    ]
    steady = clean or [r["img_per_s"] for r in windows[1:]] or [windows[0]["img_per_s"]]
    ips = statistics.median(steady)
    if not all(math.isfinite(v) for v in losses):
        raise RuntimeError(f"the loss was not finite: {losses}")
    rec = {
        "image_size": cache.image_size,
        "batch_size": batch,
        "steps": steps,
        "img_per_s": ips,
        "first_window_img_per_s": windows[0]["img_per_s"],
        "wall_s": round(wall, 2),
        "loss_first": losses[0],
        "loss_last": losses[-1],
        "psnr_valid": valid_psnr(vae, cache),
    }
    if flops and peak:
        rec["tflops"] = ips * flops / 1e12
        rec["percent_of_peak"] = 100.0 * ips * flops / peak
    shutil.rmtree(out, ignore_errors=True)
    return rec


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stage_torchrun(cache: Path, work: Path, steps: int, batch: int, cuda: bool, timeout: float):
    result = work / "ddp.json"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "1",
           "--master-port", str(_free_port()), str(Path(__file__).resolve()), "_ddp",
           "--cache", str(cache), "--steps", str(steps), "--batch-size", str(batch),
           "--result", str(result)]  # fmt: skip
    if not cuda:
        cmd.append("--cpu")
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
    t = time.perf_counter()
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    wall = time.perf_counter() - t
    if r.returncode != 0 or not result.is_file():
        tail = (r.stderr or r.stdout).strip().splitlines()[-8:]
        raise RuntimeError(f"torchrun exited {r.returncode}: " + " | ".join(tail))
    return {**json.loads(result.read_text()), "wall_s": round(wall, 2)}


class _Loss(nn.Module):
    def __init__(self, vae: ConceptVAE) -> None:
        super().__init__()
        self.vae = vae

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        return self.vae.loss(x, labels=labels)["loss"]


def ddp_worker(argv: list[str]) -> None:
    """Under torchrun: a process group (NCCL on CUDA), a checked all-reduce, DDP steps."""
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    ap = argparse.ArgumentParser()
    ap.add_argument("--cache", required=True)
    ap.add_argument("--steps", type=int, required=True)
    ap.add_argument("--batch-size", type=int, required=True)
    ap.add_argument("--result", required=True)
    ap.add_argument("--cpu", action="store_true")
    a = ap.parse_args(argv)
    local = int(os.environ["LOCAL_RANK"])
    if a.cpu:
        device, backend = torch.device("cpu"), "gloo"
    else:
        torch.cuda.set_device(local)
        device, backend = torch.device("cuda", local), "nccl"
    dist.init_process_group(backend=backend)
    try:
        world, rank = dist.get_world_size(), dist.get_rank()
        t = torch.full((4,), float(rank + 1), device=device)
        dist.all_reduce(t)
        expected = world * (world + 1) / 2
        if not torch.allclose(t.cpu(), torch.full((4,), expected)):
            raise RuntimeError(f"all_reduce gave {t.tolist()}, expected {expected}")
        c = open_cache(a.cache)
        torch.manual_seed(0)
        vae = ConceptVAE(model_config_for(c)).to(device, memory_format=torch.channels_last)
        model = DistributedDataParallel(_Loss(vae), device_ids=[local] if not a.cpu else None)
        opt = torch.optim.AdamW(vae.parameters(), lr=1e-3)
        idx = c.split("train")
        rng = np.random.default_rng(rank)
        losses, times = [], []
        for _ in range(a.steps):
            sel = np.sort(rng.choice(idx, a.batch_size, replace=False))
            x = c.batch(sel).to(device).contiguous(memory_format=torch.channels_last)
            y = c.batch_labels(sel).to(device) if vae.config.attr_dim else None
            t0 = time.perf_counter()
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=not a.cpu):
                loss = model(x, y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            _sync(device)
            times.append(time.perf_counter() - t0)
            losses.append(float(loss.detach()))
        if not all(math.isfinite(v) for v in losses):
            raise RuntimeError(f"a DDP step gave a non-finite loss: {losses}")
        steady = times[1:] or times
        if rank == 0:
            atomic_write_json(a.result, {
                "backend": backend, "world_size": world, "all_reduce_ok": True,
                "steps": a.steps, "batch_size": a.batch_size, "image_size": c.image_size,
                "img_per_s": a.batch_size * world / statistics.median(steady),
                "loss_first": losses[0], "loss_last": losses[-1],
            })  # fmt: skip
    finally:
        dist.destroy_process_group()


def _timed(fn: Callable[[], Any], repeats: int, device: torch.device) -> float:
    """Median seconds of ``fn`` after one untimed warm-up call."""
    fn()
    _sync(device)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def stage_edit(
    cache64: PreparedCache, work: Path, device: torch.device, repeats: int
) -> dict[str, Any]:
    """One 1024 px photo end to end and a batch of 256 faces, on ``device`` and on the CPU."""
    from edit import EDIT, _photo, edit_one
    from PIL import Image

    from conceptvae.edit import EditPipeline

    photo = work / "photo.jpg"
    Image.fromarray(_photo(0)).save(photo, quality=95)
    (work / "edited").mkdir(exist_ok=True)
    faces = cache64.batch(cache64.split("valid")[:256])
    if faces.shape[0] < 256:  # a tiny cache: repeat its faces
        faces = faces.repeat(math.ceil(256 / faces.shape[0]), 1, 1, 1)[:256]
    out: dict[str, Any] = {"photo_side": 1024, "batch_faces": 256, "edit": EDIT}
    devices = [device] + ([torch.device("cpu")] if device.type != "cpu" else [])
    for dev in devices:
        pipe = EditPipeline.from_pretrained("synthfaces64", device=dev)
        x = faces.to(dev)
        step = pipe.direction(EDIT)

        def batch(pipe=pipe, x=x, step=step) -> torch.Tensor:
            z = pipe.encode(x)
            with torch.inference_mode():
                return pipe.vae.decode(z + step).float().clamp(0, 1)

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "far from the training data" on a synthetic photo
            photo_s = _timed(lambda p=pipe: edit_one(p, photo, work / "edited"), repeats, dev)
        batch_s = _timed(batch, repeats, dev)
        edited = batch()
        if tuple(edited.shape) != (256, 3, 64, 64) or not bool(torch.isfinite(edited).all()):
            raise RuntimeError(f"the batch edit gave {tuple(edited.shape)} or non-finite pixels")
        key = "device" if dev == device else "cpu_reference"
        out[key] = {"device": str(dev), "photo_s": photo_s, "batch_s": batch_s,
                    "faces_per_s": 256 / batch_s}  # fmt: skip
    if "cpu_reference" in out:
        ref, dev_rec = out["cpu_reference"], out["device"]
        out["photo_speedup"] = ref["photo_s"] / dev_rec["photo_s"]
        out["batch_speedup"] = ref["batch_s"] / dev_rec["batch_s"]
    return out


# ---------------------------------------------------------------------------------------------
# the report


def _fmt(v: Any, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def markdown(report: dict[str, Any]) -> str:
    """The results as markdown: what ran where, then one table per kind of stage."""
    st = report["stages"]
    fl = st.get("flops", {})
    lines = [
        f"Device: {report['device_name']} ({'tiny CPU check' if report['tiny'] else 'full run'}), "
        f"torch {report['machine']['torch']}, {report['created']}, "
        f"{report['elapsed_s']:.0f} s in all. Command: `{report['command']}`.",
        "",
        f"Peak: {_fmt(fl.get('peak_flops') and fl['peak_flops'] / 1e12, '.1f')} TFLOP/s "
        f"({fl.get('peak_source', 'not measured')}); FLOPs per image of one training step "
        "counted by FlopCounterMode.",
        "",
        "| size | mode | batch | img/s | vs fp32 | GFLOP/img | % of peak | valid PSNR | wall s |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, r in st.items():
        if not name.startswith("train "):
            continue
        size, mode = name.split(" ", 2)[1], name.split(" ", 2)[2]
        if r["status"] != "ok":
            lines.append(f"| {size} | {mode} | | {r['status']}: {r.get('message', '')[:80]} "
                         "| | | | | |")  # fmt: skip
            continue
        base = st.get(f"train {size} fp32", {})
        ratio = r["img_per_s"] / base["img_per_s"] if base.get("status") == "ok" else None
        gflop = fl.get("flops_per_image", {}).get(size.removesuffix("px"))
        lines.append(
            f"| {size} | {mode} | {r['batch_size']} | {r['img_per_s']:,.0f} | "
            f"{_fmt(ratio, '.2f')}x | {_fmt(gflop and gflop / 1e9, '.3f')} | "
            f"{_fmt(r.get('percent_of_peak'), '.1f')} | {r['psnr_valid']:.2f} dB | "
            f"{r['wall_s']:.1f} |"
        )
    tr = st.get("torchrun", {})
    if tr.get("status") == "ok":
        lines += ["", f"torchrun --nproc-per-node 1: backend {tr['backend']}, world "
                  f"{tr['world_size']}, all_reduce checked, {tr['steps']} DDP steps at batch "
                  f"{tr['batch_size']}, {tr['img_per_s']:,.0f} img/s, loss {tr['loss_first']:.1f}"
                  f" -> {tr['loss_last']:.1f}, {tr['wall_s']:.1f} s with start-up."]  # fmt: skip
    ed = st.get("edit", {})
    if ed.get("status") == "ok":
        lines += ["", "| edit (synthfaces64) | device | CPU (reference) | speed-up |",
                  "|---|---:|---:|---:|"]  # fmt: skip
        d, c = ed["device"], ed.get("cpu_reference")
        lines.append(f"| one 1024 px photo, end to end | {d['photo_s'] * 1000:.1f} ms | "
                     f"{_fmt(c and c['photo_s'] * 1000, '.1f')} ms | "
                     f"{_fmt(ed.get('photo_speedup'), '.1f')}x |")  # fmt: skip
        lines.append(f"| 256 faces: encode, add, decode | {d['batch_s'] * 1000:.1f} ms | "
                     f"{_fmt(c and c['batch_s'] * 1000, '.1f')} ms | "
                     f"{_fmt(ed.get('batch_speedup'), '.1f')}x |")  # fmt: skip
    # failures anywhere, and skips outside the training table (those are in its rows)
    bad = [
        f"{k}: {v['status']}: {v.get('message', '')}"
        for k, v in st.items()
        if v["status"] == "failed" or (v["status"] != "ok" and not k.startswith("train "))
    ]
    if bad:
        lines += ["", "Not run or failed:", ""] + [f"- {b}" for b in bad]
    return "\n".join(lines) + "\n"


def update_docs(path: Path, table: str) -> None:
    """Replace the text between the gpu-table markers in ``path`` with ``table``."""
    text = path.read_text(encoding="utf-8")
    if text.count(BEGIN) != 1 or text.count(END) != 1 or text.index(BEGIN) > text.index(END):
        raise SystemExit(f"error: {path} needs one {BEGIN} ... {END} block to update")
    head, rest = text.split(BEGIN)
    tail = rest.split(END)[1]
    atomic_write_text(path, f"{head}{BEGIN}\n{table}{END}{tail}")


# ---------------------------------------------------------------------------------------------
# main


def main(argv: list[str] | None = None) -> dict[str, Any]:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["_ddp"]:
        ddp_worker(argv[1:])
        return {}
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tiny", action="store_true", help="the small run (automatic on a CPU)")
    ap.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    ap.add_argument("--n", type=int, help="SynthFaces to render (default 20000; tiny 256)")
    ap.add_argument("--steps", type=int, help="training steps per mode (default 300; tiny 6)")
    ap.add_argument("--batch-size", type=int, help="default 64 (tiny 16)")
    ap.add_argument(
        "--big-batch", type=int, help="the big-batch mode's batch (default 512; 0: off)"
    )
    ap.add_argument("--data", help="folder for the SynthFaces and caches, reused when they are "
                    "there (default: a temporary folder, removed)")  # fmt: skip
    ap.add_argument("--workers", type=int, help="processes to render and prepare with "
                    "(default: all cores; tiny 1)")  # fmt: skip
    ap.add_argument("--deadline", type=float, help="seconds for the whole run (default 450)")
    ap.add_argument("--no-compile", action="store_true", help="skip the --compile mode")
    ap.add_argument("--out", default=str(HERE / "results" / "gpu.json"))
    ap.add_argument("--update-docs", action="store_true", help="rewrite the GPU block of --docs")
    ap.add_argument("--docs", default=str(DOCS))
    ap.add_argument("--fail-stage", action="append", default=[], help="make this stage raise "
                    "(to test that failures are recorded); repeatable")  # fmt: skip
    a = ap.parse_args(argv)
    if a.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("error: --device cuda, but CUDA is not available to torch here")
    cuda = torch.cuda.is_available() and a.device != "cpu"
    tiny = a.tiny or not cuda
    base = TINY if tiny else FULL
    n = a.n or base["n"]
    steps = a.steps or base["steps"]
    batch = a.batch_size or base["batch"]
    big = base["big_batch"] if a.big_batch is None else a.big_batch
    sizes = base["sizes"]
    workers = a.workers or (1 if tiny else os.cpu_count() or 1)
    device = torch.device("cuda" if cuda else "cpu")
    fail = set(a.fail_stage)
    out = Path(a.out)
    info = machine()
    report = {
        "benchmark": "gpu",
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "command": " ".join(["python benchmarks/gpu.py", *argv]),
        "machine": info,
        "tiny": tiny,
        "device": str(device),
        "device_name": torch.cuda.get_device_name(0) if device.type == "cuda" else info["cpu"],
        "settings": {
            "n": n,
            "steps": steps,
            "batch_size": batch,
            "big_batch": big,
            "sizes": list(sizes),
        },  # fmt: skip
    }
    run = Run(out, a.deadline or 450.0, report)
    dog = run.watchdog()
    work = Path(tempfile.mkdtemp(prefix="conceptvae-gpu-"))
    data = Path(a.data) if a.data else work / "data"
    print(f"{report['device_name']}: {'tiny' if tiny else 'full'} run, n={n}, steps={steps}, "
          f"batch={batch}, deadline {run.deadline_s:g} s", flush=True)  # fmt: skip
    try:

        def data_stage() -> dict:
            _check_fail("data", fail)
            return stage_data(data, n, sizes, workers)

        d = run.stage("data", data_stage)
        caches = {}
        if d["status"] == "ok":
            caches = {s: open_cache(d["caches"][str(s)]["path"]) for s in sizes}

        def flops_stage() -> dict:
            _check_fail("flops", fail)
            if not caches:
                raise RuntimeError("no data: the data stage failed")
            return stage_flops(caches, device)

        fl = run.stage("flops", flops_stage)
        peak = fl.get("peak_flops")
        later = []  # (stage name, function, seconds needed): compile runs go last
        for s in sizes:
            for mode, bf16, cl, comp, is_big in MODES:
                name = f"train {s}px {mode}"
                why = None
                if bf16 and device.type != "cuda":
                    why = "bf16 autocast is CUDA-only in train()"
                elif comp and (tiny or a.no_compile):
                    why = "compile is left out of the tiny run (minutes on a CPU)" if tiny else (
                        "--no-compile")  # fmt: skip
                elif is_big and not big:
                    why = "--big-batch 0"
                if why:
                    run.report["stages"][name] = {"status": "skipped", "message": why}
                    continue
                flops = (fl.get("flops_per_image") or {}).get(str(s))

                def fn(s=s, bf16=bf16, cl=cl, comp=comp, is_big=is_big, flops=flops, name=name):
                    _check_fail(name, fail)
                    if s not in caches:
                        raise RuntimeError("no data: the data stage failed")
                    return stage_train(caches[s], work, device, steps, big if is_big else batch,
                                       bf16, cl, comp, flops, peak)  # fmt: skip

                if comp:
                    later.append((name, fn, 60.0))
                else:
                    run.stage(name, fn, needs_s=10.0)

        def torchrun_stage() -> dict:
            _check_fail("torchrun", fail)
            if 64 not in caches:
                raise RuntimeError("no data: the data stage failed")
            steps_ddp = max(3, min(steps, 20))
            return stage_torchrun(Path(caches[64].path), work, steps_ddp, batch, device.type ==
                                  "cuda", timeout=max(30.0, min(180.0, run.left())))  # fmt: skip

        run.stage("torchrun", torchrun_stage, needs_s=20.0)

        def edit_stage() -> dict:
            _check_fail("edit", fail)
            if 64 not in caches:
                raise RuntimeError("no data: the data stage failed")
            return stage_edit(caches[64], work, device, repeats=2 if tiny else 10)

        run.stage("edit", edit_stage, needs_s=15.0)
        for name, fn, needs in later:
            run.stage(name, fn, needs_s=needs)
    finally:
        dog.cancel()
        shutil.rmtree(work, ignore_errors=True)
    run.write()
    table = markdown(run.report)
    print("\n" + table)
    md = out.with_suffix(".md")
    atomic_write_text(md, table)
    print(f"wrote {out} and {md}")
    if a.update_docs:
        update_docs(Path(a.docs), table)
        print(f"updated the GPU block of {a.docs}")
    return run.report


if __name__ == "__main__":
    main()
