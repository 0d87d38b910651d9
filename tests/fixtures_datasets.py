"""Miniature copies of the official dataset layouts, with the quirks of the real files.

Each `make_*` writes a tiny dataset under the given folder (real 32 x 24 JPEGs) and returns the
root to pass to the reader.  The label contents are fixed here so the tests can state the
expected matrices by hand.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

VOC_CLASSES = ["aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
               "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
               "train", "tvmonitor"]


def write_jpeg(path: Path, seed: int = 0, size: tuple[int, int] = (32, 24)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.RandomState(seed).randint(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path, format="JPEG")


def write_corrupt_jpeg(path: Path) -> None:
    """The first bytes of a real JPEG: a download cut short."""
    write_jpeg(path)
    path.write_bytes(path.read_bytes()[:120])


# ------------------------------------------------------------------------------------------ VOC
# image id -> {class: flag}; every class not named is -1.  0 = difficult (a negative for pamc).
VOC_TRAIN = {
    "2008_000002": {"aeroplane": 1, "person": 0},
    "2008_000003": {"bird": 1, "cat": 1, "dog": 0},
    "2007_000010": {"person": 1},
    "2008_000008": {"horse": 0},  # no positive: not listed
}
VOC_VAL = {"2009_000001": {"cat": 1}, "2009_000002": {"tvmonitor": 1, "sofa": 1}}


def make_voc(root: Path, extra_train: int = 0) -> Path:
    """`extra_train` more train images (ids 2010_000000...) with 2-4 random positives each."""
    train = dict(VOC_TRAIN)
    rng = np.random.RandomState(7)
    for i in range(extra_train):
        chosen = rng.choice(len(VOC_CLASSES), rng.randint(2, 5), replace=False)
        train[f"2010_{i:06d}"] = {VOC_CLASSES[c]: 1 for c in chosen}
    voc = root / "VOCdevkit" / "VOC2012"
    main = voc / "ImageSets" / "Main"
    main.mkdir(parents=True)
    for split, images in (("train", train), ("val", VOC_VAL)):
        for name in VOC_CLASSES:
            # the real files pad non-negative flags with two spaces
            lines = [f"{image_id} {'-1' if images[image_id].get(name, -1) == -1 else ' ' + str(images[image_id][name])}"
                     for image_id in images]
            (main / f"{name}_{split}.txt").write_text("\n".join(lines) + "\n")
    for n, image_id in enumerate([*train, *VOC_VAL]):
        write_jpeg(voc / "JPEGImages" / f"{image_id}.jpg", seed=n)
    return root


# ----------------------------------------------------------------------------------------- COCO
# position in this list = class index; ids have gaps and are not in order
COCO_CATEGORIES = [{"id": 1, "name": "person"}, {"id": 3, "name": "car"}, {"id": 2, "name": "bicycle"},
                   {"id": 90, "name": "toothbrush"}]
# (image id, category id); string order of the ids is 10, 100, 25, 9
COCO_TRAIN = [(9, 1), (10, 3), (10, 3), (100, 90), (100, 1), (25, 2)]
COCO_VAL = [(42, 2), (7, 1)]


def make_coco(root: Path) -> Path:
    (root / "annotations").mkdir(parents=True)
    for split, pairs, extra_image in (("train", COCO_TRAIN, 555), ("val", COCO_VAL, 556)):
        ids = sorted({i for i, _ in pairs}) + [extra_image]  # extra_image: no annotation, dropped
        data = {"images": [{"id": i, "file_name": f"COCO_{split}2014_{i:012d}.jpg"} for i in ids],
                "categories": COCO_CATEGORIES,
                "annotations": [{"id": n, "image_id": i, "category_id": c, "iscrowd": 0}
                                for n, (i, c) in enumerate(pairs)]}
        (root / "annotations" / f"instances_{split}2014.json").write_text(json.dumps(data))
        for i in ids:
            write_jpeg(root / f"{split}2014" / f"COCO_{split}2014_{i:012d}.jpg", seed=i)
    return root


# ------------------------------------------------------------------------------------- NUS-WIDE
NUS_CONCEPTS = ["sky", "water", "dog"]


def make_nuswide_formatted(root: Path, with_concepts: bool = True) -> Path:
    """Cole et al.'s files (3 classes instead of 81)."""
    root.mkdir(parents=True, exist_ok=True)
    splits = {"train": (["actor/0001_11.jpg", "beach/0002_12.jpg", "dog/0003_13.jpg"],
                        [[1, 1, 0], [0, 1, 0], [0, 0, 1]]),
              "val": (["sky/0004_14.jpg", "water/0005_15.jpg"], [[1, 0, 0], [1, 1, 1]])}
    for split, (paths, labels) in splits.items():
        np.save(root / f"formatted_{split}_images.npy", np.array(paths))
        np.save(root / f"formatted_{split}_labels.npy", np.array(labels, dtype=np.float64))
        for n, path in enumerate(paths):
            write_jpeg(root / "Flickr" / path, seed=n)
    if with_concepts:
        (root / "Concepts81.txt").write_text("\n".join(NUS_CONCEPTS) + "\n")
    return root


# image list (backslash paths as in the release) and one 0/1 column per concept
NUS_TRAIN = (["actor\\0001_21.jpg", "beach\\0002_22.jpg", "dog\\0003_23.jpg"], [[0, 1, 1], [0, 0, 0], [1, 0, 0]])
NUS_TEST = (["sky\\0004_24.jpg", "sun\\0005_25.jpg"], [[1, 0, 0], [0, 1, 1]])


def make_nuswide_official(root: Path) -> Path:
    (root / "ConceptsList").mkdir(parents=True)
    (root / "ConceptsList" / "Concepts81.txt").write_text("\n".join(NUS_CONCEPTS) + "\n")
    labels_dir = root / "Groundtruth" / "TrainTestLabels"
    labels_dir.mkdir(parents=True)
    (root / "ImageList").mkdir()
    for tag, (paths, labels) in (("Train", NUS_TRAIN), ("Test", NUS_TEST)):
        (root / "ImageList" / f"{tag}Imagelist.txt").write_text("\r\n".join(paths) + "\r\n")
        for c, name in enumerate(NUS_CONCEPTS):
            (labels_dir / f"Labels_{name}_{tag}.txt").write_text("".join(f"{row[c]}\n" for row in labels))
        for n, path in enumerate(paths):
            write_jpeg(root / "Flickr" / path.replace("\\", "/"), seed=n)
    return root


# ------------------------------------------------------------------------------------------ CUB
CUB_ATTRIBUTES = ["has_bill_shape::curved_(up_or_down)", "has_wing_color::blue", "has_size::small_(5_-_9_in)"]
CUB_IMAGES = ["001.Black_footed_Albatross/Black_Footed_Albatross_0046_18.jpg",
              "001.Black_footed_Albatross/Black_Footed_Albatross_0009_34.jpg",
              "002.Laysan_Albatross/Laysan_Albatross_0002_1027.jpg",
              "200.Common_Yellowthroat/Common_Yellowthroat_0055_190967.jpg"]
CUB_TRAIN_FLAGS = [1, 0, 1, 0]
CUB_PRESENT = [[1, 0, 1], [0, 1, 0], [1, 1, 1], [0, 0, 0]]


def make_cub(root: Path) -> Path:
    """The tgz layout: attributes.txt beside CUB_200_2011/; returns the extraction folder."""
    cub = root / "CUB_200_2011"
    (cub / "attributes").mkdir(parents=True)
    (root / "attributes.txt").write_text("".join(f"{i} {name}\n" for i, name in enumerate(CUB_ATTRIBUTES, 1)))
    (cub / "images.txt").write_text("".join(f"{i} {path}\n" for i, path in enumerate(CUB_IMAGES, 1)))
    (cub / "train_test_split.txt").write_text("".join(f"{i} {flag}\n" for i, flag in enumerate(CUB_TRAIN_FLAGS, 1)))
    lines = []
    for i, row in enumerate(CUB_PRESENT, 1):
        for a, present in enumerate(row, 1):
            lines.append(f"{i} {a} {present} 3 12.5")
    lines[4] = "2 2 1 3 0 27.5"  # a malformed line of the real file: six fields
    (cub / "attributes" / "image_attribute_labels.txt").write_text("\n".join(lines) + "\n")
    for n, path in enumerate(CUB_IMAGES):
        write_jpeg(cub / "images" / path, seed=n)
    return root


# ----------------------------------------------------------------------------------- OpenImages
OI_DESCRIPTIONS = '/m/a,Cat\n/m/b,Dog\n/m/c,Tree\n/m/d,Cat\n/m/e,"Ball, toy"\n'  # "Cat" twice; a quoted comma
OI_TRAINABLE = ["/m/b", "/m/a", "/m/c", "/m/d"]  # /m/c never occurs; /m/e is not trainable
OI_ANNOTATIONS = {
    "train": [("b2", "verification", "/m/a", "1"), ("b2", "verification", "/m/b", "0"),
              ("a1", "verification", "/m/b", "0"), ("a1", "crowdsource-verification", "/m/b", "1"),
              ("c3", "verification", "/m/e", "1"),  # only a class outside the list: c3 is no image
              ("a1", "verification", "/m/d", "0")],
    "validation": [("v1", "verification", "/m/a", "1"), ("v2", "verification", "/m/d", "1")],
    "test": [("t2", "verification", "/m/b", "1"), ("t1", "verification", "/m/c", "0")],
}
OI_FOLDERS = {"train": "images_train", "validation": "images_val", "test": "images_test"}


def make_openimages(root: Path, corrupt: str = "b2") -> Path:
    """The LL/BoostLU download layout; the image `corrupt` of the train set is a truncated JPEG."""
    meta = root / "2017_11"
    meta.mkdir(parents=True)
    (meta / "class-descriptions.csv").write_text(OI_DESCRIPTIONS)
    (meta / "classes-trainable.txt").write_text("\n".join(OI_TRAINABLE) + "\n")
    for split, rows in OI_ANNOTATIONS.items():
        (meta / split).mkdir()
        (meta / split / "annotations-human.csv").write_text(
            "ImageID,Source,LabelName,Confidence\n" + "".join(",".join(r) + "\n" for r in rows))
        for n, image_id in enumerate(sorted({r[0] for r in rows})):
            path = root / OI_FOLDERS[split] / f"{image_id}.jpg"
            write_corrupt_jpeg(path) if image_id == corrupt else write_jpeg(path, seed=n)
    return root


# ------------------------------------------------------------------------------------- own data
OWN_CSV = "image,cat,dog,bird\na.jpg,1,0,\nsub/b.jpg,,1,-1\nc.jpg,0,0,0\nd.jpg,1,1,\n"
OWN_JSONL = [{"image": "a.jpg", "labels": {"cat": 1, "dog": 0}},
             {"image": "sub/b.jpg", "labels": {"dog": 1, "bird": -1}},
             {"image": "c.jpg", "labels": {"cat": 0, "dog": False, "bird": None}}]


def make_own(root: Path, images: list[str], table: str = OWN_CSV, name: str = "labels.csv") -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / name).write_text(table)
    for n, image in enumerate(images):
        write_jpeg(root / image, seed=n)
    return root


def own_full_csv(num_images: int, classes: int = 4, seed: int = 3) -> tuple[str, np.ndarray, list[str]]:
    """A complete 0/1 table (full labels, 1-3 positives per image): (csv text, matrix, image names)."""
    rng = np.random.RandomState(seed)
    full = np.zeros((num_images, classes), dtype=np.uint8)
    for row in full:
        row[rng.choice(classes, rng.randint(1, 4), replace=False)] = 1
    names = [f"img_{i:03d}.jpg" for i in range(num_images)]
    header = "image," + ",".join(f"c{c}" for c in range(classes))
    return header + "\n" + "".join(f"{n}," + ",".join(map(str, row)) + "\n" for n, row in zip(names, full)), full, names
