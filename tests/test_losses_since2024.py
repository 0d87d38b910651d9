"""VLPL, AEVLP (DAMP + GPR) and IGNORE against spec since-2024 sections 3-5, computed by hand here
(loops over entries, plain math), not by pamc's code."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import pamc
from pamc import losses
from pamc.errors import PamcError
from pamc.apps.table import _published_text, read_run
from pamc.losses.ignore import cam_mask
from pamc.published import PUBLISHED
from pamc.pseudo import aevlp_pseudo_labels, check_scores, pseudo_label_quality, vlpl_pseudo_labels


def nlog(v, eps=1e-5):
    return -math.log(v + eps)


def sig(x):
    return 1 / (1 + math.exp(-x))


# --- the pseudo-label rules -------------------------------------------------------------------

def test_vlpl_rule_is_a_strict_threshold_on_the_global_view():
    scores = torch.tensor([[[0.3, 0.5, 0.2], [0.9, 0.05, 0.05]],
                           [[0.31, 0.29, 0.4], [0.0, 0.0, 1.0]]])
    assert vlpl_pseudo_labels(scores).tolist() == [[0, 1, 0], [1, 0, 1]]  # 0.3 itself is not > 0.3
    assert vlpl_pseudo_labels(scores[:, 0]).tolist() == [[0, 1, 0], [1, 0, 1]]  # N x C: one view


def test_vlpl_negative_rule_marks_the_lowest_scores_ties_by_class_index():
    scores = torch.tensor([[0.1, 0.1, 0.5, 0.05, 0.25]])
    # int(0.4 * 5) = 2 lowest: 0.05 (class 3), then the tie 0.1 -> class 0 first
    assert vlpl_pseudo_labels(scores, threshold=0.3, negative_fraction=0.4).tolist() == [[-1, 0, 1, -1, 0]]


def damp_by_hand(views, observed, eta0, tau, top_k):
    g, tiles = views[0], views[1:]
    positives = [c for c, o in enumerate(observed) if o == 1]
    eta = min([g[c] for c in positives] + [eta0])
    merged = []
    for c in range(len(g)):
        a, b = max(t[c] for t in tiles), min(t[c] for t in tiles)
        merged.append((g[c] + (a if a > eta else b)) / 2)
    ranked = sorted(range(len(g)), key=lambda c: (-merged[c], c))[:top_k]
    return [int(c in ranked and merged[c] >= tau) for c in range(len(g))]


def test_aevlp_rule_matches_the_spec_with_an_adaptive_eta_and_top_k():
    rng = np.random.default_rng(0)
    views = rng.dirichlet(np.ones(6) * 0.3, size=(20, 5)).astype(np.float32)  # 20 images, global + 2 x 2 tiles
    observed = np.zeros((20, 6), np.float32)
    observed[np.arange(20), rng.integers(0, 6, 20)] = 1
    for eta0, tau, top_k in ((0.0, 0.5, 3), (0.3, 0.2, 2), (0.1, 0.05, 1)):
        got = aevlp_pseudo_labels(views, observed, eta0, tau, top_k).tolist()
        assert got == [damp_by_hand(v.tolist(), o.tolist(), eta0, tau, top_k) for v, o in zip(views, observed)]


def test_aevlp_eta_adapts_to_the_observed_positive_and_ties_go_to_the_lower_class():
    # global view; two tiles; the observed positive is class 0 with global score 0.1
    views = torch.tensor([[[0.10, 0.30, 0.30, 0.30],
                           [0.50, 0.20, 0.20, 0.05],
                           [0.20, 0.08, 0.08, 0.02]]])
    observed = torch.tensor([[1.0, 0, 0, 0]])
    # eta = min(0.1, eta0 0.3) = 0.1: class 3's tile max 0.05 <= 0.1 -> its min 0.02
    # merged: [(0.1+0.5)/2, (0.3+0.2)/2, (0.3+0.2)/2, (0.3+0.02)/2] = [0.3, 0.25, 0.25, 0.16]
    assert aevlp_pseudo_labels(views, observed, eta0=0.3, tau=0.2, top_k=2).tolist() == [[1, 1, 0, 0]]
    assert aevlp_pseudo_labels(views, observed, eta0=0.3, tau=0.2, top_k=3).tolist() == [[1, 1, 1, 0]]
    # eta0 0.0: every tile max > 0 -> class 3 merges 0.05: (0.3 + 0.05) / 2 = 0.175 >= tau 0.17
    assert aevlp_pseudo_labels(views, observed, eta0=0.0, tau=0.17, top_k=4).tolist() == [[1, 1, 1, 1]]


def test_aevlp_needs_tiles():
    with pytest.raises(PamcError, match="global view and tiles"):
        aevlp_pseudo_labels(torch.rand(3, 4), torch.zeros(3, 4))


def test_quality_counts_only_unobserved_entries():
    pseudo = torch.tensor([[1, 1, 0, 1], [0, 1, 1, 0]])
    observed = torch.tensor([[1.0, 0, 0, 0], [0, 0, 0, 0]])
    full = np.array([[1, 1, 1, 0], [0, 0, 1, 1]])
    q = pseudo_label_quality(pseudo, observed, full)
    # unobserved pseudo-positives: (0,1) hit, (0,3) miss, (1,1) miss, (1,2) hit -> 2/4; true unobserved: 4
    assert q["precision"] == 0.5 and q["recall"] == 0.5 and q["pseudo_positives_per_image"] == 2.0


def test_scores_are_checked():
    with pytest.raises(PamcError, match="training set needs 4 images x 3 classes"):
        check_scores(np.zeros((4, 2)), 4, 3)
    with pytest.raises(PamcError, match=r"in \[0, 1\]"):
        check_scores(np.full((4, 3), 2.0), 4, 3)
    with pytest.raises(PamcError, match="N x C or N x V x C"):
        check_scores(np.zeros(4), 4, 3)


# --- the losses ---------------------------------------------------------------------------------

def random_case(seed=0, n=5, c=4):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, c, generator=g) * 2
    observed = torch.zeros(n, c)
    observed[torch.arange(n), torch.randint(0, c, (n,), generator=g)] = 1
    observed[0, (observed[0].argmax() + 1) % c] = -1  # one observed negative
    pseudo = (torch.rand(n, c, generator=g) > 0.6).to(torch.int8)
    return logits, observed, pseudo


def test_vlpl_loss_by_hand():
    logits, observed, pseudo = random_case()
    alpha, beta = 0.2, 0.7
    loss = losses.build("vlpl", alpha=alpha, beta=beta, pseudo_labels=pseudo)
    got = loss(logits, observed, epoch=1, index=torch.arange(5))
    total = 0.0
    for i in range(5):
        for c in range(4):
            p, o, pl = sig(float(logits[i, c])), float(observed[i, c]), int(pseudo[i, c])
            if o == 1:
                total += nlog(p)
            elif o == -1:
                total += nlog(1 - p)
            elif pl == 1:
                total += beta * (0.9 * nlog(p) + 0.1 * nlog(1 - p))
            else:
                total += -alpha * (p * nlog(p) + (1 - p) * nlog(1 - p))  # -alpha * H(p), H = -(p log p + ...)
    assert float(got) == pytest.approx(total / 20, rel=1e-5)
    # warm-up: plain EM
    warm = losses.build("vlpl", alpha=alpha, pseudo_labels=pseudo, warmup_epochs=1)
    em = losses.build("em", alpha=alpha)
    assert float(warm(logits, observed, epoch=1, index=torch.arange(5))) == pytest.approx(float(em(logits, observed)))


def test_gpr_loss_by_hand():
    logits, observed, pseudo = random_case(1)
    beta, gauss, q2, q3, lam, reg, k = (0, 2, -2, -2), (0.5, 2, 0.8, 0.5), 0.01, 1.0, (0.7, 0.4), 0.05, 1.5
    epochs, epoch = 8, 3
    loss = losses.build("gpr", beta=beta, gauss=gauss, q2=q2, q3=q3, lam=lam, reg=reg, k=k, num_epochs=epochs,
                        pseudo_labels=pseudo)
    got = float(loss(logits, observed, epoch=epoch, index=torch.arange(5)))
    late, early = (epoch - 1) / epochs, epoch / epochs
    w, b = beta[0] + (beta[1] - beta[0]) * late, beta[2] + (beta[3] - beta[2]) * late
    mu, sigma = gauss[0] + (gauss[2] - gauss[0]) * early, gauss[1] + (gauss[3] - gauss[1]) * early
    total, prob_sum = 0.0, 0.0
    for i in range(5):
        for c in range(4):
            p, o, pl = sig(float(logits[i, c])), float(observed[i, c]), int(pseudo[i, c])
            prob_sum += p
            K = sig(w * p + b)
            V = math.exp(-((p - mu) / sigma) ** 2 / 2)
            if o == 1:
                total += -math.log(p + 1e-7)
            elif o == -1:
                total += -math.log(1 - p + 1e-7)
            elif pl == 1:
                v_clip = min(max(V, 1 - lam[0]), 1 - lam[1])
                total += (1 - v_clip) * (0.9 * -math.log(p + 1e-7) + 0.1 * -math.log(1 - p + 1e-7))
            else:
                total += V * (K * (1 - p ** q2) / q2 + (1 - K) * (1 - (1 - p) ** q3) / q3)
    expected = total / 20 + reg * (prob_sum / 5 - k) ** 2 / 16
    assert got == pytest.approx(expected, rel=1e-4)


def test_gpr_without_pseudo_positives_is_gr_plus_the_prior():
    logits, observed, _ = random_case(2)
    none = torch.zeros(5, 4, dtype=torch.int8)
    gpr = losses.build("gpr", pseudo_labels=none, reg=0.0)
    gr = losses.build("gr")
    assert float(gpr(logits, observed, epoch=4, index=torch.arange(5))) == pytest.approx(float(gr(logits, observed, epoch=4)))


def test_pseudo_label_losses_need_scores_and_check_their_parameters():
    with pytest.raises(PamcError, match="pamc pseudo-label"):
        losses.build("vlpl")
    with pytest.raises(PamcError, match="lam must be 2 numbers"):
        losses.build("gpr", lam=(0.2, 0.7), pseudo_labels=torch.zeros(2, 2))
    with pytest.raises(PamcError, match="threshold must lie in"):
        losses.build("vlpl", threshold=1.5, pseudo_labels=torch.zeros(2, 2))


def test_ignore_mask_on_a_tiny_image():
    cams = torch.zeros(2, 2, 2, 2)
    cams[0, 1] = torch.tensor([[4.0, 0.0], [1.0, -1.0]])  # image 0: positive class 1
    cams[1, 0] = torch.tensor([[2.0, 2.0], [2.0, 2.0]])
    observed = torch.tensor([[0.0, 1.0], [1.0, 1.0]])  # image 1 has two positives: left unmasked
    mask = cam_mask(cams, observed, (4, 4), threshold=0.8)
    # by hand: (cam - (-1)) / 4 = [[1.25, 0.25], [0.5, 0]], upsampled bilinearly 2 -> 4 (half-pixel centres)
    norm = [[1.25, 0.25], [0.5, 0.0]]

    def source(i):  # output pixel i of 4 -> source coordinate in [0, 1]
        return min(max((i + 0.5) / 2 - 0.5, 0.0), 1.0)

    def at(y, x):
        top = norm[0][0] * (1 - x) + norm[0][1] * x
        bottom = norm[1][0] * (1 - x) + norm[1][1] * x
        return top * (1 - y) + bottom * y

    up = [[at(source(i), source(j)) for j in range(4)] for i in range(4)]
    assert up[1] == pytest.approx([1.0625, 0.84375, 0.40625, 0.1875])
    assert mask[0, 0].tolist() == [[float(v > 0.8) for v in row] for row in up]
    assert mask[0, 0, 0].tolist() == [1, 1, 0, 0] and mask[0, 0, 3].tolist() == [0, 0, 0, 0]
    assert mask[1].eq(1).all()


def test_ignore_batch_norm_takes_min_and_max_across_the_batch():
    cams = torch.tensor([[[[1.0, 3.0]]], [[[2.0, 1.0]]]])  # B=2, C=1, 1 x 2 maps
    observed = torch.ones(2, 1)
    mask = cam_mask(cams, observed, (1, 2), threshold=0.3, norm="batch")
    # per position: min [1, 1], max [2, 3] -> image 0: [0/2, 2/3], image 1: [1/2, 0/3]
    assert mask[:, 0, 0].tolist() == [[0.0, 1.0], [1.0, 0.0]]
    per_image = cam_mask(cams, observed, (1, 2), threshold=0.3, norm="image")
    # image 0: (x - 1) / 3 = [0, 2/3]; image 1: (x - 1) / 2 = [0.5, 0]
    assert per_image[:, 0, 0].tolist() == [[0.0, 1.0], [1.0, 0.0]]


def test_ignore_loss_by_hand():
    g = torch.Generator().manual_seed(3)
    plain, masked, strong = (torch.randn(4, 3, generator=g) for _ in range(3))
    observed = torch.tensor([[1.0, 0, 0], [0, 1, 0], [0, 0, 1], [1, 0, 0]])
    loss = losses.build("ignore", num_classes=3, warmup=1, momentum=0.5)
    loss.gap.fill_(0.4)
    loss.class_mean.copy_(torch.tensor([0.0, -0.5, 0.2]))
    got = float(loss.combine(plain, masked, strong, observed, epoch=2))
    rejected, pos_terms, kept_terms = set(), [], []
    for i in range(4):
        for c in range(3):
            z, zm, zs, o = float(plain[i, c]), float(masked[i, c]), float(strong[i, c]), observed[i, c]
            if o == 0 and abs(z - zm) > 0.4 and z > [0.0, -0.5, 0.2][c]:
                rejected.add((i, c))
                continue
            kept_terms.append(nlog(sig(zs)) if o == 1 else nlog(1 - sig(zs)))
            if o == 1:
                pos_terms.append(nlog(sig(z)))
    mse = float(((strong - plain) ** 2).mean())
    expected = 0.1 * sum(pos_terms) / len(pos_terms) + 1.0 * sum(kept_terms) / len(kept_terms) + 0.5 * mse
    assert got == pytest.approx(expected, rel=1e-5)
    assert {tuple(x) for x in loss.last_selected.nonzero().tolist()} == rejected and rejected
    # the statistics after the step: G = 0.5 * 0.4 + 0.5 * mean |z - z_m| at positives, A = 0.5 A + 0.5 mean_b z
    gaps = [abs(float(plain[i, c] - masked[i, c])) for i in range(4) for c in range(3) if observed[i, c] == 1]
    assert float(loss.gap) == pytest.approx(0.2 + 0.5 * sum(gaps) / len(gaps), rel=1e-5)
    assert loss.class_mean.tolist() == pytest.approx((0.5 * torch.tensor([0.0, -0.5, 0.2]) + 0.5 * plain.mean(0)).tolist())
    # during warm-up nothing is rejected
    loss.combine(plain, masked, strong, observed, epoch=1)
    assert not loss.last_selected.any()


def test_the_three_methods_train_end_to_end(tiny_config, tiny_bundle, tmp_path):
    n, c = len(tiny_bundle.train), tiny_bundle.num_classes
    rng = np.random.default_rng(0)
    scores = rng.dirichlet(np.ones(c) * 0.2, size=(n, 5)).astype(np.float16)
    path = tmp_path / "scores.npy"
    np.save(path, scores)
    config = {**tiny_config, "epochs": 1, "tensorboard": "off"}
    for method, loss in (("vlpl", {}), ("gpr", {"tau": 0.2}), ("ignore", {"warmup": 0})):
        extra = {"scores": str(path)} if method != "ignore" else {}
        result = pamc.train({**config, "method": method, "loss": loss, "out": str(tmp_path / method), **extra},
                            bundle=tiny_bundle)
        assert math.isfinite(result.results["test_map"])
        if method != "ignore":
            quality = result.results["pseudo_labels"]
            assert quality["pseudo_positives"] > 0 and 0 <= quality["precision"] <= 1
            # an extra resource, said in results.json and in `pamc table`'s row
            assert result.results["extra_resources"]["short"] == "own scores"
            assert read_run(result.out).row == {"vlpl": "VLPL", "gpr": "AEVLP"}[method] + " [uses own scores]"
        else:
            assert "extra_resources" not in result.results and read_run(result.out).row == "IGNORE"
    with pytest.raises(PamcError, match="uses no per-image scores"):
        pamc.train({**config, "method": "an", "scores": str(path), "out": str(tmp_path / "an")}, bundle=tiny_bundle)


def test_published_rows_that_used_clip_are_starred():
    assert _published_text(PUBLISHED["voc-aevlp"]) == "90.46*" and PUBLISHED["cub-vlpl"].extra.startswith("CLIP")
    assert _published_text(PUBLISHED["voc-gr"]) == "89.83" and "voc-ignore" not in PUBLISHED
