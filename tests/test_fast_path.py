"""The fast path (bf16 autocast, channels_last) against the plain fp32 path, on CPU, and the
global batch plan (`GlobalBatches`) that makes runs on any number of processes comparable."""
from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from pamc.data import ArrayImages
from pamc.distributed import Dist, GlobalBatches
from pamc.engine import train
from pamc.runtime import Runtime, predict
from pamc.losses import build as build_loss
from pamc.models import CamClassifier

CPU = torch.device("cpu")


def runtime(bf16: bool, channels_last: bool) -> Runtime:
    return Runtime(CPU, torch.bfloat16 if bf16 else None, channels_last, Dist())


@pytest.fixture(autouse=True)
def one_thread():
    """One thread: faster on a shared 2-core machine, and the same kernels on every run."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def batch():
    g = torch.Generator().manual_seed(1)
    images = torch.randint(0, 256, (8, 3, 64, 64), dtype=torch.uint8, generator=g)
    observed = torch.zeros(8, 10)
    observed[torch.arange(8), torch.randint(0, 10, (8,), generator=g)] = 1.0  # single positives
    return images, observed


def model_for(rt: Runtime) -> CamClassifier:
    """The same weights (seeded) in the layout `rt` computes in; BoostLU on, as in training."""
    torch.manual_seed(0)
    model = CamClassifier("scene-cnn", 10, alpha=5.0)
    return model.to(memory_format=torch.channels_last) if rt.channels_last else model


def forward_backward(rt: Runtime, images, observed):
    """One training step's computation as the engine does it: prepare, autocast, loss, backward."""
    model = model_for(rt)
    with rt.autocast():
        logits = model(rt.prepare(images))
    loss = build_loss("an")(logits.float(), observed)
    loss.backward()
    return logits.detach(), loss.detach(), {n: p.grad for n, p in model.named_parameters()}


def test_channels_last_alone_changes_nothing_in_fp32(batch):
    logits, loss, grads = forward_backward(runtime(False, False), *batch)
    logits_cl, loss_cl, grads_cl = forward_backward(runtime(False, True), *batch)
    assert logits_cl.dtype == torch.float32
    torch.testing.assert_close(logits_cl, logits, atol=1e-5, rtol=0)
    torch.testing.assert_close(loss_cl, loss, atol=1e-6, rtol=0)
    for name, grad in grads.items():
        torch.testing.assert_close(grads_cl[name], grad, atol=1e-5, rtol=1e-4)


def test_bf16_channels_last_within_bf16_tolerance(batch):
    fast = runtime(True, True)
    features = model_for(fast).backbone(fast.prepare(batch[0]))
    assert features.is_contiguous(memory_format=torch.channels_last)
    logits, loss, grads = forward_backward(runtime(False, False), *batch)
    logits_bf, loss_bf, grads_bf = forward_backward(fast, *batch)
    assert logits_bf.dtype == torch.bfloat16  # the fast path did compute in bf16
    # bf16 keeps 8 significant bits (relative step 2^-8 = 0.4%); a few layers compound it
    scale = float(logits.abs().max())
    torch.testing.assert_close(logits_bf.float(), logits, atol=0.02 * scale, rtol=0)
    assert float(loss_bf) == pytest.approx(float(loss), rel=0.01)
    # gradients behind BatchNorm are small differences of large terms, so compare directions
    flat = torch.cat([g.flatten() for g in grads.values()])
    flat_bf = torch.cat([grads_bf[n].flatten() for n in grads])
    assert F.cosine_similarity(flat_bf, flat, dim=0) > 0.99
    for name, grad in grads.items():
        assert F.cosine_similarity(grads_bf[name].flatten(), grad.flatten(), dim=0) > 0.9, name


def test_predict_in_channels_last_equals_plain(batch):
    images = ArrayImages(batch[0].numpy())
    plain, cl = runtime(False, False), runtime(False, True)
    scores = predict(model_for(plain), images, plain, batch_size=3)
    scores_cl = predict(model_for(cl), images, cl, batch_size=3)
    assert scores.shape == (8, 10)
    torch.testing.assert_close(scores_cl, scores, atol=1e-5, rtol=0)
    # the evaluation alpha reaches the model (alpha 1 instead of the trained 5)
    boosted = predict(model_for(cl), images, cl, alpha=1.0, batch_size=3)
    assert not torch.allclose(boosted, scores_cl, atol=1e-3)


def test_short_training_run_bf16_channels_last_matches_plain(tmp_path):
    """Three epochs on tiny scenes: the loss curve must track the fp32 one closely.  The run is
    too short to learn much and its mAP on 32 test images is near chance and jumpy, so mAP is
    compared on the real scenes by the benchmark (`benchmarks/bench_fast_preset.py`), not here."""
    data = {"name": "scenes", "n_train": 96, "n_val": 32, "n_test": 32, "canvas": 32,
            "object_scale": [10, 14], "cache_dir": str(tmp_path / "cache")}
    logs, results = {}, {}
    for amp, cl in (("off", "off"), ("bf16", "on")):
        out = tmp_path / amp
        result = train({"data": data, "backbone": "scene-cnn", "method": "an", "epochs": 3, "lr": 1e-3,
                        "device": "cpu", "amp": amp, "channels_last": cl, "num_workers": 0,
                        "out": str(out), "progress": False})
        logs[amp] = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
        results[amp] = result.results
    plain, fast = [r["train_loss"] for r in logs["off"]], [r["train_loss"] for r in logs["bf16"]]
    assert fast == pytest.approx(plain, rel=0.02)
    assert plain[-1] < 0.85 * plain[0] and fast[-1] < 0.85 * fast[0]  # both did learn
    assert results["bf16"]["epochs"] == results["off"]["epochs"] == 3


# ----------------------------------------------------------------------------- GlobalBatches


def plans(n: int, batch_size: int, seed: int, world: int, epoch: int):
    """Per rank: the (indices, global batch size) pairs `GlobalBatches` yields in `epoch`."""
    out = []
    for rank in range(world):
        batches = GlobalBatches(n, batch_size, seed, Dist(rank=rank, world_size=world))
        batches.epoch = epoch
        out.append(list(batches))
    return out


@pytest.mark.parametrize("world", [2, 3, 4])
def test_global_batches_are_the_same_for_any_world_size(world):
    for epoch in (1, 2):
        (single,) = plans(37, 8, seed=5, world=1, epoch=epoch)
        ranks = plans(37, 8, seed=5, world=world, epoch=epoch)
        assert all(len(r) == len(single) == 5 for r in ranks)
        for step, (index, size) in enumerate(single):
            shares = [r[step][0] for r in ranks]
            assert torch.equal(torch.cat(shares), index)  # contiguous shares in rank order
            assert all(r[step][1] == size == len(index) for r in ranks)
            lengths = [len(s) for s in shares]
            assert max(lengths) - min(lengths) <= 1 and lengths == sorted(lengths, reverse=True)


def test_one_epoch_visits_every_image_once_in_a_seeded_order():
    (epoch1,) = plans(37, 8, seed=5, world=1, epoch=1)
    (epoch2,) = plans(37, 8, seed=5, world=1, epoch=2)
    (other_seed,) = plans(37, 8, seed=6, world=1, epoch=1)
    order = torch.cat([i for i, _ in epoch1])
    assert sorted(order.tolist()) == list(range(37))
    assert [len(i) for i, _ in epoch1] == [8, 8, 8, 8, 5]
    assert not torch.equal(order, torch.cat([i for i, _ in epoch2]))
    assert not torch.equal(order, torch.cat([i for i, _ in other_seed]))
    unshuffled = GlobalBatches(37, 8, 5, Dist(), shuffle=False)
    assert torch.equal(torch.cat([i for i, _ in unshuffled]), torch.arange(37))


def test_resuming_at_an_epoch_gives_that_epochs_batches():
    """The order depends only on (seed, epoch), not on the epochs the object went through."""
    running = GlobalBatches(37, 8, 5, Dist())
    seen = {}
    for epoch in (1, 2, 3):
        running.epoch = epoch
        seen[epoch] = [i for i, _ in running]
    (fresh,) = plans(37, 8, seed=5, world=1, epoch=3)
    assert all(torch.equal(a, b) for a, b in zip(seen[3], [i for i, _ in fresh]))


def test_a_global_batch_smaller_than_the_world_is_dropped_and_counted():
    single = GlobalBatches(33, 16, 0, Dist())
    triple = GlobalBatches(33, 16, 0, Dist(rank=0, world_size=3))
    assert (len(single), single.dropped) == (3, 0)
    assert (len(triple), triple.dropped) == (2, 1)  # the last global batch holds 1 image


def test_shards_cover_the_split_in_order():
    shares = [Dist(rank=r, world_size=2).shard(33) for r in range(2)]
    assert [len(s) for s in shares] == [17, 16]
    assert torch.equal(torch.cat(shares), torch.arange(33))
