"""The Cole / Zhou / ASL baselines against hand-computed values (spec 3)."""
import math

import pytest
import torch

from pamc.errors import PamcError
from pamc.losses import build


def nl(x):
    """-log(x + 1e-5), written out independently of the library."""
    return -math.log(x + 1e-5)


def H(p):
    return p * nl(p) + (1 - p) * nl(1 - p)


# probabilities [[0.75, 0.5, 0.25], [0.1, 0.9, 0.5]]
LOGITS = [[math.log(3), 0.0, -math.log(3)], [-math.log(9), math.log(9), 0.0]]
OBSERVED = [[1.0, 0.0, 0.0], [0.0, 1.0, -1.0]]


def run(loss, logits=LOGITS, observed=OBSERVED, **kwargs):
    return loss(torch.tensor(logits), torch.tensor(observed), **kwargs).item()


def test_an_ls_smooths_targets_to_point_nine_and_point_one():
    expected = (0.9 * nl(0.75) + 0.1 * nl(0.25) + 0.1 * nl(0.5) + 0.9 * nl(0.5) + 0.1 * nl(0.25) + 0.9 * nl(0.75)
                + 0.1 * nl(0.1) + 0.9 * nl(0.9) + 0.9 * nl(0.9) + 0.1 * nl(0.1) + 0.1 * nl(0.5) + 0.9 * nl(0.5)) / 6
    assert run(build("an-ls")) == pytest.approx(expected, rel=1e-5)
    with pytest.raises(PamcError, match="epsilon"):
        build("an-ls", epsilon=0.5)


def test_wan_weights_assumed_negatives_by_one_over_c_minus_one():
    # C = 3 -> gamma = 0.5; the observed negative (1, 2) keeps weight 1
    expected = (nl(0.75) + 0.5 * nl(0.5) + 0.5 * nl(0.75) + 0.5 * nl(0.9) + nl(0.9) + nl(0.5)) / 6
    assert run(build("wan")) == pytest.approx(expected, rel=1e-5)
    with pytest.raises(PamcError, match="2 classes"):
        run(build("wan"), [[0.0]], [[1.0]])


def test_epr_value_regulariser_and_its_gradient():
    known = (nl(0.75) + nl(0.9) + nl(0.5)) / 6
    # per-image sums 1.5 and 1.5, k = 1 -> (1.5 - 1)^2 / 3^2
    assert run(build("epr", k=1.0)) == pytest.approx(known + 0.25 / 9, rel=1e-5)

    logits = torch.tensor(LOGITS, requires_grad=True)
    build("epr", k=1.0)(logits, torch.tensor(OBSERVED)).backward()
    # entry (0, 1) is unobserved: only R acts, 2 (m - k) / C^2 / B * p (1 - p)
    assert logits.grad[0, 1].item() == pytest.approx(2 * 0.5 / 9 / 2 * 0.25, rel=1e-5)


def test_epr_uses_the_global_batch_from_gather():
    loss = build("epr", k=1.0)
    gather = lambda sums: torch.cat([sums, torch.tensor([3.0])])  # noqa: E731  another process: one image, sum 3
    known = (nl(0.75) + nl(0.9) + nl(0.5)) / 6
    assert run(loss, gather=gather) == pytest.approx(known + (2.0 - 1.0) ** 2 / 9, rel=1e-5)


def test_epr_needs_a_sensible_k():
    with pytest.raises(PamcError, match="2.9"):
        build("epr")
    with pytest.raises(PamcError, match="positive"):
        build("epr", k=-1)
    with pytest.raises(PamcError, match="exceeds the 3 classes"):
        run(build("epr", k=31.4))


def role(**kwargs):
    params = dict(num_images=3, num_classes=2, k=1.0)
    params.update(kwargs)
    return build("role", **params)


def test_role_initialisation_matches_the_reference_ranges_and_is_seeded():
    observed = torch.tensor([[1.0, 0.0, -1.0]] * 50)
    loss = build("role", num_images=50, num_classes=3, k=1.0, init_observed=observed)
    theta = loss.logits.detach()
    assert torch.allclose(theta[:, 0], torch.full((50,), math.log(199)))  # logit(0.995)
    assert torch.allclose(theta[:, 2], torch.full((50,), -math.log(199)))  # logit(0.005)
    q = math.log(1.5)  # logit(0.6)
    assert theta[:, 1].abs().max() < q and theta[:, 1].std() > q / 4
    again = build("role", num_images=50, num_classes=3, k=1.0, init_observed=observed).logits
    other = build("role", num_images=50, num_classes=3, k=1.0, init_observed=observed, seed=1).logits
    assert torch.equal(again, loss.logits) and not torch.equal(other, loss.logits)
    with pytest.raises(PamcError, match="init_observed"):
        build("role", num_images=4, num_classes=3, k=1.0, init_observed=observed)


def test_role_lr_mult_parameters_and_index_requirement():
    loss = role()
    assert loss.param_lr_mult == 10.0 and role(lr_mult=3).param_lr_mult == 3.0
    assert [p.shape for p in loss.parameters()] == [torch.Size([3, 2])]
    with pytest.raises(PamcError, match="index"):
        loss(torch.zeros(2, 2), torch.zeros(2, 2))
    with pytest.raises(PamcError, match="role"):
        build("role", num_images=3, num_classes=2)


def test_role_value_and_gradients():
    loss = role()
    loss.init_from_estimates(torch.tensor([[0.5, 0.5], [0.1, 0.1], [0.9, 0.25]]))
    logits = torch.tensor([[math.log(3), -math.log(3)], [0.0, math.log(9)]], requires_grad=True)  # p
    observed = torch.tensor([[1.0, 0.0], [0.0, 0.0]])
    value = loss(logits, observed, index=torch.tensor([2, 0]))
    # batch estimates g = [[0.9, 0.25], [0.5, 0.5]], p = [[0.75, 0.25], [0.5, 0.9]]
    matrix = (nl(0.75) + nl(0.9) + 0.9 * nl(0.75) + 0.1 * nl(0.25) + 0.75 * nl(0.9) + 0.25 * nl(0.1)
              + 2 * (0.25 * nl(0.25) + 0.75 * nl(0.75))
              + 2 * (0.5 * nl(0.5) + 0.5 * nl(0.5))
              + 0.5 * nl(0.9) + 0.5 * nl(0.1) + 0.9 * nl(0.5) + 0.1 * nl(0.5))
    reg_p = (1.2 - 1.0) ** 2 / 4  # row sums 1.0 and 1.4
    reg_g = (1.075 - 1.0) ** 2 / 4  # row sums 1.15 and 1.0
    assert value.item() == pytest.approx(0.5 * matrix / 4 + 0.5 * (reg_p + reg_g), rel=1e-5)

    value.backward()
    grad = loss.logits.grad
    assert grad[1].abs().sum() == 0 and (grad[0] != 0).all() and (grad[2] != 0).all()
    # p side of entry (0, 1): only BCE(p; sg g = 0.25) and R(p) act; g's target p is detached
    t, p, e = 0.25, 0.25, 1e-5
    bce = (-t / (p + e) + (1 - t) / (1 - p + e)) * p * (1 - p)
    expected = 0.5 * bce / 4 + 0.5 * 2 * 0.2 / 4 / 2 * p * (1 - p)
    assert logits.grad[0, 1].item() == pytest.approx(expected, rel=1e-4)
    # the same entry on the g side (Theta row 2): BCE(g; sg p = 0.25) and R(g); p's target g is detached
    expected = 0.5 * bce / 4 + 0.5 * 2 * 0.075 / 4 / 2 * p * (1 - p)
    assert grad[2, 1].item() == pytest.approx(expected, rel=1e-4)


def test_role_init_from_estimates_clips_and_checks_shape():
    loss = role()
    loss.init_from_estimates(torch.tensor([[0.0, 1.0], [0.5, 0.2], [0.7, 0.3]]))
    assert loss.logits[0, 0].item() == pytest.approx(math.log(1e-5 / (1 - 1e-5)), rel=1e-6)
    assert torch.allclose(loss.estimates()[1:], torch.tensor([[0.5, 0.2], [0.7, 0.3]]))
    with pytest.raises(PamcError, match="shape"):
        loss.init_from_estimates(torch.zeros(2, 2))


def test_em_maximises_entropy_of_unobserved_labels():
    expected = (nl(0.75) - 0.1 * H(0.5) - 0.1 * H(0.25) - 0.1 * H(0.1) + nl(0.9) + nl(0.5)) / 6
    assert run(build("em")) == pytest.approx(expected, rel=1e-5)

    logits = torch.tensor(LOGITS, requires_grad=True)
    build("em")(logits, torch.tensor(OBSERVED)).backward()
    p, e = 0.25, 1e-5  # entry (0, 2): the full derivative of H, both p's in the graph
    dH = -math.log(p + e) - p / (p + e) + math.log(1 - p + e) + (1 - p) / (1 - p + e)
    assert logits.grad[0, 2].item() == pytest.approx(-0.1 * dH * p * (1 - p) / 6, rel=1e-4)


def test_em_apl_weights_soft_negatives_by_beta():
    observed = [[1.0, 0.0, -0.2], [-1.0, 1.0, 0.0]]
    expected = (nl(0.75) - 0.2 * H(0.5) + 0.5 * (0.2 * nl(0.25) + 0.8 * nl(0.75))
                + nl(0.9) + nl(0.9) - 0.2 * H(0.5)) / 6
    assert run(build("em-apl", alpha=0.2, beta=0.5), observed=observed) == pytest.approx(expected, rel=1e-5)


INITIAL = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, -1.0], [0.0, 0.0], [0.0, 0.0], [0.0, 0.0]])
PROBS = torch.tensor([[0.9, 0.6], [0.3, 0.05], [0.4, 0.02], [0.01, 0.7], [0.2, 0.3], [0.5, 0.1]])


def test_em_apl_round_converts_the_lowest_unobserved_per_class():
    loss = build("em-apl", warmup=2, num_epochs=4, neg_proportion=0.9)
    observed = INITIAL.clone()
    observed[3, 0] = -0.3  # pseudo-labelled in an earlier round
    assert loss.epoch_end(1, observed, INITIAL, lambda: PROBS) is None  # before warm-up

    # U = (5, 3) from the initial labels -> n = int(0.9 * U / (4 - 2)) = (2, 1)
    mask, values = loss.epoch_end(2, observed, INITIAL, lambda: PROBS)
    assert mask.nonzero().tolist() == [[1, 0], [4, 0], [5, 1]]
    assert values[mask].tolist() == pytest.approx([-0.3, -0.2, -0.1])

    observed[mask] = values[mask]
    mask, values = loss.epoch_end(3, observed, INITIAL, lambda: PROBS)
    # class 0 has only rows 2 and 5 left; class 1 takes its next lowest, row 4
    assert mask.nonzero().tolist() == [[2, 0], [4, 1], [5, 0]]
    assert values[mask].tolist() == pytest.approx([-0.4, -0.3, -0.5])


def test_em_apl_soft_negatives_stay_distinguishable_and_predictions_are_checked():
    loss = build("em-apl", warmup=1, num_epochs=2, neg_proportion=1.0)
    observed = torch.zeros(2, 1)
    mask, values = loss.epoch_end(1, observed, observed, lambda: torch.tensor([[0.0], [1.0]]))
    assert mask.all() and (values < 0).all() and (values > -1).all()
    with pytest.raises(PamcError, match="predict"):
        loss.epoch_end(1, observed, observed, lambda: torch.zeros(3, 1))
    with pytest.raises(PamcError, match="warmup"):
        build("em-apl", warmup=10, num_epochs=10)


def test_asl_hand_computed_with_gamma_pos_one():
    # p - clip for the negatives: 0.45, 0.2, 0.05 (from 0.1) and 0.45; the -1 entry is a negative
    expected = (0.25 * -math.log(0.75) + 0.45 ** 4 * -math.log(0.55) + 0.2 ** 4 * -math.log(0.8)
                + 0.05 ** 4 * -math.log(0.95) + 0.1 * -math.log(0.9) + 0.45 ** 4 * -math.log(0.55)) / 6
    assert run(build("asl", gamma_pos=1)) == pytest.approx(expected, rel=1e-5)


def test_asl_matches_the_reference_formula_and_keeps_focusing_weights_in_the_graph():
    torch.manual_seed(0)
    logits = (3 * torch.randn(8, 5)).requires_grad_()
    observed = (torch.rand(8, 5) < 0.3).float()
    got = build("asl")(logits, observed)
    p = torch.sigmoid(logits)
    neg = (1 - p + 0.05).clamp(max=1)  # the reference's shifted 1 - p
    reference = -(observed * torch.log(p.clamp(min=1e-8))
                  + (1 - observed) * torch.log(neg.clamp(min=1e-8)) * (1 - neg) ** 4).sum() / 40
    assert got.item() == pytest.approx(reference.item(), rel=1e-5)
    assert run(build("asl"), [[-5.0]], [[0.0]]) == 0.0  # p < clip: an easy negative costs nothing
    got.backward()
    expected_grad, = torch.autograd.grad(reference, logits)
    assert torch.allclose(logits.grad, expected_grad, atol=1e-7)


@pytest.mark.parametrize("name, params", [("an-ls", {}), ("wan", {}), ("epr", {"k": 1.0}), ("em", {}),
                                          ("em-apl", {}), ("asl", {}),
                                          ("role", {"num_images": 2, "num_classes": 3, "k": 1.0})])
def test_no_loss_selects_entries(name, params):
    loss = build(name, **params)
    loss(torch.tensor(LOGITS), torch.tensor(OBSERVED), index=torch.tensor([0, 1]))
    assert loss.last_selected.shape == (2, 3) and not loss.last_selected.any()
    assert loss.label_updates is None


def test_build_passes_parameters_and_rejects_unknown_ones():
    loss = build("em-apl", beta=0.02, warmup=5)
    assert (loss.beta, loss.warmup, loss.alpha, loss.num_epochs) == (0.02, 5, 0.1, 10)
    with pytest.raises(PamcError, match="gamma"):
        build("em-apl", gamma=1)
    with pytest.raises(PamcError, match="valid"):
        build("asl", alpha=2)
