"""The tensor-allocation peak: views allocate nothing, and a tensor autograd keeps for the backward stays counted."""
import torch
from torch import nn

from harness.measure.memory import peak_tensor_bytes
from more import MoReConfig

MB = 4 * 1000 * 1000  # a 1000 x 1000 float32 tensor


def test_a_view_of_a_weight_is_not_a_new_allocation():
    layer = nn.Linear(1000, 1000, bias=False).requires_grad_(False)
    x = torch.randn(2, 1000)
    peak = peak_tensor_bytes(lambda: layer(x))  # aten.t(weight) is a view of the 4 MB weight
    assert peak < MB / 100


def test_a_tensor_saved_for_backward_stays_counted_after_its_python_name_is_gone():
    x = torch.randn(1000, 1000, requires_grad=True)
    kept = []

    def step():
        y = x.exp()  # exp saves its output for the backward
        kept.append(y.sum())  # the graph (and so exp's output) outlives the name y
        del y
        kept.append(x * 3)  # allocated while exp's output is alive only inside autograd

    peak = peak_tensor_bytes(step)
    assert 2 * MB <= peak < 2 * MB + 1000


def test_more_peaks_grow_with_blk_r():
    """4 blocks x blk_r 8 saves a twice wider intermediate than blk_r 4: the peaks must differ."""
    import peft

    x = torch.randn(4096, 512)
    peaks = []
    for blk_r in (4, 8):
        torch.manual_seed(0)
        model = peft.get_peft_model(
            nn.Sequential(*[nn.Linear(512, 512), nn.ReLU(), nn.Linear(512, 512)]).requires_grad_(False),
            MoReConfig(nblocks=4, blk_r=blk_r, target_modules=["0", "2"]))
        peaks.append(peak_tensor_bytes(lambda: model(x).pow(2).mean().backward()))
    # each adapted layer saves h (tokens x k*r floats): 4096 * 16 * 4 bytes more per layer at blk_r 8
    assert peaks[1] - peaks[0] >= 2 * 4096 * 16 * 4
