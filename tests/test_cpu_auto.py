"""`auto` that knows the CPU: bf16 and channels_last for a single training process on a CPU that
runs bf16 natively, fp32 NCHW elsewhere and under DDP; the choice recorded and kept on resume;
data-loading workers from the cores available; cached images read by whole batches."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import pamc
from pamc import runtime
from pamc.config import TrainConfig, make_config
from pamc.distributed import Dist
from pamc.errors import PamcError
from pamc.runtime import Runtime, auto_workers, native_bf16


def cpuinfo(folder, flags: str) -> str:
    folder.mkdir()
    path = folder / "cpuinfo"
    path.write_text(f"processor\t: 0\nflags\t\t: fpu sse2 avx2 {flags}\n\nprocessor\t: 1\nflags\t\t: fpu sse2 avx2 {flags}\n")
    return str(path)


def test_native_bf16_reads_the_cpu_flags(tmp_path):
    assert native_bf16(cpuinfo(tmp_path / "a", "avx512f avx512_bf16 amx_bf16")) == "amx_bf16"
    assert native_bf16(cpuinfo(tmp_path / "b", "avx512f avx512_bf16")) == "avx512_bf16"
    assert native_bf16(cpuinfo(tmp_path / "c", "avx512f")) is None
    assert native_bf16(str(tmp_path / "absent")) is None


@pytest.mark.parametrize("feature, world, expected", [("amx_bf16", 1, (torch.bfloat16, True)),
                                                      (None, 1, (None, False)),
                                                      ("amx_bf16", 2, (None, False))])
def test_cpu_auto_chooses_by_the_cpu_and_the_process_count(monkeypatch, feature, world, expected):
    monkeypatch.setattr(runtime, "native_bf16", lambda: feature)
    monkeypatch.setattr(Dist, "from_env", classmethod(lambda cls, device_type: cls(0, world, 0)))
    rt = Runtime.create("cpu", cpu_auto=True)
    assert (rt.amp_dtype, rt.channels_last) == expected
    assert ("bf16 autocast" in rt.choice) == (expected[0] is not None) and rt.choice
    assert Runtime.create("cpu").amp_dtype is None and not Runtime.create("cpu").channels_last  # evaluation, inference
    explicit = Runtime.create("cpu", amp="off", channels_last="on", cpu_auto=True)
    assert explicit.amp_dtype is None and explicit.channels_last and not explicit.choice  # nothing left to auto
    half = Runtime.create("cpu", amp="off", cpu_auto=True)
    assert half.amp_dtype is None and "bf16" not in half.choice.split(":")[-1] and half.for_evaluation() == half
    assert rt.for_evaluation().amp_dtype is None and rt.for_evaluation().channels_last == rt.channels_last


def test_workers_follow_the_cores_and_the_processes(monkeypatch):
    monkeypatch.setattr(runtime, "available_cores", lambda: 16)
    assert [auto_workers(p) for p in (1, 2, 4, 8, 16)] == [8, 8, 4, 2, 0]
    monkeypatch.setattr(runtime, "available_cores", lambda: 2)
    assert auto_workers(1) == 2 and auto_workers(2) == 0
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    assert runtime.processes_per_node() == 4


def test_num_workers_must_be_a_count_or_auto():
    assert make_config(TrainConfig().to_dict()).num_workers == "auto"
    with pytest.raises(PamcError, match="num_workers must be a number >= 0 or auto"):
        make_config({**TrainConfig().to_dict(), "num_workers": "many"})


def test_the_choice_is_recorded_and_a_resumed_run_keeps_it(tiny_config, tiny_bundle, monkeypatch):
    monkeypatch.setattr(runtime, "native_bf16", lambda: "amx_bf16")
    config = {**tiny_config, "epochs": 1, "tensorboard": "off"}
    first = pamc.train(config, bundle=tiny_bundle)
    recorded = first.results["runtime"]
    assert recorded["amp"] == "bf16" and recorded["channels_last"] == "on" and "amx_bf16" in recorded["choice"]
    assert json.loads((first.out / "best" / "model.json").read_text())["runtime"] == recorded
    assert torch.load(first.out / "last" / "state.pt", weights_only=True)["runtime"] == recorded
    monkeypatch.setattr(runtime, "native_bf16", lambda: None)  # the same run, resumed on another machine
    resumed = pamc.train({"out": str(first.out), "epochs": 2}, resume=True, bundle=tiny_bundle)
    assert resumed.results["runtime"]["amp"] == "bf16" and resumed.results["runtime"]["channels_last"] == "on"
    fresh = pamc.train({**config, "out": config["out"] + "-new"}, bundle=tiny_bundle)
    assert fresh.results["runtime"]["amp"] == "off"


def test_cached_images_are_taken_by_whole_batches(tmp_path):
    from pamc.data.images import CachedImages

    pixels = np.random.default_rng(0).integers(0, 256, (7, 3, 4, 4), dtype=np.uint8)
    np.save(tmp_path / "cache.npy", pixels)
    (tmp_path / "cache.npy.json").write_text(json.dumps({"fingerprint": "x", "shape": list(pixels.shape), "kept": None,
                                                          "skipped": {}}))
    images = CachedImages(tmp_path / "cache.npy")
    index = torch.tensor([5, 0, 3, 3])
    assert torch.equal(images.take(index), torch.stack([images[int(i)] for i in index]))


def depthwise_net() -> torch.nn.Module:
    return torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.Conv2d(8, 8, 3, padding=1, groups=8),
                               torch.nn.Conv2d(8, 8, 3, padding=1, groups=2), torch.nn.Conv2d(8, 4, 1))


def test_depthwise_share_counts_multiply_adds_as_by_hand():
    # on one 8 x 8 image: 64 positions x out channels x in channels per group x kernel area
    full, depthwise, grouped, pointwise = 64 * 8 * 3 * 9, 64 * 8 * 1 * 9, 64 * 8 * 4 * 9, 64 * 4 * 8
    assert runtime.depthwise_share(depthwise_net(), 8) == pytest.approx(depthwise / (full + depthwise + grouped + pointwise))
    assert runtime.depthwise_share(torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3)), 8) == 0


def test_auto_keeps_fp32_for_a_model_with_many_depthwise_multiply_adds(monkeypatch):
    monkeypatch.setattr(runtime, "native_bf16", lambda: "amx_bf16")
    rt = Runtime.create("cpu", cpu_auto=True)
    revised = rt.for_model(depthwise_net(), 8)  # 12 % depthwise
    assert revised.amp_dtype is None and revised.channels_last and "depthwise" in revised.choice
    assert revised.for_evaluation() == revised
    assert rt.for_model(torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3)), 8) == rt  # no depthwise: bf16 stays
    explicit = Runtime.create("cpu", amp="bf16", cpu_auto=True)
    assert explicit.for_model(depthwise_net(), 8).amp_dtype == torch.bfloat16  # an explicit --amp wins


def test_a_run_on_a_depthwise_backbone_trains_in_fp32_where_auto_would_choose_bf16(tiny_config, tiny_bundle,
                                                                                  monkeypatch):
    pytest.importorskip("timm")
    monkeypatch.setattr(runtime, "native_bf16", lambda: "amx_bf16")
    result = pamc.train({**tiny_config, "backbone": "timm:mobilenetv3_small_050", "epochs": 1, "tensorboard": "off"},
                        bundle=tiny_bundle)
    recorded = result.results["runtime"]
    assert recorded["amp"] == "off" and recorded["channels_last"] == "on" and "depthwise" in recorded["choice"]
