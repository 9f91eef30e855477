"""Next-pixel modelling (visbench.next_pixel): causality, quantisation and the bits-per-pixel arithmetic."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from visbench import next_pixel as npx

CAUSAL_MODELS = ("seq_gated_cnn_tiny", "seq_ssm_causal_tiny", "seq_attn_causal_tiny")
SMALL = dict(img_size=8, embed_dim=16, depth=2)


def test_quantize_maps_intensity_bands_to_levels() -> None:
    images = np.array([[[0, 15, 16, 255]]], dtype=np.uint8)
    assert npx.quantize(images, 16).tolist() == [[0, 0, 1, 15]]
    assert npx.quantize(images, 2).tolist() == [[0, 0, 0, 1]]


def test_quantize_rejects_float_images() -> None:
    with pytest.raises(ValueError, match="uint8"):
        npx.quantize(np.zeros((1, 4, 4), dtype=np.float32))


def test_inputs_are_the_targets_shifted_by_one_with_a_start_token() -> None:
    targets = torch.tensor([[3, 0, 15, 6]])
    inputs = npx.shifted_inputs(targets, 16, (2, 2))
    assert inputs.shape == (1, 1, 2, 2)
    assert inputs.flatten().tolist() == pytest.approx([npx.START_VALUE, 3 / 15, 0.0, 1.0])


@pytest.mark.parametrize("name", CAUSAL_MODELS)
def test_prediction_for_a_pixel_ignores_that_pixel_and_every_later_one(name: str) -> None:
    torch.manual_seed(0)
    model = npx.build_next_pixel_model(name, 16, **SMALL).eval()
    targets = torch.randint(0, 16, (2, 64))
    t = 37
    changed = targets.clone()
    changed[:, t:] = torch.randint(0, 16, (2, 64 - t))
    with torch.no_grad():
        before = npx.next_pixel_logits(model, targets, 16)
        after = npx.next_pixel_logits(model, changed, 16)
    assert before.shape == (2, 64, 16)
    torch.testing.assert_close(after[:, : t + 1], before[:, : t + 1], atol=1e-5, rtol=1e-5)
    assert not torch.allclose(after[:, t + 1 :], before[:, t + 1 :])  # later pixels do see pixel t


@pytest.mark.parametrize("name", ["seq_ssm_bidir_tiny", "seq_attn_tiny", "gated_cnn_tiny"])
def test_a_model_that_sees_the_future_is_refused(name: str) -> None:
    with pytest.raises(ValueError, match="causal"):
        npx.build_next_pixel_model(name)


def test_bits_per_pixel_by_hand() -> None:
    # Two pixels, two levels. Pixel 0: p(target=0) = e^2/(e^2+1); pixel 1: uniform, p = 1/2.
    logits = torch.tensor([[[2.0, 0.0], [0.0, 0.0]]])
    targets = torch.tensor([[0, 1]])
    p0 = math.exp(2) / (math.exp(2) + 1)
    expected = (-math.log2(p0) - math.log2(0.5)) / 2
    assert float(npx.bits_per_pixel(logits, targets)) == pytest.approx(expected, rel=1e-6)


def test_a_uniform_model_costs_log2_levels_bits() -> None:
    logits = torch.zeros(3, 10, 16)
    targets = torch.randint(0, 16, (3, 10))
    assert float(npx.bits_per_pixel(logits, targets)) == pytest.approx(4.0, rel=1e-6)


def test_batches_follow_the_seed_and_cover_the_set_each_pass() -> None:
    targets = torch.arange(10).unsqueeze(1)
    first = [b.flatten().tolist() for b in npx.train_batches(targets, 5, 4, seed=3)]
    again = [b.flatten().tolist() for b in npx.train_batches(targets, 5, 4, seed=3)]
    other = [b.flatten().tolist() for b in npx.train_batches(targets, 5, 4, seed=4)]
    assert first == again and first != other
    assert sorted(first[0] + first[1]) == list(range(10)) == sorted(first[2] + first[3])


def test_training_lowers_bits_per_pixel_below_the_uniform_cost() -> None:
    rng = np.random.default_rng(0)
    # Images with structure: a bright square on a dark background, so the next pixel is predictable.
    images = np.zeros((64, 8, 8), dtype=np.uint8)
    for i in range(64):
        r, c = rng.integers(0, 5, size=2)
        images[i, r : r + 3, c : c + 3] = 255
    cfg = npx.NextPixelConfig("seq_ssm_causal_tiny", steps=120, batch_size=16, lr=5e-3, model_kwargs=SMALL)
    out = npx.train_next_pixel(cfg, images[:48], images[48:])
    assert out["bits_per_pixel"] < 0.25 * math.log2(cfg.levels), out  # a uniform guess costs 4 bits
    assert out["train_seconds"] > 0
