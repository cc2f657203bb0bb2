"""The steered method: a vector orthogonal to each free label's *pixel* change pulled back
through the decoder, on a planted model where a latent that no label names paints the pixels
of a free label, so the latent normals alone cannot see the leak."""

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

from attributes.errors import VectorError
from attributes.estimators import AttributeVectors
from conceptvae.vectors import decoder_directions, fit_method, make_estimator

S = 8
LEFT = (slice(0, 8), slice(0, 4))  # where T shows
RIGHT = (slice(0, 8), slice(4, 8))  # where F shows


class TwoRegionVAE(nn.Module):
    """decode: the left half is 0.5 + 0.1 z0 (T), the right half 0.5 + 0.1 (z1 + z2): latent 1
    is F, and latent 2 (no label's, but it comes with T in the data) paints F's pixels too."""

    def __init__(self):
        super().__init__()
        self.config = SimpleNamespace(image_size=S, latent_dim=4, crop=None)

    @property
    def device(self):
        return torch.device("cpu")

    def decode(self, z):
        z = z.float()
        left = (0.5 + 0.1 * z[:, 0])[:, None, None, None].expand(-1, 3, S, S // 2)
        right = (0.5 + 0.1 * (z[:, 1] + z[:, 2]))[:, None, None, None].expand(-1, 3, S, S // 2)
        return torch.cat([left, right], dim=3)


def planted(n=4000, seed=0):
    rng = np.random.default_rng(seed)
    t = rng.random(n) < 0.5
    f = rng.random(n) < 0.5  # free: independent of T
    z = 0.3 * rng.standard_normal((n, 4))
    z[:, 0] += 2.0 * t
    z[:, 1] += 2.0 * f
    z[:, 2] += 1.0 * t  # the nuisance: T's mean difference carries it
    y = np.stack([t, f], 1).astype(np.uint8)
    return z.astype(np.float32), y, ["T", "F"]


def right_change(vae, z, v):
    """How much a step v changes F's half of the image, on average (0.1 per latent unit)."""
    zt = torch.from_numpy(z[:200])
    step = torch.as_tensor(np.asarray(v, np.float32))
    d = vae.decode(zt + step) - vae.decode(zt)
    return float(d[:, :, RIGHT[0], RIGHT[1]].mean()), float(d[:, :, LEFT[0], LEFT[1]].mean())


def test_decoder_directions_see_the_latent_that_paints_a_label():
    vae = TwoRegionVAE()
    z, y, names = planted()
    dirs = decoder_directions(vae, z, y, names)
    assert set(dirs) == {"T", "F"}
    # F's pixels are painted by latents 1 and 2 alike: its pull-back is (0, 1, 1, 0) / sqrt 2
    np.testing.assert_allclose(dirs["F"], [0, 2**-0.5, 2**-0.5, 0], atol=0.02)
    assert np.linalg.norm(dirs["T"]) == pytest.approx(1.0)


def test_steered_keeps_the_free_labels_pixels_where_orthogonal_does_not():
    vae = TwoRegionVAE()
    z, y, names = planted()
    orth = fit_method(vae, "orthogonal", z, y, names, ["T"]).vector("T")
    steered = fit_method(vae, "steered", z, y, names, ["T"]).vector("T")
    # orthogonal: F's normal is latent 1, so the nuisance on latent 2 stays and paints F's half
    right, left = right_change(vae, z, orth)
    assert right > 0.08 and left > 0.15
    # steered: F's half is left alone, T's half changes as much as before
    right, left = right_change(vae, z, steered)
    assert abs(right) < 0.01
    assert left == pytest.approx(right_change(vae, z, orth)[1], rel=0.05)


def test_directions_are_checked():
    z, y, names = planted(n=500)
    with pytest.raises(VectorError, match="only used by method='orthogonal'"):
        AttributeVectors("mean", directions={"F": np.ones(4)}).fit(z, y, names)
    with pytest.raises(VectorError, match=r"directions\['F'\] has shape \(3,\).*D=4"):
        AttributeVectors("orthogonal", directions={"F": np.ones(3)}).fit(z, y, names)
    with pytest.raises(VectorError, match="unknown attribute 'Smile' in directions"):
        AttributeVectors("orthogonal", directions={"Smile": np.ones(4)}).fit(z, y, names)
    with pytest.raises(VectorError, match="NaN"):
        AttributeVectors("orthogonal", directions={"F": np.full(4, np.nan)}).fit(z, y, names)
    # without directions, steered is the orthogonal method
    est = make_estimator("steered", ["T"])
    assert est.method == "orthogonal" and est.directions is None
