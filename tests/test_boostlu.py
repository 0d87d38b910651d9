"""BoostLU: values, gradients, alpha validation and the module form."""
import math

import pytest
import torch

from pamc import BoostLU, boostlu
from pamc.errors import PamcError

X = torch.tensor([-2.0, -0.5, 0.0, 0.25, 3.0])


def test_values_scale_only_the_positive_part():
    out = boostlu(X, 5.0)
    assert out.tolist() == [-2.0, -0.5, 0.0, 1.25, 15.0]
    # equivalently max(x, alpha*x) for alpha >= 1 (spec 2.2), on random input
    x = torch.randn(4, 3, 7, 7)
    torch.testing.assert_close(boostlu(x, 2.5), torch.maximum(x, 2.5 * x))


def test_gradient_is_alpha_on_positives_and_one_elsewhere():
    x = X.clone().requires_grad_(True)
    boostlu(x, 4.0).sum().backward()
    assert x.grad.tolist() == [1.0, 1.0, 1.0, 4.0, 4.0]


def test_gradient_follows_the_upstream_gradient():
    x = torch.randn(2, 5, 3, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: boostlu(t, 3.0), (x,))


@pytest.mark.parametrize("alpha", [0.5, 0.0, -1.0, math.nan])
def test_alpha_below_one_or_nan_is_a_user_error(alpha):
    with pytest.raises(PamcError, match="alpha must be >= 1"):
        boostlu(X, alpha)
    with pytest.raises(PamcError, match="alpha must be >= 1"):
        BoostLU(alpha)


def test_alpha_one_is_the_identity():
    x = torch.randn(3, 4)
    assert torch.equal(boostlu(x, 1.0), x)
    assert torch.equal(BoostLU(1)(x), x)


def test_module_matches_function_and_shows_alpha():
    module = BoostLU(5)
    x = torch.randn(2, 3, 4, 4)
    assert torch.equal(module(x), boostlu(x, 5.0))
    assert repr(module) == "BoostLU(alpha=5.0)"
    assert list(module.parameters()) == []  # alpha is a setting, not a learned parameter
