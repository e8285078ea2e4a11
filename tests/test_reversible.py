"""Reversible backprop is exact: same loss, gradients and RNG state as plain autograd."""

import copy

import pytest
import torch

from conftest import tiny_input, tiny_model


def _train_step(model, x, seed):
    """Seeded forward + backward; returns loss, input grad, param grads, RNG state after."""
    torch.manual_seed(seed)
    model.zero_grad(set_to_none=True)
    x = x.clone().requires_grad_()
    weight = torch.linspace(-1, 1, model.cfg.num_classes, dtype=x.dtype)
    loss = (model(x) * weight).sum()
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return loss.detach(), x.grad, grads, torch.get_rng_state()


def _rel(a, b):
    return ((a - b).norm() / b.norm().clamp_min(1e-30)).item()


def _twin_runs(model, x, seed=123):
    plain = copy.deepcopy(model)
    plain.rev_backprop = False
    model.rev_backprop = True
    return _train_step(model, x, seed), _train_step(plain, x, seed)


@pytest.mark.parametrize("kind,depth,recompute", [
    ("vit", 3, False), ("vit", 4, False), ("mvit", 6, False), ("mvit", 7, False),
    ("mvit_video", 6, False), ("mvit_video", 7, False), ("mvit", 7, True), ("mvit_video", 6, True)])
def test_rev_backprop_matches_autograd_float64(kind, depth, recompute):
    """``recompute``: the stage transitions are recomputed in backward too."""
    model = tiny_model(kind, depth=depth, drop_path_rate=0.2, dropout=0.1,
                       recompute_transitions=recompute).double().train()
    x = tiny_input(model, batch=4, dtype=torch.float64)
    (loss_r, gx_r, g_r, rng_r), (loss_p, gx_p, g_p, rng_p) = _twin_runs(model, x)

    assert loss_r.item() == pytest.approx(loss_p.item(), rel=1e-12)
    assert _rel(gx_r, gx_p) <= 1e-9
    assert g_r.keys() == g_p.keys() == {n for n, _ in model.named_parameters()}
    for name in g_p:
        assert _rel(g_r[name], g_p[name]) <= 1e-9 or (g_r[name] - g_p[name]).abs().max() < 1e-13, name
    assert torch.equal(rng_r, rng_p), "reversible backprop left the global RNG elsewhere"


def test_randomness_is_active_and_replayed():
    """The exactness test above is only meaningful if drop path/dropout actually fire."""
    model = tiny_model("vit", depth=4, drop_path_rate=0.5, dropout=0.3).double().train()
    x = tiny_input(model, batch=8, dtype=torch.float64)
    torch.manual_seed(1)
    a = model(x)
    torch.manual_seed(2)
    b = model(x)
    assert not torch.allclose(a, b)


@pytest.mark.parametrize("recompute", [False, True])
def test_bf16_autocast_backward_outside_autocast(recompute):
    model = tiny_model("mvit", depth=6, drop_path_rate=0.1, recompute_transitions=recompute).train()
    x = tiny_input(model, batch=2)
    plain = copy.deepcopy(model)
    plain.rev_backprop = False
    results = []
    for m in (model, plain):
        torch.manual_seed(0)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = m(x)
        out.float().square().sum().backward()  # backward outside the autocast block
        results.append({n: p.grad.float() for n, p in m.named_parameters()})
    rev, ref = results
    for name in ref:
        assert _rel(rev[name], ref[name]) <= 1e-2 or ref[name].abs().max() < 1e-6, name


def test_streams_stay_float32_under_autocast():
    model = tiny_model("vit", depth=2).train()
    seen = []
    model.norm.register_forward_pre_hook(lambda m, args: seen.append(args[0].dtype))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        model(tiny_input(model)).sum().backward()
    assert seen == [torch.float32]


def test_frozen_patch_embed_and_input_without_grad():
    """Frozen leading parameters must not stop gradients reaching the reversible blocks."""
    model = tiny_model("vit", depth=3).train()
    plain = copy.deepcopy(model)
    plain.rev_backprop = False
    for m in (model, plain):
        for p in list(m.patch_embed.parameters()) + [m.pos_embed]:
            p.requires_grad_(False)
        m(tiny_input(m)).sum().backward()
    for (name, p), q in zip(model.named_parameters(), plain.parameters()):
        if q.requires_grad:
            assert torch.allclose(p.grad, q.grad, rtol=1e-4, atol=1e-6), name
        else:
            assert p.grad is None


def test_frozen_blocks_get_no_grad():
    model = tiny_model("vit", depth=3).train()
    for p in model.layers[1].parameters():
        p.requires_grad_(False)
    model(tiny_input(model)).sum().backward()
    assert all(p.grad is None for p in model.layers[1].parameters())
    assert all(p.grad is not None for p in model.layers[0].parameters())


def test_autograd_grad_sees_parameter_gradients():
    model = tiny_model("vit", depth=2).train()
    params = list(model.layers[0].parameters())
    grads = torch.autograd.grad(model(tiny_input(model)).sum(), params)
    assert all(g is not None and g.abs().sum() > 0 for g in grads[:2])


def test_gradient_accumulation_equals_full_batch():
    model = tiny_model("mvit", depth=6, drop_path_rate=0.0).double().train()
    x = tiny_input(model, batch=4, dtype=torch.float64)
    model(x).sum().backward()
    full = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    for chunk in x.split(2):
        model(chunk).sum().backward()
    for a, b in zip(full, model.parameters()):
        assert torch.allclose(a, b.grad, rtol=1e-10, atol=1e-12)


def test_eval_and_no_grad_run_a_plain_loop(monkeypatch):
    import backbones.reversible as rev

    calls = []
    original = rev._ReversibleSegment.apply
    monkeypatch.setattr(rev._ReversibleSegment, "apply",
                        staticmethod(lambda *a: calls.append(1) or original(*a)))
    model = tiny_model("vit", depth=2)
    x = tiny_input(model)
    model.eval()
    model(x).sum().backward()
    model.train()
    with torch.no_grad():
        model(x)
    assert calls == []
    model(x).sum().backward()
    assert calls == [1]


def test_train_and_eval_outputs_agree_without_randomness():
    model = tiny_model("mvit_video", depth=6, drop_path_rate=0.0).train()
    x = tiny_input(model)
    with torch.no_grad():
        train_out = model(x)  # no_grad -> plain loop
    train_out_rev = model(x)
    model.eval()
    with torch.no_grad():
        eval_out = model(x)
    assert torch.allclose(train_out, eval_out)
    assert torch.allclose(train_out_rev.detach(), eval_out, atol=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("kind,recompute", [("vit", False), ("mvit", False), ("mvit", True)])
def test_torch_compile_gives_same_gradients(kind, recompute):
    model = tiny_model(kind, depth=6, drop_path_rate=0.0, recompute_transitions=recompute).train()
    x = tiny_input(model)
    model(x).sum().backward()
    ref = [p.grad.clone() for p in model.parameters()]
    scale = max(g.abs().max() for g in ref)
    model.zero_grad()
    # Rev-MViT's stage transitions recompile per resolution; inductor (torch 2.14) crashes
    # on those dynamic-shape recompiles, so multiscale models compile with dynamic=False.
    compiled = torch.compile(model, dynamic=False if kind == "mvit" else None)
    compiled(x).sum().backward()
    for (name, p), a in zip(model.named_parameters(), ref):
        assert (a - p.grad).abs().max() <= 1e-5 * scale, name


# ------------------------------------------------------- per-block gradient delivery


def test_gradients_arrive_block_by_block():
    """Each block's parameter gradients reach ``.grad`` (post-accumulate hooks) before the
    block below starts recomputing, so at most one block's gradients are temporaries."""
    model = tiny_model("vit", depth=4).train()
    events = []
    for i, blk in enumerate(model.layers):
        for p in blk.parameters():
            p.register_post_accumulate_grad_hook(lambda p, i=i: events.append(("grad", i)))
        # G runs first in each block's backward (Y1 -> G), so this marks its recompute start
        blk.G.register_forward_pre_hook(lambda m, a, i=i: events.append(("recompute", i)))
    loss = model(tiny_input(model)).sum()
    events.clear()  # drop the forward's own G calls
    loss.backward()

    recompute_at = {i: events.index(("recompute", i)) for i in range(4)}
    assert [i for kind, i in events if kind == "recompute"] == [3, 2, 1, 0]
    for i in range(4):
        grads_at = [n for n, e in enumerate(events) if e == ("grad", i)]
        assert len(grads_at) == len(list(model.layers[i].parameters()))
        assert grads_at[0] > recompute_at[i]
        if i > 0:  # all of block i's gradients are in before block i-1 begins
            assert max(grads_at) < recompute_at[i - 1], (i, events)


def test_block_hooks_fire_once_per_forward():
    """Hooks on a block see one call per forward, with or without reversible backprop."""
    counts = {}
    for rev in (True, False):
        model = tiny_model("mvit", depth=6, rev_backprop=rev).train()
        calls = []
        model.layers[0].register_forward_pre_hook(lambda m, a: calls.append("pre"))
        model.layers[0].register_forward_hook(lambda m, a, out: calls.append("post"))
        model(tiny_input(model)).sum().backward()
        counts[rev] = calls
    assert counts[True] == counts[False] == ["pre", "post"]


def test_second_backward_over_retained_graph_gives_same_gradients():
    model = tiny_model("mvit", depth=6, drop_path_rate=0.3, dropout=0.1).double().train()
    x = tiny_input(model, dtype=torch.float64).requires_grad_()
    loss = (model(x) * torch.linspace(-1, 1, 5, dtype=x.dtype)).sum()
    runs = []
    for _ in range(2):
        model.zero_grad(set_to_none=True)
        x.grad = None
        loss.backward(retain_graph=True)
        runs.append([x.grad.clone()] + [p.grad.clone() for p in model.parameters()])
    for a, b in zip(*runs):
        assert torch.equal(a, b)


def test_backward_after_the_graph_was_freed_raises_autograds_error():
    model = tiny_model("vit", depth=3).train()
    loss = model(tiny_input(model)).sum()
    loss.backward()
    with pytest.raises(RuntimeError, match="backward through the graph a second time"):
        loss.backward()


def test_freezing_after_forward_refuses_instead_of_misrouting():
    model = tiny_model("vit", depth=3).train()
    loss = model(tiny_input(model)).sum()
    for p in model.layers[1].F.parameters():
        p.requires_grad_(False)
    with pytest.raises(RuntimeError, match="stopped requiring gradients"):
        loss.backward()


def test_unfreezing_after_forward_matches_autograd():
    """A parameter frozen at forward time gets no gradient, as with plain autograd, and the
    others get theirs (the parameter list is the one captured at forward)."""
    results = []
    for rev in (True, False):
        torch.manual_seed(0)
        model = tiny_model("vit", depth=3, rev_backprop=rev).double().train()
        for p in model.layers[1].F.parameters():
            p.requires_grad_(False)
        loss = model(tiny_input(model, dtype=torch.float64)).square().sum()
        for p in model.layers[1].F.parameters():
            p.requires_grad_(True)
        loss.backward()
        results.append({n: p.grad for n, p in model.named_parameters()})
    rev, plain = results
    for name, g in plain.items():
        if g is None:
            assert rev[name] is None, name
        else:
            assert torch.allclose(rev[name], g, rtol=1e-9, atol=1e-13), name
    assert rev["layers.1.F.attn.q.weight"] is None
