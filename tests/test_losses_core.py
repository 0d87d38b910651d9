"""AN, full-label BCE and the large-loss methods (LL-R, LL-Ct, LL-Cp), against hand computation.

The k schedules are the spec's (3.4) per-dataset tables for B = 16, with pamc's nominal k where the
reference's float accumulation overshoots by one (VOC/COCO LL-R epoch 6: 8 and 32, not 9 and 33).
"""
import math

import pytest
import torch

from pamc import losses
from pamc.errors import PamcError


def bce(z: float, t: float) -> float:
    p = 1.0 / (1.0 + math.exp(-z))
    return -(t * math.log(p) + (1.0 - t) * math.log(1.0 - p))


# 2 x 4 case: row 0 has an observed positive and an observed negative (-1), row 1 an observed
# positive with a very large loss, which must never be selected (it is not unobserved).
LOGITS = [[2.0, 1.0, -1.0, 0.5], [-3.0, 3.0, 0.2, -0.4]]
OBSERVED = [[1.0, 0.0, 0.0, -1.0], [1.0, 0.0, 0.0, 0.0]]
AN_TARGET = [[1.0, 0.0, 0.0, 0.0], [1.0, 0.0, 0.0, 0.0]]
# unobserved AN losses: (0,1) 1.313, (0,2) 0.313, (1,1) 3.049, (1,2) 0.798, (1,3) 0.513 -> top 2
TOP2 = {(0, 1), (1, 1)}


def hand_loss(selected=(), corrected=False, targets=AN_TARGET) -> float:
    """Mean over all B*C entries; selected entries get loss 0 (rejection) or target 1 (correction)."""
    total = 0.0
    for n, row in enumerate(LOGITS):
        for c, z in enumerate(row):
            if (n, c) in selected:
                total += bce(z, 1.0) if corrected else 0.0
            else:
                total += bce(z, targets[n][c])
    return total / 8


def call(loss_fn, epoch, logits=LOGITS, observed=OBSERVED):
    return loss_fn(torch.tensor(logits), torch.tensor(observed), epoch=epoch)


def selected_set(loss_fn) -> set:
    return {tuple(i) for i in loss_fn.last_selected.nonzero().tolist()}


def test_an_is_bce_against_assumed_negatives():
    assert float(call(losses.build("an"), 1)) == pytest.approx(hand_loss(), rel=1e-6)


def test_full_is_bce_against_the_full_labels():
    full = [[1.0, 0.0, 1.0, 0.0], [1.0, 1.0, 0.0, 0.0]]
    loss_fn = losses.build("full")
    assert loss_fn.uses_full_labels  # tells the engine to feed the full 0/1 matrix
    assert float(call(loss_fn, 1, observed=full)) == pytest.approx(hand_loss(targets=full), rel=1e-6)


@pytest.mark.parametrize("name", ["ll-r", "ll-ct", "ll-cp"])
def test_epoch_one_is_plain_an_and_selects_nothing(name):
    loss_fn = losses.build(name, delta=25.0)
    assert float(call(loss_fn, 1)) == pytest.approx(hand_loss(), rel=1e-6)
    assert loss_fn.last_selected.shape == (2, 4) and loss_fn.last_selected.dtype == torch.bool
    assert not loss_fn.last_selected.any()
    assert loss_fn.label_updates is None


def test_ll_r_rejects_the_largest_unobserved_losses():
    loss_fn = losses.build("ll-r", delta=25.0)  # epoch 2: k = ceil(8 * 0.25) = 2
    value = float(call(loss_fn, 2))
    assert selected_set(loss_fn) == TOP2
    assert value == pytest.approx(hand_loss(TOP2), rel=1e-6)
    assert loss_fn.label_updates is None


def test_ll_ct_corrects_for_this_step_only():
    loss_fn = losses.build("ll-ct", delta=25.0)
    value = float(call(loss_fn, 2))
    assert selected_set(loss_fn) == TOP2
    assert value == pytest.approx(hand_loss(TOP2, corrected=True), rel=1e-6)
    assert loss_fn.label_updates is None


def test_ll_cp_corrects_and_hands_the_corrections_to_the_engine():
    loss_fn = losses.build("ll-cp", delta=25.0)
    value = float(call(loss_fn, 3))  # constant k = 2 from epoch 2
    assert selected_set(loss_fn) == TOP2
    assert value == pytest.approx(hand_loss(TOP2, corrected=True), rel=1e-6)
    mask, values = loss_fn.label_updates
    assert torch.equal(mask, loss_fn.last_selected)
    assert torch.equal(values, torch.ones(2, 4))


def test_the_gradient_flows_only_through_unrejected_entries():
    logits = torch.tensor(LOGITS, requires_grad=True)
    losses.build("ll-r", delta=25.0)(logits, torch.tensor(OBSERVED), epoch=2).backward()
    zero = logits.grad == 0
    assert {tuple(i) for i in zero.nonzero().tolist()} == TOP2


def distinct_batch(batch: int, classes: int, seed: int = 0):
    """Continuous random logits (no ties) and one observed positive per row with a huge loss."""
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(batch, classes, generator=g) * 2.0
    observed = torch.zeros(batch, classes)
    positive = torch.randint(classes, (batch,), generator=g)
    observed[torch.arange(batch), positive] = 1.0
    logits[torch.arange(batch), positive] = -20.0
    return logits, observed


SCHEDULES = [
    # (method with its default delta, B, C, k for epochs 1..10)
    ("ll-r", 16, 20, [0, 2, 4, 5, 7, 8, 10, 12, 13, 15]),  # VOC (reference: 9 at epoch 6)
    ("ll-r", 16, 80, [0, 7, 13, 20, 26, 32, 39, 45, 52, 58]),  # COCO (reference: 33 at epoch 6)
    ("ll-r", 16, 81, [0, 7, 13, 20, 26, 33, 39, 46, 52, 59]),  # NUS-WIDE
    ("ll-r", 16, 312, [0, 25, 50, 75, 100, 125, 150, 175, 200, 225]),  # CUB
    ("ll-r", 5, 20, [0, 1, 1, 2, 2, 3, 3, 4, 4, 5]),  # a last, small batch uses its own B
    ("ll-ct", 16, 20, [0, 1, 2, 2, 3, 4, 4, 5, 6, 6]),  # VOC
    ("ll-ct", 16, 80, [0, 3, 6, 8, 11, 13, 16, 18, 21, 24]),  # COCO
    ("ll-cp", 16, 20, [0] + [1] * 9),  # VOC
    ("ll-cp", 16, 80, [0] + [2] * 9),  # COCO
    ("ll-cp", 16, 312, [0] + [5] * 9),  # CUB
]


@pytest.mark.parametrize("name,batch,classes,expected", SCHEDULES)
def test_k_schedule_per_epoch(name, batch, classes, expected):
    loss_fn = losses.build(name)
    logits, observed = distinct_batch(batch, classes)
    counts = []
    for epoch in range(1, 11):
        loss_fn(logits, observed, epoch=epoch)
        assert not loss_fn.last_selected[observed == 1].any()
        counts.append(int(loss_fn.last_selected.sum()))
    assert counts == expected


def test_selection_is_the_k_largest_unobserved_losses():
    logits, observed = distinct_batch(16, 20, seed=3)
    loss_fn = losses.build("ll-r")
    loss_fn(logits, observed, epoch=4)  # k = 5
    # unobserved AN loss is softplus(z): monotone in the logit, so the 5 largest logits among 0s
    unobserved_logits = torch.where(observed == 0, logits, torch.tensor(-math.inf))
    top = set(unobserved_logits.flatten().topk(5).indices.tolist())
    assert set(loss_fn.last_selected.flatten().nonzero().flatten().tolist()) == top


def test_ties_at_the_threshold_are_all_selected():
    logits, observed = distinct_batch(16, 20, seed=1)
    logits = logits.clamp(max=3.0)
    tied = [(0, 1), (3, 4), (7, 7), (9, 0), (15, 19)]
    for n, c in tied:
        observed[n, c] = 0.0
        logits[n, c] = 5.0  # five equal, largest unobserved losses
    observed[observed.sum(1) == 0, 2] = 1.0  # keep a positive in rows that lost theirs
    loss_fn = losses.build("ll-r")
    loss_fn(logits, observed, epoch=2)  # k = 2 < 5 tied entries
    assert selected_set(loss_fn) == set(tied)


def test_observed_negatives_are_never_selected():
    logits = torch.full((2, 10), -5.0)
    observed = torch.zeros(2, 10)
    observed[:, 0] = 1.0
    observed[:, 1:4] = -1.0
    logits[:, 1:4] = 20.0  # huge loss on the observed negatives
    loss_fn = losses.build("ll-ct", delta=10.0)  # epoch 3: k = ceil(20 * 0.2) = 4
    loss_fn(logits, observed, epoch=3)
    assert not loss_fn.last_selected[observed != 0].any()
    assert int(loss_fn.last_selected.sum()) == 12  # all 12 unobserved losses are tied


def test_build_rejects_unknown_names_and_parameters():
    with pytest.raises(PamcError) as err:
        losses.build("ll-x")
    assert "unknown loss 'll-x'" in str(err.value)
    for name in ("an", "full", "ll-r", "ll-ct", "ll-cp"):
        assert name in str(err.value) and name in losses.names()
    with pytest.raises(PamcError, match="takes no parameter gamma; valid: delta"):
        losses.build("ll-r", gamma=2)


def test_mismatched_label_shape_is_a_user_error():
    with pytest.raises(PamcError, match="do not match logits"):
        losses.build("an")(torch.zeros(2, 3), torch.zeros(2, 4))


# -- declared parameter ranges, checked when the config is made

#: constructor parameters a loss checks itself (tensors, or lists checked together)
CHECKED_BY_THE_CONSTRUCTOR = {"init_observed", "beta", "gauss"}


@pytest.mark.parametrize("name", losses.names())
def test_every_loss_declares_the_range_of_every_parameter(name):
    import inspect

    cls = losses.LOSSES.get(name)
    accepted = set(inspect.signature(cls.__init__).parameters) - {"self"}
    assert accepted - CHECKED_BY_THE_CONSTRUCTOR <= set(cls.params), name
    assert set(cls.params) <= accepted, name  # nothing declared that the loss does not take


@pytest.mark.parametrize("method, loss, message", [
    ("ll-r", {"delta": -1}, r"ll-r: delta must lie in \[0, 100\] \(got -1\)"),
    ("ll-cp", {"delta": 101}, r"ll-cp: delta must lie in \[0, 100\]"),
    ("ll-r", {"delta": "abc"}, r"ll-r: delta must lie in \[0, 100\] \(got 'abc'\)"),
    ("an-ls", {"epsilon": 0.5}, r"an-ls: epsilon must lie in \[0, 0.5\)"),
    ("asl", {"clip": True}, r"asl: clip must lie in \[0, 1\)"),
    ("em-apl", {"warmup": 2.5}, r"em-apl: warmup must be an integer >= 1"),
    ("epr", {"k": 0}, "epr: k must be a positive number of labels per image"),
    ("splc", {"reduction": "none"}, "splc: reduction must be one of sum, mean"),
    ("role", {"lr_mult": float("nan")}, "role: lr_mult must be > 0"),
])
def test_a_parameter_out_of_range_is_refused_when_the_config_is_made(method, loss, message):
    from pamc.config import TrainConfig, make_config

    with pytest.raises(PamcError, match=message) as error:
        make_config({**TrainConfig().to_dict(), "method": method, "loss": loss})
    assert "\n" not in str(error.value)


def test_the_command_line_refuses_a_bad_loss_parameter_before_any_work(tmp_path, capsys):
    from pamc.apps.cli import main

    out = tmp_path / "run"
    assert main(["train", "--method", "ll-r", "--loss", "delta=-1", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.strip() == "pamc: error: ll-r: delta must lie in [0, 100] (got -1)" and not out.exists()
    assert main(["train", "--method", "ll-r", "--loss", "delta=abc", "--out", str(out)]) == 2
    assert "delta must lie in [0, 100] (got 'abc')" in capsys.readouterr().err and not out.exists()


def test_param_ranges_against_hand_written_cases():
    from pamc.losses.base import Param

    half_open = Param(0, 1, high_open=True)
    assert [half_open.valid(v) for v in (0, 0.5, 1, -0.1, None, "x", True, float("inf"))] == \
        [True, True, False, False, False, False, False, False]
    assert Param(low=1, integer=True).valid(3) and not Param(low=1, integer=True).valid(1.5)
    assert Param(optional=True, low=0).valid(None) and Param(choices=("a",)).valid("a")
    assert Param(low=0, low_open=True).describe() == "be > 0" and half_open.describe() == "lie in [0, 1)"


def test_a_loss_built_directly_is_checked_as_build_checks_it():
    import numpy as np

    from pamc.losses.asymmetric import AsymmetricLoss
    from pamc.losses.large_loss import LargeLossRejection

    with pytest.raises(PamcError, match=r"ll-r: delta must lie in \[0, 100\] \(got -1\)"):
        LargeLossRejection(delta=-1)
    with pytest.raises(PamcError, match=r"asl: clip must lie in \[0, 1\)"):
        AsymmetricLoss(clip=5)
    assert losses.build("ll-r", delta=np.int64(2)).delta == 2.0  # numpy numbers are numbers
    with pytest.raises(PamcError, match="change_epoch must be an integer >= 1"):
        losses.build("splc", change_epoch=2.0)
