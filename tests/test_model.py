import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file
from torch.distributions import Normal, kl_divergence

from benchmarks.reference_vae import ReferenceVAE
from conceptvae.errors import ModelError
from conceptvae.model import (
    ConceptVAE,
    DiagonalGaussian,
    VAEConfig,
    region_weight_map,
)

TINY = dict(image_size=64, latent_dim=8, channels=(8, 8, 16, 16))


def tiny(**kw) -> ConceptVAE:
    torch.manual_seed(0)
    return ConceptVAE(VAEConfig(**{**TINY, **kw}))


def smooth_images(n: int, size: int = 64, seed: int = 0) -> torch.Tensor:
    """Blurry colour blobs: structured images a tiny VAE can learn quickly."""
    g = torch.Generator().manual_seed(seed)
    low = torch.rand(n, 3, 4, 4, generator=g)
    return torch.nn.functional.interpolate(low, size=(size, size), mode="bilinear")


def constant_model(**kw) -> ConceptVAE:
    """Posterior N(0, I) and a mid-grey reconstruction for every input."""
    m = tiny(**kw)
    with torch.no_grad():
        for layer in (m.encoder.head, m.decoder.out):
            layer.weight.zero_()
            layer.bias.zero_()
    return m


# -- the posterior ----------------------------------------------------------------------------


def test_kl_matches_closed_form_and_torch_distributions():
    rng = np.random.default_rng(0)
    mu = rng.normal(size=(5, 7)).astype(np.float32)
    logvar = rng.normal(scale=1.5, size=(5, 7)).astype(np.float32)
    q = DiagonalGaussian(torch.from_numpy(mu), torch.from_numpy(logvar))

    by_hand = -0.5 * np.sum(1 + logvar - np.exp(logvar) - mu**2, axis=1)  # (B,)
    np.testing.assert_allclose(q.kl().numpy(), by_hand, rtol=1e-5)
    ref = kl_divergence(Normal(q.mean, q.std), Normal(0.0, 1.0)).sum(-1)
    torch.testing.assert_close(q.kl(), ref, rtol=1e-5, atol=1e-5)
    assert q.kl_per_dim().shape == (5, 7)
    torch.testing.assert_close(q.kl_per_dim().sum(-1), q.kl())
    assert (q.kl() >= 0).all()


def test_kl_is_zero_at_the_prior_and_finite_for_extreme_logvar():
    q = DiagonalGaussian(torch.zeros(2, 4), torch.zeros(2, 4))
    assert torch.equal(q.kl(), torch.zeros(2))
    wild = DiagonalGaussian(torch.zeros(1, 3), torch.tensor([[-1e4, 0.0, 1e4]]))
    assert torch.isfinite(wild.kl()).all()
    assert torch.isfinite(wild.sample()).all()
    assert (wild.std > 0).all()


def test_reparameterised_samples_have_the_posterior_mean_and_std():
    mu = torch.tensor([[2.0, -1.0, 0.5]])
    logvar = torch.tensor([[0.0, np.log(4.0), np.log(0.01)]], dtype=torch.float32)
    q = DiagonalGaussian(mu.expand(40000, 3), logvar.expand(40000, 3))
    z = q.sample(torch.Generator().manual_seed(0))
    torch.testing.assert_close(z.mean(0), mu[0], atol=0.03, rtol=0)
    torch.testing.assert_close(z.std(0), torch.tensor([1.0, 2.0, 0.1]), atol=0.02, rtol=0.02)
    # z is mean + std * eps, not mean + std + eps (whose mean would be shifted by std)
    assert (z.mean(0) - mu[0]).abs().max() < 0.05
    again = q.sample(torch.Generator().manual_seed(0))
    assert torch.equal(z, again)


# -- shapes and ranges ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "size, channels", [(64, (8, 8, 16, 16)), (128, (4, 8, 8, 16, 16)), (256, (4, 4, 8, 8, 16, 16))]
)
def test_encode_decode_shapes_for_each_supported_size(size, channels):
    m = tiny(image_size=size, channels=channels).eval()
    x = torch.rand(2, 3, size, size)
    q = m.encode(x)
    assert q.mean.shape == q.logvar.shape == (2, 8)
    assert m.decode(q.mean).shape == (2, 3, size, size)
    assert m.reconstruct(x).shape == (2, 3, size, size)


def test_unsupported_image_size_says_which_sizes_work():
    with pytest.raises(ModelError, match="64, 128, 256"):
        VAEConfig(image_size=100)
    with pytest.raises(ModelError, match="channels needs 5 entries"):
        VAEConfig(image_size=128, channels=(8, 8, 16, 16))


def test_decode_output_stays_in_unit_range_even_for_huge_latents():
    m = tiny().eval()
    z = torch.randn(4, 8, generator=torch.Generator().manual_seed(1)) * 1000
    y = m.decode(z)
    assert y.min() >= 0 and y.max() <= 1
    s = m.sample(3, temperature=0.0)
    assert torch.equal(s[0], s[1])  # temperature 0 decodes the prior mean


def test_inputs_of_the_wrong_shape_or_type_are_refused():
    m = tiny()
    with pytest.raises(ValueError, match=r"\(B, 3, 64, 64\)"):
        m.encode(torch.rand(1, 3, 32, 32))
    with pytest.raises(ValueError, match="float"):
        m.encode(torch.zeros(1, 3, 64, 64, dtype=torch.uint8))
    with pytest.raises(ValueError, match=r"\(B, 8\)"):
        m.decode(torch.zeros(2, 5))


def test_channels_last_gives_the_same_outputs():
    m = tiny().eval()
    x = torch.rand(3, 3, 64, 64)
    ref = m.reconstruct(x)
    m = m.to(memory_format=torch.channels_last)
    out = m.reconstruct(x.contiguous(memory_format=torch.channels_last))
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-4)


# -- config -----------------------------------------------------------------------------------


def test_config_round_trips_through_json_and_rejects_unknown_keys():
    c = VAEConfig(**TINY, beta=0.3, attr_dim=4)
    d = json.loads(json.dumps(c.to_dict()))
    assert VAEConfig.from_dict(d) == c
    assert VAEConfig.from_dict(d).config_hash() == c.config_hash()
    assert VAEConfig(**TINY, beta=0.4).config_hash() != c.config_hash()
    with pytest.raises(ModelError, match="unknown config key.*dropout"):
        VAEConfig.from_dict({**d, "dropout": 0.1})
    with pytest.raises(ModelError, match="norm"):
        VAEConfig(norm="layer")


# -- save / load ------------------------------------------------------------------------------


def trained_a_little() -> ConceptVAE:
    m = tiny()
    m.train()
    with torch.no_grad():
        for seed in range(3):  # move the BatchNorm running statistics off their defaults
            m(smooth_images(8, seed=seed))
    return m.eval()


def test_save_load_round_trip_is_bit_identical(tmp_path):
    m = trained_a_little()
    x = smooth_images(4, seed=9)
    m.save_pretrained(tmp_path / "model")
    assert sorted(p.name for p in (tmp_path / "model").iterdir()) == [
        "config.json",
        "model.safetensors",
    ]
    assert "encoder.body.0.1.running_mean" in load_file(tmp_path / "model" / "model.safetensors")
    back = ConceptVAE.from_pretrained(tmp_path / "model")
    assert not back.training
    assert back.config == m.config
    z = m.encode_mean(x)
    assert torch.equal(back.encode_mean(x), z)
    assert torch.equal(back.decode(z), m.decode(z))


def test_channels_last_model_saves_and_loads(tmp_path):
    m = trained_a_little().to(memory_format=torch.channels_last)
    m.save_pretrained(tmp_path)
    back = ConceptVAE.from_pretrained(tmp_path)
    x = smooth_images(2)
    torch.testing.assert_close(back.reconstruct(x), m.reconstruct(x), atol=1e-5, rtol=1e-4)


def test_missing_model_folder_and_files_are_named(tmp_path):
    with pytest.raises(ModelError, match="does not exist"):
        ConceptVAE.from_pretrained(tmp_path / "nope")
    tiny().save_pretrained(tmp_path / "a")
    (tmp_path / "a" / "model.safetensors").unlink()
    with pytest.raises(ModelError, match="model.safetensors is missing"):
        ConceptVAE.from_pretrained(tmp_path / "a")
    tiny().save_pretrained(tmp_path / "b")
    (tmp_path / "b" / "config.json").unlink()
    with pytest.raises(ModelError, match="config.json is missing"):
        ConceptVAE.from_pretrained(tmp_path / "b")


def test_truncated_or_corrupt_weights_are_reported(tmp_path):
    tiny().save_pretrained(tmp_path)
    f = tmp_path / "model.safetensors"
    data = f.read_bytes()
    f.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelError, match="model.safetensors is truncated"):
        ConceptVAE.from_pretrained(tmp_path)
    f.write_bytes(b"\x00" * 100)
    with pytest.raises(ModelError, match="model.safetensors is truncated or not a safetensors"):
        ConceptVAE.from_pretrained(tmp_path)


def test_weights_of_another_config_name_the_tensor_and_both_shapes(tmp_path):
    tiny(latent_dim=16).save_pretrained(tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    cfg["latent_dim"] = 8
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ModelError, match=r"encoder.head.weight has shape \(32, 256\).*\(16, 256\)"):
        ConceptVAE.from_pretrained(tmp_path)


def test_weights_with_missing_tensors_are_refused(tmp_path):
    tiny().save_pretrained(tmp_path)
    f = tmp_path / "model.safetensors"
    state = load_file(f)
    del state["decoder.out.bias"]
    save_file(state, f)
    with pytest.raises(ModelError, match="missing tensors decoder.out.bias"):
        ConceptVAE.from_pretrained(tmp_path)


def test_config_with_unknown_key_or_bad_json_is_refused(tmp_path):
    tiny().save_pretrained(tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**cfg, "use_attention": True}))
    with pytest.raises(ModelError, match="config.json: unknown config key.*use_attention"):
        ConceptVAE.from_pretrained(tmp_path)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ModelError, match="config.json is not readable JSON"):
        ConceptVAE.from_pretrained(tmp_path)


# -- the loss ---------------------------------------------------------------------------------


def test_region_weight_map_peaks_at_the_points_and_has_mean_one():
    pts = torch.tensor([[20.0, 24.0], [44.0, 24.0], [32.0, 48.0]])  # (x, y)
    w = region_weight_map(64, pts, sigma=3.0, strength=4.0)
    assert w.shape == (1, 1, 64, 64)
    assert w.mean().item() == pytest.approx(1.0, abs=1e-5)
    for x, y in pts.long().tolist():
        patch = w[0, 0, y - 2 : y + 3, x - 2 : x + 3]
        assert patch[2, 2] == patch.max()  # a local peak exactly at (x, y), not (y, x)
    assert w[0, 0, 24, 20] > 3 * w[0, 0, 0, 0]
    batched = region_weight_map(64, pts.expand(5, 3, 2), sigma=3.0, strength=4.0)
    assert batched.shape == (5, 1, 64, 64)
    torch.testing.assert_close(batched[3], w[0])
    flat = region_weight_map(64, pts, sigma=3.0, strength=0.0)
    torch.testing.assert_close(flat, torch.ones(1, 1, 64, 64))


def test_landmark_weight_follows_the_config():
    pts = np.array([[20.0, 24.0], [44.0, 24.0]], dtype=np.float32)
    assert tiny(region_weight=0.0).landmark_weight(pts) is None  # region_weight 0: no map
    w = tiny(region_weight=3.0, region_sigma=0.05).landmark_weight(pts)
    torch.testing.assert_close(w, region_weight_map(64, pts, sigma=3.2, strength=3.0))


@pytest.mark.parametrize("structure_loss", ["none", "laplacian", "ssim", "focal"])
def test_weight_map_makes_errors_at_the_eyes_cost_more(structure_loss):
    # grey 0.5 for every input; each term alone (the pixel term only for "none")
    alone = dict(pixel_weight=0.0, structure_weight=1.0) if structure_loss != "none" else {}
    m = constant_model(structure_loss=structure_loss, **alone)
    eyes = torch.tensor([[18.0, 26.0], [42.0, 26.0]])  # (x, y)
    w = region_weight_map(64, eyes, sigma=3.0, strength=8.0)
    at_eyes = torch.full((1, 3, 64, 64), 0.5)
    at_eyes[..., 24:29, 16:21] = 1.0  # a white blot on the left eye
    in_corner = torch.full((1, 3, 64, 64), 0.5)
    in_corner[..., 40:45, 40:45] = 1.0  # the same blot towards the lower-right corner
    g = torch.Generator().manual_seed(0)
    plain = [m.loss(x, generator=g)["loss"].item() for x in (at_eyes, in_corner)]
    assert plain[0] == pytest.approx(plain[1], rel=0.1)
    weighted = [m.loss(x, weight=w, generator=g)["loss"].item() for x in (at_eyes, in_corner)]
    assert weighted[0] > 2 * weighted[1]


def test_free_bits_floor_the_kl_of_each_dimension():
    m = constant_model(free_bits=0.5, beta=1.0, structure_loss="none")
    x = torch.full((2, 3, 64, 64), 0.5)
    out = m.loss(x)
    assert out["kl"].item() == 0.0  # the posterior is the prior: true KL reported
    assert out["loss"].item() == pytest.approx(out["recon"].item() + 8 * 0.5, abs=1e-4)
    with torch.no_grad():
        m.encoder.head.bias[:4] = 2.0  # four dims with KL 2 nats each, above the floor
    out = m.loss(x)
    assert out["kl"].item() == pytest.approx(8.0, rel=1e-5)
    assert out["loss"].item() == pytest.approx(out["recon"].item() + 4 * 2 + 4 * 0.5, rel=1e-4)
    out["loss"].backward()
    grad = m.encoder.head.bias.grad[:8]  # the means
    assert (grad[:4] != 0).all() and (grad[4:] == 0).all()  # floored dims are not pushed


def test_loss_reports_its_parts_and_beta_override():
    m = tiny(beta=0.5)
    x = smooth_images(4)
    g = torch.Generator().manual_seed(0)
    out = m.loss(x, generator=g)
    assert set(out) == {"loss", "recon", "kl", "mse", "kl_per_dim"}
    assert out["kl_per_dim"].shape == (8,)
    assert out["loss"].item() == pytest.approx(
        out["recon"].item() + 0.5 * out["kl"].item(), rel=1e-5
    )
    no_kl = m.loss(x, beta=0.0, generator=torch.Generator().manual_seed(0))
    assert no_kl["loss"].item() == pytest.approx(no_kl["recon"].item(), rel=1e-6)


def test_attribute_head_adds_a_bce_term_and_checks_labels():
    m = tiny(attr_dim=3)
    x = smooth_images(4)
    labels = torch.tensor([[1, 0, 1], [0, 0, 1], [1, 1, 0], [0, 1, 0]], dtype=torch.uint8)
    out = m.loss(x, labels=labels)
    assert out["attr"].item() > 0
    with pytest.raises(ValueError, match=r"\(4, 3\)"):
        m.loss(x, labels=labels[:, :2])
    with pytest.raises(ValueError, match="no attribute head"):
        tiny().loss(x, labels=labels)
    assert m.predict_attributes(x).shape == (4, 3)


def test_training_steps_lower_the_loss_on_a_fixed_batch():
    m = tiny()
    x = smooth_images(16)
    mean_image_mse = (x - x.mean(0, keepdim=True)).square().mean().item()
    opt = torch.optim.Adam(m.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(0)
    losses = []
    for _ in range(150):
        out = m.loss(x, generator=g)
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
        losses.append(out["loss"].item())
    assert np.mean(losses[28:32]) < 0.9 * losses[0]
    assert np.mean(losses[-5:]) < 0.4 * losses[0]
    # it reconstructs each image, not just the batch average
    assert (m.eval().reconstruct(x) - x).square().mean().item() < 0.5 * mean_image_mse


def test_reference_vae_has_the_vanilla_shape_and_the_same_loss_keys():
    torch.manual_seed(0)
    ref = ReferenceVAE()
    x = torch.rand(2, 3, 64, 64)
    out = ref.loss(x)
    assert set(out) == {"loss", "recon", "kl", "mse", "kl_per_dim"}
    assert out["kl_per_dim"].shape == (128,)
    y = ref.reconstruct(x)
    assert y.shape == (2, 3, 64, 64) and y.min() >= 0 and y.max() <= 1
    assert ref.fc_mu.in_features == 512 * 2 * 2
