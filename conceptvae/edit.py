"""EditPipeline: photo -> faces -> aligned crops -> z -> z + edit -> decode -> back into the photo.

Blend modes (how the edited face goes back):

- ``auto`` (default): ``local`` when every vector of the edit has a footprint (banks made by
  ``conceptvae vectors`` have them), else ``residual``.
- ``local``: where the edit's vectors act (their footprints, :mod:`conceptvae.calibration`), the
  decoded face ``D(z')``; away from there the photo's own pixels, untouched; the residual change
  in between. Removing works as well as adding (a sharp smile or fringe of the photo cannot
  survive a blurry decoded change), and a smile does not repaint the hair.
- ``residual``: add the decoded change ``D(z') - D(z)``, warped to the photo, to the
  original pixels under a feathered face mask. The photo keeps its own detail and resolution;
  only what the edit changes moves. Strength 0 returns the photo unchanged, bit for bit.
- ``replace``: the decoded face ``D(z')`` itself, under the same mask.
- ``poisson``: ``D(z')`` blended with OpenCV's seamless cloning (gradient-domain) inside the
  mask, which hides colour differences at the seam.

In every mode, pixels outside the face mask (``local``: outside the footprint) are returned
bit-identical, and strength 0 returns the photo unchanged.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from PIL import Image

from attributes.bank import Term, VectorBank
from conceptvae.calibration import (
    combined_weight,
    crop_edit,
    footprint_weight,
    redraw_of,
    redraw_weight,
    swap_redraw,
)
from conceptvae.errors import ModelError
from conceptvae.faces import (
    AlignedFace,
    Frame,
    align_face,
    find_faces,
    photo_mask,
    warp_mask_to_photo,
    warp_to_photo,
    whole_image_face,
)
from conceptvae.hold import (
    HOLD_MARGIN,
    EditRule,
    Readers,
    held_labels_of,
    hold_margin_of,
    push_of,
    reach_of,
    reach_readings,
    redrawn,
    rule_steps,
)
from conceptvae.images import Photo, read_image
from conceptvae.model import ConceptVAE

BLENDS = ("auto", "local", "residual", "replace", "poisson")
FAR_PSNR_DB = 20.0  # a face reconstructed worse than this is far from the training data


@dataclass
class FaceLatent:
    """One face of a photo in the model's latent space.

    ``aligned``: the crop and its transforms; ``z``: (D,) posterior mean (refined if asked);
    ``recon``: (3, S, S) float in [0, 1], ``D(z)``; ``psnr``: of ``recon`` against the crop.
    """

    aligned: AlignedFace
    z: torch.Tensor
    recon: torch.Tensor
    psnr: float
    mask: np.ndarray | None = None  # (H, W) photo mask, computed on first use
    mask_feather: float | None = None  # the feather ``mask`` was made with


@dataclass
class PreparedPhoto:
    """A photo read and its faces encoded: what every edit of it starts from."""

    photo: Photo
    pixels: np.ndarray  # (H, W, 3) uint8 RGB
    faces: list[FaceLatent]


class EditPipeline:
    """Edit faces in photos with the concept vectors of a bank.

    ``vae``: a :class:`ConceptVAE`; ``bank``: its :class:`VectorBank` (checked to belong to
    this model); ``frame``: the training frame faces are aligned into (default: from the
    model's config, CelebA's 148 crop when it does not say). ``readers`` (saved beside the bank
    by ``conceptvae vectors``) and ``hold``: which labels each face keeps while it is edited
    (:mod:`conceptvae.hold`): ``"auto"`` those each vector's calibration chose to hold, where
    holding helped, by the rule it chose; ``"none"``; or label names, held firmly for every
    edit. With ``"auto"`` (or label names), an edit of one vector whose calibration chose a
    *reach* also moves each face only as far as the model needs to read the attribute clearly
    (:func:`conceptvae.hold.reach_scales`); ``"none"`` moves every face by the same step.
    """

    def __init__(
        self,
        vae: ConceptVAE,
        bank: VectorBank | None = None,
        *,
        frame: Frame | None = None,
        blend: str = "auto",
        feather: float = 0.08,
        readers: Readers | None = None,
        hold: str | Sequence[str] = "auto",
    ) -> None:
        self.vae = vae.eval()
        self.model_hash = vae.model_hash()
        if bank is not None:
            bank.check_model(self.model_hash)  # a bank for another model: say so
            if bank.dim != vae.config.latent_dim:
                raise ModelError(
                    f"the vectors have {bank.dim} dimensions but the model's latent has "
                    f"{vae.config.latent_dim}: run `conceptvae vectors` for this model"
                )
        self.bank = bank
        crop = vae.config.crop if vae.config.crop is not None else 148.0
        self.frame = frame or Frame(image_size=vae.config.image_size, crop=crop)
        _check_blend(blend)
        self.blend = blend
        self.feather = feather
        self._warned: set[str] = set()  # flagged vectors already warned about
        self.readers = readers
        self.hold = _check_hold(hold, readers)
        self._unedited_cache: tuple[bytes, torch.Tensor] | None = None  # see _unedited
        self._reach_cache: tuple[tuple[Any, ...], torch.Tensor] | None = None  # _reach_readings

    @classmethod
    def from_pretrained(
        cls, run: str | os.PathLike, device: str | torch.device = "cpu", **kwargs: Any
    ) -> EditPipeline:
        """The model in ``run`` (a folder, or a shipped model's name such as
        ``"synthfaces64"``) and its vectors (``conceptvae vectors``), if it has any."""
        from conceptvae.pretrained import resolve

        run = resolve(run)
        vae = ConceptVAE.from_pretrained(run, device=device)
        bank = VectorBank.load(run) if (Path(run) / "vectors.json").is_file() else None
        kwargs.setdefault("readers", Readers.load(run))
        return cls(vae, bank, **kwargs)

    # -- encoding --------------------------------------------------------------------------

    def prepare(
        self,
        photo: str | os.PathLike | Photo | Image.Image,
        *,
        face: int | str = 0,
        align: bool = True,
        refine: int = 0,
    ) -> PreparedPhoto:
        """Read ``photo``, find and align its faces (``face``: index, largest first, or
        ``"all"``; ``align=False`` takes the whole image as an aligned face) and encode them."""
        p = _as_photo(photo)
        pixels = np.asarray(p.image, dtype=np.uint8)
        if align:
            faces = find_faces(pixels, face, source=p.path)
            aligned = [align_face(pixels, f, self.frame) for f in faces]
        else:
            aligned = [whole_image_face(pixels, self.frame)]
        out = self.encode_faces(aligned, refine=refine)
        for i, f in enumerate(out):
            if f.psnr < FAR_PSNR_DB:
                which = f" (face {i})" if len(out) > 1 else ""
                warnings.warn(
                    f"{p.path}{which} is far from the training data (reconstruction PSNR "
                    f"{f.psnr:.1f} dB < {FAR_PSNR_DB:.0f}): the edit may look wrong; try "
                    "--refine 50, or check that a face was found (--no-align for crops)",
                    stacklevel=2,
                )
        return PreparedPhoto(p, pixels, out)

    def encode_faces(self, aligned: list[AlignedFace], refine: int = 0) -> list[FaceLatent]:
        """Encode aligned faces (and reconstruct them, with each one's PSNR); no warnings, so
        that callers such as ``conceptvae serve`` report far-from-data faces their own way."""
        crops = torch.stack([_crop_tensor(a.crop) for a in aligned]).to(self.vae.device)
        z = self.encode(crops, refine=refine)
        with torch.inference_mode():
            recon = self.vae.decode(z).float().clamp(0, 1)
        mse = (recon - crops).square().flatten(1).mean(1).clamp_min(1e-10)
        psnr = (10 * torch.log10(1.0 / mse)).tolist()
        return [
            FaceLatent(a, z[i].detach(), recon[i].cpu(), psnr[i]) for i, a in enumerate(aligned)
        ]

    def encode(self, crops: torch.Tensor, refine: int = 0, lr: float = 0.05) -> torch.Tensor:
        """Posterior means of (B, 3, S, S) crops in [0, 1]; with ``refine`` > 0, that many Adam
        steps on z lowering the crops' reconstruction error (a better fit for faces unlike the
        training data, at some cost in how well the vectors apply)."""
        with torch.inference_mode():
            z = self.vae.encode(crops).mean.float()
        if refine <= 0:
            return z
        z = z.clone().requires_grad_(True)
        opt = torch.optim.Adam([z], lr=lr)
        for p in self.vae.parameters():
            p.requires_grad_(False)
        try:
            for _ in range(refine):
                loss = (self.vae.decode(z) - crops).square().mean()
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
        finally:
            for p in self.vae.parameters():
                p.requires_grad_(True)
        return z.detach()

    # -- editing ---------------------------------------------------------------------------

    def _swaps(self, terms: list[Term], strength: float, z: Any) -> dict[int, str]:
        """Term index -> the rival whose swap adds that term's attribute to the face of latent
        ``z`` (:meth:`VectorBank.rivals`): only plain terms that add (coefficient times
        ``strength`` above 0), and only where the bank has that swap."""
        if z is None or self.bank is None or not self.bank.swaps:
            return {}
        swaps = self.bank.swaps
        out = {}
        for i, t in enumerate(terms):
            if t.coef * strength > 0 and not t.condition and t.name in swaps:
                rival = self.bank.rivals(t.name, z)[0]
                if rival is not None:
                    out[i] = rival
        return out

    def _plan(self, edit: str, strength: float, z: Any) -> tuple[list[Term], dict[int, str]]:
        """The edit's terms (parsed once) and which of them the face of latent ``z`` swaps."""
        if self.bank is None:
            raise ModelError(
                "this model has no concept vectors yet: run `conceptvae vectors RUN DATA` first"
            )
        terms = self.bank.parse(edit)
        return terms, self._swaps(terms, float(strength), z)

    def direction(self, edit: str, strength: float = 1.0, z: Any = None) -> torch.Tensor:
        """The latent step of an edit expression (``"Smiling+1.5"``, ``"Smiling@Male"``) at
        ``strength``; a negative strength removes, with the bank's removal scale. With ``z``
        (the face's latent, (D,)), adding a label of an exclusive group to a face that shows
        another one of it uses the bank's swap (``attributes.groups``), where it has one."""
        return self._step(*self._plan(edit, strength, z), float(strength))

    def _step(self, terms: list[Term], swapped: dict[int, str], strength: float) -> torch.Tensor:
        v = self.bank.vector(terms, strength)
        if swapped:
            rest = [t for i, t in enumerate(terms) if i not in swapped]
            v = self.bank.vector(rest, strength) if rest else np.zeros_like(v)
            swaps = self.bank.swaps
            for i, r in swapped.items():
                v = v + strength * terms[i].coef * swaps[terms[i].name][r]
        flagged = self._bank_state()["problems"]
        for t in terms:
            if flagged.get(t.name) and t.name not in self._warned:
                self._warned.add(t.name)
                warnings.warn(
                    f"the vector {t.name} was flagged when it was fitted: "
                    f"{'; '.join(flagged[t.name])}",
                    stacklevel=3,
                )
        return torch.from_numpy(np.ascontiguousarray(v)).to(self.vae.device)

    def _bank_state(self) -> dict[str, Any]:
        """What every edit reads from the bank's metadata (its flagged ``problems`` and its
        ``calibration`` records) and the footprint weights made so far, read once per bank:
        ``VectorBank.metadata`` is a deep copy, far too slow to take once per face."""
        if getattr(self, "_state_of", None) is not self.bank:  # a new bank: read it again
            meta = self.bank.metadata
            self._state = {
                "problems": meta.get("problems") or {},
                "calibration": meta.get("calibration") or {},
                "weights": {},
            }
            self._state_of = self.bank
        return self._state

    def _term_weights(self, terms: list[Term], swapped: dict[int, str]) -> list[torch.Tensor]:
        """Each term's footprint weight: its swap's where it is swapped and the swap has one."""
        weights = self._bank_state()["weights"]
        out = []
        for i, t in enumerate(terms):
            own = self.bank.swap_footprint(t.name, swapped[i]) if i in swapped else None
            key = t.name if own is None else (t.name, swapped[i])
            if key not in weights:
                fp = self.bank.footprints[t.name] if own is None else own
                weights[key] = footprint_weight(fp)
            out.append(weights[key])
        return out

    def _has_footprints(self, terms: list[Term]) -> bool:
        fps = self.bank.footprints
        return bool(terms) and all(t.name in fps for t in terms)

    def footprint(self, edit: str, strength: float = 1.0, z: Any = None) -> torch.Tensor | None:
        """(S, S) weight in [0, 1] of where the edit acts (the union of its vectors'
        footprints), or None when a vector of it has no footprint. ``z``: as
        :meth:`direction`'s (a swapped term acts where its swap does)."""
        if self.bank is None:
            return None
        return self._footprint(*self._plan(edit, strength, z), float(strength))

    def _footprint(
        self, terms: list[Term], swapped: dict[int, str], strength: float
    ) -> torch.Tensor | None:
        if not self._has_footprints(terms):
            return None
        ws = self._term_weights(terms, swapped)
        return combined_weight([(t.coef * strength, w) for t, w in zip(terms, ws)])

    def redraw(self, edit: str, strength: float = 1.0, z: Any = None) -> torch.Tensor | None:
        """(S, S) map of how much of the decoded face the ``local`` blend shows where the
        edit acts: each vector's direction redraws as much as calibration chose for it
        (:func:`conceptvae.calibration.redraw_weight`). None: all of it, as banks calibrated
        before the redraw was chosen do. ``z``: as :meth:`direction`'s."""
        if self.bank is None:
            return None
        return self._redraw(*self._plan(edit, strength, z), float(strength))

    def _redraw(
        self, terms: list[Term], swapped: dict[int, str], strength: float
    ) -> torch.Tensor | None:
        if not self._has_footprints(terms):
            return None
        ws = self._term_weights(terms, swapped)
        cal = self._bank_state()["calibration"]
        coefs = [t.coef * strength for t in terms]
        gs = [
            swap_redraw(cal, t.name, swapped[i])
            if i in swapped
            else redraw_of(cal, t.name, "add" if c >= 0 else "remove")
            for i, (t, c) in enumerate(zip(terms, coefs))
        ]
        if all(g == 1.0 for g in gs):
            return None
        return redraw_weight([(c, g, w) for c, g, w in zip(coefs, gs, ws)])

    def held(self, edit: str, strength: float = 1.0) -> list[str]:
        """The labels a face keeps under ``edit`` at ``strength`` (see ``hold``): none of the
        edit's own, and none without readers."""
        if self.bank is None:
            return []
        return self._held(self.bank.parse(edit), float(strength))[0]

    def _held(self, terms: list[Term], strength: float) -> tuple[list[str], float | None]:
        """The labels held and the rule (:func:`conceptvae.hold.hold_steps`' ``margin``):
        auto, those each term's calibration chose, by the firmest rule among them; labels the
        user names are held firmly."""
        if self.readers is None or self.hold == "none":
            return [], None
        own = {t.name for t in terms}
        if self.hold != "auto":
            return [n for n in self.hold if n not in own], HOLD_MARGIN
        cal = self._bank_state()["calibration"]
        found: list[str] = []
        margins: list[float] = []
        for t in terms:
            d = "add" if t.coef * strength >= 0 else "remove"
            found += [n for n in held_labels_of(cal, t.name, d) if n not in found]
            if (m := hold_margin_of(cal, t.name, d)) is not None:
                margins.append(m)
        return [n for n in found if n not in own], max(margins, default=None)

    def _pushes(self, terms: list[Term], strength: float) -> list[float]:
        """Per term, how many times its step a held edit takes (:func:`push_of`; 1 for
        none); empty when no term has a push, or the labels held are not calibration's."""
        if self.hold != "auto":
            return []
        cal = self._bank_state()["calibration"]
        out = [push_of(cal, t.name, "add" if t.coef * strength >= 0 else "remove") for t in terms]
        return out if any(p != 1.0 for p in out) else []

    def _rule(self, terms: list[Term], strength: float) -> EditRule:
        """How a face's edit moves it (:class:`conceptvae.hold.EditRule`): the labels
        :meth:`held`, by their rule; for an edit of one vector also the reach its calibration
        chose (where that label has a reader) and, where its calibration's labels are held,
        its push. An edit of several vectors has no reach, and each term's push lengthens its
        own coefficient (:meth:`_pushes`)."""
        held, margin = self._held(terms, strength)
        if len(terms) != 1 or self.readers is None or self.hold == "none":
            return EditRule(held=tuple(held), margin=margin)
        t = terms[0]
        direction = "add" if t.coef * strength >= 0 else "remove"
        reach = reach_of(self._bank_state()["calibration"], t.name, direction)
        pushes = self._pushes(terms, strength) if held else []
        return EditRule(
            reach=reach if t.name in self.readers.names else None,
            push=pushes[0] if pushes else 1.0,
            held=tuple(held),
            margin=margin,
        )

    def _reach_readings(
        self, terms: list[Term], swapped: dict[int, str], strength: float, step: torch.Tensor,
        z: torch.Tensor, face: FaceLatent | None = None, weight: torch.Tensor | None = None,
        redraw: torch.Tensor | None = None,
    ) -> torch.Tensor:  # fmt: skip
        """How clearly the model reads an edit of one vector's label on the face of latent
        ``z`` (1, D) part of the way (:func:`conceptvae.hold.reach_readings`), read at the
        face's strength-1 step, so a sweep scales every strength alike, on the face's crop as
        the local blend shows it with ``weight`` and ``redraw`` (without ``face`` or
        ``weight``, on the model's drawing). Kept for the last face and edit asked: a sweep
        reads it once."""
        t = terms[0]
        adding = t.coef * strength >= 0
        seen = None
        if face is not None and weight is not None:  # the photo's crop, as the edit shows it
            seen = partial(crop_edit, _crop_tensor(face.aligned.crop)[None],
                           face.recon[None].float().cpu(), blend="local", weight=weight.cpu(),
                           redraw=1.0 if redraw is None else redraw.cpu())  # fmt: skip
        key = (z.numpy().tobytes(), t.name, adding, swapped.get(0), seen is None)
        cached = self._reach_cache
        if cached is None or cached[0] != key:
            unit = step.float().cpu() / abs(strength * t.coef)
            readings = reach_readings(self.vae, z, unit[None], self.readers, t.name, adding,
                                      seen=seen)  # fmt: skip
            cached = (key, readings)
            self._reach_cache = cached
        return cached[1]

    def _unedited(self, z: torch.Tensor) -> torch.Tensor:
        """``E(D(z))`` of a face, kept for the last face asked: a sweep or a GIF of one face
        at many strengths reads the unedited face once, not once per strength."""
        key = z.numpy().tobytes()
        cached = self._unedited_cache  # one read: a server's threads may share the pipeline
        if cached is None or cached[0] != key:
            cached = (key, redrawn(self.vae, z))
            self._unedited_cache = cached
        return cached[1]

    def face_edit(
        self, edit: str, strength: float, z: Any, face: FaceLatent | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """``(step, weight, redraw)`` of ``edit`` at ``strength`` for the face of latent ``z``:
        :meth:`direction`, :meth:`footprint` and :meth:`redraw` with that face's swaps; the
        step stops at the face's reach where the vector has one, read on the face's crop as the
        local blend shows it (``face``: its :class:`FaceLatent`; without it, on the model's
        drawing), and holds the face's :meth:`held` labels
        (:func:`conceptvae.hold.hold_steps`), lengthened first where its calibration chose a
        push (:func:`conceptvae.hold.push_of`). The edit is parsed, and the face's swaps found,
        once for all three."""
        strength = float(strength)
        terms, swapped = self._plan(edit, strength, z)
        rule = self._rule(terms, strength) if z is not None else EditRule()
        # an edit of several vectors: each held term's push lengthens its own coefficient
        pushes = self._pushes(terms, strength) if rule.held and len(terms) > 1 else []
        pushed = [replace(t, coef=t.coef * p) for t, p in zip(terms, pushes)] or terms
        step = self._step(pushed, swapped, strength)
        weight = self._footprint(terms, swapped, strength)
        redraw = self._redraw(terms, swapped, strength)
        if rule.plain or not bool(step.abs().max() > 0):
            return step, weight, redraw
        zz = torch.as_tensor(z).reshape(1, -1).float().cpu()
        readings = None
        if rule.reach is not None:
            readings = self._reach_readings(terms, swapped, strength, step, zz, face, weight,
                                            redraw)  # fmt: skip
        step = rule_steps(self.vae, zz, step[None], self.readers, [t.name for t in terms],
                          terms[0].coef * strength >= 0, rule, readings=readings,
                          unedited=self._unedited(zz) if rule.held else None)[0]  # fmt: skip
        return step.to(self.vae.device), weight, redraw

    @torch.inference_mode()
    def render(
        self,
        prepared: PreparedPhoto,
        steps: list[torch.Tensor],
        blend: str | None = None,
        weight: torch.Tensor | list[torch.Tensor | None] | None = None,
        redraw: torch.Tensor | list[torch.Tensor | None] | None = None,
    ) -> np.ndarray:
        """Apply one latent step per face (``steps[i]`` (D,)) and put the faces back:
        (H, W, 3) uint8. ``weight``: the edit's footprint weight (S, S) (:meth:`footprint`),
        which the ``local`` blend needs and ``auto`` chooses it by; ``redraw``: the local
        blend's redraw map (:meth:`redraw`; None: redraw fully). Either may be a list, one
        per face (an edit with swaps acts differently on different faces)."""
        n = len(steps)
        weights = list(weight) if isinstance(weight, list) else [weight] * n
        redraws = list(redraw) if isinstance(redraw, list) else [redraw] * n
        blend = blend or self.blend
        _check_blend(blend)
        if blend == "auto":
            blend = "local" if all(w is not None for w in weights) else "residual"
        if blend == "local" and any(w is None for w in weights):
            raise ModelError(
                "the local blend needs the footprints of the edit's vectors, and this bank has "
                "none for them: run `conceptvae vectors` again, or use --blend residual"
            )
        out = prepared.pixels
        for f, step, w, r in zip(prepared.faces, steps, weights, redraws):
            if not bool(step.abs().max() > 0):
                continue  # strength 0: nothing changes, bit for bit
            new = self.vae.decode((f.z + step)[None]).float().clamp(0, 1)[0].cpu()
            if blend == "local":
                out = self._local(out, f, new, w, r)
            else:
                out = self._blend(out, f, new, blend)
        return out

    def _local(
        self,
        pixels: np.ndarray,
        f: FaceLatent,
        new: torch.Tensor,
        weight: torch.Tensor,
        redraw: torch.Tensor | None = None,
    ):
        """x + w * ((D(z') - D(z)) + r * (D(z) - x)) in the photo, w the warped footprint
        weight and r the warped redraw map (w itself when None):
        :func:`conceptvae.calibration.crop_edit`'s ``local`` blend at full size."""
        shape = pixels.shape
        w = warp_mask_to_photo(weight.cpu().numpy().astype(np.float32), f.aligned, shape)
        r = w
        if redraw is not None:
            r = warp_mask_to_photo(redraw.cpu().numpy().astype(np.float32), f.aligned, shape)
        inside = w > 0
        if not inside.any():
            return pixels
        delta = warp_to_photo((new - f.recon).permute(1, 2, 0).numpy() * 255.0, f.aligned, shape)
        recon = warp_to_photo(f.recon.permute(1, 2, 0).numpy() * 255.0, f.aligned, shape)
        x = pixels[inside].astype(np.float32)
        wi = w[inside][:, None]
        value = x + wi * (delta[inside] + r[inside][:, None] * (recon[inside] - x))
        out = pixels.copy()
        out[inside] = np.clip(np.rint(value), 0, 255).astype(np.uint8)
        return out

    def _blend(self, pixels: np.ndarray, f: FaceLatent, new: torch.Tensor, blend: str):
        shape = pixels.shape
        if f.mask is None or f.mask.shape != shape[:2] or self.feather != f.mask_feather:
            # (H, W), exactly 0 off the face; the same for every strength of a sweep
            f.mask, f.mask_feather = photo_mask(f.aligned, shape, self.feather), self.feather
        mask = f.mask
        inside = mask > 0
        if not inside.any():
            return pixels
        if blend == "residual":
            delta = (new - f.recon).permute(1, 2, 0).numpy() * 255.0  # (S, S, 3)
            moved = warp_to_photo(delta, f.aligned, shape)  # (H, W, 3)
            value = pixels[inside].astype(np.float32) + moved[inside] * mask[inside][:, None]
        else:
            face = new.permute(1, 2, 0).numpy() * 255.0
            warped = warp_to_photo(face, f.aligned, shape)
            if blend == "poisson":
                warped = _seamless(pixels, warped, mask)
            m = mask[inside][:, None]
            value = pixels[inside].astype(np.float32) * (1 - m) + warped[inside] * m
        out = pixels.copy()
        out[inside] = np.clip(np.rint(value), 0, 255).astype(np.uint8)
        return out

    def __call__(
        self,
        photo: str | os.PathLike | Photo | Image.Image | PreparedPhoto,
        edit: str,
        strength: float = 1.0,
        *,
        blend: str | None = None,
        face: int | str = 0,
        align: bool = True,
        refine: int = 0,
    ) -> Image.Image:
        """``photo`` with ``edit`` (an expression of the bank) applied at ``strength`` to the
        chosen faces: a PIL image of the photo's own size."""
        prepared = self._prepared(photo, face, align, refine)
        self.direction(edit, float(strength))  # a bad expression fails before any face
        parts = [self.face_edit(edit, float(strength), f.z, f) for f in prepared.faces]
        steps, weights, redraws = ([p[k] for p in parts] for k in range(3))
        return Image.fromarray(self.render(prepared, steps, blend, weights, redraws))

    def sweep(
        self,
        photo: str | os.PathLike | Photo | Image.Image | PreparedPhoto,
        edit: str,
        strengths: list[float] | np.ndarray,
        *,
        blend: str | None = None,
        face: int | str = 0,
        align: bool = True,
        refine: int = 0,
    ) -> list[Image.Image]:
        """The photo edited at each strength (one encoding, one decode per strength)."""
        prepared = self._prepared(photo, face, align, refine)
        self.direction(edit)  # a bad expression fails before any face
        out = []
        for s in strengths:
            parts = [self.face_edit(edit, float(s), f.z, f) for f in prepared.faces]
            steps, weights, redraws = ([p[k] for p in parts] for k in range(3))
            out.append(Image.fromarray(self.render(prepared, steps, blend, weights, redraws)))
        return out

    def _prepared(self, photo, face, align, refine) -> PreparedPhoto:
        if isinstance(photo, PreparedPhoto):
            return photo
        return self.prepare(photo, face=face, align=align, refine=refine)

    # -- crops (for grids) -----------------------------------------------------------------

    @torch.inference_mode()
    def crops(self, face: FaceLatent, zs: torch.Tensor, residual: bool = True) -> torch.Tensor:
        """Decoded crops (N, 3, S, S) in [0, 1] for latents ``zs`` (N, D) of one face; with
        ``residual`` the change from ``D(z)`` is added to the face's own crop."""
        out = self.vae.decode(zs.to(self.vae.device)).float().clamp(0, 1).cpu()
        if residual:
            out = (_crop_tensor(face.aligned.crop) + out - face.recon).clamp(0, 1)
        return out


def _check_hold(hold: str | Sequence[str], readers: Readers | None) -> str | list[str]:
    """``"auto"``, ``"none"`` or a list of label names the readers know."""
    if isinstance(hold, str) and hold in ("auto", "none"):
        return hold
    names = [h.strip() for h in hold.split(",")] if isinstance(hold, str) else list(hold)
    names = [n for n in names if n]
    if not names:
        raise ModelError("hold: give auto, none, or label names such as Male,Eyeglasses")
    if readers is None:
        raise ModelError(
            f"holding {', '.join(names)} needs the labels' readers, and this model has none "
            "(readers.safetensors): run `conceptvae vectors RUN DATA --holds-only`"
        )
    # the readers' spelling; an unknown label is an error with the closest known names
    return [readers.names[i] for i in readers.columns(names)]


def _check_blend(blend: str) -> None:
    if blend not in BLENDS:
        raise ValueError(f"unknown blend {blend!r}: use one of {', '.join(BLENDS)}")


def _as_photo(photo: Any) -> Photo:
    if isinstance(photo, Photo):
        return photo
    if isinstance(photo, Image.Image):
        from conceptvae.images import to_rgb

        return Photo(to_rgb(photo), Path("<image>"), "PNG", None, None)
    return read_image(photo)


def _crop_tensor(crop: np.ndarray) -> torch.Tensor:
    """(S, S, 3) uint8 -> (3, S, S) float32 in [0, 1]."""
    return torch.from_numpy(np.ascontiguousarray(crop.transpose(2, 0, 1))).float() / 255.0


def _seamless(pixels: np.ndarray, warped: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Gradient-domain blend of ``warped`` into ``pixels`` inside ``mask`` (cv2.seamlessClone);
    returns float32 (H, W, 3). Falls back to ``warped`` when the mask touches the border,
    which seamlessClone cannot handle."""
    binary = (mask > 0.5).astype(np.uint8) * 255
    ys, xs = np.nonzero(binary)
    h, w = binary.shape
    if ys.size == 0 or ys.min() == 0 or xs.min() == 0 or ys.max() == h - 1 or xs.max() == w - 1:
        return warped
    src = np.clip(np.rint(warped), 0, 255).astype(np.uint8)
    # seamlessClone pastes the mask's bounding box centred at ``center``: the box's centre
    center = ((int(xs.min()) + int(xs.max()) + 1) // 2, (int(ys.min()) + int(ys.max()) + 1) // 2)
    bgr = cv2.seamlessClone(
        src[..., ::-1].copy(), pixels[..., ::-1].copy(), binary, center, cv2.NORMAL_CLONE
    )
    return bgr[..., ::-1].astype(np.float32)
