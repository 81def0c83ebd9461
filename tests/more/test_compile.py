"""torch.compile on MoRe-adapted layers and models: one graph per layer, the same training as eager."""
import peft
import pytest
import torch
from transformers import AutoModel

from more import MoReConfig, MoReLinear

STEPS = 4


def adapted_layer(kernel="auto"):
    base = torch.nn.Linear(50, 70)
    model = peft.get_peft_model(torch.nn.Sequential(base), MoReConfig(nblocks=4, blk_r=3, target_modules=["0"],
                                                                      init_weights=False, kernel=kernel))
    return next(m for m in model.modules() if isinstance(m, MoReLinear))


@pytest.mark.parametrize("backend", ["aot_eager", "inductor"])
def test_adapted_layer_compiles_to_one_graph(backend):
    """fullgraph=True: the custom op's fake kernel and autograd registration hold, no graph break."""
    torch._dynamo.reset()
    layer = adapted_layer()
    x = torch.randn(3, 5, 50, requires_grad=True)
    expected = layer(x)
    expected.square().sum().backward()
    grads = [t.grad.clone() for t in (x, layer.more_blkdiag1["default"], layer.more_blkdiag2["default"])]
    for t in (x, layer.more_blkdiag1["default"], layer.more_blkdiag2["default"]):
        t.grad = None

    compiled = torch.compile(layer, fullgraph=True, backend=backend)
    got = compiled(x)
    got.square().sum().backward()
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    for t, grad in zip((x, layer.more_blkdiag1["default"], layer.more_blkdiag2["default"]), grads):
        torch.testing.assert_close(t.grad, grad, rtol=1e-4, atol=1e-5)


def train_losses(minilm_dir, compile_model: bool) -> list[float]:
    torch.manual_seed(0)
    model = peft.get_peft_model(AutoModel.from_pretrained(minilm_dir), MoReConfig(nblocks=4, blk_r=2))
    model.eval()  # no dropout, so that both runs draw no random numbers; the adapters still get gradients
    step_model = torch.compile(model, backend="aot_eager") if compile_model else model
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    tokens = torch.randint(1000, 20000, (2, 16), generator=torch.Generator().manual_seed(1))
    losses = []
    for _ in range(STEPS):
        optimizer.zero_grad()
        loss = step_model(input_ids=tokens).last_hidden_state.pow(2).mean()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


def test_compiled_minilm_trains_like_eager(minilm_dir):
    torch._dynamo.reset()
    eager = train_losses(minilm_dir, compile_model=False)
    compiled = train_losses(minilm_dir, compile_model=True)
    assert eager[-1] != eager[0]  # the adapters train
    torch.testing.assert_close(compiled, eager, rtol=1e-4, atol=1e-5)
