"""Two CPU processes (gloo) train one model with DistributedDataParallel."""

import os
import socket

import numpy as np
import torch
import torch.multiprocessing as mp
from PIL import Image

from conceptvae.data import open_dataset
from conceptvae.data.cache import prepare
from conceptvae.model import ConceptVAE, VAEConfig
from conceptvae.train import CHECKPOINT_NAME, TrainConfig, train


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _cache(root):
    src = root / "src"
    src.mkdir()
    rng = np.random.default_rng(0)
    rows = ["filename,partition,Bright"]
    for i in range(16):
        arr = rng.integers(0, 80, (64, 64, 3), dtype=np.uint8) + np.uint8(100 * (i % 2))
        Image.fromarray(arr).save(src / f"{i:02d}.png")
        rows.append(f"{i:02d}.png,{0 if i < 12 else 1},{i % 2}")
    (src / "labels.csv").write_text("\n".join(rows) + "\n")
    prepare(open_dataset(src), root / "cache", image_size=64, workers=1, progress=False)
    return root / "cache"


def _worker(rank, world, port, cache, out):
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE=str(world),
    )
    torch.set_num_threads(1)
    mc = VAEConfig(image_size=64, latent_dim=8, patch_size=16, channels=(8,))
    cfg = TrainConfig(epochs=2, batch_size=2, device="cpu", log_every=2, kl_warmup_steps=2)
    model = train(cache, out, mc, cfg, progress=False)
    torch.save(model.state_dict(), os.path.join(os.path.dirname(out), f"rank{rank}.pt"))


def test_two_processes_end_with_identical_parameters_and_rank0_writes_them(tmp_path):
    cache = _cache(tmp_path)
    out = tmp_path / "run"
    mp.spawn(_worker, args=(2, _free_port(), str(cache), str(out)), nprocs=2, join=True)
    r0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    r1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    assert all(torch.equal(r0[k], r1[k]) for k in r0)
    written = ConceptVAE.from_pretrained(out).state_dict()
    assert all(torch.equal(written[k], r0[k]) for k in r0)
    ckpt = torch.load(out / CHECKPOINT_NAME, weights_only=True)
    # 12 train images, 6 per rank, batch 2: 3 steps per epoch
    assert (ckpt["step"], ckpt["epoch"], ckpt["world_size"]) == (6, 2, 2)
    init = ConceptVAE(VAEConfig(image_size=64, latent_dim=8, patch_size=16, channels=(8,)))
    assert not torch.equal(init.state_dict()["decoder.fc.weight"], r0["decoder.fc.weight"])
    lines = (out / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 3 + 2  # steps 2, 4, 6 and two epoch lines, written once (rank 0)


def test_torchrun_runs_the_cli(tmp_path):
    import subprocess
    import sys

    cache = _cache(tmp_path)
    out = tmp_path / "run"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
           "--master-port", str(_free_port()), "-m", "conceptvae", "train", str(cache),
           "-o", str(out), "--image-size", "64", "--latent-dim", "8", "--patch-size", "16",
           "--channels", "8", "--epochs", "1", "--batch-size", "2", "--device", "cpu",
           "--no-probe"]  # fmt: skip
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.count("saved the model") == 1  # rank 0 only
    ckpt = torch.load(out / CHECKPOINT_NAME, weights_only=True)
    assert (ckpt["step"], ckpt["world_size"]) == (3, 2)
    ConceptVAE.from_pretrained(out)


def test_training_does_not_load_opencv():
    # OpenCV's thread pool made torchrun workers abort at exit ("terminate called without an
    # active exception", 2 of 6 runs); training code must not import it.
    import subprocess
    import sys

    code = "import sys, conceptvae.cli, conceptvae.train; print('cv2' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
