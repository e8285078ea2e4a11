"""backbones.layers under bf16 autocast on the CPU: gradients are finite and repeatable."""

import torch

from backbones.layers import MultiScaleAttention


def _litter_freed_memory_with_nan():
    """Free NaN-filled blocks of many sizes, so that memory handed out next holds NaN (as an
    earlier test in the same process may leave it)."""
    blocks = [torch.full((2 ** k,), float("nan"), dtype=dtype)
              for k in range(4, 22) for dtype in (torch.float32, torch.bfloat16)]
    del blocks


def _pooling_grads(attn, x, thw, autocast):
    attn.zero_grad(set_to_none=True)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        out, _ = attn(x, thw)
    out.float().square().sum().backward()
    return {name: p.grad.clone() for name, p in attn.named_parameters() if name.startswith("pool_")}


def test_kv_pooling_gradients_under_bf16_autocast():
    """The kv pooling of the last stage of the demo video model (24 channels per head on a
    2x4x4 grid, stride 1), whose weight gradient the bf16 oneDNN kernel got wrong from
    unwritten memory (``layers._pool``): NaN in 29 of 30 tries on an AVX512-BF16 CPU here."""
    torch.manual_seed(0)
    attn = MultiScaleAttention(24, 24, 1, kernel=(3, 3, 3), kv_stride=(1, 1, 1))
    thw = (2, 4, 4)
    x = torch.randn(8, 32, 24)
    reference = _pooling_grads(attn, x, thw, autocast=False)
    runs = []
    for _ in range(3):
        _litter_freed_memory_with_nan()
        runs.append(_pooling_grads(attn, x, thw, autocast=True))
    assert reference.keys() == {"pool_k.weight", "pool_v.weight"}
    for name, expected in reference.items():
        for run in runs:
            assert torch.isfinite(run[name]).all().item(), f"{name}: a non-finite gradient"
            assert torch.equal(run[name], runs[0][name]), f"{name}: differs between runs"
        assert ((runs[0][name] - expected).norm() / expected.norm()).item() < 2e-2, name
