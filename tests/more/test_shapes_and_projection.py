"""Closed forms, bad sizes, and the D2S projection."""
import pytest
import torch

from more import lora_params, monarch_dense, monarch_shape, project_dense, project_lora


def test_closed_form_sizes():
    shape = monarch_shape(4096, 11008, blk_r=4, nblocks=4)
    assert shape.w1_shape == (4, 4, 1024) and shape.w2_shape == (4, 2752, 4)
    assert shape.trainable_params == 4 * 4 * (1024 + 2752) == lora_params(4096, 11008, 4)
    assert shape.max_rank == 16
    # blk_sz gives nblocks = ceil(in / blk_sz)
    assert monarch_shape(768, 768, blk_r=4, blk_sz=100).nblocks == 8
    # padding: about r * (in + out) parameters, a little more when sizes do not divide
    padded = monarch_shape(50, 70, blk_r=3, nblocks=4)
    assert (padded.in_blksz, padded.out_blksz) == (13, 18)
    assert padded.trainable_params == 4 * 3 * (13 + 18) > lora_params(50, 70, 3)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(in_features=8, out_features=8, blk_r=2, nblocks=16), r"nblocks=16 is larger than its 8 input features"),
        (dict(in_features=64, out_features=8, blk_r=2, nblocks=16), r"nblocks=16 is larger than its 8 output"),
        (dict(in_features=64, out_features=64, blk_r=0, nblocks=4), r"blk_r must be at least 1, got blk_r=0"),
        (dict(in_features=64, out_features=64, blk_r=2), r"exactly one of nblocks or blk_sz"),
        (dict(in_features=64, out_features=64, blk_r=2, nblocks=4, blk_sz=16), r"exactly one of nblocks or blk_sz"),
        (dict(in_features=90, out_features=64, blk_r=2, nblocks=16), r"leave 1 empty. Use nblocks <= 15"),
    ],
)
def test_bad_sizes_name_the_layer_and_the_fix(kwargs, match):
    with pytest.raises(ValueError, match=match) as err:
        monarch_shape(**kwargs, layer_name="encoder.layer.0.query")
    if "exactly one" not in match:
        assert "encoder.layer.0.query" in str(err.value)


@pytest.mark.parametrize("dims", [(64, 64, 4, 4), (48, 80, 4, 3), (80, 48, 4, 3), (50, 70, 4, 3), (12, 20, 4, 5)])
def test_projection_recovers_a_monarch_matrix(dims):
    """Rectangular cases pin the orientation: projecting the transpose would not even fit."""
    in_features, out_features, nblocks, blk_r = dims
    shape = monarch_shape(in_features, out_features, blk_r, nblocks)
    w1 = torch.randn(shape.w1_shape, dtype=torch.float64)
    w2 = torch.randn(shape.w2_shape, dtype=torch.float64)
    dense = monarch_dense(w1, w2, in_features, out_features)
    p1, p2 = project_dense(dense, nblocks=nblocks, blk_r=blk_r)
    assert p1.shape == w1.shape and p2.shape == w2.shape
    torch.testing.assert_close(monarch_dense(p1, p2, in_features, out_features), dense)


def test_projection_is_nearest():
    """No perturbation of the projected factors gets closer to the dense target."""
    target = torch.randn(48, 64, dtype=torch.float64)
    w1, w2 = project_dense(target, nblocks=4, blk_r=2)
    best = (monarch_dense(w1, w2, 64, 48) - target).norm()
    for _ in range(20):
        d1, d2 = 1e-3 * torch.randn_like(w1), 1e-3 * torch.randn_like(w2)
        assert (monarch_dense(w1 + d1, w2 + d2, 64, 48) - target).norm() >= best - 1e-12
    # and more blocks of rank fit it better
    w1b, w2b = project_dense(target, nblocks=4, blk_r=8)
    assert (monarch_dense(w1b, w2b, 64, 48) - target).norm() < best


def test_projection_from_lora_keeps_a_low_rank_update():
    lora_A, lora_B = torch.randn(4, 64, dtype=torch.float64), torch.randn(48, 4, dtype=torch.float64)
    # with k*r well above the LoRA rank, each block of the update is captured exactly
    w1, w2 = project_lora(lora_A, lora_B, scaling=2.0, nblocks=2, blk_r=8)
    torch.testing.assert_close(monarch_dense(w1, w2, 64, 48), 2.0 * lora_B @ lora_A)
