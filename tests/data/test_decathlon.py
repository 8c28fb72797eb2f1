"""The Visual Decathlon read from a tiny tree in the official decathlon-1.0 layout: offset
category ids, the val split as the test split, the 64×64 transforms, per-domain normalisation,
one-line errors, the decathlon score, and ``l2bg run --benchmark vdd`` end to end on the CPU."""

import json

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from l2bg.base.errors import L2BGError, ParamError
from l2bg.data import build_benchmark
from l2bg.data.augment import RandomCropFlip
from l2bg.data.decathlon import IMAGE_SIZE, RESIZE, _centre
from l2bg.learn.metrics import decathlon_scores

PIL = pytest.importorskip("PIL.Image")

DOMAINS3 = ("aircraft", "gtsrb", "dtd")


def write_decathlon(root, domains=DOMAINS3, classes=4, train=5, val=2, seed=0):
    """A decathlon-1.0 tree: per domain ``classes`` categories with ids offset by the domain,
    ``train``/``val`` small JPEG/PNG images per class of varied sizes (class k is brighter)."""
    rng = np.random.default_rng(seed)
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    for d, domain in enumerate(domains):
        offset = 10000 * (d + 1) + 7
        cats = [{"id": offset + 3 * k, "name": f"c{k}"} for k in range(classes)]
        for split, per in (("train", train), ("val", val)):
            folder = root / "data" / domain / split
            folder.mkdir(parents=True, exist_ok=True)
            images, anns = [], []
            for k in range(classes):
                for i in range(per):
                    iid = len(images) + 1
                    h, w = int(rng.integers(12, 30)), int(rng.integers(12, 30))
                    px = np.clip(rng.normal(40 + 50 * k, 20, (h, w, 3)), 0, 255).astype(np.uint8)
                    img = PIL.fromarray(px)
                    if i % 3 == 2:  # grayscale, as omniglot's are: read as RGB
                        img = img.convert("L")
                    name = f"{k}_{i}.{'jpg' if i % 2 else 'png'}"  # the decathlon ships JPEGs
                    img.save(folder / name)
                    images.append({"id": iid, "file_name": f"data/{domain}/{split}/{name}",
                                   "width": w, "height": h})
                    anns.append({"id": iid, "image_id": iid, "category_id": cats[k]["id"]})
            (root / "annotations" / f"{domain}_{split}.json").write_text(json.dumps(
                {"images": images, "annotations": anns, "categories": cats}))
    return root


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    return write_decathlon(tmp_path_factory.mktemp("vdd") / "decathlon-1.0")


def test_reads_offset_ids_and_splits(tree):
    """Each domain is one task of 64×64 RGB, labels 0..C-1 from the categories sorted by id,
    the official val split as the test split and a seeded tenth of train as validation."""
    bench = build_benchmark("vdd", data_root=tree.parent, seed=3)
    assert [t.name for t in bench.tasks] == ["aircraft", "dtd", "gtsrb"]  # the decathlon order
    for t in bench.tasks:
        assert t.input_shape == (3, IMAGE_SIZE, IMAGE_SIZE) and t.num_classes == 4
        assert t.sizes == {"train": 16, "val": 4, "test": 8}
        assert sorted(t.y_test.tolist()) == [0, 0, 1, 1, 2, 2, 3, 3]
        assert t.classes[1] - t.classes[0] == 3
        # normalised with the statistics of the training images' central 64×64
        seen = _centre(t.x_train, IMAGE_SIZE)
        assert torch.allclose(seen.mean(dim=(0, 2, 3)), torch.zeros(3), atol=1e-4)
        assert torch.allclose(seen.std(dim=(0, 2, 3), unbiased=False), torch.ones(3),
                              atol=1e-4)
    src = bench.source
    assert src["decathlon"] and src["split"]["test"].startswith("the official val split")
    assert build_benchmark("vdd", data_root=tree, seed=3).tasks[0].x_train.equal(
        bench.tasks[0].x_train)  # deterministic, root or its parent
    other = build_benchmark("vdd", data_root=tree, seed=4).tasks[0]
    assert not other.x_train.equal(bench.tasks[0].x_train)


def test_training_crops_are_drawn_per_batch_except_center_only_domains(tree):
    """aircraft stores its training images as the central 72×72 with a RandomCropFlip(64) drawn
    per mini-batch (recorded in the source); gtsrb stores center 64 crops and has no transform;
    validation and test are center 64 crops of the same 72-px images."""
    bench = build_benchmark("vdd", data_root=tree, domains=["gtsrb", "aircraft"])
    gtsrb, aircraft = bench.tasks
    assert gtsrb.train_transform is None and gtsrb.x_train.shape[1:] == (3, 64, 64)
    assert aircraft.train_transform == RandomCropFlip(IMAGE_SIZE, flip=True)
    assert aircraft.x_train.shape[1:] == (3, RESIZE, RESIZE)
    assert aircraft.x_val.shape[1:] == aircraft.x_test.shape[1:] == (3, 64, 64)
    gtsrb_info, aircraft_info = bench.source["per_domain"]
    assert gtsrb_info["train_crop"] == "center 64, no flip" and gtsrb_info[
        "train_transform"] is None
    assert "drawn per sample every epoch" in aircraft_info["train_crop"]
    assert aircraft_info["train_transform"] == RandomCropFlip(IMAGE_SIZE).to_dict()
    assert "drawn per sample every epoch" in bench.source["notes"]


def test_stored_images_are_central_crops():
    from l2bg.data.decathlon import _crop

    img = PIL.fromarray(np.arange(72 * 90 * 3, dtype=np.uint32).reshape(72, 90, 3)
                        .astype(np.uint8))
    arr = np.asarray(img).transpose(2, 0, 1)
    centre = _crop(img, IMAGE_SIZE)
    assert centre.shape == (3, 64, 64) and np.array_equal(centre, arr[:, 4:68, 13:77])
    stored = _crop(img, RESIZE)
    assert stored.shape == (3, 72, 72) and np.array_equal(stored, arr[:, :, 9:81])
    # the evaluation crop is the centre of the stored training image
    assert np.array_equal(_centre(torch.from_numpy(stored)[None], IMAGE_SIZE)[0].numpy(), centre)


def test_domains_and_max_per_class(tree):
    bench = build_benchmark("vdd", data_root=tree, domains=["dtd", "aircraft"], max_per_class=3)
    assert [t.name for t in bench.tasks] == ["dtd", "aircraft"]
    assert bench.tasks[0].sizes["train"] + bench.tasks[0].sizes["val"] == 12
    assert bench.tasks[0].sizes["test"] == 8 and bench.source["max_per_class"] == 3
    assert len(build_benchmark("vdd", data_root=tree, num_tasks=1).tasks) == 1


@pytest.mark.parametrize("kwargs, param", [
    ({"domains": ["aircraft", "mnist"]}, "domains"),
    ({"domains": ["dtd", "dtd"]}, "domains"),
    ({"domains": ["svhn"]}, None),
    ({"num_tasks": 4}, "num_tasks"),
    ({"max_per_class": 0}, "max_per_class"),
])
def test_bad_domains_are_one_line(tree, kwargs, param):
    with pytest.raises(L2BGError) as info:
        build_benchmark("vdd", data_root=tree, **kwargs)
    assert "\n" not in str(info.value)
    if param:
        assert isinstance(info.value, ParamError) and param in info.value.params
    else:
        assert "svhn_train.json is missing" in str(info.value)


def _broken(tmp_path, edit):
    root = write_decathlon(tmp_path / "d", domains=("dtd",), classes=2, train=3, val=1)
    ann = root / "annotations" / "dtd_train.json"
    obj = json.loads(ann.read_text())
    text = edit(obj, root)
    ann.write_text(text[1] if isinstance(text, tuple) else json.dumps(obj))
    return root


@pytest.mark.parametrize("edit, message", [
    (lambda o, r: ("raw", "{not json"), "not valid JSON"),
    (lambda o, r: ("raw", json.dumps({"images": []})), "COCO style"),
    (lambda o, r: o["annotations"].pop(), "has no annotation"),
    (lambda o, r: o["annotations"][0].update(category_id=5), "category_id 5 is not in"),
    (lambda o, r: o["images"][0].pop("file_name"), "lacks or mistypes"),
    (lambda o, r: (r / "data" / "dtd" / "train" / "0_1.jpg").unlink(), "is missing"),
    (lambda o, r: (r / "data" / "dtd" / "train" / "0_0.png").write_bytes(b"junk"),
     "not a readable image"),
])
def test_malformed_trees_are_one_line(tmp_path, edit, message):
    root = _broken(tmp_path, edit)
    with pytest.raises(L2BGError) as info:
        build_benchmark("vdd", data_root=root)
    assert message in str(info.value) and "\n" not in str(info.value)


def test_decathlon_score_definition():
    """A perfect domain scores 1000, the error twice the baseline's scores 0, the baseline's
    own error 250; a perfect baseline is floored at 1/(2n), never a division by zero."""
    s = decathlon_scores([0.0, 0.4, 0.2, 0.5], [0.2, 0.2, 0.2, 0.2], [100] * 4)
    assert s == pytest.approx([1000.0, 0.0, 250.0, 0.0])
    floored = decathlon_scores([0.0, 0.005, 0.01], [0.0] * 3, [100] * 3)  # floor 1/200
    assert floored == pytest.approx([1000.0, 250.0, 0.0])


@given(st.lists(st.tuples(st.floats(0, 1), st.floats(0, 1), st.integers(1, 10_000)),
                min_size=1, max_size=10))
def test_decathlon_scores_are_bounded_and_fall_with_the_error(rows):
    """0 <= score <= 1000; a lower error never scores less; 0 error scores 1000."""
    err, base, n = map(list, zip(*rows, strict=True))
    s = decathlon_scores(err, base, n)
    assert all(0.0 <= v <= 1000.0 + 1e-9 for v in s)
    assert decathlon_scores([0.0] * len(err), base, n) == pytest.approx([1000.0] * len(err))
    lower = decathlon_scores([e / 2 for e in err], base, n)
    assert all(a >= b - 1e-9 for a, b in zip(lower, s, strict=True))


def test_run_vdd_end_to_end(tree, tmp_path, capsys):
    from l2bg.cli import main

    out = tmp_path / "out"
    code = main(["run", "--benchmark", "vdd", "--data-root", str(tree), "--tasks", "3",
                 "--epochs", "1", "--strategy", "l2bg", "--delta", "0.5", "--batch-size", "8",
                 "--out", str(out), "--no-cache", "--quiet"])
    assert code == 0, capsys.readouterr().err
    r = json.loads((out / "results.json").read_text())
    assert [t["name"] for t in r["tasks"]] == ["aircraft", "dtd", "gtsrb"]
    assert r["config"]["template"]["name"] == "convnet"
    assert r["config"]["domains"] is None and r["config"]["data"]["kind"] == "decathlon-1.0"
    assert set(r["decathlon_scores"]) == {"aircraft", "dtd", "gtsrb"}
    assert r["decathlon_score"] == pytest.approx(sum(r["decathlon_scores"].values()))
    assert all(0.0 <= v <= 1000.0 for v in r["decathlon_scores"].values())


@pytest.mark.slow
def test_run_vdd_on_resnet26_end_to_end(tree, tmp_path, capsys):
    """``l2bg run --benchmark vdd --template resnet26 --tasks 3 --epochs 1`` on the CPU: the
    64×64 domains run on the residual-adapters net (per-task heads), recorded as such."""
    from l2bg.cli import main

    out = tmp_path / "out"
    code = main(["run", "--benchmark", "vdd", "--data-root", str(tree), "--template",
                 "resnet26", "--tasks", "3", "--epochs", "1", "--max-per-class", "2",
                 "--strategy", "l2bg", "--delta", "0.5", "--batch-size", "8", "--out",
                 str(out), "--no-cache", "--quiet"])
    assert code == 0, capsys.readouterr().err
    r = json.loads((out / "results.json").read_text())
    assert r["config"]["template"] == {"name": "resnet26", "kwargs": {
        "in_channels": 3, "image_size": IMAGE_SIZE, "stem": 32, "widths": [64, 128, 256],
        "blocks": [4, 4, 4]}}
    assert "input_fit" not in r["config"]["data"]  # the decathlon is 64×64 already
    assert r["slots"][0] == "stem" and r["slots"][-1] == "pool" and len(r["slots"]) == 14
    assert set(r["decathlon_scores"]) == {"aircraft", "dtd", "gtsrb"}
    assert len(r["acc_matrix"]) == 3


def test_run_vdd_draws_crops_per_batch_on_a_32_template(tree, tmp_path, capsys, monkeypatch):
    """On resnet18 (32×32) the validation and test images are fitted to 32×32 and aircraft's
    training batches are cropped from the stored 72×72 every epoch, then fitted (FitAfter);
    results.json records both."""
    from l2bg.cli import main

    shapes = []
    real = RandomCropFlip.__call__

    def spy(self, x, gen, index=None):
        shapes.append(tuple(x.shape))
        return real(self, x, gen, index=index)

    monkeypatch.setattr(RandomCropFlip, "__call__", spy)
    out = tmp_path / "out"
    code = main(["run", "--benchmark", "vdd", "--data-root", str(tree), "--template", "resnet18",
                 "--domains", "aircraft", "--epochs", "2", "--max-per-class", "2",
                 "--strategy", "independent", "--batch-size", "8", "--out", str(out),
                 "--no-cache", "--quiet"])
    assert code == 0, capsys.readouterr().err
    r = json.loads((out / "results.json").read_text())
    fit = r["config"]["data"]["input_fit"]
    assert fit["from"] == [3, 64, 64] and fit["to"] == [3, 32, 32]
    assert fit["train_transforms"] == {"aircraft": {
        "name": "FitAfter", "transform": RandomCropFlip(IMAGE_SIZE).to_dict(),
        "shape": [3, 32, 32]}}
    assert r["config"]["data"]["per_domain"][0]["train_transform"]["name"] == "RandomCropFlip"
    # aircraft keeps 4 training images (2 per class, one of each held out): one batch an epoch
    assert shapes.count((4, 3, RESIZE, RESIZE)) == 2
    assert len(r["acc_matrix"]) == 1


def test_unknown_domain_on_the_command_line(tree, tmp_path, capsys):
    from l2bg.cli import main

    code = main(["run", "--benchmark", "vdd", "--data-root", str(tree), "--domains", "dtd,foo",
                 "--strategy", "shared", "--out", str(tmp_path / "o"), "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "--domains" in err[0] and "'foo'" in err[0]
