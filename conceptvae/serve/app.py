"""The editor's HTTP side: a FastAPI app over :class:`~conceptvae.edit.EditPipeline`.

A photo is read, its faces detected, aligned and encoded **once**, on upload, and kept in a
bounded store under an unguessable id; every slider move is then one decode, warp and blend.
Two things make that move cheap: edits are rendered only in the face's region of the photo
(the rectangle its aligned crop covers; everything outside it is the photo's own pixels in
every blend, so it is copied, not computed), and previews are rendered from a copy of the photo
scaled to at most ``preview_side`` pixels (the same latents, the affines scaled), so a slider
costs the same on a 40-megapixel photo as on a 1-megapixel one. Full-size results go through
:func:`~conceptvae.images.write_image`, which keeps the photo's format, EXIF and colour profile,
exactly as ``conceptvae edit`` writes them.

Concurrency: FastAPI runs the (synchronous) handlers in a thread pool. The store is guarded by a
lock; the pipeline's shared parts are only read while serving (footprint weights are computed at
start, the flagged-vector warnings are reported in the response instead of through the
pipeline's warn-once set), each request renders into its own arrays, ``refine`` (which toggles
the model's ``requires_grad``) runs under a lock, and at most ``workers`` decodes run at once.
"""

from __future__ import annotations

import dataclasses
import io
import json
import logging
import math
import os
import re
import secrets
import tempfile
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

import cv2
import numpy as np
import torch
from fastapi import FastAPI, File, Form, Query, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from PIL import Image
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from attributes.bank import Term
from attributes.errors import VectorError
from conceptvae.edit import BLENDS, FAR_PSNR_DB, EditPipeline, FaceLatent, PreparedPhoto
from conceptvae.errors import ConceptVAEError, DataError
from conceptvae.faces import AlignedFace, align_face, find_faces, invert_affine, whole_image_face
from conceptvae.images import IMAGE_EXTENSIONS, Photo, read_image, write_image

__all__ = ["DEFAULT_RUN", "EditorService", "PhotoStore", "ServeError", "ServeLimits", "create_app"]

DEFAULT_RUN = "synthfaces64"
STATIC = Path(__file__).resolve().parent / "static"
MAX_STRENGTH = 10.0  # |coefficient| of one vector in an edit; the sliders go to 3
MAX_EXPRESSION = 500  # characters
MAX_GIF_FRAMES = 32
_ID = re.compile(r"[A-Za-z0-9_-]{22}")
_OUTPUT_EXT = {"JPEG": ".jpg", "PNG": ".png", "WEBP": ".webp", "BMP": ".bmp", "TIFF": ".tif"}
_MEDIA = {
    ".jpg": "image/jpeg",
    ".png": "image/png",
    ".webp": "image/webp",
    ".bmp": "image/bmp",
    ".tif": "image/tiff",
    ".gif": "image/gif",
}
log = logging.getLogger("conceptvae.serve")


class ServeError(Exception):
    """An error with an HTTP status: the message is one line meant for the caller."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class ServeLimits:
    """What one server accepts and keeps.

    ``max_upload_bytes``: largest upload (bigger requests are refused before they are read);
    ``max_photos`` / ``max_store_bytes``: the photo store's bounds (least recently used photos
    are dropped past either); ``max_refine``: most ``refine`` steps a request may ask for;
    ``preview_side``: longer side of preview images; ``workers``: decodes computed at once.
    """

    max_upload_bytes: int = 25 * 2**20
    max_photos: int = 32
    max_store_bytes: int = 1024 * 2**20
    max_refine: int = 200
    preview_side: int = 640
    workers: int = 2

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"ServeLimits.{f.name} must be a positive int, got {v!r}")


# ------------------------------------------------------------------------------ the photo store


@dataclass
class StoredPhoto:
    """An uploaded photo, ready to edit. Arrays are read-only once stored."""

    id: str
    name: str  # a display name (the upload's file name, cleaned); never a path
    photo: Photo  # format, EXIF and colour profile of the upload (its pixels are ``pixels``)
    pixels: np.ndarray  # (H, W, 3) uint8
    preview: np.ndarray  # (h, w, 3) uint8, longer side <= preview_side
    aligned: list[AlignedFace]
    latents: dict[int, list[FaceLatent]]  # refine steps -> the faces encoded with them
    align: bool
    nbytes: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)


class PhotoStore:
    """Photos by id, least recently used dropped past ``max_photos`` or ``max_bytes``."""

    def __init__(self, max_photos: int, max_bytes: int) -> None:
        self.max_photos = max_photos
        self.max_bytes = max_bytes
        self._items: OrderedDict[str, StoredPhoto] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def add(self, entry: StoredPhoto) -> list[str]:
        """Keep ``entry``; returns the ids dropped to make room."""
        if entry.nbytes > self.max_bytes:
            raise ServeError(
                413,
                f"{entry.name} needs {entry.nbytes / 2**20:.0f} MB in memory, more than the "
                f"server keeps ({self.max_bytes / 2**20:.0f} MB): downscale it first",
            )
        dropped = []
        with self._lock:
            self._items[entry.id] = entry
            self._bytes += entry.nbytes
            while len(self._items) > self.max_photos or self._bytes > self.max_bytes:
                old_id, old = self._items.popitem(last=False)
                self._bytes -= old.nbytes
                dropped.append(old_id)
        return dropped

    def get(self, photo_id: str) -> StoredPhoto:
        with self._lock:
            entry = self._items.get(photo_id)
            if entry is not None:
                self._items.move_to_end(photo_id)
                return entry
        shown = repr(photo_id) if _ID.fullmatch(photo_id or "") else "with this id"
        raise ServeError(
            404,
            f"no photo {shown} here: it was never uploaded or was dropped to make room (the "
            f"server keeps the {self.max_photos} most recently used photos, at most "
            f"{self.max_bytes / 2**20:.0f} MB): upload it again",
        )

    def remove(self, photo_id: str) -> bool:
        with self._lock:
            entry = self._items.pop(photo_id, None)
            if entry is not None:
                self._bytes -= entry.nbytes
            return entry is not None

    def stats(self) -> dict[str, int]:
        with self._lock:
            return {"photos": len(self._items), "bytes": self._bytes}


# ------------------------------------------------------------------------------ geometry


def _view(aligned: AlignedFace, sx: float, sy: float, x0: int = 0, y0: int = 0) -> AlignedFace:
    """``aligned`` for the photo resized by (``sx``, ``sy``) (pixel centres kept, as
    ``cv2.resize`` does) and then cut at (``x0``, ``y0``)."""
    # view pixel p -> photo pixel x = (p + offset + 0.5) / s - 0.5
    to_photo = np.array(
        [[1 / sx, 0.0, (x0 + 0.5) / sx - 0.5], [0.0, 1 / sy, (y0 + 0.5) / sy - 0.5]]
    )
    A = aligned.matrix[:, :2]
    M = np.hstack([A @ to_photo[:, :2], (A @ to_photo[:, 2] + aligned.matrix[:, 2])[:, None]])
    scale, shift = np.array([sx, sy]), np.array([x0, y0])

    def move(p: np.ndarray) -> np.ndarray:
        return (np.asarray(p, np.float64) + 0.5) * scale - 0.5 - shift

    f = aligned.face
    bx, by = move(np.array(f.box[:2], np.float64))
    box = (int(round(bx)), int(round(by)), int(round(f.box[2] * sx)), int(round(f.box[3] * sy)))
    face = dataclasses.replace(f, box=box, eyes=move(f.eyes), mouth=move(f.mouth))
    return dataclasses.replace(aligned, matrix=M, inverse=invert_affine(M), face=face)


def _region(aligned: AlignedFace, shape: tuple[int, ...]) -> tuple[int, int, int, int]:
    """(x0, y0, x1, y1): the photo pixels the aligned crop covers, with a margin for bilinear
    sampling; outside it every blend leaves the photo as it is."""
    S = aligned.frame.image_size
    e = S - 0.5  # the crop's outer edge, in its pixel-centre coordinates
    corners = np.array([[-0.5, -0.5, 1], [e, -0.5, 1], [e, e, 1], [-0.5, e, 1]])
    pts = corners @ aligned.inverse.T
    H, W = shape[:2]
    x0 = max(0, int(math.floor(pts[:, 0].min())) - 2)
    y0 = max(0, int(math.floor(pts[:, 1].min())) - 2)
    x1 = min(W, int(math.ceil(pts[:, 0].max())) + 3)
    y1 = min(H, int(math.ceil(pts[:, 1].max())) + 3)
    return x0, y0, max(x0, x1), max(y0, y1)


def _read_only(a: np.ndarray) -> np.ndarray:
    a = np.ascontiguousarray(a)
    a.setflags(write=False)
    return a


def _display_name(filename: str | None) -> str:
    """The upload's file name for messages and downloads: its last component, printable ASCII
    letters, digits and ``._-`` only, at most 80 characters. Never used as a path."""
    base = re.split(r"[\\/]", filename or "")[-1]
    clean = re.sub(r"[^A-Za-z0-9._-]+", "_", base).strip("._")[:80]
    return clean or "upload"


# ------------------------------------------------------------------------------ the service


class EditorService:
    """The editor without HTTP: upload, edit, sweep, list vectors (what the routes call).

    ``pipe``: the :class:`EditPipeline` to edit with (it must have a bank); ``limits``: a
    :class:`ServeLimits`; ``name``: the model's name for :meth:`health`.
    """

    def __init__(
        self, pipe: EditPipeline, limits: ServeLimits | None = None, name: str = ""
    ) -> None:
        if pipe.bank is None:
            raise ConceptVAEError(
                "this model has no concept vectors yet: run `conceptvae vectors RUN DATA` first"
            )
        self.pipe = pipe
        self.bank = pipe.bank
        self.limits = limits or ServeLimits()
        self.name = name
        self.store = PhotoStore(self.limits.max_photos, self.limits.max_store_bytes)
        self._slots = threading.BoundedSemaphore(self.limits.workers)
        self._refine_lock = threading.Lock()
        self._footprint_lock = threading.Lock()
        meta = self.bank.metadata  # a deep copy: read once
        self._problems: dict[str, list[str]] = meta.get("problems", {}) or {}
        self._vectors = self._describe_vectors(meta)
        if self.bank.footprints:  # compute every footprint weight now, not under load
            self.pipe.footprint(" ".join(f"+{_quote_name(n)}" for n in self.bank.footprints))

    # -- vectors -----------------------------------------------------------------------------

    def _describe_vectors(self, meta: dict[str, Any]) -> dict[str, Any]:
        calibration = meta.get("calibration", {}) or {}
        per_vector = meta.get("vectors", {}) or {}
        fps = self.bank.footprints
        out = []
        for name in self.bank.names:
            cal = calibration.get(name) or {}
            info: dict[str, Any] = {
                "name": name,
                "footprint": name in fps,
                "method": (per_vector.get(name) or {}).get("method", meta.get("method")),
                "counts": (meta.get("counts") or {}).get(name),
                "problems": list(self._problems.get(name, [])),
                "scale": cal.get("scale"),
                "recommended": None,
            }
            if cal:
                # a calibrated vector: +1 adds the attribute to `target` of held-out faces
                # (or as far as it gets), -1 removes it; the 90% strengths for a lighter touch
                info["recommended"] = {"add": 1.0, "remove": -1.0}
                for side in ("add", "remove"):
                    rec = cal.get(side) or {}
                    info[side] = {
                        "success_at_1": rec.get("success_at_1"),
                        "strength_90": rec.get("strength_90"),
                        "reached": rec.get("reached"),
                    }
                info["target"] = cal.get("target")
            out.append(info)
        return {
            "model": self.name,
            "model_hash": self.pipe.model_hash,
            "method": meta.get("method"),
            "label_source": meta.get("label_source"),
            "blends": list(BLENDS),
            "vectors": out,
        }

    def vectors(self) -> dict[str, Any]:
        return self._vectors

    def health(self) -> dict[str, Any]:
        s = self.store.stats()
        return {
            "status": "ok",
            "model": self.name,
            "vectors": len(self.bank),
            "photos": s["photos"],
            "store_bytes": s["bytes"],
            "limits": dataclasses.asdict(self.limits),
        }

    # -- photos in ----------------------------------------------------------------------------

    def upload(self, data: bytes, filename: str | None = None, align: bool = True) -> dict:
        """Read ``data`` (an image file's bytes), find and encode its faces, keep it."""
        name = _display_name(filename)
        cap = self.limits.max_upload_bytes
        if len(data) > cap:
            raise ServeError(413, _too_big(len(data), cap))
        suffix = Path(name).suffix.lower()
        suffix = suffix if suffix in IMAGE_EXTENSIONS else ""
        with tempfile.TemporaryDirectory(prefix="conceptvae-serve-") as d:
            path = Path(d) / f"upload{suffix}"  # our own name: the client's never reaches disk
            path.write_bytes(data)
            try:
                photo = read_image(path)
            except DataError as e:
                raise DataError(str(e).replace(str(path), name)) from None
        return self._register(photo, name, align)

    def random_face(self, seed: int | None = None, temperature: float = 0.8) -> dict:
        """A face drawn from the model's prior (z ~ N(0, temperature^2 I)), kept as a photo."""
        if seed is None:
            seed = secrets.randbelow(2**31)
        g = torch.Generator().manual_seed(int(seed))
        z = torch.randn(1, self.pipe.vae.config.latent_dim, generator=g) * float(temperature)
        with self._slots, torch.inference_mode():
            x = self.pipe.vae.decode(z.to(self.pipe.vae.device)).float().clamp(0, 1)[0].cpu()
        a = np.rint(x.permute(1, 2, 0).numpy() * 255).astype(np.uint8)
        side = max(256, a.shape[0])
        im = Image.fromarray(a).resize((side, side), Image.Resampling.LANCZOS)
        return self._register(Photo(im, Path("random.png"), "PNG"), f"random-{seed}.png", False)

    def synth_face(self, seed: int | None = None) -> dict:
        """A freshly rendered SynthFace (2x, detected like a photo), kept as a photo."""
        from conceptvae.data.synth import render_face, sample_params

        if seed is None:
            seed = secrets.randbelow(2**31)
        img, _ = render_face(sample_params(int(seed), 0, 1))
        img = cv2.resize(img, (img.shape[1] * 2, img.shape[0] * 2), interpolation=cv2.INTER_CUBIC)
        photo = Photo(Image.fromarray(img), Path("synthface.png"), "PNG")
        try:
            return self._register(photo, f"synthface-{seed}.png", True)
        except DataError:  # the cascades missed it: it is an aligned face anyway
            return self._register(photo, f"synthface-{seed}.png", False)

    def _register(self, photo: Photo, name: str, align: bool) -> dict:
        pixels = np.asarray(photo.image, dtype=np.uint8)
        H, W = pixels.shape[:2]
        with self._slots:
            if align:
                try:
                    faces = find_faces(pixels, "all", source=name)
                except DataError as e:
                    raise DataError(str(e).replace("pass --no-align", "send align=false")) from None
                aligned = [align_face(pixels, f, self.pipe.frame) for f in faces]
            else:
                aligned = [whole_image_face(pixels, self.pipe.frame)]
            latents = self.pipe.encode_faces(aligned)
        s = min(1.0, self.limits.preview_side / max(H, W))
        size = (max(1, round(W * s)), max(1, round(H * s)))
        preview = pixels if s == 1.0 else cv2.resize(pixels, size, interpolation=cv2.INTER_AREA)
        meta = dataclasses.replace(photo, image=Image.new("RGB", (1, 1)))  # pixels live below
        nbytes = pixels.nbytes + (preview.nbytes if preview is not pixels else 0)
        nbytes += len(meta.exif or b"") + len(meta.icc_profile or b"") + 64 * 1024 * len(aligned)
        entry = StoredPhoto(
            id=secrets.token_urlsafe(16),
            name=name,
            photo=meta,
            pixels=_read_only(pixels),
            preview=_read_only(preview),
            aligned=aligned,
            latents={0: latents},
            align=align,
            nbytes=nbytes,
        )
        self.store.add(entry)
        return self.info(entry)

    def info(self, entry: StoredPhoto) -> dict:
        faces = []
        for i, f in enumerate(entry.latents[0]):
            warn = []
            if f.psnr < FAR_PSNR_DB:
                which = f" (face {i})" if len(entry.latents[0]) > 1 else ""
                warn.append(
                    f"{entry.name}{which} is far from the training data (reconstruction PSNR "
                    f"{f.psnr:.1f} dB < {FAR_PSNR_DB:.0f}): the edit may look wrong; try refine "
                    "50, or check that a face was found (align=false for crops)"
                )
            x, y, w, h = f.aligned.face.box
            faces.append(
                {
                    "index": i,
                    "box": [int(x), int(y), int(w), int(h)],
                    "eyes": np.round(f.aligned.face.eyes, 2).tolist(),
                    "psnr": round(float(f.psnr), 2),
                    "far": bool(f.psnr < FAR_PSNR_DB),
                    "warnings": warn,
                }
            )
        H, W = entry.pixels.shape[:2]
        return {
            "id": entry.id,
            "name": entry.name,
            "width": W,
            "height": H,
            "format": entry.photo.format,
            "preview": {"width": entry.preview.shape[1], "height": entry.preview.shape[0]},
            "align": entry.align,
            "faces": faces,
        }

    # -- edits ------------------------------------------------------------------------------

    def terms(
        self, edit: str | None = None, strength: float = 1.0, strengths: dict | None = None
    ) -> list[Term]:
        """The edit as terms: the expression ``edit`` times ``strength``, plus one term per
        ``strengths`` entry (name -> strength). Zero terms dropped. VectorError on a bad name
        or expression (with the bank's did-you-mean), ServeError for out-of-range values."""
        if not math.isfinite(strength):
            raise ServeError(422, f"strength must be a finite number, got {strength!r}")
        out: list[Term] = []
        if edit is not None and edit.strip():
            if len(edit) > MAX_EXPRESSION:
                raise ServeError(422, f"the expression is longer than {MAX_EXPRESSION} characters")
            out += [Term(t.coef * strength, t.name, t.condition) for t in self.bank.parse(edit)]
        for name, value in (strengths or {}).items():
            out.append(Term(float(value), self.bank.canonical(str(name)), ()))
        for t in out:
            if not math.isfinite(t.coef) or abs(t.coef) > MAX_STRENGTH:
                raise ServeError(
                    422,
                    f"the strength of {t.name} is {t.coef:g}: use a number between "
                    f"-{MAX_STRENGTH:g} and {MAX_STRENGTH:g}",
                )
        return [t for t in out if t.coef != 0]

    def describe(self, terms: list[Term]) -> str:
        return self.bank.describe(terms) if terms else ""

    def warnings_for(self, terms: list[Term]) -> list[str]:
        """The problems flagged when the edit's vectors were fitted (once per name)."""
        names = dict.fromkeys(t.name for t in terms)
        return [f"{n}: {'; '.join(self._problems[n])}" for n in names if self._problems.get(n)]

    def _faces(self, entry: StoredPhoto, refine: int) -> list[FaceLatent]:
        if not 0 <= refine <= self.limits.max_refine:
            raise ServeError(422, f"refine must be 0..{self.limits.max_refine}, got {refine}")
        with entry.lock:
            faces = entry.latents.get(refine)
        if faces is not None:
            return faces
        with self._refine_lock:  # refine toggles the model's requires_grad: one at a time
            faces = self.pipe.encode_faces(entry.aligned, refine=refine)
        with entry.lock:
            if len(entry.latents) > 4:  # keep 0 and the latest few settings
                for k in [k for k in entry.latents if k != 0][:-3]:
                    del entry.latents[k]
            entry.latents[refine] = faces
        return faces

    def render(
        self,
        entry: StoredPhoto,
        terms: list[Term],
        *,
        face: int = 0,
        blend: str = "auto",
        refine: int = 0,
        size: Literal["preview", "full"] = "preview",
    ) -> np.ndarray:
        """(H, W, 3) uint8: the photo (``size`` full) or its preview with ``terms`` applied
        to face ``face``; the result is a new array or the stored one (read-only, no edit)."""
        if blend not in BLENDS:
            raise ServeError(422, f"unknown blend {blend!r}: use one of {', '.join(BLENDS)}")
        faces = self._faces(entry, refine)
        if not 0 <= face < len(faces):
            n = len(faces)
            raise ServeError(
                422,
                f"face {face} is out of range: {n} face{'s' if n != 1 else ''} found in "
                f"{entry.name}; pass 0 to {n - 1} (0 is the largest)",
            )
        base = entry.pixels if size == "full" else entry.preview
        if not terms:
            return base
        text = " ".join(str(t) for t in terms)
        f = faces[face]
        with self._footprint_lock:  # the face's own step: adding a hair colour may swap
            step, weight, redraw = self.pipe.face_edit(text, 1.0, f.z, f)
        sy, sx = base.shape[0] / entry.pixels.shape[0], base.shape[1] / entry.pixels.shape[1]
        x0, y0, x1, y1 = _region(_view(f.aligned, sx, sy), base.shape)
        out = base.copy()
        if x1 <= x0 or y1 <= y0:
            return out
        local = FaceLatent(_view(f.aligned, sx, sy, x0, y0), f.z, f.recon, f.psnr)
        part = PreparedPhoto(entry.photo, base[y0:y1, x0:x1], [local])
        with self._slots:
            out[y0:y1, x0:x1] = self.pipe.render(part, [step], blend, weight, redraw)
        return out

    def encode(
        self, entry: StoredPhoto, pixels: np.ndarray, fmt: str = "auto", full: bool = False
    ) -> tuple[bytes, str, str]:
        """(bytes, media type, file name) of ``pixels``. Full size keeps the upload's format
        (a GIF becomes PNG), EXIF and colour profile via ``write_image``, as ``conceptvae
        edit`` writes; previews are a quick JPEG (or PNG) without metadata."""
        if fmt == "auto":
            ext = _OUTPUT_EXT.get(entry.photo.format, ".png") if full else ".jpg"
        else:
            ext = {"jpeg": ".jpg", "png": ".png"}.get(fmt)
            if ext is None:
                raise ServeError(422, f"unknown format {fmt!r}: use auto, jpeg or png")
        stem = Path(entry.name).stem or "photo"
        filename = f"{stem}_edited{ext}"
        if full:
            with tempfile.TemporaryDirectory(prefix="conceptvae-serve-") as d:
                path = Path(d) / f"edited{ext}"
                write_image(Image.fromarray(pixels), path, like=entry.photo)
                data = path.read_bytes()
        else:
            buf = io.BytesIO()
            if ext == ".jpg":
                Image.fromarray(pixels).save(buf, "JPEG", quality=90)
            else:
                Image.fromarray(pixels).save(buf, "PNG", compress_level=1)
            data = buf.getvalue()
        return data, _MEDIA[ext], filename

    def sweep_gif(
        self,
        entry: StoredPhoto,
        name: str,
        values: list[float] | np.ndarray,
        *,
        base: list[Term] | None = None,
        face: int = 0,
        blend: str = "auto",
        refine: int = 0,
    ) -> bytes:
        """A GIF of the preview with ``name`` at each of ``values`` (on top of ``base``, less
        any term of ``name``): the page's "GIF of this slider"."""
        from conceptvae.grids import save_gif

        name = self.bank.canonical(name)
        if not 1 <= len(values) <= MAX_GIF_FRAMES:
            raise ServeError(422, f"a sweep has 1..{MAX_GIF_FRAMES} values, got {len(values)}")
        others = [t for t in (base or []) if t.name != name]
        frames = []
        for v in values:
            terms = self.terms(None, 1.0, {name: float(v)}) + others
            frames.append(
                Image.fromarray(self.render(entry, terms, face=face, blend=blend, refine=refine))
            )
        with tempfile.TemporaryDirectory(prefix="conceptvae-serve-") as d:
            path = Path(d) / "sweep.gif"
            save_gif(frames, path)
            return path.read_bytes()


def _quote_name(name: str) -> str:
    return str(Term(1.0, name))[3:]  # "+1*NAME" -> the name, quoted when it must be


def _too_big(size: int, cap: int) -> str:
    return (
        f"the upload is {size / 2**20:.1f} MB, more than the limit of {cap / 2**20:.1f} MB: "
        "send a smaller photo (or start the server with a larger --max-upload-mb)"
    )


# ------------------------------------------------------------------------------ the app

Blend = Literal["auto", "local", "residual", "replace", "poisson"]


class EditRequest(BaseModel):
    """An edit of one face: the expression ``edit`` times ``strength``, plus ``strengths``."""

    face: int = Field(0, ge=0, description="Face number, 0 = the largest.")
    edit: str | None = Field(None, max_length=MAX_EXPRESSION, examples=["Smiling+1.5-0.5*Male"])
    strength: float = Field(1.0, description="Multiplies the expression (not `strengths`).")
    strengths: dict[str, float] = Field(
        default_factory=dict, max_length=256, examples=[{"Smiling": 1.5}]
    )
    blend: Blend = "auto"
    refine: int = Field(0, ge=0, description="Gradient steps fitting z to the face first.")
    size: Literal["preview", "full"] = "preview"
    format: Literal["auto", "jpeg", "png"] = Field(
        "auto", description="auto: JPEG for previews, the upload's own format at full size."
    )


class SweepRequest(BaseModel):
    """A GIF of one vector swept (``"Smiling=-3:3:9"``), the other strengths held."""

    face: int = Field(0, ge=0)
    sweep: str = Field(..., max_length=200, examples=["Smiling=-3:3:9"])
    edit: str | None = Field(None, max_length=MAX_EXPRESSION)
    strengths: dict[str, float] = Field(default_factory=dict, max_length=256)
    blend: Blend = "auto"
    refine: int = Field(0, ge=0)


class ParseRequest(BaseModel):
    edit: str = Field(..., max_length=MAX_EXPRESSION, examples=["Smiling+1.5-0.5*Male"])


class RandomRequest(BaseModel):
    kind: Literal["prior", "synthface"] = Field(
        "prior", description="prior: z ~ N(0, t^2 I) decoded; synthface: a rendered SynthFace."
    )
    seed: int | None = Field(None, ge=0, lt=2**31)
    temperature: float = Field(0.8, gt=0, le=2)


def create_app(
    run: str | os.PathLike | EditPipeline = DEFAULT_RUN,
    *,
    device: str | torch.device = "cpu",
    limits: ServeLimits | None = None,
    threads: int | None = None,
):
    """The editor as a FastAPI application.

    ``run``: a model folder with vectors, a shipped model's name, or an :class:`EditPipeline`;
    ``limits``: :class:`ServeLimits`; ``threads``: torch's intra-op threads for this process
    (default: the CPU count divided by ``limits.workers``, at least 1, so that concurrent edits
    do not oversubscribe the cores; torch's setting is process-wide).
    """
    limits = limits or ServeLimits()
    if isinstance(run, EditPipeline):
        pipe, name = run, "pipeline"
    else:
        pipe, name = EditPipeline.from_pretrained(run, device=device), Path(str(run)).name
    if threads is None:
        threads = max(1, (os.cpu_count() or 1) // limits.workers)
    torch.set_num_threads(int(threads))
    service = EditorService(pipe, limits, name)

    app = FastAPI(
        title="conceptvae editor",
        version=_version(),
        description="Edit the faces in photos with the concept vectors of a ConceptVAE. "
        "Upload a photo (POST /api/photos), then edit a face of it (POST /api/photos/{id}/edit).",
    )
    app.state.service = service
    app.add_middleware(_BodyLimit, upload_limit=limits.max_upload_bytes)

    def error(status: int, message: str) -> JSONResponse:
        return JSONResponse({"error": message}, status_code=status)

    @app.exception_handler(ServeError)
    async def _serve_error(request: Request, e: ServeError):
        return error(e.status, str(e))

    @app.exception_handler(ConceptVAEError)
    async def _user_error(request: Request, e: ConceptVAEError):
        return error(400, str(e))

    @app.exception_handler(VectorError)
    async def _vector_error(request: Request, e: VectorError):
        return error(400, str(e))

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, e: RequestValidationError):
        return error(422, _validation_message(e.errors()))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, e: StarletteHTTPException):
        return error(e.status_code, str(e.detail))

    @app.exception_handler(Exception)
    async def _bug(request: Request, e: Exception):
        log.exception("internal error on %s %s", request.method, request.url.path)
        return error(500, f"internal error ({type(e).__name__}): see the server's log")

    # -- the page --------------------------------------------------------------------------

    @app.get("/", include_in_schema=False)
    def page():
        return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})

    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    # -- the API ---------------------------------------------------------------------------

    @app.get("/api/health", summary="Server status and limits")
    def health() -> dict:
        return service.health()

    @app.get("/api/vectors", summary="The bank's vectors, provenance and recommended strengths")
    def vectors() -> dict:
        return service.vectors()

    @app.post("/api/parse", summary="Check an edit expression (did-you-mean on unknown names)")
    def parse(body: ParseRequest) -> dict:
        terms = service.terms(body.edit, 1.0, None)
        return {
            "edit": service.describe(terms),
            "terms": [{"name": t.name, "strength": t.coef} for t in terms],
            "warnings": service.warnings_for(terms),
        }

    @app.post("/api/photos", status_code=201, summary="Upload a photo: its id, size and faces")
    async def upload(
        file: Annotated[UploadFile, File(description="A JPEG, PNG, WebP, BMP, TIFF or GIF.")],
        align: Annotated[bool, Form(description="Detect and align faces (false: a crop).")] = True,
    ) -> dict:
        data = await file.read(limits.max_upload_bytes + 1)
        return await run_in_threadpool(service.upload, data, file.filename, align)

    @app.post("/api/random", status_code=201, summary="A random face from the model's prior")
    def random_face(body: RandomRequest | None = None) -> dict:
        body = body or RandomRequest()
        if body.kind == "synthface":
            return service.synth_face(body.seed)
        return service.random_face(body.seed, body.temperature)

    @app.get("/api/photos/{photo_id}", summary="An uploaded photo's size and faces")
    def photo_info(photo_id: str) -> dict:
        return service.info(service.store.get(photo_id))

    @app.get("/api/photos/{photo_id}/image", summary="The photo as uploaded (the 'before')")
    def photo_image(
        photo_id: str, size: Annotated[Literal["preview", "full"], Query()] = "preview"
    ) -> Response:
        entry = service.store.get(photo_id)
        pixels = entry.preview if size == "preview" else entry.pixels
        data, media, _ = service.encode(entry, pixels, "auto", full=size == "full")
        return Response(data, media_type=media)

    @app.delete("/api/photos/{photo_id}", summary="Forget a photo")
    def forget(photo_id: str) -> dict:
        if not service.store.remove(photo_id):
            service.store.get(photo_id)  # the 404 with its message
        return {"deleted": photo_id}

    @app.post(
        "/api/photos/{photo_id}/edit",
        summary="Edit a face: image bytes (PNG/JPEG, full size or preview)",
        response_class=Response,
        responses={200: {"content": {"image/jpeg": {}, "image/png": {}}}},
    )
    def edit(photo_id: str, body: EditRequest) -> Response:
        entry = service.store.get(photo_id)
        terms = service.terms(body.edit, body.strength, body.strengths)
        full = body.size == "full"
        pixels = service.render(
            entry, terms, face=body.face, blend=body.blend, refine=body.refine, size=body.size
        )
        data, media, filename = service.encode(entry, pixels, body.format, full)
        headers = {
            "X-Edit": _ascii(service.describe(terms)),
            "X-Warnings": json.dumps(service.warnings_for(terms)),
        }
        if full:
            headers["Content-Disposition"] = f'attachment; filename="{filename}"'
        return Response(data, media_type=media, headers=headers)

    @app.post(
        "/api/photos/{photo_id}/sweep",
        summary="A GIF of one vector's sweep (preview size)",
        response_class=Response,
        responses={200: {"content": {"image/gif": {}}}},
    )
    def sweep(photo_id: str, body: SweepRequest) -> Response:
        from conceptvae.grids import parse_sweep

        entry = service.store.get(photo_id)
        name, values = parse_sweep(body.sweep)
        base = service.terms(body.edit, 1.0, body.strengths)
        data = service.sweep_gif(
            entry, name, values, base=base, face=body.face, blend=body.blend, refine=body.refine
        )
        filename = f"{Path(entry.name).stem or 'photo'}_{service.bank.canonical(name)}_sweep.gif"
        return Response(
            data,
            media_type="image/gif",
            headers={"Content-Disposition": f'attachment; filename="{filename}"'},
        )

    return app


def _ascii(text: str) -> str:
    return text.encode("ascii", "backslashreplace").decode("ascii")


def _version() -> str:
    from conceptvae import __version__

    return __version__


def _validation_message(errors: list[dict[str, Any]]) -> str:
    """FastAPI's validation errors as one line: the first problem and where it is."""
    if not errors:
        return "invalid request"
    e = errors[0]
    loc = ".".join(str(p) for p in e.get("loc", ()) if p not in ("body", "query", "path"))
    msg = str(e.get("msg", "invalid value"))
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    if e.get("type") == "missing":
        return f"{loc or 'a field'} is missing{more}: see /docs for the request's fields"
    return f"{loc or 'request'}: {msg}{more}; see /docs for the request's fields"


class _TooLarge(Exception):
    pass


class _BodyLimit:
    """ASGI middleware: refuse a request body past the limit (the upload cap for
    ``/api/photos``, 1 MB elsewhere) with a one-line 413, before it is read in full."""

    def __init__(self, app, upload_limit: int) -> None:
        self.app = app
        self.upload_limit = upload_limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        upload = scope.get("path", "").rstrip("/") == "/api/photos"
        # multipart framing adds a little around the file itself
        limit = self.upload_limit + 64 * 1024 if upload else 2**20
        shown = self.upload_limit if upload else 2**20
        length = dict(scope.get("headers", [])).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > limit:
            await _send_error(send, 413, _too_big(int(length), shown))
            return
        received = 0
        started = False

        async def limited_receive():
            nonlocal received
            message = await receive()
            if message.get("type") == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise _TooLarge()
            return message

        async def tracked_send(message):
            nonlocal started
            if message.get("type") == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, tracked_send)
        except _TooLarge:
            if started:
                raise
            await _send_error(send, 413, _too_big(received, shown))


async def _send_error(send, status: int, message: str) -> None:
    body = json.dumps({"error": message}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
