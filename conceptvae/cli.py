"""The ``conceptvae`` command line: thin wrappers over the Python API, same argument names.

Errors a user can cause (``ConceptVAEError``) and OS errors on their files are printed as one
line on stderr with a non-zero exit status; set ``CONCEPTVAE_DEBUG=1`` to see the traceback.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

import click
import numpy as np

from conceptvae.errors import ConceptVAEError, DataError

PARTITION_NAMES = ("train", "valid", "test")


class _Group(click.Group):
    """A click group that turns user errors into one-line messages instead of tracebacks."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except ConceptVAEError as e:
            if os.environ.get("CONCEPTVAE_DEBUG"):
                raise
            raise click.ClickException(str(e)) from None
        except OSError as e:
            if os.environ.get("CONCEPTVAE_DEBUG"):
                raise
            where = f": {e.filename}" if e.filename else ""
            raise click.ClickException(f"{e.strerror or e}{where}") from None
        except KeyboardInterrupt:
            click.echo("interrupted; run the same command again to resume", err=True)
            ctx.exit(130)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="conceptvae")
def cli() -> None:
    """Edit face photos with concept vectors in the latent space of a convolutional VAE."""


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point."""
    cli.main(args=argv, prog_name="conceptvae")


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
@click.option(
    "--n", "n", type=click.IntRange(min=1), default=20000, show_default=True, help="Images."
)
@click.option(
    "--seed",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    help="Same seed, same bytes.",
)
@click.option(
    "--workers", type=click.IntRange(min=1), default=2, show_default=True, help="Processes."
)
@click.option("--force", is_flag=True, help="Replace OUT if it exists and is not empty.")
def synth(out: str, n: int, seed: int, workers: int, force: bool) -> None:
    """Render N SynthFaces into OUT in CelebA's official layout."""
    from conceptvae.data.synth import write_synthfaces

    summary = write_synthfaces(out, n=n, seed=seed, workers=workers, force=force, progress=True)
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
@click.option(
    "--workers", type=click.IntRange(min=0), default=0, show_default=True, help="0: all cores."
)
@click.option("--labels", type=click.Path(dir_okay=False), help="Labels CSV for an image folder.")
@click.option("--positive", type=click.Path(file_okay=False), help="Folder of positive images.")
@click.option("--negative", type=click.Path(file_okay=False), help="Folder of negative images.")
@click.option("--name", default="Attribute", show_default=True, help="Attribute name for pairs.")
@click.option("--force", is_flag=True, help="Replace OUT if it exists and is not empty.")
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
        click.echo(json.dumps(summary, indent=2))
    else:
        click.echo(format_summary(summary))


def describe(ds) -> dict[str, Any]:
    """A JSON-able summary of a LabelledImages or a PreparedCache."""
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


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
