"""The multi-object scene benchmark: determinism, cache, object-split hygiene, boxes, sources."""
import gzip
from itertools import combinations
from pathlib import Path

import numpy as np
import pytest

from pamc.data import LOADERS
from pamc.data import scenes as S
from pamc.errors import PamcError

SMALL = dict(canvas=48, max_objects=3, object_scale=(12, 20), n_train=40, n_val=10, n_test=20)


def _arrays(bundle):
    return [a for sp in (bundle.train, bundle.val, bundle.test) for a in (sp.images.images.numpy(), sp.full)]


def _iou(a, b):
    ix = max(0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def _tagged_bank(path, split=True):
    """Non-square solid rectangles: class c's train objects have intensity 10 + c, test ones 200 + c.

    A solid object stays solid after resizing, so every scene pixel names its source object group."""
    labels = np.repeat(np.arange(4), 10)
    is_test = np.tile(np.arange(10) >= 7, 4).astype(np.int64)
    images = np.empty((len(labels), 6, 10), dtype=np.uint8)
    images[:] = np.where(is_test == 1, 200, 10)[:, None, None] + labels[:, None, None]
    arrays = dict(images=images, labels=labels, class_names=np.array(["a", "b", "c", "d"]))
    if split:
        arrays["split"] = is_test
    np.savez(path, **arrays)
    return path


def test_same_seed_same_scenes_other_seed_differs(tmp_path):
    a = S.make_scenes(seed=3, cache_dir=tmp_path / "a", **SMALL)
    b = S.make_scenes(seed=3, cache_dir=tmp_path / "b", **SMALL)
    c = S.make_scenes(seed=4, cache_dir=tmp_path / "c", **SMALL)
    for x, y in zip(_arrays(a), _arrays(b)):
        np.testing.assert_array_equal(x, y)
    assert a.train.boxes == b.train.boxes and a.test.boxes == b.test.boxes
    assert not np.array_equal(a.train.images.images.numpy(), c.train.images.images.numpy())


def test_cache_hit_loads_the_file_and_corrupt_file_is_rebuilt(tmp_path, monkeypatch):
    first = S.make_scenes(cache_dir=tmp_path, **SMALL)
    path = tmp_path / first.info["cache_file"].rsplit("/", 1)[-1]
    assert path.is_file() and list(tmp_path.iterdir()) == [path]  # no temp file left behind

    def no_generation(*args, **kwargs):
        raise AssertionError("cache miss")

    with monkeypatch.context() as m:
        m.setattr(S, "_generate", no_generation)
        again = S.make_scenes(cache_dir=tmp_path, **SMALL)
    for x, y in zip(_arrays(first), _arrays(again)):
        np.testing.assert_array_equal(x, y)
    assert again.test.boxes == first.test.boxes and again.info == first.info

    path.write_bytes(b"not a zip file")
    rebuilt = S.make_scenes(cache_dir=tmp_path, **SMALL)
    for x, y in zip(_arrays(first), _arrays(rebuilt)):
        np.testing.assert_array_equal(x, y)
    assert np.load(path)["train_images"].shape == (40, 48, 48)


def test_cache_key_covers_parameters_and_env_var(tmp_path, monkeypatch):
    monkeypatch.setenv("PAMC_CACHE", str(tmp_path))
    a = S.make_scenes(**SMALL)
    b = S.make_scenes(**{**SMALL, "n_test": 21})
    assert a.info["cache_file"] != b.info["cache_file"]
    assert {p.name for p in (tmp_path / "scenes").iterdir()} == {
        a.info["cache_file"].rsplit("/", 1)[-1], b.info["cache_file"].rsplit("/", 1)[-1]}
    assert len(b.test) == 21
    # the splits are independent streams: more test scenes leave the train scenes unchanged
    np.testing.assert_array_equal(a.train.images.images.numpy(), b.train.images.images.numpy())


def test_test_scenes_use_only_test_objects(tmp_path):
    bank = _tagged_bank(tmp_path / "tagged.npz")
    bundle = S.make_scenes(f"npz:{bank}", max_objects=4, object_scale=(5, 14), canvas=32,
                           n_train=60, n_val=20, n_test=60, cache_dir=tmp_path)
    assert bundle.name == "scenes-tagged" and bundle.class_names == ["a", "b", "c", "d"]
    train_values, test_values = {0, 10, 11, 12, 13}, {0, 200, 201, 202, 203}
    for split, allowed in ((bundle.train, train_values), (bundle.val, train_values), (bundle.test, test_values)):
        values = np.unique(split.images.images.numpy())
        assert set(values.tolist()) <= allowed
        assert len(values) > 3  # several classes really present
    assert bundle.info["bank_objects"] == {"train": 28, "test": 12}


def test_boxes_are_tight_and_labels_match_boxes(tmp_path):
    bundle = S.make_scenes(cache_dir=tmp_path, **SMALL)
    for split in (bundle.train, bundle.val, bundle.test):
        images = split.images.images.numpy()
        counts = [len(b) for b in split.boxes]
        assert min(counts) >= 1 and max(counts) <= 3
        for image, boxes, full in zip(images, split.boxes, split.full):
            covered = np.zeros(image.shape, dtype=bool)
            for cls, x0, y0, x1, y1 in boxes:
                assert 0 <= x0 < x1 <= 48 and 0 <= y0 < y1 <= 48
                assert max(x1 - x0, y1 - y0) <= 20
                assert image[y0:y1, x0:x1].any()
                covered[y0:y1, x0:x1] = True
            assert not image[~covered].any()
            assert np.flatnonzero(full).tolist() == sorted({b[0] for b in boxes})
    assert bundle.info["objects"]["train"] == sum(len(b) for b in bundle.train.boxes)


def test_single_object_box_is_the_nonzero_extent(tmp_path):
    bundle = S.make_scenes(max_objects=1, canvas=40, object_scale=(10, 30), n_train=30, n_val=0, n_test=5,
                           cache_dir=tmp_path)
    assert len(bundle.val) == 0
    for image, boxes in zip(bundle.train.images.images.numpy(), bundle.train.boxes):
        ys, xs = np.nonzero(image)
        assert boxes[0][1:] == (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)


def test_placement_keeps_overlap_low_when_there_is_room(tmp_path):
    bundle = S.make_scenes(canvas=64, max_objects=4, object_scale=10, n_train=50, n_val=0, n_test=0,
                           cache_dir=tmp_path)
    ious = [_iou(a[1:], b[1:]) for boxes in bundle.train.boxes for a, b in combinations(boxes, 2)]
    assert len(ious) > 50 and max(ious) < 0.3


def test_pretraining_objects_are_single_train_objects(tmp_path):
    bank = S.load_object_bank(f"npz:{_tagged_bank(tmp_path / 'tagged.npz')}")
    images, labels = S.pretraining_objects(bank, canvas=24, object_scale=(4, 12), n=50, seed=1)
    assert images.shape == (50, 24, 24) and images.dtype == np.uint8 and labels.shape == (50,)
    for image, label in zip(images, labels):
        assert set(np.unique(image).tolist()) == {0, 10 + label}
    again, _ = S.pretraining_objects(bank, canvas=24, object_scale=(4, 12), n=50, seed=1)
    np.testing.assert_array_equal(images, again)


def test_scene_pretraining_is_cached_deterministic_and_loads(tmp_path, monkeypatch):
    """The backbone trains once per settings (channels_last inside, contiguous on disk), the same
    settings in another cache give the same weights, and the file loads into the backbone."""
    import torch
    from safetensors.torch import load_file

    import pamc.pretrain as P
    from pamc.models import build_backbone

    small = dict(canvas=32, object_scale=(10, 14), n=96, epochs=1, batch_size=32)
    first = P.pretrained_scene_backbone(cache=str(tmp_path / "a"), **small)
    again = P.pretrained_scene_backbone(cache=str(tmp_path / "b"), **small)
    a, b = load_file(first), load_file(again)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    torch.manual_seed(0)  # the initialisation the pretraining starts from (seed 0)
    assert not torch.allclose(a["0.weight"], build_backbone("scene-cnn").state_dict()["0.weight"])  # it trained
    build_backbone("scene-cnn", weights=str(first))  # loads strictly

    def no_training(*_, **__):
        raise AssertionError("trained again despite the cache")

    monkeypatch.setattr(S, "pretraining_objects", no_training)
    assert P.pretrained_scene_backbone(cache=str(tmp_path / "a"), **small) == first
    threads = torch.get_num_threads()
    monkeypatch.setattr(torch, "get_num_threads", lambda: threads + 1)  # another thread count, other rounding
    with pytest.raises(AssertionError, match="trained again"):
        P.pretrained_scene_backbone(cache=str(tmp_path / "a"), **small)
    monkeypatch.undo()
    monkeypatch.setattr(S, "pretraining_objects", no_training)
    monkeypatch.setattr(P, "PRETRAIN_VERSION", P.PRETRAIN_VERSION + 1)  # a new recipe misses the old file
    with pytest.raises(AssertionError, match="trained again"):
        P.pretrained_scene_backbone(cache=str(tmp_path / "a"), **small)


def test_digits_bank_is_a_stratified_70_30_split():
    bank = S.load_object_bank("digits")
    assert (len(bank.train_labels), len(bank.test_labels)) == (1257, 540)
    assert bank.train_images.shape[1:] == (8, 8) and bank.train_images.dtype == np.uint8
    assert bank.train_images.max() == 255 and bank.class_names == [str(d) for d in range(10)]
    test_share = np.bincount(bank.test_labels) / (np.bincount(bank.test_labels) + np.bincount(bank.train_labels))
    assert np.all(np.abs(test_share - 0.3) < 0.01)


def test_npz_bank_without_split_is_split_70_30_per_class(tmp_path):
    path = _tagged_bank(tmp_path / "nosplit.npz", split=False)
    bank = S.load_object_bank(f"npz:{path}")
    assert np.bincount(bank.test_labels).tolist() == [3, 3, 3, 3]
    assert np.bincount(bank.train_labels).tolist() == [7, 7, 7, 7]


@pytest.mark.parametrize("arrays, message", [
    (dict(labels=np.zeros(4, int)), "lacks images"),
    (dict(images=np.ones((4, 5, 5), np.float32), labels=np.zeros(4, int)), "uint8"),
    (dict(images=np.ones((4, 5), np.uint8), labels=np.zeros(4, int)), "N x H x W"),
    (dict(images=np.ones((4, 5, 5), np.uint8), labels=np.zeros(3, int)), "labels must be 4 integers"),
    (dict(images=np.ones((4, 5, 5), np.uint8), labels=np.array([0, 1, -1, 0])), ">= 0"),
    (dict(images=np.ones((4, 5, 5), np.uint8), labels=np.array([0, 1, 2, 0]), class_names=np.array(["a", "b"])),
     "class_names"),
    (dict(images=np.ones((4, 5, 5), np.uint8), labels=np.zeros(4, int), split=np.array([0, 2, 1, 0])), "split"),
    (dict(images=np.ones((4, 5, 5), np.uint8), labels=np.zeros(4, int), split=np.zeros(4, int)), "both train"),
    (dict(images=np.ones((4, 5, 5), np.uint8), labels=np.array([0, 0, 0, 1])), "at least 2 objects"),
    (dict(images=np.ones((4, 5, 5), np.uint8), labels=np.zeros(4, int), class_names=np.array([{"a": 1}])), "str array"),
])
def test_npz_bank_bad_input(tmp_path, arrays, message):
    path = tmp_path / "bank.npz"
    np.savez(path, **arrays)
    with pytest.raises(PamcError, match=message):
        S.load_object_bank(f"npz:{path}")


def test_npz_missing_file_and_bad_parameters(tmp_path):
    with pytest.raises(PamcError, match="not found"):
        S.make_scenes(f"npz:{tmp_path / 'none.npz'}", cache_dir=tmp_path)
    with pytest.raises(PamcError, match="unknown scene source 'imagenet'"):
        S.make_scenes("imagenet", cache_dir=tmp_path)
    with pytest.raises(PamcError, match="object_scale"):
        S.make_scenes(canvas=32, object_scale=(10, 40), cache_dir=tmp_path)
    with pytest.raises(PamcError, match="object_scale"):
        S.make_scenes(object_scale=(10, 12, 14), cache_dir=tmp_path)
    with pytest.raises(PamcError, match="max_objects"):
        S.make_scenes(max_objects=0, cache_dir=tmp_path)


def _write_idx(path, array):
    header = bytes([0, 0, 0x08, array.ndim]) + np.array(array.shape, dtype=">i4").tobytes()
    with gzip.open(path, "wb") as fh:
        fh.write(header + array.astype(np.uint8).tobytes())


def test_fashion_source_reads_idx_files(tmp_path):
    rng = np.random.default_rng(0)
    parts = {"train": rng.integers(0, 256, (20, 28, 28)), "t10k": rng.integers(0, 256, (10, 28, 28))}
    labels = {"train": np.arange(20) % 10, "t10k": np.arange(10)[::-1]}
    for part in parts:
        _write_idx(tmp_path / f"{part}-images-idx3-ubyte.gz", parts[part])
        _write_idx(tmp_path / f"{part}-labels-idx1-ubyte.gz", labels[part])
    bank = S.load_object_bank(f"fashion:{tmp_path}")
    np.testing.assert_array_equal(bank.train_images, parts["train"])
    np.testing.assert_array_equal(bank.test_labels, labels["t10k"])
    assert bank.class_names[0] == "T-shirt/top" and bank.class_names[9] == "Ankle boot"
    bundle = S.make_scenes(f"fashion:{tmp_path}", cache_dir=tmp_path / "cache", **SMALL)
    assert bundle.name == "scenes-fashion" and bundle.num_classes == 10

    _write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", np.zeros((10, 2)))  # 2-D where labels are 1-D
    with pytest.raises(PamcError, match="not a gzipped idx file"):
        S.load_object_bank(f"fashion:{tmp_path}")


def test_missing_fashion_folder_says_how_to_get_it(tmp_path):
    with pytest.raises(PamcError, match=r"Fashion-MNIST not found in .*apt-get install dataset-fashion-mnist"):
        S.load_object_bank(f"fashion:{tmp_path / 'nowhere'}")


def test_registered(tmp_path):
    assert LOADERS.get("scenes") is S.make_scenes
    bundle = S.make_scenes(n_train=5000, n_val=0, n_test=0, cache_dir=tmp_path)
    assert bundle.train.images.images.shape == (5000, 64, 64)


FASHION = Path("/usr/share/datasets/fashion-mnist")


@pytest.mark.skipif(not (FASHION / "train-images-idx3-ubyte.gz").is_file(),
                    reason="Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)")
def test_real_fashion_mnist_bank_and_scenes(tmp_path):
    bank = S.load_object_bank("fashion")
    assert bank.train_images.shape == (60000, 28, 28) and bank.test_images.shape == (10000, 28, 28)
    assert bank.class_names[0] == "T-shirt/top" and len(bank.class_names) == 10
    assert np.bincount(bank.train_labels).tolist() == [6000] * 10
    scenes = S.make_scenes("fashion", n_train=20, n_val=5, n_test=5, cache_dir=tmp_path)
    assert scenes.num_classes == 10 and scenes.train.full.sum(1).min() >= 1
