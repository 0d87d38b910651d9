"""Shared fixtures: a private cache for the whole session and a tiny scene benchmark.

Every cache (scenes, pretrained scene backbones) goes to a session temp folder through
$PAMC_CACHE, so the tests never write into ~/.cache and subprocesses inherit the same place.
Torch runs on one thread (subprocesses too, via OMP_NUM_THREADS): the tensors here are tiny, and
on a busy shared CPU OpenMP's spinning threads made a 2-epoch run 6x slower than one thread.
"""
import pytest
import torch

#: data settings of the tiny benchmark; also a valid `data:` config, so runs trained on it can be
#: re-evaluated by `pamc eval` from their checkpoint (it rebuilds the data from the same cache)
TINY_DATA = {"name": "scenes", "source": "digits", "n_train": 96, "n_val": 32, "n_test": 32,
             "canvas": 32, "object_scale": [10, 14], "seed": 0}


@pytest.fixture(scope="session", autouse=True)
def pamc_cache(tmp_path_factory):
    patch = pytest.MonkeyPatch()
    folder = tmp_path_factory.mktemp("pamc-cache")
    patch.setenv("PAMC_CACHE", str(folder))
    patch.setenv("OMP_NUM_THREADS", "1")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield folder
    torch.set_num_threads(threads)
    patch.undo()


@pytest.fixture(scope="session")
def tiny_bundle(pamc_cache):
    """96/32/32 scenes of 32 px with 10 digit classes (built in well under a second)."""
    from pamc.data.scenes import make_scenes

    return make_scenes(**{k: v for k, v in TINY_DATA.items() if k != "name"})


@pytest.fixture(scope="session")
def tiny_settings():
    """Fast CPU training settings on the tiny scenes (no `out`); tests override what they study.

    lr 1e-4: at 1e-3 the tiny AN model collapses to all-negative CAMs, where BoostLU is a no-op."""
    return {"data": dict(TINY_DATA), "epochs": 2, "batch_size": 16, "lr": 1e-4, "device": "cpu",
            "num_workers": 0, "progress": False}


@pytest.fixture
def tiny_config(tiny_settings, tmp_path):
    """`tiny_settings` writing to a fresh run folder."""
    return {**tiny_settings, "data": dict(TINY_DATA), "out": str(tmp_path / "run")}
