"""GR, Hill, focal margin and SPLC (spec since-2023, sections 2 and 3) against hand computation
and against references written here from the spec's formulas (numpy / float64 torch)."""
import math

import numpy as np
import pytest
import torch

from pamc.config import TrainConfig
from pamc.engine import build_loss
from pamc.errors import PamcError
from pamc.losses import build

E = math.e
# probabilities [[0.75, 0.5, 0.25], [0.1, 0.9, 0.5]]; (0, 0) and (1, 1) observed positive, (1, 2) negative
LOGITS = [[math.log(3), 0.0, -math.log(3)], [-math.log(9), math.log(9), 0.0]]
OBSERVED = [[1.0, 0.0, 0.0], [0.0, 1.0, -1.0]]


def run(loss, logits=LOGITS, observed=OBSERVED, epoch=1):
    return loss(torch.tensor(logits), torch.tensor(observed), epoch=epoch).item()


def random_case(seed, b=8, c=6):
    rng = np.random.default_rng(seed)
    logits = 3 * rng.standard_normal((b, c))
    observed = rng.choice([1.0, 0.0, -1.0], size=(b, c), p=[0.2, 0.65, 0.15])
    return logits, observed


# -- references from the spec's formulas, float64 torch (so autograd gives reference gradients)

def ref_focal_margin(t, shifted, gamma=2.0):
    q = torch.sigmoid(shifted)
    pt = (1 - q) * t + q * (1 - t)
    return -(pt ** gamma) * (t * torch.log(q) + (1 - t) * torch.log(1 - q))


def ref_hill(x, obs, lamb=1.5, m=1.0, gamma=2.0):
    t = (obs == 1).double()
    positive = -(1 - torch.sigmoid(x - m)) ** gamma * torch.log(torch.sigmoid(x - m))
    negative = (lamb - torch.sigmoid(x)) * torch.sigmoid(x) ** 2
    return (t * positive + (1 - t) * negative).sum()


def ref_splc(x, obs, epoch, tau=0.6, change_epoch=2, m=1.0, gamma=2.0):
    t = (obs == 1).double()
    shifted = torch.where(t == 1, x - m, x)
    if epoch >= change_epoch:  # pamc: observed negatives are never corrected
        t = torch.where((obs == 0) & (torch.sigmoid(shifted) > tau), torch.ones_like(t), t)
    return ref_focal_margin(t, shifted, gamma).sum()


def ref_gr_schedule(e, E_, n, beta, gauss):
    late, early = max(e - n - 1, 0) / (E_ - n), max(e - n, 0) / (E_ - n)
    w0, wT, b0, bT = beta
    mu0, s0, muT, sT = gauss
    return w0 + (wT - w0) * late, b0 + (bT - b0) * late, mu0 + (muT - mu0) * early, s0 + (sT - s0) * early


def ref_gr(x, obs, epoch, E_=8, n=0, beta=(0, 2, -2, -2), gauss=(0.5, 2, 0.8, 0.5), q2=0.01, q3=1.0):
    w, b, mu, sigma = ref_gr_schedule(epoch, E_, n, beta, gauss)
    p = torch.sigmoid(x)
    ph = p.detach()
    K = torch.sigmoid(w * ph + b)
    V = torch.exp(-0.5 * ((ph - mu) / sigma) ** 2)
    unobserved = V * (K * (1 - p ** q2) / q2 + (1 - K) * (1 - (1 - p) ** q3) / q3)
    loss = torch.where(obs == 1, -torch.log(p + 1e-7), torch.where(obs == -1, -torch.log(1 - p + 1e-7), unobserved))
    return loss.mean()


REFERENCES = {
    "hill": lambda x, obs, epoch: ref_hill(x, obs),
    "focal-margin": lambda x, obs, epoch: ref_focal_margin((obs == 1).double(), x - (obs == 1).double()).sum(),
    "splc": lambda x, obs, epoch: ref_splc(x, obs, epoch),
    "gr": lambda x, obs, epoch: ref_gr(x, obs, epoch),
}


# -- hand-computed 2 x 3 cases

POSITIVE_00 = -(E / (3 + E)) ** 2 * math.log(3 / (3 + E))  # sigmoid(log 3 - 1) = 3 / (3 + e)
POSITIVE_11 = -(E / (9 + E)) ** 2 * math.log(9 / (9 + E))


def test_hill_hand_computed():
    # negatives (lambda - p) p^2 at p = 0.5, 0.25, 0.1 and the observed negative 0.5
    negatives = 1.0 * 0.25 + 1.25 * 0.0625 + 1.4 * 0.01 + 1.0 * 0.25
    assert run(build("hill")) == pytest.approx(POSITIVE_00 + POSITIVE_11 + negatives, rel=1e-5)


def focal_negatives():
    return -0.25 * math.log(0.5) - 0.0625 * math.log(0.75) - 0.01 * math.log(0.9) - 0.25 * math.log(0.5)


def test_focal_margin_hand_computed():
    assert run(build("focal-margin")) == pytest.approx(POSITIVE_00 + POSITIVE_11 + focal_negatives(), rel=1e-5)


def test_splc_hand_computed_corrects_from_epoch_two_only():
    loss = build("splc", tau=0.2)
    assert run(loss, epoch=1) == pytest.approx(POSITIVE_00 + POSITIVE_11 + focal_negatives(), rel=1e-5)
    assert not loss.last_selected.any()
    # epoch 2: unobserved p = 0.5 and 0.25 exceed 0.2 and become positives without margin;
    # p = 0.1 stays negative, and the observed negative at p = 0.5 is never corrected
    corrected = -0.25 * math.log(0.5) - 0.5625 * math.log(0.25)
    negatives = -0.01 * math.log(0.9) - 0.25 * math.log(0.5)
    assert run(loss, epoch=2) == pytest.approx(POSITIVE_00 + POSITIVE_11 + corrected + negatives, rel=1e-5)
    assert loss.last_selected.tolist() == [[False, True, True], [False, False, False]]
    assert loss.label_updates is None  # recomputed per batch, never stored


def test_gr_hand_computed():
    # epoch 3 of 8: w = 2 * 2/8 = 0.5, b = -2, mu = 0.5 + 0.3 * 3/8, sigma = 2 - 1.5 * 3/8
    w, b, mu, sigma = 0.5, -2.0, 0.6125, 1.4375
    total = -math.log(0.75 + 1e-7) - math.log(0.9 + 1e-7) - math.log(0.5 + 1e-7)
    for p in (0.5, 0.25, 0.1):  # unobserved; with q3 = 1 the second term is (1 - (1 - p)) = p
        K = 1 / (1 + math.exp(-(w * p + b)))
        V = math.exp(-0.5 * ((p - mu) / sigma) ** 2)
        total += V * (K * (1 - p ** 0.01) / 0.01 + (1 - K) * p)
    assert run(build("gr"), epoch=3) == pytest.approx(total / 6, rel=1e-5)


# -- randomized comparisons with the references, values and gradients

@pytest.mark.parametrize("name", ["hill", "focal-margin", "splc", "gr"])
@pytest.mark.parametrize("epoch", [1, 2, 5])
def test_matches_the_reference_formulas_and_gradients(name, epoch):
    logits, observed = random_case(seed=epoch)
    x = torch.tensor(logits, dtype=torch.float64, requires_grad=True)
    obs = torch.tensor(observed)
    reference = REFERENCES[name](x, obs, epoch)
    expected_grad, = torch.autograd.grad(reference, x)
    ours_x = torch.tensor(logits, dtype=torch.float32, requires_grad=True)
    value = build(name)(ours_x, obs.float(), epoch=epoch)
    value.backward()
    assert value.item() == pytest.approx(reference.item(), rel=1e-5)
    np.testing.assert_allclose(ours_x.grad.numpy(), expected_grad.numpy(), rtol=1e-4, atol=1e-6)


def test_hill_focal_weight_is_not_detached():
    logits, observed = random_case(seed=3)
    obs = torch.tensor(observed)
    x = torch.tensor(logits, requires_grad=True)
    build("hill")(x, obs.float()).backward()
    # central finite differences in float64 of the spec's formula, at a few positives
    positives = [tuple(i) for i in (obs == 1).nonzero().tolist()][:4]
    assert positives
    for i, j in positives:
        step = torch.zeros_like(obs)
        step[i, j] = 1e-6
        base = torch.tensor(logits)
        numeric = (ref_hill(base + step, obs) - ref_hill(base - step, obs)).item() / 2e-6
        assert x.grad[i, j].item() == pytest.approx(numeric, rel=1e-4)
    # with the weight detached the gradient would differ: d/dx of -(1-s)^2 log s, s = sigmoid(x - 1)
    s = torch.sigmoid(torch.tensor(logits) - 1)
    detached = -(1 - s) ** 2 * (1 - s)
    i, j = positives[0]
    assert abs(x.grad[i, j].item() - detached[i, j].item()) > 1e-3


def test_splc_runs_on_the_logits_device_and_never_flips_observed_negatives():
    logits = torch.tensor([[5.0, 5.0, 5.0]])
    observed = torch.tensor([[1.0, 0.0, -1.0]])
    loss = build("splc")
    loss(logits, observed, epoch=2)
    assert loss.last_selected.tolist() == [[False, True, False]]
    assert loss.last_selected.device == logits.device


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_splc_on_cuda_matches_cpu():
    logits, observed = random_case(seed=4)
    x, obs = torch.tensor(logits, dtype=torch.float32), torch.tensor(observed, dtype=torch.float32)
    on_cpu = build("splc")(x, obs, epoch=3)
    loss = build("splc")
    on_gpu = loss(x.cuda(), obs.cuda(), epoch=3)
    assert loss.last_selected.is_cuda
    assert on_gpu.item() == pytest.approx(on_cpu.item(), rel=1e-5)


# -- GR schedules

@pytest.mark.parametrize("n, epoch, expected", [
    # E = 8, n = 0: w, b move from e = 2 (offset e - n - 1), mu, sigma from e = 1 (offset e - n)
    (0, 1, (0.0, -2.0, 0.5375, 1.8125)),
    (0, 2, (0.25, -1.875, 0.575, 1.625)),
    (0, 4, (0.75, -1.625, 0.65, 1.25)),
    (0, 8, (1.75, -1.125, 0.8, 0.5)),
    (0, 9, (2.0, -1.0, 0.8, 0.5)),  # beyond E (only the "+ LI" phase): the final values
    (0, 12, (2.0, -1.0, 0.8, 0.5)),
    # n = 2: flat until e = n + 1 (w, b) or e = n (mu, sigma), then over E - n = 6 epochs
    (2, 1, (0.0, -2.0, 0.5, 2.0)),
    (2, 2, (0.0, -2.0, 0.5, 2.0)),
    (2, 3, (0.0, -2.0, 0.55, 1.75)),
    (2, 5, (2 / 3, -5 / 3, 0.65, 1.25)),
    (2, 8, (5 / 3, -7 / 6, 0.8, 0.5)),
])
def test_gr_schedule(n, epoch, expected):
    beta, gauss = [0, 2, -2, -1], [0.5, 2, 0.8, 0.5]
    loss = build("gr", beta=beta, gauss=gauss, num_epochs=8, linear_init_epochs=n)
    assert loss.schedule(epoch) == pytest.approx(expected, rel=1e-12)
    if epoch <= 8:
        assert loss.schedule(epoch) == pytest.approx(ref_gr_schedule(epoch, 8, n, beta, gauss), rel=1e-12)


def test_gr_gets_num_epochs_from_the_run_and_selects_nothing():
    loss = build_loss(TrainConfig(method="gr", epochs=5), 4, 3, torch.zeros(4, 3))
    assert loss.num_epochs == 5 and loss.linear_init_epochs == 0
    assert loss.beta == (0.0, 2.0, -2.0, -2.0) and loss.gauss == (0.5, 2.0, 0.8, 0.5)
    assert (loss.q2, loss.q3) == (0.01, 1.0)
    run(loss)
    assert not loss.last_selected.any() and loss.label_updates is None


def test_gr_gradient_is_finite_where_probabilities_saturate():
    x = torch.tensor([[-120.0, 40.0, 0.0]], requires_grad=True)
    build("gr", q3=0.5)(x, torch.zeros(1, 3), epoch=4).backward()
    assert torch.isfinite(x.grad).all()


# -- reductions, and the sum under DDP

@pytest.mark.parametrize("name", ["hill", "focal-margin", "splc"])
def test_sum_is_b_times_c_times_mean(name):
    logits, observed = random_case(seed=5)
    x, obs = torch.tensor(logits, dtype=torch.float32), torch.tensor(observed, dtype=torch.float32)
    total = build(name)(x, obs, epoch=2)
    mean = build(name, reduction="mean")(x, obs, epoch=2)
    assert total.item() == pytest.approx(x.numel() * mean.item(), rel=1e-5)


@pytest.mark.parametrize("reduction", ["sum", "mean"])
def test_engine_weighting_under_ddp_gives_the_global_batch_gradient(reduction):
    """Two processes with 3 and 2 of a 5-image batch, weighted as the engine does and averaged as
    DDP does, give the gradient of one process on all 5 (the sum stays a sum over the global batch)."""
    torch.manual_seed(0)
    features, observed = torch.randn(5, 4), torch.tensor(random_case(seed=6, b=5, c=3)[1], dtype=torch.float32)
    weight = torch.randn(4, 3, requires_grad=True)
    loss = build("hill", reduction=reduction)
    single, = torch.autograd.grad(loss(features @ weight, observed), weight)
    world, grads = 2, []
    for rows, other in ((slice(0, 3), 2), (slice(3, 5), 3)):
        gather = lambda x, other=other: torch.cat([x, torch.zeros(other)])  # noqa: E731  (the other process's share)
        local = loss(features[rows] @ weight, observed[rows], gather=gather)
        share = len(range(5)[rows]) * world / 5  # engine: local loss x (local batch x world / global batch)
        grads.append(torch.autograd.grad(local * share, weight)[0])
    assert torch.allclose(sum(grads) / world, single, rtol=1e-5, atol=1e-6)


# -- bad input

@pytest.mark.parametrize("name, params, message", [
    ("splc", {"tau": 0.0}, r"tau must lie in \(0, 1\)"),
    ("splc", {"tau": 1.0}, r"tau must lie in \(0, 1\)"),
    ("splc", {"change_epoch": 0}, "change_epoch must be an integer >= 1"),
    ("splc", {"change_epoch": 1.5}, "change_epoch must be an integer >= 1"),
    ("hill", {"margin": -1.0}, "margin must be >= 0"),
    ("focal-margin", {"gamma": -0.5}, "gamma must be >= 0"),
    ("hill", {"lamb": 0.5}, "lamb must be >= 1"),
    ("splc", {"reduction": "none"}, "reduction must be one of sum, mean"),
    ("gr", {"q2": 0.0}, "q2 must be > 0"),
    ("gr", {"q3": -1.0}, "q3 must be > 0"),
    ("gr", {"gauss": [0.5, 0.0, 0.8, 0.5]}, "sigma0 and sigmaT"),
    ("gr", {"gauss": [0.5, 2.0, 0.8, -0.5]}, "sigma0 and sigmaT"),
    ("gr", {"beta": [0, 2, -2]}, r"beta must be a list of 4 numbers \[w0, wT, b0, bT\]"),
    ("gr", {"gauss": "0.5,2,0.8,0.5"}, r"gauss must be a list of 4 numbers \[mu0, sigma0, muT, sigmaT\]"),
    ("gr", {"beta": [0, 2, float("nan"), -2]}, "finite"),
    ("gr", {"num_epochs": 8, "linear_init_epochs": 8}, "0 <= linear_init_epochs < num_epochs"),
    ("splc", {"tua": 0.6}, "loss 'splc' takes no parameter tua; valid: tau, change_epoch"),
])
def test_bad_parameters_are_one_line_pamc_errors(name, params, message):
    with pytest.raises(PamcError, match=message) as error:
        build(name, **params)
    assert "\n" not in str(error.value)
