"""Dataset readers, `prepare` / `load_prepared`, image files and caches, sparse labels."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import fixtures_datasets as fx
from pamc.data.images import CachedImages, ImageFiles, build_image_cache, open_cache
from pamc.data.prepared import load_prepared, prepare, split_indices
from pamc.data.sources import BENCHMARK_FACTS, describe, format_description, read_source
from pamc.errors import PamcError
from pamc.labels import LabelStore, single_positive
from pamc.sparse_labels import SparseLabels

# torchvision 0.29 deprecates its decoders (pamc falls back to PIL once they are gone)
pytestmark = pytest.mark.filterwarnings("ignore:The image decoding and encoding capabilities:DeprecationWarning")


def reference_split(num: int, seed: int = 1200, frac: float = 0.2):
    """Cole et al.'s generate_split, written out independently."""
    n_val = int(np.round(frac * num))
    perm = np.random.RandomState(seed).permutation(num)
    return np.sort(perm[:num - n_val]), np.sort(perm[-n_val:])


def lines(path):
    return path.read_text().splitlines()


# ------------------------------------------------------------------------------------ readers
def test_voc_reader(tmp_path):
    for root in (fx.make_voc(tmp_path), tmp_path / "VOCdevkit", tmp_path / "VOCdevkit" / "VOC2012"):
        src = read_source("voc", root)
        assert src.image_root == tmp_path / "VOCdevkit" / "VOC2012"
        assert src.train.paths == ["JPEGImages/2007_000010.jpg", "JPEGImages/2008_000002.jpg", "JPEGImages/2008_000003.jpg"]
        expected = np.zeros((3, 20), dtype=np.uint8)
        expected[0, 14] = 1  # person
        expected[1, 0] = 1  # aeroplane; person is difficult (0): negative
        expected[2, [2, 7]] = 1  # bird, cat; dog difficult
        np.testing.assert_array_equal(src.train.full, expected)
        assert src.test.paths == ["JPEGImages/2009_000001.jpg", "JPEGImages/2009_000002.jpg"]
        assert src.test.full[0].nonzero()[0].tolist() == [7] and src.test.full[1].nonzero()[0].tolist() == [17, 19]


def test_voc_reader_errors(tmp_path):
    root = fx.make_voc(tmp_path)
    main = root / "VOCdevkit/VOC2012/ImageSets/Main"
    (main / "cow_val.txt").write_text("2009_000001 2\n")
    with pytest.raises(PamcError, match=r"cow_val.txt:1: expected '<image id> <1\|0\|-1>'"):
        read_source("voc", root)
    (main / "cow_val.txt").unlink()
    with pytest.raises(PamcError, match="cow_val.txt not found"):
        read_source("voc", root)


def test_coco_reader(tmp_path):
    src = read_source("coco", fx.make_coco(tmp_path))
    assert src.class_names == ["person", "car", "bicycle", "toothbrush"]  # list position, not category id
    assert src.train.paths == [f"train2014/COCO_train2014_{i:012d}.jpg" for i in (10, 100, 25, 9)]  # string order
    np.testing.assert_array_equal(src.train.full, [[0, 1, 0, 0], [1, 0, 0, 1], [0, 0, 1, 0], [1, 0, 0, 0]])
    assert src.test.paths == ["val2014/COCO_val2014_000000000042.jpg", "val2014/COCO_val2014_000000000007.jpg"]
    np.testing.assert_array_equal(src.test.full, [[0, 0, 1, 0], [1, 0, 0, 0]])


def test_nuswide_readers(tmp_path):
    src = read_source("nuswide", fx.make_nuswide_formatted(tmp_path / "cole"))
    assert src.class_names == fx.NUS_CONCEPTS and src.image_root == tmp_path / "cole" / "Flickr"
    assert src.train.paths[0] == "actor/0001_11.jpg" and src.train.full.dtype == np.uint8
    np.testing.assert_array_equal(src.test.full, [[1, 0, 0], [1, 1, 1]])
    unnamed = read_source("nuswide", fx.make_nuswide_formatted(tmp_path / "bare", with_concepts=False))
    assert unnamed.class_names == ["concept_00", "concept_01", "concept_02"] and "Concepts81" in unnamed.notes[-1]

    official = read_source("nuswide", fx.make_nuswide_official(tmp_path / "nus"))
    assert official.class_names == fx.NUS_CONCEPTS
    assert official.train.paths == ["actor/0001_21.jpg", "dog/0003_23.jpg"]  # the image without a concept is dropped
    np.testing.assert_array_equal(official.train.full, [[0, 1, 1], [1, 0, 0]])
    np.testing.assert_array_equal(official.test.full, [[1, 0, 0], [0, 1, 1]])
    assert "1 of 3 train" in official.notes[0]
    with pytest.raises(PamcError, match="variant must be one of"):
        read_source("nuswide", tmp_path / "nus", variant="cole")


def test_cub_reader_reads_malformed_lines(tmp_path):
    root = fx.make_cub(tmp_path)
    for where in (root, root / "CUB_200_2011"):
        src = read_source("cub", where)
        assert src.class_names == fx.CUB_ATTRIBUTES
        assert src.train.paths == [f"images/{fx.CUB_IMAGES[0]}", f"images/{fx.CUB_IMAGES[2]}"]
        np.testing.assert_array_equal(src.train.full, [[1, 0, 1], [1, 1, 1]])
        np.testing.assert_array_equal(src.test.full, [[0, 1, 0], [0, 0, 0]])
        assert src.notes == []


def test_openimages_reader_is_sparse(tmp_path):
    src = read_source("openimages", fx.make_openimages(tmp_path))
    assert src.class_names == ["Dog", "Cat (/m/a)", "Tree", "Cat (/m/d)"]
    assert src.train.full is None and isinstance(src.train.observed, SparseLabels)
    assert src.train.paths == ["images_train/a1.jpg", "images_train/b2.jpg"]
    # a1: Dog verified by one source, rejected by another -> positive; Cat (/m/d) rejected -> -1
    np.testing.assert_array_equal(src.train.observed.to_dense(), [[1, 0, 0, -1], [-1, 1, 0, 0]])
    np.testing.assert_array_equal(src.val.observed.to_dense(), [[0, 1, 0, 0], [0, 0, 0, 1]])
    assert src.test.paths == ["images_test/t1.jpg", "images_test/t2.jpg"]
    np.testing.assert_array_equal(src.test.observed.to_dense(), [[0, 0, -1, 0], [1, 0, 0, 0]])
    assert any("1 annotations of classes outside" in note for note in src.notes)


def test_own_csv_and_jsonl(tmp_path):
    csv_root = fx.make_own(tmp_path / "csv", ["a.jpg", "sub/b.jpg", "c.jpg", "d.jpg"])
    src = read_source("own", csv_root)
    assert src.class_names == ["cat", "dog", "bird"] and src.train.paths == ["a.jpg", "sub/b.jpg", "c.jpg", "d.jpg"]
    assert src.train.full is None  # empty cells: partial labels
    np.testing.assert_array_equal(src.train.observed, [[1, -1, 0], [0, 1, -1], [-1, -1, -1], [1, 1, 0]])

    jsonl = "".join(json.dumps(e) + "\n" for e in fx.OWN_JSONL)
    src = read_source("own", fx.make_own(tmp_path / "jsonl", [], table=jsonl, name="labels.jsonl"))
    assert src.class_names == ["bird", "cat", "dog"]
    np.testing.assert_array_equal(src.train.observed, [[0, 1, -1], [-1, 0, 1], [0, -1, -1]])

    text, full, _ = fx.own_full_csv(5)
    complete = read_source("own", fx.make_own(tmp_path / "full", [], table=text))
    assert complete.train.observed is None
    np.testing.assert_array_equal(complete.train.full, full)


@pytest.mark.parametrize("table, message", [
    ("image,cat,dog\na.jpg,1,2\n", r"labels.csv:2: column 'dog': '2' is not 1, 0, -1 or empty"),
    ("image,cat,dog\na.jpg,1,yes\n", r"column 'dog': 'yes'"),
    ("image,cat,dog\na.jpg,1\n", r"labels.csv:2: 2 cells, but the header has 3 columns"),
    ("image,cat,dog\na.jpg,1,0\nb.jpg,0,1\na.jpg,1,1\n", r"1 images listed more than once: a.jpg"),
    ("image,cat,cat\na.jpg,1,0\n", r"class names must be non-empty and distinct"),
])
def test_own_csv_errors(tmp_path, table, message):
    with pytest.raises(PamcError, match=message):
        read_source("own", fx.make_own(tmp_path, [], table=table))


def test_own_jsonl_errors_and_file_choice(tmp_path):
    root = fx.make_own(tmp_path, [], table='{"image": "a.jpg", "labels": {"cat": 3}}\n', name="labels.jsonl")
    with pytest.raises(PamcError, match=r"labels.jsonl:1: class 'cat': 3 is not 1, 0, -1 or null"):
        read_source("own", root)
    (root / "other.csv").write_text("image,cat\na.jpg,1\n")
    with pytest.raises(PamcError, match="exactly one .csv or .jsonl.*labels.jsonl, other.csv"):
        read_source("own", root)
    assert read_source("own", root, labels="other.csv").class_names == ["cat"]
    with pytest.raises(PamcError, match="takes no option label_file"):
        read_source("own", root, label_file="x.csv")


def test_describe_counts_and_missing_images(tmp_path):
    root = fx.make_own(tmp_path, ["a.jpg", "c.jpg", "d.jpg"])  # sub/b.jpg is missing
    summary = describe(read_source("own", root))
    train = summary["splits"]["train"]
    assert train["images"] == 4 and train["labels"] == "observed"
    assert train["images_without_positive"] == 1  # c.jpg
    assert [(c["class"], c["positives"], c["negatives"], c["unobserved"]) for c in train["per_class"]] == [
        ("cat", 2, 1, 1), ("dog", 2, 2, 0), ("bird", 0, 2, 2)]
    assert train["missing_images"] == 1 and train["missing_examples"] == ["sub/b.jpg"]
    text = format_description(summary)
    assert "1 image files missing (sub/b.jpg)" in text and "dog: 2/2/0" in text


# ------------------------------------------------------------------------------------ prepare
def test_prepare_voc_follows_the_reference_protocol(tmp_path):
    root = fx.make_voc(tmp_path / "data", extra_train=37)
    src = read_source("voc", root)
    full, paths = src.train.full, np.array(src.train.paths)
    summary = prepare("voc", root, tmp_path / "out")
    assert len(full) == 40
    train_idx, val_idx = reference_split(40)
    out = tmp_path / "out"
    assert lines(out / "images_train.txt") == paths[train_idx].tolist()
    assert lines(out / "images_val.txt") == paths[val_idx].tolist()
    assert summary["splits"]["train"]["images"] == 32 and summary["splits"]["val"]["images"] == 8
    assert "official train 40 -> train 32 / val 8; test 2" in summary["message"]
    # observed labels: single positive drawn on the whole official train file, then split
    whole = single_positive(full, seed=1200)
    observed_train = np.load(out / "observed_train.npy")
    np.testing.assert_array_equal(observed_train, whole[train_idx])
    np.testing.assert_array_equal(np.load(out / "observed_val.npy"), whole[val_idx])
    assert not np.array_equal(observed_train, single_positive(full[train_idx], seed=1200))  # order matters here
    np.testing.assert_array_equal(np.load(out / "full_val.npy"), full[val_idx])
    np.testing.assert_array_equal(np.load(out / "full_test.npy"), src.test.full)
    assert not (out / "observed_test.npy").exists()
    meta = json.loads((out / "meta.json").read_text())
    assert meta["protocol"]["observation"] == "single-positive" and meta["image_root"] == str(root / "VOCdevkit/VOC2012")
    assert lines(out / "classes.txt") == fx.VOC_CLASSES

    with pytest.raises(PamcError, match="already holds a prepared dataset; pass overwrite=True"):
        prepare("voc", root, out)
    again = prepare("voc", root, out, observation="fraction:0.5", overwrite=True)
    assert again["protocol"]["observation"] == "fraction:0.5"
    assert set(np.unique(np.load(out / "observed_train.npy"))) == {-1, 0, 1}


def test_prepare_missing_images_fail_or_drop(tmp_path):
    root = fx.make_voc(tmp_path / "data", extra_train=7)
    gone = "JPEGImages/2010_000003.jpg"
    (root / "VOCdevkit/VOC2012" / gone).unlink()
    with pytest.raises(PamcError, match=f"1 image files are missing under .*: {gone}; .*missing='drop'"):
        prepare("voc", root, tmp_path / "out")
    assert not (tmp_path / "out" / "meta.json").exists()
    summary = prepare("voc", root, tmp_path / "out", missing="drop")
    assert summary["missing_images"] == 1 and lines(tmp_path / "out" / "missing_images.txt") == [gone]
    # the remaining images keep the labels drawn on the whole file
    src = read_source("voc", root)
    whole = single_positive(src.train.full, seed=1200)
    for name, idx in zip(("train", "val"), reference_split(len(src.train))):
        keep = [i for i in idx if src.train.paths[i] != gone]
        assert lines(tmp_path / "out" / f"images_{name}.txt") == [src.train.paths[i] for i in keep]
        np.testing.assert_array_equal(np.load(tmp_path / "out" / f"observed_{name}.npy"), whole[keep])


def test_prepare_own_data_carves_test_then_val(tmp_path):
    text, full, names = fx.own_full_csv(30)
    root = fx.make_own(tmp_path / "own", names, table=text)
    summary = prepare("own", root, tmp_path / "out")
    rest, test_idx = reference_split(30)
    train_pos, val_pos = reference_split(len(rest))
    out = tmp_path / "out"
    assert lines(out / "images_test.txt") == [names[i] for i in test_idx]
    assert lines(out / "images_train.txt") == [names[i] for i in rest[train_pos]]
    assert lines(out / "images_val.txt") == [names[i] for i in rest[val_pos]]
    assert summary["protocol"]["observation"] == "as-given"  # complete labels used as they are
    np.testing.assert_array_equal(np.load(out / "observed_train.npy"), np.where(full[rest[train_pos]] == 1, 1, -1))
    np.testing.assert_array_equal(np.load(out / "full_test.npy"), full[test_idx])


def test_prepare_partial_own_data(tmp_path):
    root = fx.make_own(tmp_path / "own", ["a.jpg", "sub/b.jpg", "c.jpg", "d.jpg"])
    with pytest.raises(PamcError, match="only partial labels.*observation='as-given'"):
        prepare("own", root, tmp_path / "out", observation="single-positive")
    with pytest.raises(PamcError, match="observation must be one of"):
        prepare("own", root, tmp_path / "out", observation="fraction:2")
    prepare("own", root, tmp_path / "out", test_labels="labels.csv")
    bundle = load_prepared(tmp_path / "out", image_size=8)
    assert bundle.test.full is None and bundle.test.observed.shape == (4, 3)
    assert bundle.val.full is None and len(bundle.train) + len(bundle.val) == 4


def test_split_sizes_match_the_papers_and_tiny_data_is_refused(tmp_path):
    for name in ("voc", "coco", "cub"):
        info = BENCHMARK_FACTS[name]
        train, val = split_indices(info["official"]["train"], 0.2, 1200)
        assert (len(train), len(val)) == (info["split"]["train"], info["split"]["val"])
    root = fx.make_own(tmp_path / "own", ["a.jpg", "b.jpg"], table="image,cat\na.jpg,1\nb.jpg,0\n")
    with pytest.raises(PamcError, match="the val and test splits would hold no image"):
        prepare("own", root, tmp_path / "out")


def test_load_prepared_round_trip_and_cache(tmp_path):
    root = fx.make_coco(tmp_path / "coco")
    prepare("coco", root, tmp_path / "out", val_fraction=0.25)
    bundle = load_prepared(tmp_path / "out", image_size=16)
    src = read_source("coco", root)
    train_idx, val_idx = reference_split(4, frac=0.25)
    assert bundle.name == "coco" and bundle.class_names == src.class_names
    assert list(bundle.train.names) == [src.train.paths[i] for i in train_idx]
    np.testing.assert_array_equal(bundle.val.full, src.train.full[val_idx])
    assert bundle.train.observed.dtype == np.float32
    np.testing.assert_array_equal(bundle.train.observed, single_positive(src.train.full)[train_idx])
    image = bundle.test.images[0]
    assert image.dtype == torch.uint8 and tuple(image.shape) == (3, 16, 16)

    cached = load_prepared(tmp_path / "out", image_size=16, cache=tmp_path / "cache")
    assert isinstance(cached.train.images, CachedImages)
    assert all(torch.equal(cached.test.images[i], bundle.test.images[i]) for i in range(len(bundle.test)))
    [test_cache] = (tmp_path / "cache").glob("test_16_*.npy")
    stamp = test_cache.stat().st_mtime_ns
    load_prepared(tmp_path / "out", image_size=16, cache=tmp_path / "cache")
    assert test_cache.stat().st_mtime_ns == stamp and len(list((tmp_path / "cache").glob("*.npy"))) == 3  # reused


def test_prepare_openimages_sparse_and_corrupt_images(tmp_path):
    root = fx.make_openimages(tmp_path / "oi")
    summary = prepare("openimages", root, tmp_path / "out")
    out = tmp_path / "out"
    assert sorted(p.name for p in out.glob("observed_*")) == ["observed_test.npz", "observed_train.npz", "observed_val.npz"]
    assert not list(out.glob("full_*")) and summary["protocol"]["val"] == "official validation set"
    bundle = load_prepared(out, image_size=8)
    assert isinstance(bundle.train.observed, SparseLabels)
    np.testing.assert_array_equal(bundle.train.observed.to_dense(), [[1, 0, 0, -1], [-1, 1, 0, 0]])
    with pytest.raises(PamcError, match=r"cannot read image .*images_train/b2.jpg"):
        bundle.train.images[1]
    with pytest.warns(UserWarning, match="train: skipped 1 unreadable images"):
        skipping = load_prepared(out, image_size=8, on_error="skip")
    assert len(skipping.train) == 1 and list(skipping.train.names) == ["images_train/a1.jpg"]
    np.testing.assert_array_equal(skipping.train.observed.to_dense(), [[1, 0, 0, -1]])
    assert skipping.info["skipped"]["train"]["count"] == 1
    assert (out / "skipped_train.txt").read_text().startswith("images_train/b2.jpg\t")
    with pytest.warns(UserWarning, match="train: skipped 1"):
        cached = load_prepared(out, image_size=8, on_error="skip", cache=tmp_path / "cache")
    assert len(cached.train.images) == 1 and torch.equal(cached.train.images[0], skipping.train.images[0])
    with pytest.raises(PamcError, match="built without 1 unreadable images"):
        load_prepared(out, image_size=8, cache=tmp_path / "cache")


# ------------------------------------------------------------------------------------- images
def test_image_files_fail_or_skip(tmp_path):
    fx.write_jpeg(tmp_path / "good.jpg")
    fx.write_corrupt_jpeg(tmp_path / "bad.jpg")
    files = ImageFiles(["good.jpg", "bad.jpg", "gone.jpg"], tmp_path, size=10)
    assert tuple(files[0].shape) == (3, 10, 10) and files[0].dtype == torch.uint8
    with pytest.raises(PamcError, match=r"cannot read image .*bad.jpg"):
        files[1]
    with pytest.raises(PamcError, match=r"gone.jpg \(file not found\)"):
        files[2]
    assert sorted(files.check()) == ["bad.jpg", "gone.jpg"]
    skipping = ImageFiles(["good.jpg", "bad.jpg", "gone.jpg"], tmp_path, size=10, on_error="skip")
    assert len(skipping) == 1 and skipping.kept.tolist() == [0] and sorted(skipping.skipped) == ["bad.jpg", "gone.jpg"]


def test_images_decode_like_the_reference_pipeline(tmp_path):
    """RGB conversion and a resize close to PIL's bilinear Resize((S, S)), for formats torchvision
    decodes (PNG with alpha) and those only PIL does (grey BMP)."""
    from PIL import Image

    pixels = np.random.RandomState(0).randint(0, 256, (24, 32, 4), dtype=np.uint8)
    Image.fromarray(pixels, "RGBA").save(tmp_path / "x.png")
    Image.fromarray(pixels[..., 0], "L").save(tmp_path / "g.bmp")
    files = ImageFiles(["x.png", "g.bmp"], tmp_path, size=12)
    for i, name in enumerate(["x.png", "g.bmp"]):
        with Image.open(tmp_path / name) as im:
            reference = np.asarray(im.convert("RGB").resize((12, 12), Image.BILINEAR)).transpose(2, 0, 1)
        diff = np.abs(files[i].numpy().astype(int) - reference)
        assert files[i].dtype == torch.uint8 and diff.mean() < 1.5 and diff.max() <= 8, (name, diff.mean(), diff.max())


def test_image_cache_round_trip(tmp_path):
    for i in range(3):
        fx.write_jpeg(tmp_path / f"{i}.jpg", seed=i)
    files = ImageFiles([f"{i}.jpg" for i in range(3)], tmp_path, size=12)
    assert open_cache(files, tmp_path / "c.npy") is None
    build_image_cache(files, tmp_path / "c.npy")
    cache = open_cache(files, tmp_path / "c.npy")
    assert len(cache) == 3 and all(torch.equal(cache[i], files[i]) for i in range(3))
    assert open_cache(ImageFiles(["0.jpg"], tmp_path, size=12), tmp_path / "c.npy") is None
    import pickle

    assert len(pickle.dumps(cache)) < 2000  # workers receive the path, not the pixels


# -------------------------------------------------------------------------------- sparse labels
def random_observed(rng, rows, cols, density=0.1):
    dense = np.zeros((rows, cols), dtype=np.float32)
    mask = rng.random_sample((rows, cols)) < density
    dense[mask] = rng.choice([1.0, -1.0], mask.sum())
    return dense


def test_sparse_labels_behave_like_label_store():
    rng = np.random.RandomState(0)
    dense = random_observed(rng, 50, 30)
    sparse, store = SparseLabels.from_dense(dense), LabelStore(dense)
    sparse.merge_threshold = 16  # exercise merging of the overlay levels
    np.testing.assert_array_equal(sparse.to_dense(), dense)
    for _ in range(40):
        index = torch.from_numpy(rng.choice(50, 8, replace=False))
        mask = torch.from_numpy(rng.random_sample((8, 30)) < 0.1)
        values = torch.from_numpy(rng.choice([1.0, -1.0, 0.0, -0.3], (8, 30)).astype(np.float32))
        assert sparse.apply(index, mask, values) == store.apply(index, mask, values)
        probe = torch.from_numpy(rng.randint(0, 50, 10))
        assert torch.equal(sparse.batch(probe), store.batch(probe))
        assert sparse.num_edits() == store.num_edits()
    assert sparse.shape == store.shape and len(sparse) == 50 and sparse.num_edits() > 0

    state = sparse.state_dict()
    fresh = SparseLabels.from_dense(dense)
    fresh.load_state_dict(state)
    assert torch.equal(fresh.batch(torch.arange(50)), store.batch(torch.arange(50)))
    assert fresh.num_edits() == store.num_edits()
    with pytest.raises(PamcError, match="shape"):
        SparseLabels.from_dense(dense[:10]).load_state_dict(state)
    with pytest.raises(PamcError, match="dense labels"):
        fresh.load_state_dict(store.state_dict())


def test_sparse_labels_ll_cp_adds_new_positives():
    sparse = SparseLabels.from_dense(np.array([[1, 0, 0], [0, -1, 0]], dtype=np.float32))
    mask = torch.tensor([[False, True, True], [True, True, False]])
    sparse.apply(torch.tensor([0, 1]), mask, torch.ones(2, 3))
    np.testing.assert_array_equal(sparse.to_dense(), [[1, 1, 1], [1, 1, 0]])
    assert sparse.num_edits() == 4 and sparse.nnz == 5


def test_sparse_labels_coo_subset_and_file(tmp_path):
    # (0, 2) listed twice with different values: positive wins; zeros are not stored
    labels = SparseLabels.from_coo([1, 0, 0, 2, 0], [0, 2, 2, 1, 1], [-1, -1, 1, 1, 0], (3, 3))
    np.testing.assert_array_equal(labels.to_dense(), [[0, 0, 1], [-1, 0, 0], [0, 1, 0]])
    np.testing.assert_array_equal(labels.subset([2, 0]).to_dense(), [[0, 1, 0], [0, 0, 1]])
    assert [c.tolist() for c in labels.class_counts()] == [[0, 1, 1], [1, 0, 0]]
    labels.save(tmp_path / "l.npz")
    np.testing.assert_array_equal(SparseLabels.load(tmp_path / "l.npz").to_dense(), labels.to_dense())
    with pytest.raises(PamcError, match="1 \\(positive\\) or -1"):
        SparseLabels(np.array([0, 1]), np.array([0]), np.array([0.5]), 3)


def test_sparse_labels_memory_scales_to_openimages():
    """1.7M images x 5,000 classes with ~10 observed labels each must fit well under 1 GB."""
    rows, per_row, classes = 20000, 10, 5000
    rng = np.random.RandomState(0)
    labels = SparseLabels.from_coo(np.repeat(np.arange(rows), per_row), rng.randint(0, classes, rows * per_row),
                                   rng.choice([1, -1], rows * per_row), (rows, classes))
    assert labels.nnz > 0.99 * rows * per_row  # few repeated (row, col) pairs
    bytes_per_row = labels.nbytes / rows
    assert bytes_per_row < 8 + 9 * per_row + 0.01  # indptr + (col, initial, current value) per entry
    assert bytes_per_row * 1_700_000 < 0.2e9
    assert tuple(labels.batch(torch.tensor([5, 7])).shape) == (2, classes)
