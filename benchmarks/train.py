"""Training speed and quality: our default 64 px ConceptVAE against the reference VanillaVAE.

Both models are written by us (the reference from DESIGN.md section 5, in
``benchmarks/reference_vae.py``) and trained in this one process, one after the other, on the
same prepared SynthFaces cache, the same batch order and the same wall-clock budget. Reported for
each: training images/s (median over the timed steps) and the ratio, FLOPs per image of one
training step (forward + backward, counted by ``FlopCounterMode``), the fraction of this machine's
float32 matmul peak that reaches (above 100% happens: a channels_last 3x3 convolution here ran
at about 490 GFLOP/s of direct-count work against 220-230 GFLOP/s for a large sgemm, most likely
because oneDNN's algorithms do fewer multiplications than the direct count), and the valid-split
PSNR (posterior-mean reconstructions) reached at the end of the budget.

    python benchmarks/train.py [--cache DIR] [--minutes 3] [--n 6000] [--quick]

Without ``--cache`` it renders ``--n`` SynthFaces and prepares them at 64 px in a temporary
folder. Prints a table and writes benchmarks/results/train.json.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, write_report  # noqa: E402
from reference_vae import ReferenceVAE, make_optimizer  # noqa: E402

from conceptvae.data.cache import BatchLoader, open_cache, prepare  # noqa: E402
from conceptvae.data.celeba import read_celeba  # noqa: E402
from conceptvae.data.synth import write_synthfaces  # noqa: E402
from conceptvae.model import ConceptVAE, VAEConfig  # noqa: E402
from conceptvae.train import TrainConfig  # noqa: E402

BATCH = 64


def matmul_peak(n: int = 2048, repeats: int = 5) -> float:
    """This machine's float32 matmul rate in FLOP/s (median of several large matmuls)."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - t)
    return 2 * n**3 / statistics.median(times)


def step_flops(model: torch.nn.Module, x: torch.Tensor) -> float:
    """FLOPs of one training step (forward + backward) per image."""
    model.train()
    with FlopCounterMode(display=False) as counter:
        model.loss(x)["loss"].backward()
    model.zero_grad(set_to_none=True)
    return counter.get_total_flops() / x.shape[0]


@torch.inference_mode()
def valid_psnr(model: torch.nn.Module, cache, idx: np.ndarray) -> float:
    model.eval()
    psnrs = []
    for i in range(0, idx.size, 256):
        x = cache.batch(idx[i : i + 256])
        mse = (model.reconstruct(x) - x).square().flatten(1).mean(1)
        psnrs.append(10 * torch.log10(1.0 / mse.clamp_min(1e-10)))
    return float(torch.cat(psnrs).mean())


def train_for(name, model, opt, cache, seconds, warmup_steps, beta_schedule=None) -> dict:
    """Train ``model`` for ``seconds`` of wall-clock; return rates and the step count."""
    torch.manual_seed(0)
    loader = BatchLoader(cache, "train", batch_size=BATCH, shuffle=True, drop_last=True, seed=0)
    model.train()
    step, step_times = 0, []
    t_end = time.perf_counter() + seconds
    epoch = 0
    while time.perf_counter() < t_end:
        loader.set_epoch(epoch)
        for x, _ in loader:
            t = time.perf_counter()
            if beta_schedule is None:
                out = model.loss(x)
            else:
                out = model.loss(x, beta=beta_schedule(step))
            opt.zero_grad(set_to_none=True)
            out["loss"].backward()
            opt.step()
            step_times.append(time.perf_counter() - t)
            step += 1
            if time.perf_counter() >= t_end:
                break
        epoch += 1
    timed = step_times[warmup_steps:] or step_times
    return {
        "model": name,
        "steps": step,
        "images": step * BATCH,
        "img_per_s": BATCH / statistics.median(timed),
        "img_per_s_wall": step * BATCH / seconds,
    }


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cache", help="a prepared 64 px cache (default: render SynthFaces)")
    ap.add_argument("--n", type=int, default=6000, help="SynthFaces to render without --cache")
    ap.add_argument("--minutes", type=float, default=3.0, help="wall-clock budget per model")
    ap.add_argument("--quick", action="store_true", help="a smoke run: 1,000 images, 20 s each")
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent / "results/train.json"))
    args = ap.parse_args(argv)
    seconds = 20.0 if args.quick else args.minutes * 60
    info = machine()
    work = Path(tempfile.mkdtemp(prefix="conceptvae-bench-train-"))
    try:
        if args.cache:
            cache = open_cache(args.cache)
        else:
            n = 1000 if args.quick else args.n
            write_synthfaces(work / "synth", n=n, seed=0, workers=2, progress=False)
            cache = prepare(read_celeba(work / "synth"), work / "cache", 64, progress=False)
        cache.load_into_memory()
        valid = cache.split("valid")[:1000]
        torch.manual_seed(0)
        x0 = cache.batch(cache.split("train")[:BATCH])

        ours = ConceptVAE(VAEConfig(image_size=64)).to(memory_format=torch.channels_last)
        tc = TrainConfig()
        ours_opt = torch.optim.AdamW(ours.parameters(), lr=tc.lr, weight_decay=tc.weight_decay)
        beta = ours.config.beta

        def warm(step: int) -> float:
            return beta * min(1.0, (step + 1) / tc.kl_warmup_steps)

        ref = ReferenceVAE()
        ref_opt = make_optimizer(ref)
        peak = matmul_peak()
        flops = {"ours": step_flops(ours, x0), "reference": step_flops(ref, x0)}
        runs = [
            train_for("reference", ref, ref_opt, cache, seconds, 5),
            train_for("ours", ours, ours_opt, cache, seconds, 5, warm),
        ]
        runs[0]["psnr"] = valid_psnr(ref, cache, valid)
        runs[1]["psnr"] = valid_psnr(ours, cache, valid)
        for r in runs:
            key = "ours" if r["model"] == "ours" else "reference"
            r["gflop_per_img"] = flops[key] / 1e9
            r["fraction_of_peak"] = flops[key] * r["img_per_s"] / peak
    finally:
        shutil.rmtree(work, ignore_errors=True)

    ref_r, our_r = runs
    threads = torch.get_num_threads()
    print(
        f"budget {seconds:.0f} s per model, batch {BATCH}, 64 px, {len(cache)} images, "
        f"torch threads {threads}, matmul peak {peak / 1e9:.1f} GFLOP/s"
    )
    header = f"{'model':<10} {'img/s':>8} {'steps':>7} {'GFLOP/img':>10} {'of peak':>8} {'PSNR':>7}"
    print(header)
    for r in runs:
        print(
            f"{r['model']:<10} {r['img_per_s']:>8.0f} {r['steps']:>7d} {r['gflop_per_img']:>10.3f}"
            f" {r['fraction_of_peak']:>7.1%} {r['psnr']:>6.2f}"
        )
    speedup = our_r["img_per_s"] / ref_r["img_per_s"]
    print(f"ours / reference: {speedup:.2f}x img/s, {our_r['psnr'] - ref_r['psnr']:+.2f} dB PSNR")
    return write_report(
        args.out,
        "train",
        info,
        matmul_peak_gflops=peak / 1e9,
        settings={"seconds_per_model": seconds, "batch": BATCH, "images": len(cache)},
        runs=runs,
        speedup=speedup,
    )


if __name__ == "__main__":
    main()
