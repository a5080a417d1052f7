"""Issue 22: the training step's pieces that made frame-window training faster keep its
numbers: the weighted MSE of a step, the plain/in-backward switch by size."""

from __future__ import annotations

import torch

from aekit.train.losses import weighted_mse


def _reference(out, target, weight):
    err = out.double() - target.double()
    return (err * err * weight.double()).mean()


def test_weighted_mse_value_and_gradient_are_autograds():
    g = torch.Generator().manual_seed(0)
    for shape, wshape in (((512, 640), (640,)), ((7, 5), (5,)), ((6, 3), (1,))):
        out = (10 * torch.randn(*shape, generator=g)).requires_grad_()
        target = torch.randn(*shape, generator=g)
        weight = torch.rand(*wshape, generator=g) * 50 + 0.1
        loss = weighted_mse(out, target, weight)
        want = _reference(out, target, weight)
        assert abs(loss.item() - want.item()) <= 1e-6 * want.item()
        (grad,) = torch.autograd.grad(loss, out)
        (want_grad,) = torch.autograd.grad(want, out)
        torch.testing.assert_close(grad, want_grad.float(), rtol=1e-5, atol=1e-12)
    # float64: gradcheck's finite differences
    o = torch.randn(4, 6, dtype=torch.float64, requires_grad=True)
    t, w = torch.randn(4, 6, dtype=torch.float64), torch.rand(6, dtype=torch.float64) + 0.5
    assert torch.autograd.gradcheck(lambda a: weighted_mse(a, t, w), (o,))


def test_weighted_mse_differentiates_a_target_or_weight_that_needs_it():
    """The fast path gives no gradient to target and weight: with one that needs it, the
    plain expression (autograd) runs instead, never a silently missing gradient."""
    out = torch.randn(3, 4, requires_grad=True)
    target = torch.randn(3, 4, requires_grad=True)
    weight = torch.rand(4, requires_grad=True)
    loss = weighted_mse(out, target, weight)
    go, gt, gw = torch.autograd.grad(loss, (out, target, weight))
    err = (out - target).detach()
    torch.testing.assert_close(gt, -go)
    torch.testing.assert_close(gw, (err * err).sum(0) / err.numel())


def test_weighted_mse_other_dtypes_and_an_empty_batch():
    """A wider weight or target (float64) takes autograd's expression (no dtype clash in the
    dot product); an empty batch gives a finite gradient (empty), never a division by zero."""
    out = torch.randn(6, 8, requires_grad=True)
    target = torch.randn(6, 8)
    w64 = torch.rand(8, dtype=torch.float64) + 0.5
    loss = weighted_mse(out, target, w64)
    want = _reference(out, target, w64)
    assert loss.dtype == torch.float64 and abs(loss.item() - want.item()) <= 1e-6 * want.item()
    (g,) = torch.autograd.grad(loss, out)
    assert g.dtype == torch.float32 and torch.isfinite(g).all()
    loss = weighted_mse(out, target.double(), w64.float())
    assert abs(loss.item() - _reference(out, target, w64.float()).item()) <= 1e-5 * loss.item()
    empty = torch.zeros(0, 8, requires_grad=True)
    loss = weighted_mse(empty, torch.zeros(0, 8), torch.rand(8))
    (g,) = torch.autograd.grad(loss, empty)
    assert g.shape == (0, 8)
