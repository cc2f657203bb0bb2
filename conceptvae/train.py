"""The training loop: one process, or DDP under torchrun; checkpoints, exact resume.

``train(data, out, model_config, config)`` reads a prepared cache (preparing one first when
``data`` is a raw dataset), trains a :class:`~conceptvae.model.ConceptVAE` and writes into
``out``::

    config.json, model.safetensors   the model (save_pretrained), every epoch and at the end
    checkpoint.pt                    model, optimizer, scheduler, step, epoch, position in the
                                     epoch, RNG states, both configs (torch.save of plain data)
    metrics.jsonl                    one line per log_every steps, one per epoch (valid ELBO,
                                     MSE, PSNR, linear-probe balanced accuracy per attribute)
    samples/epoch_XXX.png            prior samples (fixed seed)
    recon/epoch_XXX.png              valid originals beside their reconstructions

The batch order depends only on (seed, epoch), the noise comes from a seeded generator whose
state is checkpointed, and checkpoints are taken only between optimizer steps, so a run that is
interrupted and resumed ends with bit-identical parameters to one that was not (single process,
same device).
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import io
import json
import math
import os
import random
import signal
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from conceptvae._fs import atomic_write, atomic_write_bytes, atomic_write_text
from conceptvae.data import Frame
from conceptvae.data.cache import (
    BatchLoader,
    PreparedCache,
    is_cache,
    open_or_prepare,
)
from conceptvae.errors import TrainError
from conceptvae.model import IMAGE_SIZES, ConceptVAE, VAEConfig, region_weight_map

__all__ = [
    "CHECKPOINT_NAME",
    "METRICS_NAME",
    "TrainConfig",
    "read_checkpoint_configs",
    "reconstruction_grid",
    "resolve_device",
    "sample_grid",
    "save_png",
    "train",
]

CHECKPOINT_NAME = "checkpoint.pt"
METRICS_NAME = "metrics.jsonl"
CHECKPOINT_FORMAT = 1
SCHEDULES = ("cosine", "constant")
# Changing these mid-run changes which images a step sees or which noise it draws.
_ORDER_KEYS = ("batch_size", "seed")
# The loop's clock (seconds): its time budget, the time-planned LR, checkpoint and log timing.
# Tests replace it with a fake one.
_clock = time.monotonic


# ---------------------------------------------------------------------------------------------
# configuration


@dataclass
class TrainConfig:
    """How to train (the model itself is a :class:`VAEConfig`).

    ``batch_size`` is per process (under DDP the effective batch is ``batch_size * world``).
    ``beta`` overrides ``VAEConfig.beta`` when not None; it is reached linearly over
    ``kl_warmup_steps``. ``max_minutes`` / ``max_steps`` stop cleanly (saving) when reached;
    ``checkpoint_minutes`` is how often a checkpoint is written between epochs. ``device`` is
    ``cpu``, ``cuda``, ``cuda:N`` or ``auto``.

    The learning-rate plan: with ``epochs`` (the default, 20) the cosine decay runs over
    ``epochs`` and ``max_minutes`` is only a stop for this call. With ``epochs=None`` it runs
    over ``max_minutes`` instead, which is then the whole run's budget: the LR at each step is
    the cosine of the elapsed training time over the budget (wall-clock time of the loop,
    evaluation included, summed over resumes: it is checkpointed), reaching
    ``lr * min_lr_ratio`` as the budget ends, where training stops, evaluates and saves.
    """

    epochs: int | None = 20
    batch_size: int = 64
    lr: float = 1e-3
    beta: float | None = None
    kl_warmup_steps: int = 2000
    lr_schedule: str = "cosine"
    min_lr_ratio: float = 0.05
    weight_decay: float = 0.0
    grad_clip: float | None = None
    max_minutes: float | None = None
    max_steps: int | None = None
    checkpoint_minutes: float = 10.0
    device: str = "auto"
    seed: int = 0
    workers: int = 0
    log_every: int = 50
    sample_every_epoch: bool = True
    compile: bool = False
    bf16: bool = True  # bf16 autocast on CUDA (no effect on a CPU)
    channels_last: bool = True  # model and batches in channels_last memory format
    probe: bool = True
    probe_samples: int = 2000
    eval_samples: int = 2000

    def __post_init__(self) -> None:
        if self.epochs is None and self.max_minutes is None:
            raise TrainError(
                "epochs=None plans the run over max_minutes: give max_minutes too "
                "(or an epoch count)"
            )
        for name, minimum in (
            ("epochs", 1),
            ("batch_size", 1),
            ("kl_warmup_steps", 0),
            ("seed", 0),
            ("workers", 0),
            ("log_every", 1),
            ("probe_samples", 2),
            ("eval_samples", 1),
        ):
            v = getattr(self, name)
            if name == "epochs" and v is None:
                continue
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < minimum:
                raise TrainError(f"{name} must be an integer >= {minimum}, got {v!r}")
        if self.max_steps is not None and (
            isinstance(self.max_steps, bool) or not isinstance(self.max_steps, int)
        ):
            raise TrainError(f"max_steps must be an integer or None, got {self.max_steps!r}")
        for name, positive in (
            ("lr", True),
            ("beta", False),
            ("min_lr_ratio", False),
            ("weight_decay", False),
            ("grad_clip", True),
            ("max_minutes", True),
            ("checkpoint_minutes", True),
        ):
            v = getattr(self, name)
            if v is None and name in ("beta", "grad_clip", "max_minutes"):
                continue
            ok = not isinstance(v, bool) and isinstance(v, (int, float)) and math.isfinite(v)
            if not ok or v < 0 or (positive and v == 0):
                raise TrainError(
                    f"{name} must be a finite number {'> 0' if positive else '>= 0'}, got {v!r}"
                )
        if self.lr_schedule not in SCHEDULES:
            raise TrainError(
                f"lr_schedule {self.lr_schedule!r} is not known: use cosine or constant"
            )
        if not isinstance(self.device, str) or not (
            self.device in ("auto", "cpu", "cuda") or self.device.startswith("cuda:")
        ):
            raise TrainError(f"device {self.device!r} is not known: use auto, cpu or cuda")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    @property
    def planned_by_time(self) -> bool:
        """True when the LR schedule is planned over ``max_minutes`` (``epochs`` is None)."""
        return self.epochs is None


def cosine_lr(lr: float, min_lr_ratio: float, fraction: float) -> float:
    """The cosine decay from ``lr`` (fraction 0) to ``lr * min_lr_ratio`` (fraction >= 1)."""
    floor = lr * min_lr_ratio
    f = min(1.0, max(0.0, fraction))
    return floor + (lr - floor) * 0.5 * (1.0 + math.cos(math.pi * f))


def model_config_for(data: PreparedCache, **overrides: Any) -> VAEConfig:
    """The default :class:`VAEConfig` for a prepared cache: its image size and, when the data
    has labels and ``attr_weight`` > 0, an attribute head over all of them (``attr_dim``).

    ``overrides`` are VAEConfig fields; an explicit ``attr_dim`` is kept as given.
    """
    fields = {"image_size": data.image_size, **overrides}
    cfg = VAEConfig(**fields)
    if "attr_dim" not in overrides and cfg.attr_weight > 0 and data.attr_names:
        cfg = dataclasses.replace(cfg, attr_dim=len(data.attr_names))
    return cfg


def resolve_device(name: str) -> torch.device:
    """``auto`` -> cuda when available, else cpu; ``cuda`` without CUDA is a :class:`TrainError`."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise TrainError(
                f"--device {name} was asked for but CUDA is not available to torch "
                f"{torch.__version__} here: use --device cpu (or auto)"
            )
        dev = torch.device(name)
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise TrainError(
                f"--device {name}: only {torch.cuda.device_count()} CUDA device(s) are visible"
            )
        return dev
    if name == "cpu":
        return torch.device("cpu")
    raise TrainError(f"device {name!r} is not known: use auto, cpu or cuda")


# ---------------------------------------------------------------------------------------------
# distributed


@dataclass
class _Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    owned: bool = False  # we called init_process_group, so we tear it down

    @property
    def main(self) -> bool:
        return self.rank == 0


def _init_distributed(device: torch.device) -> _Dist:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return _Dist()
    import torch.distributed as dist

    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", str(rank)))
    owned = False
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(local_rank)
        dist.init_process_group(backend=backend, rank=rank, world_size=world)
        owned = True
    return _Dist(dist.get_rank(), dist.get_world_size(), local_rank, owned)


def _any_rank(flags: list[bool], d: _Dist, device: torch.device) -> list[bool]:
    """Each flag true when it is true on any rank (every rank must call this at the same point)."""
    if d.world == 1:
        return flags
    import torch.distributed as dist

    t = torch.tensor([1.0 if f else 0.0 for f in flags], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return [bool(v > 0) for v in t.tolist()]


def _agree(
    flags: list[bool], value: float, d: _Dist, device: torch.device
) -> tuple[list[bool], float]:
    """``flags`` true when true on any rank, and rank 0's ``value`` (>= 0) on every rank: one
    collective (every rank must call this at the same point)."""
    if d.world == 1:
        return flags, value
    import torch.distributed as dist

    vals = [1.0 if f else 0.0 for f in flags] + [value if d.main else 0.0]
    t = torch.tensor(vals, dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    out = t.tolist()
    return [v > 0 for v in out[:-1]], float(out[-1])


def _sync_buffers(model: nn.Module, d: _Dist) -> None:
    """Give every rank rank 0's BatchNorm statistics (DDP syncs them only before a forward)."""
    if d.world > 1:
        import torch.distributed as dist

        for b in model.buffers():
            dist.broadcast(b, 0)


def _barrier(d: _Dist) -> None:
    if d.world > 1:
        import torch.distributed as dist

        dist.barrier()


# ---------------------------------------------------------------------------------------------
# data


def _open_data(
    data: Any, out: Path, image_size: int, cache: Any, workers: int, progress: bool, d: _Dist
) -> PreparedCache:
    """A prepared cache from ``data`` (a cache, or a raw dataset prepared once beside ``out``)."""
    cache_dir = Path(cache) if cache is not None else out.parent / (out.name + "-cache")
    c = None
    if d.main or isinstance(data, PreparedCache) or is_cache(data):
        c = open_or_prepare(data, cache_dir, image_size, workers=workers, progress=progress)
    _barrier(d)
    if c is None:  # what rank 0 prepared (or found): in cache_dir, or beside it
        c = open_or_prepare(data, cache_dir, image_size, reuse_only=True)
    if c.image_size != image_size:
        if c.image_size in IMAGE_SIZES:
            hint = f"pass --image-size {c.image_size}, or prepare the data again at {image_size} px"
        else:
            hint = (
                f"prepare the data again at one of {', '.join(map(str, IMAGE_SIZES))} px "
                f"(conceptvae prepare DATA OUT --image-size {image_size})"
            )
        raise TrainError(
            f"{c.path} holds {c.image_size} px images but the model is configured for "
            f"{image_size} px: {hint}"
        )
    return c


def data_crop(meta: dict[str, Any]) -> float | None:
    """The aligned-frame crop of a cache (``VAEConfig.crop``): its ``crop`` for CelebA layouts
    (the whole 178 px width when it kept the full image), None for other data."""
    if not str(meta.get("layout") or "").startswith("celeba"):
        return None
    return float(Frame.from_meta(meta, image_size=64).crop)


def template_points(meta: dict[str, Any], image_size: int) -> np.ndarray:
    """Eyes and mouth centre (3, 2) in 0-based cache pixels from CelebA's aligned template.

    Used when the data has no landmarks: for CelebA layouts the template is mapped through the
    cache's centre crop (meta.json's ``crop``); for anything else, where the frame is unknown,
    one point at the image centre.
    """
    layout = str(meta.get("layout") or "")
    if not layout.startswith("celeba"):
        c = (image_size - 1) / 2.0
        return np.array([[c, c]], np.float32)
    return Frame.from_meta(meta, image_size).points().astype(np.float32)


class _Feeder:
    """Batches on the device: images float32 in [0, 1], labels, per-pixel loss weights."""

    def __init__(
        self, c: PreparedCache, cfg: VAEConfig, device: torch.device, channels_last: bool = True
    ) -> None:
        self.c, self.cfg, self.device = c, cfg, device
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.gpu_images = None
        if device.type == "cuda":
            # uint8 on the GPU when it fits comfortably: no host copies or PCIe per batch.
            free, _ = torch.cuda.mem_get_info(device)
            if c.images.nbytes < 0.4 * free:
                self.gpu_images = torch.from_numpy(np.ascontiguousarray(c.images)).to(device)
        self.points = None  # (N, 3, 2) per image, or None with a fixed map below
        self.fixed_weight = None
        s = cfg.image_size
        self.sigma = cfg.region_sigma * s
        if cfg.region_weight > 0:
            if c.landmarks is not None:
                lm = np.asarray(c.landmarks, np.float32)
                mouth = lm[:, 3:5].mean(axis=1, keepdims=True)
                self.points = np.concatenate([lm[:, 0:2], mouth], axis=1)  # (N, 3, 2)
            else:
                pts = template_points(c.meta, s)
                self.fixed_weight = region_weight_map(s, pts, self.sigma, cfg.region_weight).to(
                    device
                )

    def __call__(self, sel: np.ndarray) -> tuple[torch.Tensor, torch.Tensor | None, Any]:
        if self.gpu_images is not None:
            idx = torch.from_numpy(sel).to(self.device)
            x = self.gpu_images[idx].float().div_(255.0)
        else:
            x = self.c.batch(sel).to(self.device, non_blocking=True)
        x = x.contiguous(memory_format=self.memory_format)
        y = None
        if self.cfg.attr_dim > 0:
            y = self.c.batch_labels(sel).to(self.device, non_blocking=True)
        w = self.fixed_weight
        if self.points is not None:
            pts = torch.from_numpy(self.points[sel]).to(self.device)
            w = region_weight_map(self.cfg.image_size, pts, self.sigma, self.cfg.region_weight)
        return x, y, w


class _LossModule(nn.Module):
    """forward = the VAE's loss, so DistributedDataParallel sees (and syncs) the whole step."""

    def __init__(self, vae: ConceptVAE) -> None:
        super().__init__()
        self.vae = vae

    def forward(self, x, weight, labels, beta, generator) -> dict[str, torch.Tensor]:
        return self.vae.loss(x, weight=weight, labels=labels, beta=beta, generator=generator)


# ---------------------------------------------------------------------------------------------
# images


def _grid_png(images: torch.Tensor, nrow: int) -> bytes:
    from PIL import Image
    from torchvision.utils import make_grid

    grid = make_grid(images.detach().float().cpu().clamp(0, 1), nrow=nrow, padding=2)
    arr = grid.mul(255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    buf = io.BytesIO()
    Image.fromarray(arr, "RGB").save(buf, "PNG")
    return buf.getvalue()


def save_png(png: bytes, path: str | os.PathLike) -> Path:
    """Write PNG bytes atomically, creating the folder."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, png)
    return path


@torch.inference_mode()
def sample_grid(model: ConceptVAE, n: int = 64, temperature: float = 1.0, seed: int = 0) -> bytes:
    """PNG bytes of ``n`` prior samples in a square-ish grid (``ceil(sqrt(n))`` per row).

    The latents are drawn on the CPU from ``seed``, so the grid is the same on any device.
    """
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, model.config.latent_dim, generator=g) * temperature  # (n, D)
    was_training = model.training
    model.eval()
    try:
        x = model.decode(z.to(model.device))
    finally:
        model.train(was_training)
    return _grid_png(x, nrow=math.ceil(math.sqrt(n)))


@torch.inference_mode()
def reconstruction_grid(model: ConceptVAE, images: torch.Tensor) -> bytes:
    """PNG bytes: each original (B, 3, S, S) in [0, 1] with its reconstruction to its right."""
    was_training = model.training
    model.eval()
    try:
        r = model.reconstruct(images).float().cpu()
    finally:
        model.train(was_training)
    pairs = torch.stack([images.float().cpu(), r], dim=1).flatten(0, 1)  # (2B, 3, S, S)
    per_row = max(1, math.ceil(math.sqrt(images.shape[0] / 2)))
    return _grid_png(pairs, nrow=2 * per_row)


# ---------------------------------------------------------------------------------------------
# evaluation


@torch.inference_mode()
def _means(vae: ConceptVAE, feed: _Feeder, idx: np.ndarray, bs: int) -> torch.Tensor:
    out = []
    for k in range(0, idx.size, bs):
        x, _, _ = feed(idx[k : k + bs])
        out.append(vae.encode(x).mean.float().cpu())
    return torch.cat(out)


@torch.inference_mode()
def _evaluate(vae: ConceptVAE, feed: _Feeder, idx: np.ndarray, bs: int) -> dict[str, float]:
    """Valid ELBO (beta 1, pixel term only), MSE and PSNR, all at the posterior means."""
    cfg = vae.config
    neg_elbo, kl_sum, mse_sum, psnr_sum = 0.0, 0.0, 0.0, 0.0
    for k in range(0, idx.size, bs):
        x, _, _ = feed(idx[k : k + bs])
        q = vae.encode(x)
        err = (vae.decode(q.mean).float() - x.float()).flatten(1)  # (B, 3SS)
        pix = err.square() if cfg.pixel_loss == "mse" else err.abs()
        kl = q.kl().float()  # (B,)
        mse = err.square().mean(1)  # (B,)
        neg_elbo += float((cfg.pixel_weight * pix.sum(1) + kl).sum())
        kl_sum += float(kl.sum())
        mse_sum += float(mse.sum())
        psnr_sum += float((10 * torch.log10(1.0 / mse.clamp_min(1e-10))).sum())
    n = idx.size
    return {
        "valid_elbo": -neg_elbo / n,
        "valid_kl": kl_sum / n,
        "valid_mse": mse_sum / n,
        "valid_psnr": psnr_sum / n,
    }


def _probe(
    vae: ConceptVAE, feed: _Feeder, train_idx: np.ndarray, valid_idx: np.ndarray, cfg: TrainConfig
) -> dict[str, float]:
    """Balanced accuracy on valid of a logistic regression from mu to each attribute."""
    c = feed.c
    if not c.attr_names:
        return {}
    rng = np.random.default_rng(cfg.seed)
    tr = np.sort(rng.choice(train_idx, min(train_idx.size, cfg.probe_samples), replace=False))
    va = valid_idx[: cfg.probe_samples]
    ytr, yva = np.asarray(c.labels[tr]), np.asarray(c.labels[va])
    keep = [
        j
        for j in range(len(c.attr_names))
        if 0 < ytr[:, j].sum() < len(tr) and 0 < yva[:, j].sum() < len(va)
    ]
    if not keep:
        return {}
    ztr = _means(vae, feed, tr, cfg.batch_size).double().numpy()
    zva = _means(vae, feed, va, cfg.batch_size).double().numpy()
    names = [c.attr_names[j] for j in keep]
    return linear_probe(ztr, ytr[:, keep], zva, yva[:, keep], names)


def linear_probe(
    z_train: np.ndarray,
    y_train: np.ndarray,
    z_valid: np.ndarray,
    y_valid: np.ndarray,
    names: list[str],
) -> dict[str, float]:
    """How linearly latents encode each label: balanced valid accuracy of a logistic regression.

    z: (N, D) latents; y: (N, A) 0/1 labels. Classes are weighted inversely to their frequency,
    so a rare attribute (Gray_Hair at 5%) is not scored 0.5 just because predicting "no" always
    minimises the unweighted loss.
    """
    import warnings

    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import balanced_accuracy_score

    mu, sd = z_train.mean(0), z_train.std(0) + 1e-8
    ztr, zva = (z_train - mu) / sd, (z_valid - mu) / sd
    out = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # ConvergenceWarning at the small max_iter is expected
        for j, name in enumerate(names):
            clf = LogisticRegression(max_iter=200, class_weight="balanced")
            clf.fit(ztr, y_train[:, j])
            out[name] = round(float(balanced_accuracy_score(y_valid[:, j], clf.predict(zva))), 4)
    return out


# ---------------------------------------------------------------------------------------------
# checkpoints


def _rng_state(gen: torch.Generator) -> dict[str, Any]:
    np_state = np.random.get_state()  # noqa: NPY002 (the legacy global state is what we save)
    py = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "generator": gen.get_state(),
        "numpy": {
            "keys": torch.from_numpy(np.asarray(np_state[1], np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gaussian": float(np_state[4]),
        },
        "python": {"version": py[0], "state": list(py[1]), "gauss": py[2]},
    }


def _set_rng_state(state: dict[str, Any], gen: torch.Generator) -> None:
    torch.set_rng_state(state["torch"])
    if state.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    gen.set_state(state["generator"])
    n = state["numpy"]
    np.random.set_state(  # noqa: NPY002
        (
            "MT19937",
            n["keys"].numpy().astype(np.uint32),
            n["pos"],
            n["has_gauss"],
            n["cached_gaussian"],
        )
    )
    p = state["python"]
    random.setstate((p["version"], tuple(p["state"]), p["gauss"]))


def _write_checkpoint(obj: dict[str, Any], path: Path) -> None:
    """torch.save to a temporary sibling, fsync, rename: the old checkpoint survives any failure."""
    atomic_write(path, lambda f: torch.save(obj, f))


def _load_checkpoint(out: Path) -> dict[str, Any]:
    path = out / CHECKPOINT_NAME
    if not path.is_file():
        raise TrainError(
            f"no checkpoint at {path}: nothing to resume; start a new run without --resume"
        )
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # unpickling errors come in many types
        raise TrainError(f"{path} is damaged or not a conceptvae checkpoint ({e})") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise TrainError(f"{path} is not a conceptvae training checkpoint (format 1)")
    return ckpt


def read_checkpoint_configs(out: str | os.PathLike) -> tuple[dict[str, Any], dict[str, Any]]:
    """The (model config, train config) dicts stored in ``OUT/checkpoint.pt``."""
    ckpt = _load_checkpoint(Path(out))
    return dict(ckpt["model_config"]), dict(ckpt["train_config"])


def _config_diff(saved: dict[str, Any], given: dict[str, Any]) -> list[str]:
    keys = sorted(set(saved) | set(given))
    return [
        f"{k}: checkpoint {saved.get(k)!r}, given {given.get(k)!r}"
        for k in keys
        if saved.get(k) != given.get(k)
    ]


def _save_error(out: Path, e: OSError, last_step: int | None) -> TrainError:
    kept = (
        f"the previous checkpoint (step {last_step}) is kept"
        if last_step is not None
        else "no earlier checkpoint exists"
    )
    if e.errno == errno.ENOSPC:
        return TrainError(
            f"disk full while saving the run in {out}: {kept}; free some space and run again "
            "with --resume"
        )
    return TrainError(f"cannot save the run in {out} ({e.strerror or e}): {kept}")


class _Stop:
    """Ctrl-C sets a flag the loop reads between steps (a second Ctrl-C interrupts at once)."""

    def __init__(self) -> None:
        self.requested = False
        self._old = None

    def __enter__(self) -> _Stop:
        if threading.current_thread() is threading.main_thread():
            self._old = signal.getsignal(signal.SIGINT)
            signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def __exit__(self, *exc) -> None:
        if self._old is not None:
            signal.signal(signal.SIGINT, self._old)


# ---------------------------------------------------------------------------------------------
# the loop


def train(
    data: Any,
    out: str | os.PathLike,
    model_config: VAEConfig | None = None,
    config: TrainConfig | None = None,
    resume: bool = False,
    cache: str | os.PathLike | None = None,
    progress: bool = True,
) -> ConceptVAE:
    """Train a ConceptVAE on ``data`` and write the run into ``out``; returns the model (eval).

    ``data``: a prepared cache (path or :class:`PreparedCache`) or any dataset
    :func:`~conceptvae.data.open_dataset` reads, which is then prepared once into ``cache``
    (default: ``OUT-cache`` beside ``out``; reused only for the same data, image size and crop,
    other data is prepared beside it, see :func:`~conceptvae.data.cache.open_or_prepare`).
    ``model_config``: None = the checkpoint's when resuming, else ``VAEConfig()``.
    ``resume``: continue from ``out/checkpoint.pt`` at the exact step (mid-epoch included).
    Under torchrun (WORLD_SIZE > 1) each process trains a DDP replica and only rank 0 writes.
    Raises :class:`TrainError` (bad settings, no checkpoint, config mismatch, a non-finite
    loss, a failed save), :class:`DataError` or :class:`ModelError`.
    """
    config = config if config is not None else TrainConfig()
    out = Path(out)
    device = resolve_device(config.device)
    ckpt = None
    if resume:
        ckpt = _load_checkpoint(out)
        saved = VAEConfig.from_dict(ckpt["model_config"])
        if model_config is None:
            model_config = saved
        if model_config.crop is None:  # filled in from the data, not a setting
            model_config = dataclasses.replace(model_config, crop=saved.crop)
        if model_config.attr_dim == 0 and model_config.attr_weight > 0:  # likewise
            model_config = dataclasses.replace(model_config, attr_dim=saved.attr_dim)
        diff = _config_diff(saved.to_dict(), model_config.to_dict())
        if diff:
            raise TrainError(
                f"{out / CHECKPOINT_NAME} was made with another model config ({'; '.join(diff)}): "
                "resume with the same settings, or start a new run in another folder"
            )
        saved_tc = ckpt["train_config"]
        diff = [
            f"{k}: checkpoint {saved_tc.get(k)!r}, given {getattr(config, k)!r}"
            for k in _ORDER_KEYS
            if saved_tc.get(k) != getattr(config, k)
        ]
        if diff:
            raise TrainError(
                f"{out / CHECKPOINT_NAME} was made with another {' and '.join(_ORDER_KEYS)} "
                f"({'; '.join(diff)}): these set the data order, so keep them when resuming"
            )
    if model_config is None:
        model_config = VAEConfig()
    d = _init_distributed(device)
    try:
        if device.type == "cuda":  # an explicit index, so generators and tensors agree
            device = torch.device(
                "cuda",
                d.local_rank
                if d.world > 1
                else (device.index if device.index is not None else torch.cuda.current_device()),
            )
        return _train(data, out, model_config, config, ckpt, cache, progress, device, d)
    finally:
        if d.owned:
            import torch.distributed as dist

            # Every rank must be done with collectives before any rank tears down: a rank
            # that destroys the group while its peer still talks to it makes gloo abort.
            with contextlib.suppress(Exception):
                dist.barrier()
            dist.destroy_process_group()


def _train(
    data: Any,
    out: Path,
    mcfg: VAEConfig,
    cfg: TrainConfig,
    ckpt: dict[str, Any] | None,
    cache: Any,
    progress: bool,
    device: torch.device,
    d: _Dist,
) -> ConceptVAE:
    c, mcfg, train_idx, valid_idx = _prepare_data(data, out, mcfg, cfg, ckpt, cache, progress, d)
    vae, gen = _new_model(mcfg, cfg, ckpt, device, d)
    step = epoch = batch_in_epoch = 0
    if ckpt is not None:
        step, epoch, batch_in_epoch = ckpt["step"], ckpt["epoch"], ckpt["batch_in_epoch"]

    loader = BatchLoader(c, "train", cfg.batch_size, True, True, cfg.seed, d.rank, d.world)
    spe = len(loader)
    by_time = cfg.planned_by_time
    total = None if by_time else cfg.epochs * spe
    budget_s = None if cfg.max_minutes is None else cfg.max_minutes * 60.0
    # time-planned cosine: the LR is set before each step from the elapsed time (below)
    timed_cosine = by_time and cfg.lr_schedule == "cosine"
    opt, sched, elapsed0 = _optimizer(vae, cfg, total, by_time, ckpt, gen, d)

    step_module = _step_module(vae, cfg, device, d)
    feed = _Feeder(c, mcfg, device, cfg.channels_last)
    target_beta = mcfg.beta if cfg.beta is None else cfg.beta
    use_amp = device.type == "cuda" and cfg.bf16

    out_main = d.main
    metrics = out / METRICS_NAME
    if out_main:
        out.mkdir(parents=True, exist_ok=True)
        _trim_metrics(metrics, step if ckpt is not None else None)

    state = {"saved_step": ckpt["step"] if ckpt is not None else None}
    rng_snapshot = _rng_state(gen)
    clock = {"start": None}  # the loop's start on _clock, once it runs
    plan = _lr_plan(cfg, by_time, total)

    def elapsed() -> float:
        """Training time of the run so far: before this call plus this call's loop."""
        start = clock["start"]
        return elapsed0 + (0.0 if start is None else _clock() - start)

    def save(model_too: bool = True) -> None:
        if not out_main:
            return
        obj = {
            "format": CHECKPOINT_FORMAT,
            "model": {k: v.detach().cpu() for k, v in vae.state_dict().items()},
            "optimizer": opt.state_dict(),
            "scheduler": sched.state_dict(),
            "step": step,
            "epoch": epoch,
            "batch_in_epoch": batch_in_epoch,
            "steps_per_epoch": spe,
            "world_size": d.world,
            "rng": rng_snapshot,
            "model_config": mcfg.to_dict(),
            "train_config": cfg.to_dict(),
            "lr_plan": plan,
            "elapsed_s": elapsed(),
        }
        try:
            _write_checkpoint(obj, out / CHECKPOINT_NAME)
            if model_too:
                vae.save_pretrained(out)
        except OSError as e:
            raise _save_error(out, e, state["saved_step"]) from None
        state["saved_step"] = step

    def log(record: dict[str, Any]) -> None:
        if out_main:
            with open(metrics, "a", encoding="utf-8") as f:
                f.write(json.dumps(record) + "\n")

    if ckpt is None:
        save()  # a last good checkpoint exists from the start

    from tqdm.auto import tqdm

    if total is None:
        bar_total = cfg.max_steps
    else:
        bar_total = min(total, cfg.max_steps) if cfg.max_steps else total
    bar = tqdm(
        total=bar_total,
        initial=step,
        disable=not (progress and out_main),
        file=sys.stderr,
        unit="step",
        dynamic_ncols=True,
    )
    t_start = t_ckpt = clock["start"] = _clock()
    t_log, log_step = t_start, step
    evaluated_at = step  # the step of the last valid evaluation (or of the start)
    sums = torch.zeros(4, device=device)  # loss, recon, kl, mse since the last log line
    n_sum = 0
    stop_reason = None
    in_step = False
    run_s = 0.0  # the run's training time at the current step, the same on every rank
    try:
        with _Stop() as stop:
            while (by_time or epoch < cfg.epochs) and stop_reason is None:
                loader.set_epoch(epoch)
                order = loader.epoch_indices(epoch)
                for k in range(batch_in_epoch, spe):
                    if cfg.max_steps is not None and step >= cfg.max_steps:
                        stop_reason = "max_steps"
                        break
                    now = _clock()
                    # with epochs, max_minutes is a stop for this call (as it always was)
                    session_up = not by_time and budget_s is not None and now - t_start >= budget_s
                    # every rank takes rank 0's clock: the same LR and the same stop
                    (interrupted, session_up), run_s = _agree(
                        [stop.requested, session_up], elapsed0 + (now - t_start), d, device
                    )
                    time_up = session_up or (by_time and run_s >= budget_s)
                    if interrupted or time_up:
                        stop_reason = "interrupt" if interrupted else "max_minutes"
                        break
                    if timed_cosine:
                        lr_now = cosine_lr(cfg.lr, cfg.min_lr_ratio, run_s / budget_s)
                        for g in opt.param_groups:
                            g["lr"] = lr_now
                    in_step = True
                    x, y, w = feed(order[k * cfg.batch_size : (k + 1) * cfg.batch_size])
                    beta = target_beta
                    if cfg.kl_warmup_steps:
                        beta = target_beta * min(1.0, (step + 1) / cfg.kl_warmup_steps)
                    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=use_amp):
                        res = step_module(x, w, y, beta, gen)
                    loss = res["loss"]
                    if _any_rank([not bool(torch.isfinite(loss.detach()))], d, device)[0]:
                        raise TrainError(
                            f"the loss became {float(loss.detach()):g} at step {step + 1} (epoch "
                            f"{epoch + 1}): training stopped; the last good checkpoint "
                            f"{out / CHECKPOINT_NAME} (step {state['saved_step']}) is kept; "
                            f"try a lower --lr (now {cfg.lr:g}) and --resume, or a new run"
                        )
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    if cfg.grad_clip is not None:
                        nn.utils.clip_grad_norm_(vae.parameters(), cfg.grad_clip)
                    opt.step()
                    sched.step()
                    step += 1
                    batch_in_epoch = k + 1
                    rng_snapshot = _rng_state(gen)
                    in_step = False
                    sums += torch.stack(
                        [
                            loss.detach().float(),
                            res["recon"].float(),
                            res["kl"].float(),
                            res["mse"].float(),
                        ]
                    )
                    n_sum += 1
                    bar.update(1)
                    if step % cfg.log_every == 0:
                        vals = _reduce_mean(sums / n_sum, d)
                        now = _clock()
                        ips = (step - log_step) * cfg.batch_size * d.world / max(now - t_log, 1e-9)
                        t_log, log_step = now, step
                        lr_now = opt.param_groups[0]["lr"]
                        log(_log_record(step, epoch, vals, ips, lr_now, beta, plan, run_s))
                        bar.set_postfix(loss=f"{vals[0]:.4g}", img_s=f"{ips:.0f}")
                        sums.zero_()
                        n_sum = 0
                    if out_main and _clock() - t_ckpt >= cfg.checkpoint_minutes * 60:
                        save()
                        t_ckpt = _clock()
                else:
                    epoch += 1
                    batch_in_epoch = 0
                    if out_main:
                        _end_of_epoch(vae, feed, train_idx, valid_idx, cfg, out, epoch, step, log)
                        save()
                        t_ckpt = _clock()
                    evaluated_at = step
                    _barrier(d)
                    t_log = _clock()  # img/s counts training, not evaluation
            if stop_reason == "interrupt":
                save()
                raise KeyboardInterrupt
        _sync_buffers(vae, d)
        budget_spent = by_time and stop_reason == "max_minutes"
        if budget_spent and timed_cosine:
            for g in opt.param_groups:  # the plan's end: the checkpoint holds the floor
                g["lr"] = cosine_lr(cfg.lr, cfg.min_lr_ratio, 1.0)
        if state["saved_step"] != step:
            save()
        elif budget_spent:
            save(model_too=False)  # the checkpoint records that the budget is spent
        if budget_spent and step != evaluated_at:
            # the model the budget ended with: its valid metrics (after the save, so a failure
            # here loses nothing)
            if out_main:
                _end_of_epoch(
                    vae, feed, train_idx, valid_idx, cfg, out, epoch, step, log,
                    final={"elapsed_s": round(run_s, 3), "budget_s": budget_s},
                )  # fmt: skip
            _barrier(d)
        if stop_reason in ("max_minutes", "max_steps") and out_main and progress:
            bar.write(_stop_message(cfg, step, stop_reason, budget_spent), file=sys.stderr)
    except KeyboardInterrupt:
        # A Ctrl-C outside a step (e.g. during evaluation) still leaves a consistent state.
        if not in_step and state["saved_step"] != step:
            save()
        raise
    finally:
        bar.close()
    return vae.eval()


def _prepare_data(
    data: Any,
    out: Path,
    mcfg: VAEConfig,
    cfg: TrainConfig,
    ckpt: dict[str, Any] | None,
    cache: Any,
    progress: bool,
    d: _Dist,
) -> tuple[PreparedCache, VAEConfig, np.ndarray, np.ndarray]:
    """Open (or prepare) the data, fill in the model config's crop and attribute head from it,
    and check that it can train this config: the cache, the config, the train rows and the
    rows evaluated at each epoch's end (valid, else test; at most ``eval_samples``)."""
    c = _open_data(data, out, mcfg.image_size, cache, cfg.workers, progress, d)
    if mcfg.crop is None:
        mcfg = dataclasses.replace(mcfg, crop=data_crop(c.meta))
    if mcfg.attr_dim == 0 and mcfg.attr_weight > 0 and c.attr_names:
        # the attribute head is on by default for labelled data: one output per label
        mcfg = dataclasses.replace(mcfg, attr_dim=len(c.attr_names))
    train_idx = c.split("train")
    if train_idx.size == 0:
        raise TrainError(
            f"the train split of {c.path} is empty (no row of partition.npy is 0): give data "
            "with training images"
        )
    share = -(-train_idx.size // d.world)
    if cfg.batch_size > share:
        per = f" per process with {d.world} processes" if d.world > 1 else ""
        raise TrainError(
            f"--batch-size {cfg.batch_size} is larger than the train split ({share} images"
            f"{per}): use --batch-size {share} or less"
        )
    if mcfg.attr_dim and mcfg.attr_dim != len(c.attr_names):
        raise TrainError(
            f"the model's attr_dim is {mcfg.attr_dim} but {c.path} has {len(c.attr_names)} "
            f"attributes: set attr_dim to {len(c.attr_names)}"
        )
    valid_idx = c.split("valid")
    if valid_idx.size == 0:
        valid_idx = c.split("test")
    valid_idx = valid_idx[: cfg.eval_samples]

    if (
        d.world > 1
        and ckpt is not None
        and ckpt["batch_in_epoch"]
        and ckpt["world_size"] != d.world
    ):
        raise TrainError(
            f"the checkpoint stopped mid-epoch with {ckpt['world_size']} process(es): resume "
            f"with the same number (now {d.world})"
        )

    return c, mcfg, train_idx, valid_idx


def _new_model(
    mcfg: VAEConfig, cfg: TrainConfig, ckpt: dict[str, Any] | None, device: torch.device, d: _Dist
) -> tuple[ConceptVAE, torch.Generator]:
    """The model (seeded, or the checkpoint's weights) on ``device`` in train mode, and this
    rank's generator for the sampling noise."""
    torch.manual_seed(cfg.seed)
    vae = ConceptVAE(mcfg)
    gen = torch.Generator(device=device)
    gen.manual_seed(cfg.seed + 7919 * d.rank)
    if ckpt is not None:
        vae.load_state_dict(ckpt["model"])
    # channels_last: faster convolutions on CUDA (tensor cores) and on CPU (oneDNN).
    fmt = torch.channels_last if cfg.channels_last else torch.contiguous_format
    vae = vae.to(device, memory_format=fmt)
    vae.train()
    return vae, gen


def _optimizer(
    vae: ConceptVAE,
    cfg: TrainConfig,
    total: int | None,
    by_time: bool,
    ckpt: dict[str, Any] | None,
    gen: torch.Generator,
    d: _Dist,
) -> tuple[torch.optim.Optimizer, Any, float]:
    """AdamW and its LR schedule (cosine over ``total`` steps, or constant: a time-planned
    cosine is set before each step instead), restored from the checkpoint when resuming with
    the noise generator's state; and the training seconds before this call."""
    opt = torch.optim.AdamW(vae.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    if cfg.lr_schedule == "cosine" and not by_time:
        sched: Any = torch.optim.lr_scheduler.CosineAnnealingLR(
            opt, T_max=max(1, total), eta_min=cfg.lr * cfg.min_lr_ratio
        )
    else:
        sched = torch.optim.lr_scheduler.ConstantLR(opt, factor=1.0, total_iters=0)
    # training time before this call (the time plan's clock), from the checkpoint
    elapsed0 = 0.0
    if ckpt is not None:
        opt.load_state_dict(ckpt["optimizer"])
        # A checkpoint of the other plan holds the other scheduler's state: its step count
        # (last_epoch) is what carries over, the rest is inert.
        sched.load_state_dict(ckpt["scheduler"])
        if isinstance(sched, torch.optim.lr_scheduler.CosineAnnealingLR):
            sched.T_max = max(1, total)  # --epochs may have changed
        elapsed0 = float(ckpt.get("elapsed_s", 0.0))  # 0 for checkpoints made before it
        _set_rng_state(ckpt["rng"], gen)
        if d.world > 1:  # only rank 0's noise was saved: give each rank its own again
            gen.manual_seed(cfg.seed + 7919 * d.rank + 104729 * ckpt["step"])
    return opt, sched, elapsed0


def _step_module(vae: ConceptVAE, cfg: TrainConfig, device: torch.device, d: _Dist) -> nn.Module:
    """The module one step calls: the loss around ``vae`` (compiled with ``cfg.compile``),
    wrapped in DDP with more than one process."""
    step_module: nn.Module = _LossModule(vae)
    if cfg.compile:
        vae.compile()
    if d.world > 1:
        from torch.nn.parallel import DistributedDataParallel

        step_module = DistributedDataParallel(
            step_module, device_ids=[device.index] if device.type == "cuda" else None
        )
    return step_module


def _lr_plan(cfg: TrainConfig, by_time: bool, total: int | None) -> dict[str, Any]:
    """What the run's length and LR follow, as recorded in the checkpoint and metrics."""
    plan: dict[str, Any] = (
        {"by": "time", "minutes": cfg.max_minutes, "schedule": cfg.lr_schedule}
        if by_time
        else {
            "by": "epochs",
            "epochs": cfg.epochs,
            "steps": total,
            "schedule": cfg.lr_schedule,
            "stop_minutes": cfg.max_minutes,
        }
    )
    if cfg.lr_schedule == "cosine":
        plan.update(lr=cfg.lr, min_lr=cfg.lr * cfg.min_lr_ratio)
    return plan


def _log_record(
    step: int,
    epoch: int,
    vals: list[float],
    ips: float,
    lr: float,
    beta: float,
    plan: dict[str, Any],
    run_s: float,
) -> dict[str, Any]:
    """One line of metrics.jsonl: the losses averaged since the last line, speed, LR, beta."""
    rec = {
        "step": step,
        "epoch": epoch + 1,
        "loss": vals[0],
        "recon": vals[1],
        "kl": vals[2],
        "mse": vals[3],
        "img_per_s": round(ips, 1),
        "lr": lr,
        "beta": beta,
        "lr_plan": plan["by"],
    }
    if plan["by"] == "time":
        rec["elapsed_s"] = round(run_s, 3)
    return rec


def _stop_message(cfg: TrainConfig, step: int, stop_reason: str, budget_spent: bool) -> str:
    if budget_spent:
        return (
            f"stopped at step {step}: the {cfg.max_minutes:g}-minute budget is spent "
            "and the learning rate is at its floor; the run is saved (--resume with a "
            "larger --max-minutes trains on)"
        )
    return (
        f"stopped at step {step} ({stop_reason.replace('_', ' ')} reached); "
        "the run is saved: --resume continues it"
    )


def _reduce_mean(t: torch.Tensor, d: _Dist) -> list[float]:
    if d.world > 1:
        import torch.distributed as dist

        t = t.clone()
        dist.all_reduce(t)
        t /= d.world
    return [float(v) for v in t.cpu()]


def _trim_metrics(path: Path, keep_upto: int | None) -> None:
    """A fresh run starts the log empty; a resumed one drops lines written after its checkpoint."""
    if keep_upto is None:
        atomic_write_text(path, "")
        return
    if not path.is_file():
        return
    kept = []
    for line in path.read_text(encoding="utf-8").splitlines():
        with contextlib.suppress(ValueError):
            if json.loads(line).get("step", 0) <= keep_upto:
                kept.append(line)
    atomic_write_text(path, "".join(line + "\n" for line in kept))


def _end_of_epoch(vae, feed, train_idx, valid_idx, cfg, out, epoch, step, log, final=None) -> None:
    """Valid metrics, the probe and the image grids, all on rank 0 with the model in eval mode.

    ``final``: the end of a time-planned run, mid-epoch: the record says ``"end_of_run": true``
    (with the fields of ``final``) and the grids are ``final.png``.
    """
    vae.eval()
    name = "final" if final else f"epoch_{epoch:03d}"
    try:
        rec: dict[str, Any] = {"step": step, "epoch": epoch}
        rec.update({"end_of_run": True, **final} if final else {"end_of_epoch": True})
        if valid_idx.size:
            rec.update(_evaluate(vae, feed, valid_idx, cfg.batch_size))
            if cfg.probe:
                acc = _probe(vae, feed, train_idx, valid_idx, cfg)
                rec["probe_mean"] = round(float(np.mean(list(acc.values()))), 4) if acc else None
                rec["probe"] = acc
        log(rec)
        if cfg.sample_every_epoch:
            save_png(sample_grid(vae, 64, 1.0, cfg.seed), out / "samples" / f"{name}.png")
            if valid_idx.size:
                x, _, _ = feed(valid_idx[:16])
                save_png(reconstruction_grid(vae, x), out / "recon" / f"{name}.png")
    finally:
        vae.train()
