"""The shape table of docs/model.md: parameters, FLOPs and training speed of the default 64 px
ConceptVAE and the shapes it was chosen from, against the reference VanillaVAE, in one process.

A training step is forward + loss + backward + Adam at batch 64 on 64 x 64 images (random pixels
in [0, 1]: the speed does not depend on what the images show). FLOPs per image are
``FlopCounterMode``'s count of one forward + backward (convolutions and matmuls). Images/s is the
median of the timed steps after a warm-up; the models take turns, one block of steps each, over
``--rounds`` rounds, so a change in the machine's load falls on every row alike. The ratio is to
the reference in NCHW, measured in the same run.

    python benchmarks/model_shapes.py [--steps 8] [--rounds 3] [--threads N]

Prints a table and writes benchmarks/results/model_shapes.json.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != HERE]
from conceptvae.model import ConceptVAE, VAEConfig  # noqa: E402

sys.path.insert(0, str(HERE))
from common import machine, write_report  # noqa: E402
from reference_vae import ReferenceVAE  # noqa: E402

BATCH, SIZE = 64, 64
# (row name, config or None for the reference, channels_last)
ROWS: tuple[tuple[str, VAEConfig | None, bool], ...] = (
    ("reference VanillaVAE (NCHW)", None, False),
    ("reference VanillaVAE", None, True),
    ("**default**: 16-48-128-256, decoder blocks 0-0-1-1", VAEConfig(), True),
    ("default (NCHW)", VAEConfig(), False),
    ("default without the structure term", VAEConfig(structure_loss="none"), True),
    ("default with GroupNorm", VAEConfig(norm="group"), True),
    ("default with the SSIM structure term", VAEConfig(structure_loss="ssim"), True),
    ("default with the focal frequency term", VAEConfig(structure_loss="focal"), True),
    ("16-64-128-256", VAEConfig(channels=(16, 64, 128, 256)), True),
    ("32-64-128-256", VAEConfig(channels=(32, 64, 128, 256)), True),
    (
        "32-64-128-256, decoder blocks 0-1-1-1",
        VAEConfig(channels=(32, 64, 128, 256), decoder_blocks=(0, 1, 1, 1)),
        True,
    ),
    (
        "patch 4, 64-128-256, decoder blocks 0-1-1",
        VAEConfig(patch_size=4, channels=(64, 128, 256), decoder_blocks=(0, 1, 1)),
        True,
    ),
)


class Candidate:
    """One row: the model, its optimizer and a batch in the row's memory format."""

    def __init__(self, cfg: VAEConfig | None, channels_last: bool) -> None:
        torch.manual_seed(0)
        self.model = ReferenceVAE() if cfg is None else ConceptVAE(cfg)
        fmt = torch.channels_last if channels_last else torch.contiguous_format
        self.model = self.model.to(memory_format=fmt).train()
        self.opt = torch.optim.Adam(self.model.parameters(), lr=1e-3)
        g = torch.Generator().manual_seed(1)
        self.x = torch.rand(BATCH, 3, SIZE, SIZE, generator=g).contiguous(memory_format=fmt)
        self.times: list[float] = []

    def step(self) -> None:
        loss = self.model.loss(self.x)["loss"]
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()

    def flops_per_image(self) -> float:
        with FlopCounterMode(display=False) as counter:
            self.model.loss(self.x)["loss"].backward()
        self.opt.zero_grad(set_to_none=True)
        return counter.get_total_flops() / BATCH

    def params(self) -> int:
        return sum(p.numel() for p in self.model.parameters())


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=8, help="timed steps per row and round")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    ap.add_argument("--out", default=str(HERE / "results" / "model_shapes.json"))
    a = ap.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    info = machine()
    print(f"machine: {info['cpu']}, {info['cores_available']} cores, load average "
          f"{info['load_average_at_start']}, torch threads {torch.get_num_threads()}")  # fmt: skip
    rows = [(name, Candidate(cfg, cl)) for name, cfg, cl in ROWS]
    flops = {name: c.flops_per_image() for name, c in rows}
    for _, c in rows:  # warm-up: allocator, oneDNN kernels
        for _ in range(2):
            c.step()
    for r in range(a.rounds):
        for _, c in rows:
            for _ in range(a.steps):
                t = time.perf_counter()
                c.step()
                c.times.append(time.perf_counter() - t)
        print(f"round {r + 1}/{a.rounds} done", flush=True)
    results = []
    for name, c in rows:
        results.append({"model": name, "params": c.params(), "gflop_per_image": flops[name] / 1e9,
                        "img_per_s": BATCH / statistics.median(c.times)})  # fmt: skip
    ref = results[0]["img_per_s"]
    print("\n| model | params | GFLOP/img (step) | img/s | vs reference |\n|---|---|---|---|---|")
    for row in results:
        row["vs_reference"] = row["img_per_s"] / ref
        print(f"| {row['model']} | {row['params'] / 1e6:.2f} M | {row['gflop_per_image']:.3f} | "
              f"{row['img_per_s']:.0f} | {row['vs_reference']:.2f} |")  # fmt: skip
    return write_report(a.out, "model_shapes", info, batch=BATCH, image_size=SIZE,
                        steps=a.steps, rounds=a.rounds, rows=results)  # fmt: skip


if __name__ == "__main__":
    main()
