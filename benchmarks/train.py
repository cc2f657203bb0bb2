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

    python benchmarks/train.py [--cache DIR] [--minutes 8] [--n 6000] [--quick]

Without ``--cache`` it renders ``--n`` SynthFaces and prepares them at 64 px in a temporary
folder. Prints a table and writes benchmarks/results/train.json.
"""

from __future__ import annotations

import argparse
import math
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
from reference_vae import SCHEDULER_GAMMA, ReferenceVAE, make_optimizer  # noqa: E402

from conceptvae.data.cache import BatchLoader, open_cache, prepare  # noqa: E402
from conceptvae.data.celeba import read_celeba  # noqa: E402
from conceptvae.data.synth import write_synthfaces  # noqa: E402
from conceptvae.model import ConceptVAE  # noqa: E402
from conceptvae.train import TrainConfig, _Feeder, linear_probe, model_config_for  # noqa: E402

BATCH = 64
PROBE_REPORTED = ("Smiling", "Eyeglasses", "Male", "Mouth_Slightly_Open")


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


def step_flops(loss_fn, model: torch.nn.Module, batch: int) -> float:
    """FLOPs of one training step (forward + backward) per image."""
    model.train()
    with FlopCounterMode(display=False) as counter:
        loss_fn().backward()
    model.zero_grad(set_to_none=True)
    return counter.get_total_flops() / batch


@torch.inference_mode()
def valid_psnr(model: torch.nn.Module, cache, idx: np.ndarray) -> float:
    model.eval()
    psnrs = []
    for i in range(0, idx.size, 256):
        x = cache.batch(idx[i : i + 256])
        mse = (model.reconstruct(x) - x).square().flatten(1).mean(1)
        psnrs.append(10 * torch.log10(1.0 / mse.clamp_min(1e-10)))
    return float(torch.cat(psnrs).mean())


def train_for(name, step_fn, cache, seconds, warmup_steps) -> dict:
    """Call ``step_fn(indices, step)`` on shuffled train batches for ``seconds`` of wall-clock."""
    torch.manual_seed(0)
    loader = BatchLoader(cache, "train", batch_size=BATCH, shuffle=True, drop_last=True, seed=0)
    step, step_times = 0, []
    t_end = time.perf_counter() + seconds
    epoch = 0
    while time.perf_counter() < t_end:
        order = loader.epoch_indices(epoch)
        for k in range(0, order.size - BATCH + 1, BATCH):
            t = time.perf_counter()
            step_fn(np.sort(order[k : k + BATCH]), step)
            step_times.append(time.perf_counter() - t)
            step += 1
            if time.perf_counter() >= t_end:
                break
        epoch += 1
    timed = step_times[warmup_steps:] or step_times
    return {
        "model": name,
        "steps": step,
        "epochs": round(step * BATCH / cache.split("train").size, 2),
        "images": step * BATCH,
        "img_per_s": BATCH / statistics.median(timed),
        "img_per_s_wall": step * BATCH / seconds,
    }


@torch.inference_mode()
def probe(mean_fn, cache, n: int = 2000) -> dict[str, float]:
    """Balanced valid accuracy of a logistic regression from mu to each label (the training
    log's probe: ``n`` train and ``n`` valid images)."""
    rng = np.random.default_rng(0)
    train = cache.split("train")
    tr = np.sort(rng.choice(train, min(n, train.size), replace=False))
    va = cache.split("valid")[:n]
    ytr, yva = np.asarray(cache.labels[tr]), np.asarray(cache.labels[va])
    keep = [j for j in range(ytr.shape[1]) if 0 < ytr[:, j].sum() < tr.size and yva[:, j].sum() > 0]

    def means(idx):
        parts = [mean_fn(cache.batch(idx[i : i + 256])) for i in range(0, idx.size, 256)]
        return torch.cat(parts).double().numpy()

    names = [cache.attr_names[j] for j in keep]
    return linear_probe(means(tr), ytr[:, keep], means(va), yva[:, keep], names)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cache", help="a prepared 64 px cache (default: render SynthFaces)")
    ap.add_argument("--n", type=int, default=6000, help="SynthFaces to render without --cache")
    ap.add_argument("--minutes", type=float, default=8.0, help="wall-clock budget per model")
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

        ours_cfg = model_config_for(cache)
        ours = ConceptVAE(ours_cfg).to(memory_format=torch.channels_last)
        feed = _Feeder(cache, ours_cfg, torch.device("cpu"))
        tc = TrainConfig()
        ours_opt = torch.optim.AdamW(ours.parameters(), lr=tc.lr, weight_decay=tc.weight_decay)
        t_start = [0.0]

        def ours_step(sel: np.ndarray, step: int) -> None:
            # Our recipe for a wall-clock budget: KL warm-up, cosine decay to 5% over the budget.
            if step == 0:
                t_start[0] = time.perf_counter()
            frac = min(1.0, (time.perf_counter() - t_start[0]) / seconds)
            for g in ours_opt.param_groups:
                g["lr"] = tc.lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * frac)))
            beta = ours_cfg.beta * min(1.0, (step + 1) / tc.kl_warmup_steps)
            x, y, w = feed(sel)
            out = ours.loss(x, weight=w, labels=y, beta=beta)
            ours_opt.zero_grad(set_to_none=True)
            out["loss"].backward()
            ours_opt.step()

        ref = ReferenceVAE()
        ref_opt = make_optimizer(ref)
        ref_sched = torch.optim.lr_scheduler.ExponentialLR(ref_opt, gamma=SCHEDULER_GAMMA)
        steps_per_epoch = cache.split("train").size // BATCH

        def ref_step(sel: np.ndarray, step: int) -> None:
            out = ref.loss(cache.batch(sel))
            ref_opt.zero_grad(set_to_none=True)
            out["loss"].backward()
            ref_opt.step()
            if (step + 1) % steps_per_epoch == 0:
                ref_sched.step()  # the reference config decays its lr by 0.95 per epoch

        peak = matmul_peak()
        sel0 = cache.split("train")[:BATCH]
        x0, y0, w0 = feed(sel0)
        flops = {
            "ours": step_flops(lambda: ours.loss(x0, weight=w0, labels=y0)["loss"], ours, BATCH),
            "reference": step_flops(lambda: ref.loss(x0)["loss"], ref, BATCH),
        }
        ref.train()
        ours.train()
        runs = [
            train_for("reference", ref_step, cache, seconds, 5),
            train_for("ours", ours_step, cache, seconds, 5),
        ]
        models = {"reference": ref, "ours": ours}
        mean_fns = {"reference": lambda x: ref.encode(x)[0], "ours": lambda x: ours.encode(x).mean}
        for r in runs:
            key = r["model"]
            models[key].eval()
            r["psnr"] = valid_psnr(models[key], cache, valid)
            r["gflop_per_img"] = flops[key] / 1e9
            r["fraction_of_peak"] = flops[key] * r["img_per_s"] / peak
            if cache.attr_names:
                acc = probe(mean_fns[key], cache)
                r["probe"] = acc
                r["probe_mean"] = float(np.mean(list(acc.values())))
        config = ours_cfg.to_dict()
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
    if "probe" in our_r:
        print("linear probe on mu (balanced valid accuracy):")
        print(f"{'attribute':<22} {'reference':>10} {'ours':>8}")
        for name in PROBE_REPORTED:
            a, b = (r["probe"].get(name, float("nan")) for r in runs)
            print(f"{name:<22} {a:>10.3f} {b:>8.3f}")
        print(f"{'mean of all':<22} {ref_r['probe_mean']:>10.3f} {our_r['probe_mean']:>8.3f}")
    return write_report(
        args.out,
        "train",
        info,
        matmul_peak_gflops=peak / 1e9,
        settings={"seconds_per_model": seconds, "batch": BATCH, "images": len(cache)},
        ours_config=config,
        runs=runs,
        speedup=speedup,
    )


if __name__ == "__main__":
    main()
