"""Activation pieces against their definitions, including saturated values."""
import pytest
import torch

from helpers import assert_rel
from targetprop import get_activation

D64 = torch.float64


@pytest.mark.parametrize("name,a,lo,hi", [("tanh", torch.tanh, -1, 1), ("sigmoid", torch.sigmoid, 0, 1)])
def test_inverse_derivative_is_one_over_derivative_at_projection(name, a, lo, hi):
    act = get_activation(name)
    tol = 1e-2
    y = torch.cat([torch.linspace(lo, hi, 401, dtype=D64), a(torch.randn(50, dtype=D64))])
    py = y.clamp(lo + tol, hi - tol)
    u = torch.atanh(py) if name == "tanh" else torch.logit(py)
    u.requires_grad_(True)
    (deriv_at_projection,) = torch.autograd.grad(a(u).sum(), u)
    assert_rel(act.inverse_derivative(act.derivative(y), tol), 1 / deriv_at_projection,
               where=f"{name} inverse derivative")
    assert_rel(act.inverse(act.project(y, tol)), u.detach(), where=f"{name} a⁻¹∘π")
    assert_rel(act.derivative(a(u.detach())), deriv_at_projection, where=f"{name} derivative")


def test_relu_and_identity_conventions():
    y = torch.tensor([0.0, 0.0, 0.5, 2.0], dtype=D64)
    relu = get_activation("relu")
    assert relu.inverse_derivative(relu.derivative(y), 1e-3).tolist() == [0, 0, 1, 1]
    assert relu.project(torch.tensor([-1.0, 3.0]), 1e-3).tolist() == [0.0, 3.0]
    ident = get_activation("identity")
    assert ident.inverse_derivative(ident.derivative(y), 1e-3).tolist() == [1, 1, 1, 1]
