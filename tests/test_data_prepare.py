"""prepare(): each published layout, faked small in tmp_path, into ImageFolder and Parquet."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from trainers.data import LAYOUTS, open_dataset, prepare


def jpeg(path: Path, size=(40, 30), shade: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.full((size[1], size[0], 3), (shade * 37 % 256, 120, 200), np.uint8)
    Image.fromarray(pixels).save(path)
    return path


def write(path: Path, lines: list[str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(line + "\n" for line in lines))
    return path


def tree(out: Path, split: str) -> dict[str, list[str]]:
    return {d.name: sorted(f.name for f in d.iterdir()) for d in sorted((out / split).iterdir())}


# --- Tiny-ImageNet ---------------------------------------------------------------------------

WNIDS = ["n01443537", "n01629819", "n01641577"]


def fake_tiny_imagenet(src: Path) -> Path:
    root = src / "tiny-imagenet-200"
    write(root / "wnids.txt", WNIDS)
    for wnid in WNIDS:
        for i in range(3):
            jpeg(root / "train" / wnid / "images" / f"{wnid}_{i}.JPEG", (64, 64), i)
        write(root / "train" / wnid / f"{wnid}_boxes.txt", ["unused"])
    annotations = []
    for i in range(6):
        jpeg(root / "val" / "images" / f"val_{i}.JPEG", (64, 64), i)
        annotations.append(f"val_{i}.JPEG\t{WNIDS[i % 3]}\t0\t0\t63\t63")
    write(root / "val" / "val_annotations.txt", annotations)
    jpeg(root / "test" / "images" / "test_0.JPEG", (64, 64))  # unlabelled: left out
    return root


def test_tiny_imagenet_val_becomes_test(tmp_path):
    fake_tiny_imagenet(tmp_path / "src")
    out = prepare("tiny_imagenet", tmp_path / "src", tmp_path / "out", "imagefolder")
    assert out == tmp_path / "out" and sorted(p.name for p in out.iterdir()) == ["test", "train"]
    assert tree(out, "train")[WNIDS[1]] == [f"{WNIDS[1]}_{i}.JPEG" for i in range(3)]
    assert tree(out, "test") == {
        w: [f"val_{i}.JPEG", f"val_{i + 3}.JPEG"] for i, w in enumerate(WNIDS)
    }
    with pytest.warns(UserWarning, match="has 3 classes; tiny_imagenet has 200"):
        train = open_dataset("tiny_imagenet", "train", root=out)
    assert (len(train), train.image_size, train.classes) == (9, 64, WNIDS)


def test_tiny_imagenet_errors_name_file_and_line(tmp_path):
    root = fake_tiny_imagenet(tmp_path / "src")
    write(root / "val" / "val_annotations.txt", ["val_0.JPEG\tn99999999\t0\t0\t1\t1"])
    with pytest.raises(ValueError, match=r"val_annotations\.txt line 1: 'n99999999' is not in wn"):
        prepare("tiny_imagenet", root, tmp_path / "out", "imagefolder")
    with pytest.raises(FileNotFoundError, match=r"none of .*wnids\.txt, .*tiny-imagenet-200/wn"):
        prepare("tiny_imagenet", tmp_path, tmp_path / "out", "imagefolder")


# --- CUB-200-2011 ----------------------------------------------------------------------------

CUB_CLASSES = ["001.Black_footed_Albatross", "002.Laysan_Albatross", "003.Sooty_Albatross"]


def fake_cub(src: Path) -> Path:
    root = src / "CUB_200_2011"
    write(root / "classes.txt", [f"{i + 1} {name}" for i, name in enumerate(CUB_CLASSES)])
    images, labels, splits = [], [], []
    for n in range(12):
        cls = n % 3
        rel = f"{CUB_CLASSES[cls]}/bird_{n:04d}.jpg"
        jpeg(root / "images" / rel, (50 + n, 40), n)
        images.append(f"{n + 1} {rel}")
        labels.append(f"{n + 1} {cls + 1}")
        splits.append(f"{n + 1} {int(n < 9)}")  # 3 train and 1 test image per class
    write(root / "images.txt", images)
    write(root / "image_class_labels.txt", labels)
    write(root / "train_test_split.txt", splits)
    return root


def test_cub_respects_the_official_split(tmp_path):
    fake_cub(tmp_path / "src")
    out = prepare("cub200", tmp_path / "src", tmp_path / "out", "imagefolder")
    assert tree(out, "train")[CUB_CLASSES[0]] == ["bird_0000.jpg", "bird_0003.jpg", "bird_0006.jpg"]
    assert tree(out, "test") == {c: [f"bird_{9 + i:04d}.jpg"] for i, c in enumerate(CUB_CLASSES)}
    with pytest.warns(UserWarning, match="has 3 classes; cub200 has 200"):
        test = open_dataset("cub200", "test", root=out, image_size=32)
    assert len(test) == 3 and test.read(torch.arange(3)).shape == (3, 3, 32, 32)
    assert test.classes == CUB_CLASSES


def test_cub_to_parquet_matches_the_imagefolder(tmp_path):
    fake_cub(tmp_path / "src")
    folder = prepare("cub200", tmp_path / "src", tmp_path / "folder", "imagefolder")
    shards = prepare("cub200", tmp_path / "src", tmp_path / "shards", "parquet", image_size=48)
    assert sorted(p.name for p in shards.iterdir()) == ["test-00000.parquet", "train-00000.parquet"]
    with pytest.warns(UserWarning):
        from_folder = open_dataset("cub200", "train", root=folder, image_size=48)
        from_shards = open_dataset("cub200", "train", source="parquet", root=shards)
    assert from_shards.classes == from_folder.classes and from_shards.image_size == 48
    # Same files in the same class order; raw encoding (<= 64 px) keeps the pixels exactly.
    assert sorted(from_shards.labels.tolist()) == sorted(from_folder.labels.tolist())
    by_label = lambda d: d.read(torch.argsort(d.labels, stable=True))  # noqa: E731
    assert torch.equal(by_label(from_shards), by_label(from_folder))


def test_cub_errors_name_file_and_line(tmp_path):
    root = fake_cub(tmp_path / "src")
    write(root / "image_class_labels.txt", ["1 1", "2 4"])
    with pytest.raises(ValueError, match=r"image_class_labels\.txt line 2: class id 4 is outside"
                       r" 1\.\.3"):  # fmt: skip
        prepare("cub200", root, tmp_path / "out", "imagefolder")
    fake_cub(tmp_path / "again")
    (tmp_path / "again" / "CUB_200_2011" / "images" / CUB_CLASSES[1] / "bird_0004.jpg").unlink()
    with pytest.raises(
        FileNotFoundError, match=r"1 listed image file\(s\) missing, e\.g\. .*bird_"
    ):
        prepare("cub200", tmp_path / "again", tmp_path / "out", "imagefolder")
    assert not (tmp_path / "out").exists()  # checked before anything is written
    (tmp_path / "again" / "CUB_200_2011" / "classes.txt").unlink()
    with pytest.raises(FileNotFoundError, match=r"annotation file .*classes\.txt is missing"):
        prepare("cub200", tmp_path / "again", tmp_path / "out", "imagefolder")


# --- FGVC-Aircraft ---------------------------------------------------------------------------

VARIANTS = ["707-320", "F-16A/B", "Falcon 2000"]


def fake_aircraft(src: Path) -> Path:
    data = src / "fgvc-aircraft-2013b" / "data"
    write(data / "variants.txt", VARIANTS)
    trainval, test = [], []
    for n in range(9):
        image_id = f"{1000000 + n}"
        jpeg(data / "images" / f"{image_id}.jpg", (60, 45), n)
        (trainval if n < 6 else test).append(f"{image_id} {VARIANTS[n % 3]}")
    write(data / "images_variant_trainval.txt", trainval)
    write(data / "images_variant_test.txt", test)
    return src / "fgvc-aircraft-2013b"


def test_aircraft_variants_with_spaces_and_slashes(tmp_path):
    root = fake_aircraft(tmp_path / "src")
    out = prepare("aircraft", root, tmp_path / "out", "imagefolder")
    folders = ["001.707-320", "002.F-16A_B", "003.Falcon 2000"]
    assert list(tree(out, "train")) == folders and list(tree(out, "test")) == folders
    assert tree(out, "train")["003.Falcon 2000"] == ["1000002.jpg", "1000005.jpg"]
    assert tree(out, "test")["002.F-16A_B"] == ["1000007.jpg"]
    with pytest.warns(UserWarning, match="has 3 classes; aircraft has 100"):
        train = open_dataset("aircraft", "train", root=out, image_size=24)
    assert train.classes == folders and torch.bincount(train.labels).tolist() == [2, 2, 2]
    write(root / "data" / "images_variant_test.txt", ["1000006 Boeing 999"])
    with pytest.raises(ValueError, match=r"images_variant_test\.txt line 1: 'Boeing 999' is not"):
        prepare("aircraft", root, tmp_path / "again", "imagefolder")


# --- Stanford Cars ---------------------------------------------------------------------------

CAR_NAMES = ["AM General Hummer SUV 2000", "Ram C/V Cargo Van Minivan 2012"]


def fake_cars(src: Path) -> list[tuple[str, str, int]]:
    rows = []
    for split in ("train", "test"):
        for n in range(4 if split == "train" else 2):
            name = f"{n + 1:05d}.jpg"
            jpeg(src / f"cars_{split}" / name, (70, 40), n)
            rows.append((split, name, n % 2 + 1))
    return rows


def test_cars_with_text_annotations(tmp_path):
    src = tmp_path / "src"
    rows = fake_cars(src)
    write(src / "devkit" / "names.csv", CAR_NAMES)
    for split in ("train", "test"):
        lines = [f"{f},1,2,30,20,{c}" for s, f, c in rows if s == split]
        write(src / "devkit" / f"anno_{split}.csv", ["file,x1,y1,x2,y2,class", *lines])
    out = prepare("cars", src, tmp_path / "out", "imagefolder")
    folders = ["001.AM General Hummer SUV 2000", "002.Ram C_V Cargo Van Minivan 2012"]
    assert tree(out, "train") == {
        folders[0]: ["00001.jpg", "00003.jpg"],
        folders[1]: ["00002.jpg", "00004.jpg"],
    }
    assert tree(out, "test") == {folders[0]: ["00001.jpg"], folders[1]: ["00002.jpg"]}
    with pytest.warns(UserWarning, match="has 2 classes; cars has 196"):
        assert len(open_dataset("cars", "test", root=out, image_size=16)) == 2
    write(src / "devkit" / "anno_test.csv", ["00001.jpg,1,2,30,20,3"])
    with pytest.raises(ValueError, match=r"anno_test\.csv line 1: class id 3 is outside 1\.\.2"):
        prepare("cars", src, tmp_path / "again", "imagefolder")


def test_cars_with_the_devkits_matlab_files(tmp_path):
    from scipy.io import savemat  # scipy comes with mlflow, a dependency

    src = tmp_path / "src"
    rows = fake_cars(src)
    fields = [("bbox_x1", "O"), ("bbox_y1", "O"), ("bbox_x2", "O"), ("bbox_y2", "O")]
    fields += [("class", "O"), ("fname", "O")]
    (src / "devkit").mkdir()
    savemat(src / "devkit" / "cars_meta.mat", {"class_names": np.array(CAR_NAMES, dtype=object)})
    for split, file in (
        ("train", "cars_train_annos.mat"),
        ("test", "cars_test_annos_withlabels.mat"),
    ):
        records = np.array([(1, 2, 30, 20, c, f) for s, f, c in rows if s == split], dtype=fields)
        savemat(src / ("devkit" if split == "train" else "") / file, {"annotations": records})
    out = prepare("cars", src, tmp_path / "out", "parquet", image_size=16)
    with pytest.warns(UserWarning):
        train = open_dataset("cars", "train", source="parquet", root=out)
    assert train.classes == ["001.AM General Hummer SUV 2000", "002.Ram C_V Cargo Van Minivan 2012"]
    assert train.labels.tolist() == [0, 1, 0, 1] and train.image_size == 16


def test_cars_without_annotations_says_which_files_it_expects(tmp_path):
    fake_cars(tmp_path / "src")
    expected = r"expected names\.csv, anno_train\.csv and anno_test\.csv, or cars_meta\.mat"
    with pytest.raises(FileNotFoundError, match=r"no Stanford Cars annotations in .*: " + expected):
        prepare("cars", tmp_path / "src", tmp_path / "out", "imagefolder")


# --- ImageFolder, and what every layout shares ---------------------------------------------


def test_imagefolder_layout_to_parquet_and_back(tmp_path):
    src = tmp_path / "src"
    for split, count in (("train", 3), ("val", 1), ("test", 2)):
        for cls in ("cat", "dog"):
            for i in range(count):
                jpeg(src / split / cls / f"{i}.jpg", (36, 36), i)
    out = prepare("imagefolder", src, tmp_path / "out", "parquet", image_size=32, encoding="png")
    names = sorted(p.name for p in out.iterdir())
    assert names == ["test-00000.parquet", "train-00000.parquet", "val-00000.parquet"]
    with pytest.warns(UserWarning):
        shards = open_dataset("imagenet", "val", source="parquet", root=out)
        folder = open_dataset("imagenet", "val", root=src, image_size=32)
    assert shards.classes == ["cat", "dog"] and torch.equal(shards.labels, folder.labels)
    assert torch.equal(shards.read(torch.arange(2)), folder.read(torch.arange(2)))
    copy = prepare("imagefolder", src, tmp_path / "copy", "imagefolder")
    assert tree(copy, "val") == {"cat": ["0.jpg"], "dog": ["0.jpg"]}
    assert (copy / "train" / "dog" / "2.jpg").read_bytes() == (src / "train/dog/2.jpg").read_bytes()


def test_prepare_refuses_to_overwrite_unless_asked(tmp_path):
    fake_cub(tmp_path / "src")
    prepare("cub200", tmp_path / "src", tmp_path / "out", "imagefolder")
    with pytest.raises(FileExistsError, match=r"out/train already exists; remove it or pass over"):
        prepare("cub200", tmp_path / "src", tmp_path / "out", "imagefolder")
    (tmp_path / "out" / "train" / CUB_CLASSES[0] / "stale.jpg").write_bytes(b"old")
    prepare("cub200", tmp_path / "src", tmp_path / "out", "imagefolder", overwrite=True)
    assert not (tmp_path / "out" / "train" / CUB_CLASSES[0] / "stale.jpg").exists()
    prepare("cub200", tmp_path / "src", tmp_path / "out", "parquet", image_size=16)
    with pytest.raises(FileExistsError, match=r"train-00000\.parquet already exists"):
        prepare("cub200", tmp_path / "src", tmp_path / "out", "parquet", image_size=16)


def test_prepare_rejects_unknown_names_and_empty_classes(tmp_path):
    assert LAYOUTS == (
        "cifar10", "cifar100", "tiny_imagenet", "cub200", "aircraft", "cars", "imagefolder"
    )  # fmt: skip
    with pytest.raises(ValueError, match="unknown layout 'coco'; allowed: cifar10, cifar100, tiny"):
        prepare("coco", tmp_path, tmp_path / "out", "imagefolder")
    with pytest.raises(ValueError, match="unknown format 'lmdb'; allowed: imagefolder, parquet"):
        prepare("cub200", tmp_path, tmp_path / "out", "lmdb")
    with pytest.raises(ValueError, match="unknown encoding 'webp'; allowed: raw, png, jpeg"):
        prepare("cub200", tmp_path, tmp_path / "out", "parquet", encoding="webp")
    with pytest.raises(FileNotFoundError, match=r"source folder .*nowhere does not exist"):
        prepare("cub200", tmp_path / "nowhere", tmp_path / "out", "imagefolder")
    root = fake_cub(tmp_path / "src")
    write(root / "train_test_split.txt", [f"{n + 1} 1" for n in range(12)])  # no test images
    with pytest.raises(ValueError, match=r"class '001\.Black_footed_Albatross' has no test images"):
        prepare("cub200", root, tmp_path / "out", "imagefolder")
