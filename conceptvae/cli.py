"""The ``conceptvae`` command line: thin wrappers over the Python API, same argument names.

Errors a user can cause (``ConceptVAEError``) and OS errors on their files are printed as one
line on stderr with a non-zero exit status; set ``CONCEPTVAE_DEBUG=1`` to see the traceback.

One vocabulary for every command (docs/cli.md): ``-o/--output`` is where the command writes (a
file for commands that make one picture, a folder for those that make several); ``--force``
replaces an existing output, nothing is overwritten without it; ``--workers`` counts processes,
0 (the default) meaning all cores; ``--device`` is auto, cpu, cuda or cuda:N; ``-n/--n`` is how
many. Start-up stays fast: this module imports only click at the top, every command imports
what it needs (numpy, torch, OpenCV, scikit-learn) in its body. A test keeps it so.
"""

from __future__ import annotations

import os
import re
import sys
import warnings
from collections.abc import Callable
from typing import Any

import click

from conceptvae.errors import ConceptVAEError, DataError

PARTITION_NAMES = ("train", "valid", "test")


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    if issubclass(category, UserWarning):
        click.echo(f"warning: {message}", err=True)


def _user_error_types() -> tuple[type[BaseException], ...]:
    # VectorError can only have been raised if its module was imported: do not import it here
    # (attributes pulls in numpy), look it up.
    mod = sys.modules.get("attributes.errors")
    return (ConceptVAEError,) if mod is None else (ConceptVAEError, mod.VectorError)


class _Group(click.Group):
    """A click group that turns user errors into one-line messages instead of tracebacks."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            with warnings.catch_warnings():
                # warnings meant for users (few examples, skipped labels) read as one line
                warnings.simplefilter("default")
                warnings.showwarning = _show_warning
                return super().invoke(ctx)
        except KeyboardInterrupt:
            click.echo("interrupted; run the same command again to resume", err=True)
            ctx.exit(130)
        except Exception as e:
            if isinstance(e, _user_error_types()):
                message = str(e)
            elif isinstance(e, OSError):
                where = f": {e.filename}" if e.filename else ""
                message = f"{e.strerror or e}{where}"
            else:
                raise
            if os.environ.get("CONCEPTVAE_DEBUG"):
                raise
            raise click.ClickException(message) from None


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="conceptvae")
def cli() -> None:
    """Edit face photos with concept vectors in the latent space of a convolutional VAE.

    The shipped model synthfaces64 knows only synthetic SynthFaces faces; train your own on
    CelebA for real photos. Options mean the same in every command: see docs/cli.md.
    """


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point; ``python -m conceptvae`` and ``-m conceptvae.cli`` too."""
    cli.main(args=argv, prog_name="conceptvae")


# ---------------------------------------------------------------------------------------------
# the shared options: one meaning each, in every command


class DeviceType(click.ParamType):
    """``--device``: auto (cuda when available, else cpu), cpu, cuda or cuda:N."""

    name = "device"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:
        text = str(value).strip().lower()
        if text in ("auto", "cpu", "cuda") or re.fullmatch(r"cuda:\d+", text):
            return text
        self.fail(f"{value!r} is not a device: use auto, cpu, cuda or cuda:N (N = 0, 1, ...)",
                  param, ctx)  # fmt: skip


Decorator = Callable[[Callable[..., Any]], Callable[..., Any]]


def device_option(f: Callable[..., Any]) -> Callable[..., Any]:
    """``--device``, the same in every command that runs the model."""
    return click.option(
        "--device", type=DeviceType(), default="auto", show_default=True,
        help="auto (cuda when available, else cpu), cpu, cuda or cuda:N.",
    )(f)  # fmt: skip


def workers_option(what: str) -> Decorator:
    """``--workers``: processes, 0 (the default) meaning all cores."""
    return click.option(
        "--workers", type=click.IntRange(min=0), default=0, show_default=True,
        help=f"Processes {what} (0: all cores).",
    )  # fmt: skip


def force_option(what: str) -> Decorator:
    """``--force``: replace an existing output (nothing is overwritten without it)."""
    return click.option("--force", is_flag=True, help=f"Replace {what}.")


def file_output_option(what: str = "PNG file.") -> Decorator:
    """``-o/--output`` naming one file (the commands that make one picture)."""
    return click.option("-o", "--output", required=True, type=click.Path(dir_okay=False),
                        help=what)  # fmt: skip


def count_option(default: int, what: str) -> Decorator:
    """``-n/--n``: how many."""
    return click.option("-n", "--n", "n", type=click.IntRange(min=1), default=default,
                        show_default=True, help=what)  # fmt: skip


def _all_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def _refuse_existing_files(paths, force: bool) -> None:
    """Nothing is overwritten without --force: refuse before any work if an output exists."""
    from pathlib import Path

    from conceptvae.errors import OutputError

    if force:
        return
    existing = [Path(p) for p in paths if Path(p).exists()]
    if existing:
        more = f" (and {len(existing) - 1} more)" if len(existing) > 1 else ""
        raise OutputError(
            f"{existing[0]} exists{more}: pass --force to replace it, or choose another -o"
        )


def _load(data: str | os.PathLike, labels: str | None = None):
    """A prepared cache if ``data`` is one, else the raw dataset found there."""
    from conceptvae.data import open_dataset
    from conceptvae.data.cache import is_cache, open_cache

    if is_cache(data):
        if labels:
            raise DataError(f"{data} is a prepared cache: --labels applies to image folders only")
        return open_cache(data)
    return open_dataset(data, labels=labels)


@cli.command()
@click.argument("out", type=click.Path(file_okay=False))
@count_option(20000, "Images.")
@click.option(
    "--seed",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    help="Same seed, same bytes.",
)
@workers_option("rendering")
@force_option("OUT if it exists and is not empty")
def synth(out: str, n: int, seed: int, workers: int, force: bool) -> None:
    """Render N SynthFaces into OUT in CelebA's official layout."""
    from conceptvae.data.synth import write_synthfaces

    summary = write_synthfaces(
        out, n=n, seed=seed, workers=workers or _all_cores(), force=force, progress=True
    )
    click.echo(
        f"wrote {n} SynthFaces to {out} in {summary['seconds']:.1f} s "
        f"({summary['images_per_s']:.0f} images/s)"
    )


@cli.command()
@click.argument("paths", nargs=-1, required=True, metavar="[DATA] OUT")
@click.option(
    "--image-size", type=click.IntRange(min=8), default=64, show_default=True, help="Image side."
)
@click.option(
    "--crop",
    type=int,
    default=None,
    help="Side of the centred square cut before resizing [default: 148 for CelebA, "
    "else the largest centred square].",
)
@workers_option("decoding images")
@click.option("--labels", type=click.Path(dir_okay=False), help="Labels CSV for an image folder.")
@click.option("--positive", type=click.Path(file_okay=False), help="Folder of positive images.")
@click.option("--negative", type=click.Path(file_okay=False), help="Folder of negative images.")
@click.option("--name", default="Attribute", show_default=True, help="Attribute name for pairs.")
@force_option("OUT if it exists and is not empty")
def prepare(
    paths: tuple[str, ...],
    image_size: int,
    crop: int | None,
    workers: int,
    labels: str | None,
    positive: str | None,
    negative: str | None,
    name: str,
    force: bool,
) -> None:
    """Decode, crop and resize a dataset once into a prepared cache OUT.

    DATA is CelebA (official, torchvision or Kaggle layout) or a folder of images with a labels
    CSV; or give OUT alone with --positive DIR --negative DIR.
    """
    from conceptvae.data.cache import prepare as prepare_cache

    source = _pair_or_data(paths, labels, positive, negative, name, "OUT")
    out = paths[-1]
    cache = prepare_cache(
        source, out, image_size=image_size, crop=crop, workers=workers, force=force
    )
    skipped = len(cache.skipped)
    note = f", skipped {skipped} unreadable (listed in meta.json)" if skipped else ""
    click.echo(f"prepared {len(cache)} images at {image_size} px into {out}{note}")


def _pair_or_data(paths, labels, positive, negative, name, last: str):
    from conceptvae.data import open_dataset
    from conceptvae.data.folder import read_pair

    if positive or negative:
        if not (positive and negative):
            raise click.UsageError("--positive and --negative go together")
        if len(paths) != 1:
            raise click.UsageError(f"with --positive/--negative give only {last}")
        return read_pair(positive, negative, name=name)
    if len(paths) != 2:
        raise click.UsageError(f"expected DATA and {last} (or {last} with --positive/--negative)")
    return open_dataset(paths[0], labels=labels)


@cli.command()
@click.argument("data", type=click.Path())
@click.option("--labels", type=click.Path(dir_okay=False), help="Labels CSV for an image folder.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
def info(data: str, labels: str | None, as_json: bool) -> None:
    """Describe a dataset or a prepared cache: layout, counts, partitions, attribute rates."""
    summary = describe(_load(data, labels))
    if as_json:
        import json

        click.echo(json.dumps(summary, indent=2))
    else:
        click.echo(format_summary(summary))


def describe(ds) -> dict[str, Any]:
    """A JSON-able summary of a LabelledImages or a PreparedCache."""
    import numpy as np

    from conceptvae.data.cache import PreparedCache

    is_cache = isinstance(ds, PreparedCache)
    labels = np.asarray(ds.labels)
    n = int(labels.shape[0])
    summary: dict[str, Any] = {
        "path": str(ds.path if is_cache else ds.root),
        "kind": "prepared cache" if is_cache else "dataset",
        "layout": ds.meta.get("layout") if is_cache else ds.layout,
        "images": n,
    }
    if ds.partition is not None:
        counts = np.bincount(np.asarray(ds.partition, dtype=np.int64), minlength=3)
        summary["partitions"] = {k: int(c) for k, c in zip(PARTITION_NAMES, counts)}
    else:
        summary["partitions"] = None
    identity = None if ds.identity is None else np.asarray(ds.identity)
    if identity is not None and (identity >= 0).any():
        summary["identities"] = int(np.unique(identity[identity >= 0]).size)
    summary["landmarks"] = ds.landmarks is not None
    pos = labels.sum(axis=0, dtype=np.int64) if n else np.zeros(len(ds.attr_names), np.int64)
    summary["attributes"] = [
        {"name": a, "positives": int(p), "rate": (float(p) / n if n else 0.0)}
        for a, p in zip(ds.attr_names, pos)
    ]
    if is_cache:
        meta = dict(ds.meta)
        summary["cache"] = {
            k: meta.get(k)
            for k in ("source", "image_size", "crop", "format_version", "created")
            if k in meta
        }
        summary["cache"]["skipped"] = len(ds.skipped)
    return summary


def format_summary(s: dict[str, Any]) -> str:
    lines = [f"{s['kind']}: {s['path']}", f"layout: {s['layout']}", f"images: {s['images']:,}"]
    if s["partitions"]:
        parts = ", ".join(f"{k} {v:,}" for k, v in s["partitions"].items())
        lines.append(f"partitions: {parts}")
    else:
        lines.append("partitions: none in the source")
    if "identities" in s:
        lines.append(f"identities: {s['identities']:,}")
    lines.append(f"landmarks: {'yes' if s['landmarks'] else 'no'}")
    for k, v in s.get("cache", {}).items():
        lines.append(f"{k.replace('_', ' ')}: {v}")
    attrs = s["attributes"]
    if attrs:
        width = max(len(a["name"]) for a in attrs)
        lines.append("")
        lines.append(f"{'attribute':<{width}}  {'positives':>9}  {'rate':>6}")
        for a in attrs:
            bar = "#" * round(a["rate"] * 20)
            lines.append(f"{a['name']:<{width}}  {a['positives']:>9,}  {a['rate']:>6.1%}  {bar}")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# train, sample, reconstruct

_RUN_FILES = ("checkpoint.pt", "metrics.jsonl", "config.json", "model.safetensors")
_RUN_DIRS = ("samples", "recon")


def _int_list(ctx, param, value):
    if value is None:
        return None
    try:
        return tuple(int(v) for v in value.split(",") if v.strip())
    except ValueError:
        raise click.BadParameter(f"expected comma-separated integers, got {value!r}") from None


def _attr_names(data: str) -> list[str]:
    return list(_load(data).attr_names)


@cli.command()
@click.argument("data", type=click.Path())
@click.option("-o", "--output", type=click.Path(file_okay=False), help="The run folder (required).")
@click.option("--out", "out_alias", type=click.Path(file_okay=False), hidden=True,
              help="The old name of -o/--output, kept for old scripts.")  # fmt: skip
@click.option("--image-size", type=int, default=64, show_default=True, help="64, 128 or 256.")
@click.option("--latent-dim", type=click.IntRange(min=1), default=128, show_default=True)
@click.option("--patch-size", type=click.IntRange(min=1), default=2, show_default=True)
@click.option("--channels", callback=_int_list, help="Widths per resolution, e.g. 32,64,128,256.")
@click.option("--epochs", type=click.IntRange(min=1), default=20,
              help="Epochs to train; the cosine LR decay is planned over them (with "
                   "--max-minutes too, which is then only a stop) [default: 20; none with "
                   "--max-minutes alone].")  # fmt: skip
@click.option("--batch-size", type=click.IntRange(min=1), default=64, show_default=True,
              help="Per process.")  # fmt: skip
@click.option("--lr", type=float, default=1e-3, show_default=True, help="Peak learning rate.")
@click.option("--beta", type=float, default=0.05, show_default=True, help="KL weight.")
@click.option("--free-bits", type=click.FloatRange(min=0), default=0.0, show_default=True,
              help="KL floor per latent dimension, in nats (0: off).")  # fmt: skip
@click.option("--kl-warmup-steps", type=click.IntRange(min=0), default=2000, show_default=True)
@click.option("--region-weight", type=float, default=2.0, show_default=True,
              help="Extra loss weight on eyes and mouth (0: off).")  # fmt: skip
@click.option("--attr-weight", type=float, default=1.0, show_default=True,
              help="Weight of an attribute head on mu, labelled data (0: no head).")  # fmt: skip
@click.option("--max-minutes", type=float, default=None,
              help="Without --epochs: the run's time budget; the cosine LR decay is planned "
                   "over it (across --resume), and training stops, evaluates and saves when it "
                   "is spent. With --epochs: only a stop (saving) for this invocation; the "
                   "epochs plan the LR. A resumed run keeps its plan.")  # fmt: skip
@click.option("--max-steps", type=click.IntRange(min=0), default=None, help="Stop after this step.")
@device_option
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True)
@workers_option("preparing a raw dataset")
@click.option("--compile/--no-compile", "compile_", default=False, show_default=True,
              help="torch.compile the model.")  # fmt: skip
@click.option("--probe/--no-probe", default=True, show_default=True,
              help="Linear probe of every attribute after each epoch.")  # fmt: skip
@click.option("--log-every", type=click.IntRange(min=1), default=50, show_default=True)
@click.option("--resume", is_flag=True, help="Continue the run in -o from its checkpoint.")
@click.option("--cache", type=click.Path(file_okay=False),
              help="Where to prepare a raw dataset [default: the run folder's name + -cache, "
                   "beside it].")  # fmt: skip
@force_option("a non-empty run folder: start the run over")
def train(
    data: str, output: str | None, out_alias: str | None, resume: bool, force: bool,
    cache: str | None, **opts: Any,
) -> None:  # fmt: skip
    """Train a ConceptVAE on DATA (a prepared cache or a dataset) into the run folder -o.

    With --resume, options not given on the command line keep the run's values.
    """
    from pathlib import Path

    from click.core import ParameterSource

    from conceptvae.errors import OutputError
    from conceptvae.model import VAEConfig
    from conceptvae.train import TrainConfig, read_checkpoint_configs, resolve_device
    from conceptvae.train import train as train_run

    ctx = click.get_current_context()

    def given(name: str) -> bool:
        return ctx.get_parameter_source(name) not in (
            ParameterSource.DEFAULT,
            ParameterSource.DEFAULT_MAP,
        )

    rank = int(os.environ.get("RANK", "0"))
    if out_alias is not None:
        if output is not None and output != out_alias:
            raise click.UsageError("give the run folder once: -o/--output (--out is its old name)")
        if rank == 0:
            click.echo("warning: --out is deprecated: use -o/--output", err=True)
        output = out_alias
    if output is None:
        raise click.UsageError("Missing option '-o' / '--output' (the run folder).")
    if resume and force:
        raise click.UsageError("--resume continues the run and --force starts over: give one")
    run = Path(output)
    if run.exists() and not run.is_dir():
        raise OutputError(f"output {run} exists and is not a folder: choose another path")
    if not resume and rank == 0 and run.is_dir() and any(run.iterdir()):
        if not force:
            raise OutputError(
                f"output folder {run} exists and is not empty: pass --resume to continue its "
                "run, --force to start over, or choose another folder"
            )
        import shutil

        for name in _RUN_FILES:
            (run / name).unlink(missing_ok=True)
        for name in _RUN_DIRS:
            shutil.rmtree(run / name, ignore_errors=True)

    model_keys = ("image_size", "latent_dim", "patch_size", "channels", "beta", "free_bits",
                  "region_weight")  # fmt: skip
    train_keys = ("epochs", "batch_size", "lr", "kl_warmup_steps", "max_minutes", "max_steps",
                  "seed", "workers", "probe", "log_every")  # fmt: skip
    if resume:
        mc, tc = read_checkpoint_configs(run)
        tc["max_steps"] = None  # a budget of one invocation
        if tc.get("epochs") is not None or given("epochs"):
            tc["max_minutes"] = None  # with epochs, a stop for one invocation
        # else the run is planned over its time budget: it keeps it (or takes a new total)
    else:
        mc, tc = {}, {}
    for k in model_keys:
        if not resume or given(k):
            mc[k] = opts[k]
    if not resume or given("attr_weight"):
        w = opts["attr_weight"]
        mc["attr_weight"] = w
        mc["attr_dim"] = len(_attr_names(data)) if w > 0 else 0
    for k in train_keys:
        if not resume or given(k):
            tc[k] = opts[k]
    if not resume and given("max_minutes") and not given("epochs"):
        tc["epochs"] = None  # the LR schedule is planned over the time budget
    tc["compile"] = opts["compile_"] if (not resume or given("compile_")) else tc.get("compile")
    tc["device"] = str(resolve_device(opts["device"]))  # only the CLI resolves "auto"
    model_config = VAEConfig.from_dict(mc)
    config = TrainConfig.from_dict(tc)
    try:
        train_run(data, run, model_config, config, resume=resume, cache=cache, progress=True)
    except KeyboardInterrupt:
        if rank == 0:
            click.echo(
                f"interrupted; the run is saved in {run}: add --resume to continue", err=True
            )
        ctx.exit(130)
    if rank == 0:
        click.echo(f"saved the model to {run} (metrics in {run / 'metrics.jsonl'})")


@cli.command()
@click.argument("run", type=click.Path())
@count_option(64, "Samples.")
@click.option("--temperature", type=click.FloatRange(min=0), default=1.0, show_default=True)
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True)
@file_output_option()
@force_option("an existing -o file")
@device_option
def sample(
    run: str, n: int, temperature: float, seed: int, output: str, force: bool, device: str
) -> None:
    """Decode N prior samples of the model in RUN into a grid PNG."""
    from conceptvae.model import ConceptVAE
    from conceptvae.train import resolve_device, sample_grid, save_png

    _refuse_existing_files([output], force)

    model = ConceptVAE.from_pretrained(run, device=resolve_device(device))
    save_png(sample_grid(model, n, temperature, seed), output)
    click.echo(f"wrote {n} samples to {output}")


@cli.command()
@click.argument("run", type=click.Path())
@click.argument("data", type=click.Path())
@count_option(32, "Images.")
@click.option("--split", type=click.Choice(["valid", "test", "train"]), default="valid",
              show_default=True, help="Falls back to test when the split is empty.")  # fmt: skip
@file_output_option()
@force_option("an existing -o file")
@device_option
def reconstruct(
    run: str, data: str, n: int, split: str, output: str, force: bool, device: str
) -> None:
    """Write N images of DATA beside their reconstructions by the model in RUN."""
    from conceptvae.model import ConceptVAE
    from conceptvae.train import reconstruction_grid, resolve_device, save_png

    _refuse_existing_files([output], force)

    model = ConceptVAE.from_pretrained(run, device=resolve_device(device))
    images = _first_images(data, split, n, model.config.image_size)
    save_png(reconstruction_grid(model, images), output)
    click.echo(f"wrote {images.shape[0]} reconstructions to {output}")


def _first_images(data: str, split: str, n: int, image_size: int):
    """The first ``n`` images of ``split`` (else test) as float (n, 3, S, S) in [0, 1].

    From a prepared cache directly; from a raw dataset, only those images are prepared (in a
    temporary folder).
    """
    import dataclasses
    import tempfile
    from pathlib import Path

    import numpy as np

    from conceptvae.data.cache import PARTITIONS, PreparedCache, prepare

    ds = _load(data)
    order = [split] + [s for s in ("valid", "test", "train") if s != split]
    if isinstance(ds, PreparedCache):
        if ds.image_size != image_size:
            raise DataError(
                f"{data} holds {ds.image_size} px images but the model takes {image_size} px: "
                f"prepare the data at {image_size} px"
            )
        idx = next((i for i in (ds.split(s) for s in order) if i.size), ds.split("all"))
        return ds.batch(idx[:n])
    part = None if ds.partition is None else np.asarray(ds.partition)
    idx = np.arange(len(ds))
    if part is not None:
        idx = next(
            (i for i in (np.flatnonzero(part == PARTITIONS[s]) for s in order) if i.size), idx
        )
    idx = idx[:n]
    subset = dataclasses.replace(
        ds,
        filenames=[ds.filenames[i] for i in idx],
        **{
            k: None if getattr(ds, k) is None else np.asarray(getattr(ds, k))[idx]
            for k in ("labels", "partition", "identity", "landmarks", "bbox")
        },
    )
    with tempfile.TemporaryDirectory() as tmp:
        cache = prepare(subset, Path(tmp) / "c", image_size=image_size, workers=1, progress=False)
        return cache.batch(np.arange(len(cache)))


def _names(value: str | None) -> list[str] | None:
    return [v.strip() for v in value.split(",") if v.strip()] if value else None


def _groups(exclusive: tuple[str, ...]) -> list[list[str]] | None:
    """``--exclusive`` values as groups: None (the default groups) when not given, [] for
    "none"."""
    if not exclusive:
        return None
    if [e.strip().lower() for e in exclusive] == ["none"]:
        return []
    return [_names(e) or [] for e in exclusive]


_EXCLUSIVE_HELP = (
    "Comma-separated labels a face shows at most one of (hair colours): adding one to a face "
    "that shows another uses a calibrated swap between the two. Repeat for more groups; 'none' "
    "for no swaps. [default: Black_Hair,Blond_Hair,Brown_Hair,Gray_Hair (with Bald where it is "
    "exclusive with them) where the labels have them]"
)


@cli.command()
@click.argument("run", type=click.Path())
@click.argument("data", type=click.Path(), required=False)
@click.option("--method",
              type=click.Choice(["best", "mean", "balanced", "classifier", "adjusted",
                                 "conditional", "orthogonal", "steered"]),
              default="best", show_default=True,
              help="best: per attribute, the method that works with the least leakage on the "
                   "valid split. With --condition: the base the conditions are projected out "
                   "of.")  # fmt: skip
@click.option("--attributes", help="Comma-separated names to fit (default: all labels).")
@click.option("--condition", help="Comma-separated names held fixed (projected out).")
@click.option("--labels", type=click.Path(dir_okay=False), help="Labels CSV for an image folder.")
@click.option("--positive", type=click.Path(file_okay=False), help="Folder of images with it.")
@click.option("--negative", type=click.Path(file_okay=False), help="Folder of images without it.")
@click.option("--name", help="The attribute's name with --positive/--negative.")
@click.option("--cache", type=click.Path(file_okay=False),
              help="Where a raw dataset is prepared [default: RUN-cache beside RUN].")  # fmt: skip
@click.option("--replace", is_flag=True, help="Start a new bank instead of adding to RUN's.")
@click.option(
    "--calibrate/--no-calibrate",
    default=True,
    show_default=True,
    help="Put strengths on the judge-calibrated scale (trains RUN/judge once).",
)
@click.option(
    "--calibration-faces",
    type=click.IntRange(min=10),
    default=200,
    show_default=True,
    help="Held-out faces per attribute and direction for calibrating.",
)
@click.option(
    "--confirm-faces",
    type=click.IntRange(min=10),
    default=600,
    show_default=True,
    help="With --method best: held-out faces per attribute and direction for the chosen "
    "vectors' second calibration, which sets their strengths (at least --calibration-faces).",
)
@click.option("--exclusive", multiple=True, help=_EXCLUSIVE_HELP)
@click.option("--judge", "judge_dir", type=click.Path(file_okay=False),
              help="A trained judge to calibrate with, as it is [default: RUN/judge when it "
                   "was trained on DATA, else one trained there].")  # fmt: skip
@click.option(
    "--swaps-only",
    is_flag=True,
    help="Keep RUN's vectors and strengths; fit and calibrate only the swaps of the exclusive "
    "groups (minutes, not a full fit).",
)
@click.option(
    "--holds-only",
    is_flag=True,
    help="Keep RUN's vectors, strengths and swaps; fit the labels' readers and choose each "
    "vector's hold and reach on the valid split (minutes, not a full fit).",
)
@click.option(
    "--recalibrate-only",
    is_flag=True,
    help="Keep RUN's vectors (their directions) and measure their strengths, footprints and "
    "holds again on DATA's valid split with DATA's judge: for photos in another style "
    "(minutes, not a full fit). --attributes picks which [default: every vector DATA's judge "
    "sees].",
)
@click.option(
    "--push",
    is_flag=True,
    help="Also try each hold on a step 1.15 and 1.3 times as long, kept where it cuts leakage "
    "at no cost in success on the valid split: for photos in the style of the training faces "
    "(in a style the model never saw it did not help).",
)
@click.option("--show", is_flag=True, help="Print the report of the bank saved in RUN and stop.")
@click.option("--batch-size", type=click.IntRange(min=1), default=256, show_default=True)
@device_option
@workers_option("preparing a raw dataset")
def vectors(
    run: str,
    data: str | None,
    method: str,
    attributes: str | None,
    condition: str | None,
    labels: str | None,
    positive: str | None,
    negative: str | None,
    name: str | None,
    cache: str | None,
    replace: bool,
    calibrate: bool,
    calibration_faces: int,
    confirm_faces: int,
    exclusive: tuple[str, ...],
    judge_dir: str | None,
    swaps_only: bool,
    holds_only: bool,
    recalibrate_only: bool,
    push: bool,
    show: bool,
    batch_size: int,
    device: str,
    workers: int,
) -> None:
    """Fit concept vectors for the model in RUN from the labels of DATA and save them in RUN.

    The train split's posterior means are fitted (and cached in RUN/latents). With a valid
    split, each vector is calibrated there by an attribute judge trained on the same labels
    (RUN/judge, trained once): strength 1 adds the attribute clearly (98% of held-out faces;
    96% or more where a flat curve makes the last faces cost more leakage than they gain), -1
    removes it; each vector also gets its footprint. The valid split also judges them:
    held-out AUC, norms, cosines, confounds and problems, printed and written beside the bank.
    Labels a face shows at most one of (--exclusive; hair colours by default) also get swaps:
    adding brown hair to a blond face is its own calibrated step, not the brown-hair vector.
    Each label also gets a reader (RUN/readers.safetensors), and each vector a hold where it
    helps: an edit puts back, per face, the other labels its step changed, or stops each face
    where the model reads the label clearly (a reach), or both.
    """
    from pathlib import Path

    from conceptvae import vectors as V
    from conceptvae.data.cache import frame_crop, is_cache, open_or_prepare
    from conceptvae.data.folder import read_pair
    from conceptvae.hold import HOLD_PUSHES, Readers
    from conceptvae.model import ConceptVAE
    from conceptvae.pretrained import is_shipped, resolve
    from conceptvae.train import resolve_device

    run_dir = resolve(run)
    pushes = HOLD_PUSHES if push else ()  # longer held steps, only when asked
    if is_shipped(run) and not show:
        raise DataError(
            f"{run} is a model shipped with conceptvae and is read-only: copy the folder "
            f"{run_dir} and fit vectors in the copy"
        )
    if show:
        if data or positive or negative:
            raise click.UsageError("--show prints the saved bank: give only RUN")
        bank = V.load_bank(run_dir)
        if bank is None:
            raise DataError(f"{run_dir} has no vectors yet: run `conceptvae vectors {run} DATA`")
        click.echo(V.describe_bank(bank))
        click.echo("")
        click.echo(V.describe_calibration(bank))
        report = run_dir / V.REPORT_TEXT
        if report.is_file():
            click.echo("")
            click.echo(report.read_text(encoding="utf-8").rstrip())
        return
    groups = _groups(exclusive)
    pair = positive is not None or negative is not None
    if swaps_only and (pair or not calibrate or replace or groups == []):
        raise click.UsageError(
            "--swaps-only calibrates swaps for RUN's bank with DATA's judge: not with "
            "--positive/--negative, --no-calibrate, --replace or --exclusive none"
        )
    if holds_only and (pair or not calibrate or replace or swaps_only):
        raise click.UsageError(
            "--holds-only chooses holds for RUN's bank with DATA's judge: not with "
            "--positive/--negative, --no-calibrate, --replace or --swaps-only"
        )
    if recalibrate_only and (pair or not calibrate or replace or swaps_only or holds_only
                             or condition or method != "best" or exclusive):  # fmt: skip
        raise click.UsageError(
            "--recalibrate-only keeps RUN's vectors and swaps and calibrates the vectors with "
            "DATA's judge: not with --positive/--negative, --no-calibrate, --replace, "
            "--swaps-only, --holds-only, --condition, --method or --exclusive"
        )
    if pair:
        if data or labels:
            raise click.UsageError("give DATA (with --labels) or --positive/--negative, not both")
        if not (positive and negative and name):
            raise click.UsageError("--positive, --negative and --name go together")
        source: Any = read_pair(positive, negative, name)
        label_source = f"positive {positive}, negative {negative}"
    elif data is None:
        raise click.UsageError("give DATA (a dataset or a prepared cache), or --show")
    else:
        source = data
        label_source = None
    vae = ConceptVAE.from_pretrained(run_dir, device=resolve_device(device))
    size = vae.config.image_size
    unlabelled, kept = False, None  # photos with no labels; RUN's readers kept for them
    if pair:
        import tempfile

        crop = frame_crop(source, vae.config.crop)
        with tempfile.TemporaryDirectory(prefix="conceptvae-pair-") as tmp:
            c = open_or_prepare(source, Path(tmp) / "cache", size, crop=crop, workers=workers)
            new, report = V.fit_vectors(
                vae, c, None, method=method, condition=_names(condition),
                label_source=label_source, batch_size=batch_size,
            )  # fmt: skip
    else:
        cache_dir = Path(cache) if cache else run_dir.parent / (run_dir.name + "-cache")
        crop = None
        if not is_cache(source):
            from conceptvae.data import open_dataset

            # read once: for the crop and prepare; photos with no labels only to recalibrate
            source = open_dataset(source, labels=labels, unlabelled=recalibrate_only)
            crop = frame_crop(source, vae.config.crop)
        given = labels if isinstance(source, str) else None  # applied by open_dataset above
        c = open_or_prepare(source, cache_dir, size, labels=given, crop=crop, workers=workers)

        chosen: dict[str, Any] = {}  # the judge, once set (unlabelled photos: the bank's own)

        def judge_factory():
            from conceptvae.evaluate import Judge, load_or_train_judge

            if "judge" in chosen:
                return chosen["judge"]
            if judge_dir is not None:  # the judge given, as it is
                return Judge.load(judge_dir, device=vae.device)
            click.echo("the attribute judge calibrates strengths (trained once, kept in "
                       f"{run_dir / 'judge'})", err=True)  # fmt: skip
            return load_or_train_judge(run_dir, c, device=vae.device)

        def saved_bank(what: str):
            bank = V.load_bank(run_dir)
            if bank is None:
                raise DataError(
                    f"{run_dir} has no vectors to {what}: run `conceptvae vectors {run} {data}` "
                    "first"
                )
            bank.check_model(vae.model_hash())
            return bank

        if swaps_only:
            bank = saved_bank("add swaps to")
            bank = V.add_swaps(vae, bank, judge_factory(), c, run_dir, groups=groups,
                               n_faces=confirm_faces, batch_size=batch_size)  # fmt: skip
            bank.save(run_dir)
            click.echo(V.describe_swaps(bank))
            kept = sum(len(r) for r in bank.swaps.values())
            click.echo(f"saved {kept} swaps to {run_dir}; its vectors are unchanged")
            return
        if holds_only:
            bank = saved_bank("choose holds for")
            readers = V.fit_readers(vae, c, run_dir, batch_size=batch_size)
            bank = V.add_holds(vae, bank, judge_factory(), c, readers, run_dir, pushes=pushes,
                               n_faces=confirm_faces, batch_size=batch_size)  # fmt: skip
            readers.merged(Readers.load(run_dir)).save(run_dir)
            bank.save(run_dir)
            click.echo(V.describe_holds(bank))
            return
        if recalibrate_only:  # the directions kept, strength 1 measured on DATA
            bank = saved_bank("recalibrate")
            unlabelled = not c.attr_names
            if unlabelled:  # the bank's judge labels the photos, its thresholds set on them
                c, chosen["judge"] = _photos_judged(c, bank, run_dir, judge_dir, vae.device,
                                                    _names(attributes))  # fmt: skip
            new, report = V.recalibrate_vectors(
                vae, bank, c, run_dir, judge=judge_factory(), attributes=_names(attributes),
                n_faces=max(calibration_faces, confirm_faces), batch_size=batch_size,
                keep_longer=unlabelled,
            )  # fmt: skip
        else:
            new, report = V.fit_vectors(
                vae, c, run_dir, method=method, attributes=_names(attributes),
                condition=_names(condition), batch_size=batch_size,
                judge_factory=judge_factory if calibrate else None, n_faces=calibration_faces,
                confirm_faces=confirm_faces, groups=groups,
            )  # fmt: skip
        # the labels' readers (from the latents just encoded), and each vector's hold; photos
        # the judge labelled keep RUN's readers, fitted on true labels
        kept = Readers.load(run_dir) if unlabelled else None
        readers = kept or V.fit_readers(vae, c, run_dir, batch_size=batch_size)
        records = new.metadata.get("calibration", {}).values()
        if any(r.get("scale") == "judge" for r in records):
            new = V.add_holds(vae, new, judge_factory(), c, readers, run_dir,
                              n_faces=max(calibration_faces, confirm_faces),
                              batch_size=batch_size, pushes=pushes)  # fmt: skip
    old = None if replace else V.load_bank(run_dir)
    if old is not None and old.metadata.get("model_hash") != new.metadata.get("model_hash"):
        click.echo(f"warning: replacing the vectors in {run_dir}, made for another model", err=True)
    bank = V.merge_banks(old, new)
    if not pair and kept is None:  # the labels' readers (those of labels not fitted now kept)
        readers.merged(None if replace else Readers.load(run_dir)).save(run_dir)
    bank.save(run_dir)
    paths = V.save_report(report, run_dir, title=f"cosine similarity ({new.metadata['method']})")
    click.echo(report.to_text())
    click.echo(V.describe_calibration(new))
    for name in report.flagged:
        click.echo(f"warning: {name}: {'; '.join(report.problems[name])}", err=True)
    click.echo(
        f"{'recalibrated' if recalibrate_only else 'saved'} {len(new)} vectors ({len(bank)} in "
        f"the bank) to {run_dir}; report in "
        f"{paths[0].name}, {paths[1].name}, {paths[2].name}"
    )


def _photos_judged(cache, bank, run_dir, judge_dir, device, asked=None):
    """Unlabelled photos for `vectors --recalibrate-only`: labelled by the judge that
    calibrated the bank (--judge, else RUN/judge), its thresholds set on them; says which
    attributes it still tells apart, and refuses an ``asked`` one (--attributes) it does not.
    Returns the relabelled cache and that judge."""
    from pathlib import Path

    from conceptvae import vectors as V
    from conceptvae.evaluate import JUDGE_DIR, JUDGE_JSON, Judge

    folder = Path(judge_dir) if judge_dir is not None else run_dir / JUDGE_DIR
    if not (folder / JUDGE_JSON).is_file():
        raise DataError(
            f"{cache.path} has no labels and {folder} holds no judge to label its photos: give "
            "--labels, or --judge with the judge that calibrated RUN's vectors"
        )
    judge = Judge.load(folder, device=device)
    relabelled, adapted, why = V.judge_labelled(cache, judge, bank)
    seen = relabelled.attr_names
    unseen = {n.casefold(): n for n in why}
    for name in asked or []:
        if name.casefold() in unseen:
            n = unseen[name.casefold()]
            raise DataError(
                f"the judge in {folder} does not tell {n} apart on the photos of {cache.path} "
                f"({why[n]}): leave it out of --attributes, or label the photos (--labels)"
            )
    click.echo(
        f"{cache.path} has no labels: the judge in {folder} labelled its {len(cache)} photos, "
        f"its thresholds set on them; it tells {len(seen)} attributes apart there "
        f"({', '.join(seen)}); their strengths only lengthen",
        err=True,
    )
    for name, reason in why.items():
        click.echo(f"  not recalibrated: {name}: {reason}", err=True)
    return relabelled, adapted


# ---------------------------------------------------------------------------------------------
# editing


def _pipeline(run: str, device: str, hold: str = "auto"):
    from conceptvae.edit import EditPipeline
    from conceptvae.train import resolve_device

    return EditPipeline.from_pretrained(run, device=resolve_device(device), hold=hold)


def _out_folder(output: str | None):
    """The -o folder, created when its parent exists."""
    from pathlib import Path

    from conceptvae.errors import OutputError

    if output is None:
        return None
    out = Path(output)
    if out.exists() and not out.is_dir():
        raise OutputError(f"-o {out} is a file: give a folder; outputs keep their input's name")
    if not out.exists():
        if not out.parent.is_dir():
            raise OutputError(
                f"the folder {out.parent} (for -o {out}) does not exist: create it or choose "
                "another -o"
            )
        if out.suffix.lower() in (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff"):
            raise OutputError(f"-o {out} looks like a file name: -o takes a folder")
        out.mkdir()
    return out


def _face_option(face: str) -> int | str:
    return "all" if face.strip().lower() == "all" else face


def _photo_cells(images, max_side: int = 512):
    """Photos scaled so the longer side is at most ``max_side`` (strips of big photos)."""
    from PIL import Image

    out = []
    for im in images:
        s = min(1.0, max_side / max(im.size))
        out.append(im if s == 1.0 else im.resize((round(im.width * s), round(im.height * s)),
                                                 Image.Resampling.LANCZOS))  # fmt: skip
    return out


@cli.command()
@click.argument("run", type=click.Path())
@click.argument("photos", nargs=-1, required=True)
@click.option("--edit", "expr", help="An expression of the bank, e.g. 'Smiling+1.5'.")
@click.option("--strength", type=float, default=1.0, show_default=True,
              help="Multiplies the whole edit.")  # fmt: skip
@click.option("--sweep", help="A strip at each strength instead, e.g. 'Smiling=-2:2:5'.")
@click.option("--gif", is_flag=True, help="With --sweep: also an animation.")
@click.option("-o", "--output", type=click.Path(),
              help="Output folder [default: beside each photo].")  # fmt: skip
@force_option("existing output files")
@click.option("--blend", type=click.Choice(["auto", "local", "residual", "replace", "poisson"]),
              default="auto", show_default=True,
              help="auto: local where the vectors have footprints, else residual.")  # fmt: skip
@click.option("--face", default="0", show_default=True, help="Face number (0 = largest) or all.")
@click.option("--no-align", is_flag=True, help="Take each image as an aligned face crop.")
@click.option("--refine", type=click.IntRange(min=0), default=0, show_default=True,
              help="Gradient steps fitting z to the face before editing.")  # fmt: skip
@click.option("--hold", default="auto", show_default=True,
              help="Labels each face keeps while it is edited: auto (those each vector's "
                   "calibration chose to hold, and its reach), none (every face the same "
                   "step), or names, e.g. Male,Eyeglasses.")  # fmt: skip
@device_option
def edit(
    run: str,
    photos: tuple[str, ...],
    expr: str | None,
    strength: float,
    sweep: str | None,
    gif: bool,
    output: str | None,
    force: bool,
    blend: str,
    face: str,
    no_align: bool,
    refine: int,
    hold: str,
    device: str,
) -> None:
    """Edit the faces in PHOTOS (files, folders, globs) with the concept vectors of RUN.

    Each output keeps its input's name in the -o folder (sweeps add _sweep, GIFs _sweep.gif);
    without -o it goes beside the input as NAME_edited. An existing output file is refused
    unless --force. Pixels away from the face stay as they were. A bad file is reported and the
    others go on.
    """
    from tqdm.auto import tqdm

    from attributes.errors import VectorError
    from conceptvae.errors import ConceptVAEError
    from conceptvae.grids import parse_sweep, save_gif, strip
    from conceptvae.images import collect_inputs, output_path, write_image

    if (expr is None) == (sweep is None):
        raise click.UsageError("give --edit EXPR or --sweep NAME=START:STOP:COUNT")
    if gif and sweep is None:
        raise click.UsageError("--gif goes with --sweep")
    values = None
    if sweep is not None:
        expr, values = parse_sweep(sweep)
    paths, problems = collect_inputs(photos)
    if not paths:
        reasons = "; ".join(f"{a}: {r}" for a, r in problems) or "no input"
        raise DataError(f"no photo to edit ({reasons})")
    out = _out_folder(output)
    suffix = "" if values is None else "_sweep"
    targets: dict[Any, str] = {}
    for path in paths:  # two inputs must not write one output
        target = output_path(path, out, suffix)
        if target in targets:
            raise DataError(
                f"{targets[target]} and {path} would both be written to {target}: edit them "
                "with different -o folders"
            )
        targets[target] = str(path)
    gifs = [t.with_suffix(".gif") for t in targets] if gif else []
    _refuse_existing_files([*targets, *gifs], force)  # before the model loads
    pipe = _pipeline(run, device, hold)
    pipe.direction(expr)  # an unknown attribute or a bad expression fails before any photo
    done, failed = 0, [(a, r) for a, r in problems]
    for path in tqdm(paths, desc="editing", unit="photo", disable=len(paths) < 2):
        try:
            prepared = pipe.prepare(path, face=_face_option(face), align=not no_align,
                                    refine=refine)  # fmt: skip
            if values is None:
                image = pipe(prepared, expr, strength, blend=blend)
                write_image(image, output_path(path, out), like=prepared.photo)
            else:
                frames = pipe.sweep(prepared, expr, values * strength, blend=blend)
                cells = _photo_cells(frames)
                title = f"{expr} (strength)"
                write_image(strip(cells, list(values * strength), title=title),
                            output_path(path, out, "_sweep"), like=prepared.photo)  # fmt: skip
                if gif:
                    save_gif(cells, output_path(path, out, "_sweep").with_suffix(".gif"))
            done += 1
        except (ConceptVAEError, VectorError) as e:
            failed.append((str(path), str(e)))
    where = out if out is not None else "beside the inputs"
    click.echo(f"edited {done} photo{'s' if done != 1 else ''} ({where})")
    if failed:
        for name, reason in failed:
            click.echo(f"failed: {name}: {reason}", err=True)
        raise click.exceptions.Exit(1)


@cli.command()
@click.argument("run", type=click.Path())
@click.argument("photos", nargs=-1, required=True)
@click.option("--steps", type=click.IntRange(min=2, max=32), default=8, show_default=True)
@click.option("--method", type=click.Choice(["slerp", "lerp"]), default="slerp",
              show_default=True)  # fmt: skip
@file_output_option()
@force_option("an existing -o file (and its GIF)")
@click.option("--gif", is_flag=True, help="Also an animation along the row (two photos).")
@click.option("--no-align", is_flag=True, help="Take each image as an aligned face crop.")
@device_option
def interpolate(
    run: str, photos: tuple[str, ...], steps: int, method: str, output: str, force: bool,
    gif: bool, no_align: bool, device: str,
) -> None:  # fmt: skip
    """Walk the latent space between the faces of 2 photos (a row) or 4 (a grid, the photos at
    the corners: top-left, top-right, bottom-left, bottom-right)."""
    from pathlib import Path

    import torch

    from conceptvae.grids import image_grid, interpolate_grid, save_gif
    from conceptvae.grids import interpolate as interp
    from conceptvae.images import write_image

    if len(photos) not in (2, 4):
        raise click.UsageError(f"give 2 or 4 photos, got {len(photos)}")
    gif_path = Path(output).with_suffix(".gif")
    _refuse_existing_files([output, gif_path] if gif and len(photos) == 2 else [output], force)
    pipe = _pipeline(run, device)
    faces = [pipe.prepare(p, align=not no_align).faces[0] for p in photos]
    z = torch.stack([f.z for f in faces])
    if len(photos) == 2:
        zs = interp(z[0], z[1], steps, method)  # (steps, D)
        crops = pipe.crops(faces[0], zs, residual=False)
        ends = [torch.from_numpy(f.aligned.crop).permute(2, 0, 1).float() / 255 for f in faces]
        row = torch.cat([ends[0][None], crops, ends[1][None]])
        ts = [f"{t:.2f}".rstrip("0").rstrip(".") for t in torch.linspace(0, 1, steps).tolist()]
        grid = image_grid(row[None], col_labels=["photo A", *ts, "photo B"], cell=96,
                          title=f"{method} from A to B")  # fmt: skip
        if gif:
            from conceptvae.images import tensor_to_pil

            save_gif([tensor_to_pil(c) for c in crops], gif_path)
    else:
        zs = interpolate_grid(z, steps, steps, method)  # (steps, steps, D)
        crops = pipe.crops(faces[0], zs.reshape(-1, zs.shape[-1]), residual=False)
        grid = image_grid(crops.reshape(steps, steps, *crops.shape[1:]), cell=96,
                          title=f"{method} between 4 faces (at the corners)")  # fmt: skip
    write_image(grid, output)
    click.echo(f"wrote {output}")


@cli.command(name="grid")
@click.argument("run", type=click.Path())
@click.argument("photo", type=click.Path())
@click.option("--x", "x_sweep", required=True, help="Columns, e.g. 'Smiling=-2:2:5'.")
@click.option("--y", "y_sweep", required=True, help="Rows, e.g. 'Male=-2:2:5'.")
@file_output_option()
@force_option("an existing -o file")
@click.option("--face", default="0", show_default=True, help="Face number (0 = largest).")
@click.option("--no-align", is_flag=True, help="Take the image as an aligned face crop.")
@device_option
def grid_command(
    run: str, photo: str, x_sweep: str, y_sweep: str, output: str, force: bool, face: str,
    no_align: bool, device: str,
) -> None:  # fmt: skip
    """An attribute plane: the face of PHOTO edited along two attributes at once."""
    import torch

    from conceptvae.grids import image_grid, parse_sweep
    from conceptvae.images import write_image

    xname, xs = parse_sweep(x_sweep)
    yname, ys = parse_sweep(y_sweep)
    _refuse_existing_files([output], force)
    pipe = _pipeline(run, device)
    pipe.direction(xname), pipe.direction(yname)  # a bad name fails before the photo is read
    f = pipe.prepare(photo, face=face, align=not no_align).faces[0]
    zs = torch.stack(
        [f.z + pipe.direction(yname, float(b), f.z) + pipe.direction(xname, float(a), f.z)
         for b in ys for a in xs]
    )  # fmt: skip
    crops = pipe.crops(f, zs)
    grid = image_grid(crops.reshape(len(ys), len(xs), *crops.shape[1:]), cell=96,
                      col_labels=list(xs), row_labels=list(ys),
                      title=f"{xname} (across) x {yname} (down)")  # fmt: skip
    write_image(grid, output)
    click.echo(f"wrote {output}")


_EVALUATE_METHODS = "mean,balanced,classifier,conditional"
_EVALUATE_STRENGTHS = "0.5,1,1.5,2,3"


@cli.command(name="evaluate")
@click.argument("run", type=click.Path())
@click.argument("data", type=click.Path())
@click.option("-o", "--output", required=True, type=click.Path(file_okay=False),
              help="Report folder (report.md, report.json, plots).")  # fmt: skip
@click.option("--attributes", help="Comma-separated attributes (default: all the judge passes).")
@click.option("--methods", default=_EVALUATE_METHODS, show_default=True,
              help="Any of mean, balanced, classifier, adjusted, conditional, orthogonal, "
                   "steered.")  # fmt: skip
@click.option("--strengths", default=_EVALUATE_STRENGTHS, show_default=True)
@click.option("-n", "--n-faces", type=click.IntRange(min=1), default=300, show_default=True,
              help="Test faces edited per attribute and direction.")  # fmt: skip
@click.option("--judge", "judge_dir", type=click.Path(file_okay=False),
              help="A trained judge [default: RUN/judge, trained there if missing].")  # fmt: skip
@click.option("--judge-minutes", type=float, default=10.0, show_default=True,
              help="Time limit for training the judge.")  # fmt: skip
@click.option("--cache", type=click.Path(file_okay=False),
              help="Where a raw dataset is prepared [default: -o's name + -cache, beside "
                   "it].")  # fmt: skip
@click.option("--exclusive", multiple=True, help=_EXCLUSIVE_HELP)
@click.option("--holds/--no-holds", default=True, show_default=True,
              help="Give each method's calibrated vectors their holds, as `conceptvae vectors` "
                   "does, and measure the edits held.")  # fmt: skip
@click.option("--saved", is_flag=True,
              help="Measure RUN's saved vectors as `conceptvae edit` uses them (strength +1 and "
                   "-1, their swaps, holds and reaches) instead of fitting each method: "
                   "report.md and report.json, one row per attribute and direction.")  # fmt: skip
@device_option
@force_option("a non-empty report folder")
def evaluate_command(
    run: str, data: str, output: str, attributes: str | None, methods: str, strengths: str,
    n_faces: int, judge_dir: str | None, judge_minutes: float, cache: str | None,
    exclusive: tuple[str, ...], holds: bool, saved: bool, device: str, force: bool,
) -> None:  # fmt: skip
    """Measure how well the concept vectors of RUN edit the test faces of DATA.

    A judge (a small attribute classifier) is trained once on DATA's train split; attributes it
    recognises at >= 90% balanced accuracy are scored: edit success over strength, leakage into
    other attributes, SSIM, for each vector method. With --saved, RUN's own bank is measured
    as it is, at +1 and -1: the check after `vectors --recalibrate-only`.
    """
    from pathlib import Path

    from conceptvae import evaluate as E
    from conceptvae._fs import check_output_dir
    from conceptvae.data.cache import open_or_prepare
    from conceptvae.model import ConceptVAE
    from conceptvae.pretrained import is_shipped, resolve
    from conceptvae.train import resolve_device

    if saved and (methods != _EVALUATE_METHODS or strengths != _EVALUATE_STRENGTHS or exclusive):
        raise click.UsageError(
            "--saved measures RUN's own vectors at their strength 1: not with --methods, "
            "--strengths or --exclusive"
        )
    check_output_dir(output, force)  # refuse a non-empty folder before any work
    dev = resolve_device(device)
    run_dir = resolve(run)
    vae = ConceptVAE.from_pretrained(run_dir, device=dev)
    bank = _saved_bank(run, run_dir, vae) if saved else None  # before any judge is trained
    cache_dir = Path(cache) if cache else Path(output).parent / (Path(output).name + "-cache")
    c = open_or_prepare(data, cache_dir, vae.config.image_size)
    if judge_dir is not None:
        judge = E.Judge.load(judge_dir, device=dev)
    elif is_shipped(run) and (run_dir / E.JUDGE_DIR / E.JUDGE_JSON).is_file():
        judge = E.Judge.load(run_dir / E.JUDGE_DIR, device=dev)  # the judge shipped with it
    else:
        judge = E.load_or_train_judge(run_dir, c, max_minutes=judge_minutes, device=str(dev))
    latents = None if is_shipped(run) else run_dir
    if saved:
        _evaluate_saved(vae, bank, run, run_dir, c, judge, output, attributes=_names(attributes),
                        n_faces=n_faces, holds=holds, latents=latents, force=force)  # fmt: skip
        return
    try:
        values = [float(v) for v in strengths.split(",") if v.strip()]
    except ValueError:
        raise click.BadParameter(f"expected numbers like 0.5,1,2, got {strengths!r}") from None
    result = E.evaluate(
        vae, c, latents, judge, methods=[m.strip() for m in methods.split(",") if m.strip()],
        strengths=values, attributes=_names(attributes), n_faces=n_faces,
        groups=_groups(exclusive), holds=holds,
    )  # fmt: skip
    E.write_report(result, output, force=force)
    for line in _evaluate_summary(result):
        click.echo(line)
    click.echo(f"wrote the report to {output} (report.md, report.json and plots)")


def _saved_bank(run: str, run_dir: Any, vae: Any) -> Any:
    """RUN's bank for ``evaluate --saved``; none is a one-line error saying what to run."""
    from conceptvae import vectors as V

    bank = V.load_bank(run_dir)
    if bank is None:
        raise DataError(f"{run_dir} has no vectors to measure: run `conceptvae vectors {run} "
                        "DATA` first")  # fmt: skip
    bank.check_model(vae.model_hash())
    return bank


def _evaluate_saved(
    vae: Any, bank: Any, run: str, run_dir: Any, cache: Any, judge: Any, output: str, *,
    attributes: list[str] | None, n_faces: int, holds: bool, latents: Any, force: bool,
) -> None:  # fmt: skip
    """``evaluate --saved``: RUN's bank measured as it is, written to ``output``."""
    from conceptvae.evaluation.saved import measure_saved, write_saved_report
    from conceptvae.hold import Readers

    readers = Readers.load(run_dir) if holds else None
    result = measure_saved(vae, bank, readers, cache, judge, attributes=attributes,
                           n_faces=n_faces, latents=latents)  # fmt: skip
    write_saved_report(result, output, title=f"{run}: its saved vectors on {cache.path}",
                       force=force)  # fmt: skip
    rows = result["rows"]
    works = sum(bool(r["works"]) for r in rows)
    reached = sum(r["success"] >= 0.95 for r in rows)
    click.echo(f"saved vectors at +1 and -1: {reached} of {len(rows)} (attribute, direction) "
               f"pairs reach 95% success, {works} with at most 2% leakage")  # fmt: skip
    click.echo(f"wrote the report to {output} (report.md, report.json)")


def _evaluate_summary(result: dict[str, Any]) -> list[str]:
    """A few lines for the console: reconstruction, and per attribute the best method."""
    lines = []
    rec = result.get("reconstruction") or {}
    if rec:
        lines.append(
            f"reconstruction: PSNR {rec.get('psnr', float('nan')):.2f} dB, "
            f"SSIM {rec.get('ssim', float('nan')):.3f}"
        )
    if result.get("status") != "ok":
        lines.append(str(result.get("message", "no attribute could be judged")))
        return lines
    for attr, info in (result.get("edits") or {}).items():
        parts = []
        for method, m in (info.get("methods") or {}).items():
            add = m.get("add") or {}
            s90, leak = add.get("strength_90"), add.get("leakage_at_90")
            if s90 is None:
                parts.append(f"{method} <90%")
            else:
                parts.append(f"{method} 90% at {s90:.2f} (leak {100 * (leak or 0):.1f}%)")
        lines.append(f"{attr}: " + "; ".join(parts))
    calibrated = result.get("calibrated_summary") or []
    if calibrated:
        works = sum(bool(r["works"]) for r in calibrated)
        held = sum(bool(r.get("held")) for r in calibrated)
        lines.append(
            f"calibrated edits at +1 and -1 (best method): {works} of {len(calibrated)} pairs "
            "reach 95% success with at most 2% leakage"
            + (f"; {held} of the best edits hold other labels" if held else "")
        )
    return lines


# ---------------------------------------------------------------------------------------------
# demo


@cli.command()
@click.option("-o", "--output", default="demo", show_default=True,
              type=click.Path(file_okay=False), help="The demo folder.")  # fmt: skip
@click.option("--from-scratch", is_flag=True,
              help="Train the model, its vectors and judge first (~20 min on a CPU).")  # fmt: skip
@force_option("the folder if it exists and is not empty")
@click.option("--model", default="synthfaces64", show_default=True, hidden=True,
              help="A run folder with vectors and judge/, or a shipped name.")  # fmt: skip
@click.option("--judge", "judge_dir", type=click.Path(file_okay=False), hidden=True,
              help="The judge for the report [default: MODEL/judge].")  # fmt: skip
@click.option("--fast", is_flag=True, hidden=True, help="Tiny sizes (for tests).")
@device_option
def demo(
    output: str, from_scratch: bool, force: bool, model: str, judge_dir: str | None, fast: bool,
    device: str,
) -> None:  # fmt: skip
    """Show what conceptvae does: edits, sweeps, interpolations, samples, a photo edited end to
    end and an evaluation report, made from the shipped model on new SynthFaces (about a minute
    on a CPU) and written into one folder with a README."""
    from conceptvae.demo import run_demo
    from conceptvae.train import resolve_device

    if from_scratch and model != "synthfaces64":
        raise click.UsageError("--from-scratch trains its own model: leave out --model")
    command = "conceptvae demo -o " + output + (" --from-scratch" if from_scratch else "")
    run_demo(
        output, model=model, judge=judge_dir, from_scratch=from_scratch, fast=fast, force=force,
        device=resolve_device(device), log=click.echo, command=command,
    )  # fmt: skip


@cli.command()
@click.argument("run", type=click.Path(), default="synthfaces64", required=False)
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to bind; 0.0.0.0 serves other machines (no login!).")  # fmt: skip
@click.option("--port", type=click.IntRange(1, 65535), default=7860, show_default=True)
@click.option("--open", "open_browser", is_flag=True, help="Open the page in a web browser.")
@click.option("--max-upload-mb", type=click.FloatRange(min=0.01), default=25.0, show_default=True,
              help="Largest photo accepted.")  # fmt: skip
@click.option("--max-photos", type=click.IntRange(min=1), default=32, show_default=True,
              help="Photos kept (least recently used dropped).")  # fmt: skip
@click.option("--max-store-mb", type=click.FloatRange(min=1), default=1024.0, show_default=True,
              help="Memory the kept photos may use.")  # fmt: skip
@click.option("--concurrency", type=click.IntRange(min=1), default=2, show_default=True,
              help="Edits computed at once (threads, not processes).")  # fmt: skip
@click.option("--threads", type=click.IntRange(min=1), default=None,
              help="Torch threads [default: CPU count / --concurrency].")  # fmt: skip
@device_option
def serve(
    run: str, host: str, port: int, open_browser: bool, max_upload_mb: float, max_photos: int,
    max_store_mb: float, concurrency: int, threads: int | None, device: str,
) -> None:  # fmt: skip
    """Edit faces in the browser: the page and an HTTP API (docs at /docs) for the model in
    RUN (default: the shipped synthfaces64). Serves until Ctrl-C."""
    import contextlib
    import socket
    import threading
    import webbrowser

    import uvicorn

    from conceptvae.errors import ConceptVAEError
    from conceptvae.serve import ServeLimits, create_app
    from conceptvae.train import resolve_device

    try:  # a clear message now rather than uvicorn's log line later
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        with socket.socket(family, socket.SOCK_STREAM) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind((host, port))
    except OSError as e:
        raise ConceptVAEError(
            f"cannot serve on {host}:{port}: {e.strerror or e}; pass another --port or --host"
        ) from None
    limits = ServeLimits(
        max_upload_bytes=int(max_upload_mb * 2**20), max_photos=max_photos,
        max_store_bytes=int(max_store_mb * 2**20), workers=concurrency,
    )  # fmt: skip
    app = create_app(run, device=resolve_device(device), limits=limits, threads=threads)
    shown = f"[{host}]" if ":" in host else host
    url = f"http://{'127.0.0.1' if host in ('0.0.0.0', '::') else shown}:{port}/"
    click.echo(f"conceptvae serve: {run} at {url} (API docs: {url}docs); Ctrl-C stops")
    if open_browser:
        threading.Timer(1.0, webbrowser.open, [url]).start()
    with contextlib.suppress(KeyboardInterrupt):  # uvicorn stops cleanly, then passes it on
        uvicorn.run(app, host=host, port=port, log_level="warning")
    click.echo("stopped")


# Keep this last: ``python -m conceptvae.cli`` runs the module top to bottom, so every command
# must be registered before it (tests/test_cli_fast.py checks all three entry points agree).
if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
