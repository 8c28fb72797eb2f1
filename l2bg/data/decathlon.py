"""The Visual Decathlon (Rebuffi et al., 2017) read from its official ``decathlon-1.0`` layout.

``annotations/{domain}_{train,val}.json`` are COCO-style (``images`` with ``id`` and
``file_name``, ``annotations`` with ``image_id`` and ``category_id``, ``categories`` with
``id``); ``file_name`` is relative to the root (``data/{domain}/...``). Category ids are offset
per domain: a domain's classes are its categories sorted by id, so any offset works. The official
test labels are stripped, so ``val`` is the test split and a seeded, stratified part of ``train``
is the validation split. Images are read with Pillow (the ``data`` extra), as RGB, and brought to
64×64 for one template, after the residual-adapters recipe: the shorter side resized to 72 px;
evaluation images (validation and test) are the center 64 crop. Training images of the augmenting
domains are stored as the central 72×72 and get a random 64 crop with a horizontal flip drawn per
sample every time a mini-batch is drawn (every epoch): the task's ``train_transform``,
:class:`l2bg.data.augment.RandomCropFlip`. gtsrb, omniglot and svhn get the center 64 crop and
no flip on every split (no transform). Each domain is normalised per channel with the mean/std of
its own training split, taken over the central 64×64 of each training image (the pixels the
evaluation crops see; the 72×72 store is normalised with the same numbers).
"""

from __future__ import annotations

import io
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from l2bg.base.errors import L2BGError, ParamError
from l2bg.data.augment import RandomCropFlip
from l2bg.data.sources import _as_root, _is_file, _read_bytes
from l2bg.data.splits import seeded_generator, stratified_split
from l2bg.data.tasks import Task

__all__ = ["CENTER_ONLY", "DOMAINS", "IMAGE_SIZE", "RESIZE", "VAL_FRACTION", "build_vdd",
           "check_domains"]

#: The decathlon's domains in task order; imagenet12 is used when its annotations are present.
DOMAINS = ("aircraft", "cifar100", "daimlerpedcls", "dtd", "gtsrb", "omniglot", "svhn", "ucf101",
           "vgg-flowers", "imagenet12")
#: Domains whose images keep their layout: center crop, no flip, on every split.
CENTER_ONLY = frozenset({"gtsrb", "omniglot", "svhn"})
RESIZE = 72
IMAGE_SIZE = 64
#: Part of each domain's official train split held out (stratified, seeded) for validation.
VAL_FRACTION = 0.10
_HOW = "download and extract decathlon-1.0 (annotations/ and data/) into it"


def check_domains(domains: Sequence[str] | None) -> list[str] | None:
    """The ``domains`` given, checked against :data:`DOMAINS` (one line naming ``domains``)."""
    if domains is None:
        return None
    domains = [str(d).strip().lower() for d in domains]
    unknown = [d for d in domains if d not in DOMAINS]
    if unknown or not domains:
        raise ParamError(f"unknown decathlon domain {unknown[0] if unknown else ''!r} in "
                         f"{{domains}}: choose from {', '.join(DOMAINS)}", "domains")
    twice = sorted({d for d in domains if domains.count(d) > 1})
    if twice:
        raise ParamError(f"{{domains}} lists {twice[0]} twice; give each domain once", "domains")
    return domains


def _root(data_root: str | Path | None) -> Path:
    if data_root is None:
        raise ParamError(f"vdd needs {{data_root}} DIR holding decathlon-1.0 (annotations/, "
                         f"data/); {_HOW}", "data_root")
    root = _as_root(data_root, "Visual Decathlon", _HOW)
    for cand in (root, root / "decathlon-1.0"):
        if (cand / "annotations").is_dir():
            return cand
    raise L2BGError(f"no annotations/ in {root} or {root / 'decathlon-1.0'}; {_HOW}")


def _annotation_path(root: Path, domain: str, split: str) -> Path:
    return root / "annotations" / f"{domain}_{split}.json"


def _read_annotations(path: Path) -> tuple[list[str], list[int], list[int]]:
    """(file names, category ids, sorted category ids) of one COCO-style annotation file."""
    fix = "replace it with the file from decathlon-1.0"
    try:
        obj = json.loads(_read_bytes(path))
    except (ValueError, UnicodeDecodeError) as exc:
        raise L2BGError(f"{path}: not valid JSON ({exc}); {fix}") from exc
    if not isinstance(obj, dict) or not all(isinstance(obj.get(k), list)
                                            for k in ("images", "annotations", "categories")):
        raise L2BGError(f"{path}: expected a JSON object with lists 'images', 'annotations' and "
                        f"'categories' (COCO style); {fix}")
    try:
        cats = sorted({int(c["id"]) for c in obj["categories"]})
        files = {int(im["id"]): str(im["file_name"]) for im in obj["images"]}
        labels = {int(a["image_id"]): int(a["category_id"]) for a in obj["annotations"]}
    except (KeyError, TypeError, ValueError) as exc:
        raise L2BGError(f"{path}: an entry lacks or mistypes {exc} (images need id and file_name, "
                        f"annotations image_id and category_id, categories id); {fix}") from exc
    if not cats or not files:
        raise L2BGError(f"{path}: holds no {'categories' if not cats else 'images'}; {fix}")
    unlabelled = sorted(set(files) - set(labels))
    if unlabelled:
        raise L2BGError(f"{path}: image id {unlabelled[0]} has no annotation (the official "
                        f"test split has no labels: use <domain>_train/_val); {fix}")
    stray = sorted(set(labels) - set(files))
    if stray:
        raise L2BGError(f"{path}: an annotation names image id {stray[0]}, which is not in "
                        f"'images'; {fix}")
    bad = sorted({c for c in labels.values() if c not in set(cats)})
    if bad:
        raise L2BGError(f"{path}: category_id {bad[0]} is not in 'categories'; {fix}")
    ids = sorted(files)
    return [files[i] for i in ids], [labels[i] for i in ids], cats


def _cap(y: Tensor, max_per_class: int | None, seed: int, purpose: str) -> Tensor:
    """Indices keeping at most ``max_per_class`` samples of each class (a seeded choice)."""
    if max_per_class is None:
        return torch.arange(y.numel())
    perm = torch.randperm(y.numel(), generator=seeded_generator(seed, purpose))
    order = perm[torch.sort(y[perm], stable=True).indices]
    ys = y[order]
    counts = torch.bincount(ys)
    starts = torch.cumsum(counts, 0) - counts
    keep = order[(torch.arange(ys.numel()) - starts[ys]) < max_per_class]
    return torch.sort(keep).values


def _load_image(root: Path, name: str, ann: Path) -> Any:
    """One image as an RGB Pillow image, shorter side resized to RESIZE."""
    from PIL import Image, UnidentifiedImageError

    path = root / name
    if not _is_file(path) and not name.startswith("data/"):
        path = root / "data" / name
    if not _is_file(path):
        raise L2BGError(f"{path}: image named in {ann} is missing; extract the decathlon's "
                        "data/ folder next to annotations/")
    try:
        img = Image.open(io.BytesIO(_read_bytes(path)))
        img = img.convert("RGB")
    except (UnidentifiedImageError, OSError) as exc:
        raise L2BGError(f"{path}: not a readable image ({exc}); replace it with the file from "
                        "decathlon-1.0") from exc
    w, h = img.size
    scale = RESIZE / min(w, h)
    size = (max(RESIZE, round(w * scale)), max(RESIZE, round(h * scale)))
    return img.resize(size, Image.BILINEAR)


def _crop(img: Any, size: int) -> np.ndarray:
    """The centred ``size``×``size`` crop of an image as uint8 (3, size, size)."""
    arr = np.asarray(img, dtype=np.uint8)
    h, w = arr.shape[:2]
    top, left = (h - size) // 2, (w - size) // 2
    return np.ascontiguousarray(arr[top:top + size, left:left + size].transpose(2, 0, 1))


def _images(root: Path, names: list[str], ann: Path, size: int) -> Tensor:
    return torch.from_numpy(np.stack([_crop(_load_image(root, n, ann), size)
                                      for n in names])) if names else torch.empty(0)


def _centre(x: Tensor, size: int) -> Tensor:
    """The centred ``size``×``size`` part of a batch of images (a view)."""
    top, left = (x.shape[2] - size) // 2, (x.shape[3] - size) // 2
    return x[:, :, top:top + size, left:left + size]


def _domain_task(root: Path, domain: str, seed: int, max_per_class: int | None
                 ) -> tuple[Task, dict[str, Any]]:
    paths = {s: _annotation_path(root, domain, s) for s in ("train", "val")}
    for p in paths.values():
        if not _is_file(p):
            raise ParamError(f"{p} is missing: the decathlon root has no {domain}; {_HOW}, or "
                             f"leave {domain} out of {{domains}}", "domains")
    names_tr, cats_tr, categories = _read_annotations(paths["train"])
    names_te, cats_te, categories_te = _read_annotations(paths["val"])
    if categories_te != categories:
        raise L2BGError(f"{paths['val']}: its categories differ from {paths['train'].name}'s; "
                        "use the two files of one decathlon-1.0 release")
    lut = {c: i for i, c in enumerate(categories)}
    y_all = torch.tensor([lut[c] for c in cats_tr], dtype=torch.int64)
    y_te = torch.tensor([lut[c] for c in cats_te], dtype=torch.int64)
    keep_tr = _cap(y_all, max_per_class, seed, f"vdd-{domain}-train-cap")
    keep_te = _cap(y_te, max_per_class, seed, f"vdd-{domain}-test-cap")
    y_all, y_te = y_all[keep_tr], y_te[keep_te]
    tr, va = stratified_split(y_all, (VAL_FRACTION,), seeded_generator(seed, f"vdd-{domain}"))
    augment = domain not in CENTER_ONLY
    transform = RandomCropFlip(IMAGE_SIZE, flip=True) if augment else None
    x_tr = _images(root, [names_tr[int(keep_tr[i])] for i in tr], paths["train"],
                   RESIZE if augment else IMAGE_SIZE)
    x_va = _images(root, [names_tr[int(keep_tr[i])] for i in va], paths["train"], IMAGE_SIZE)
    x_te = _images(root, [names_te[int(i)] for i in keep_te], paths["val"], IMAGE_SIZE)
    x_trf = x_tr.float().div_(255.0)
    seen = _centre(x_trf, IMAGE_SIZE).double()
    mean = seen.mean(dim=(0, 2, 3))
    std = seen.std(dim=(0, 2, 3), unbiased=False).clamp_min(1e-8)
    m, s = mean.float().view(1, 3, 1, 1), std.float().view(1, 3, 1, 1)

    def norm(u8: Tensor) -> Tensor:
        return u8.float().div_(255.0).sub_(m).div_(s)

    task = Task(domain, x_trf.sub_(m).div_(s),
                y_all[tr], norm(x_va), y_all[va], norm(x_te), y_te,
                num_classes=len(categories), classes=tuple(categories),
                train_transform=transform)
    info = {"domain": domain, "num_classes": len(categories),
            "category_ids": categories,
            "sizes": {"train": len(tr), "val": len(va), "test": len(y_te)},
            "mean": [float(v) for v in mean], "std": [float(v) for v in std],
            "train_crop": (f"stored as the central {RESIZE}x{RESIZE}; random {IMAGE_SIZE} crop + "
                           "horizontal flip drawn per sample every epoch" if augment
                           else f"center {IMAGE_SIZE}, no flip"),
            "train_transform": None if transform is None else transform.to_dict()}
    return task, info


def build_vdd(num_tasks: int | None, seed: int, data_root: str | Path | None,
              class_order_seed: int | None, domains: Sequence[str] | None = None,
              max_per_class: int | None = None) -> tuple[list[Task], dict[str, Any]]:
    """One task per domain, in ``domains`` order (default: every domain of :data:`DOMAINS`
    whose annotations are present); ``num_tasks`` takes the first ones."""
    domains = check_domains(domains)
    if max_per_class is not None and (isinstance(max_per_class, bool) or
                                      not isinstance(max_per_class, int) or max_per_class < 1):
        raise ParamError(f"{{max_per_class}} must be an integer >= 1, got {max_per_class!r}",
                         "max_per_class")
    root = _root(data_root)
    if domains is None:
        domains = [d for d in DOMAINS if _is_file(_annotation_path(root, d, "train"))]
        if not domains:
            raise L2BGError(f"{root / 'annotations'} holds no <domain>_train.json of any "
                            f"decathlon domain ({', '.join(DOMAINS)}); {_HOW}")
    if num_tasks is None:
        num_tasks = len(domains)
    if num_tasks > len(domains):
        raise ParamError(f"{{num_tasks}} {num_tasks} but only {len(domains)} decathlon "
                         f"domain(s) ({', '.join(domains)}); pass {{num_tasks}} <= "
                         f"{len(domains)} or more {{domains}}", "num_tasks", "domains")
    tasks, per_domain = [], []
    for domain in domains[:num_tasks]:
        task, info = _domain_task(root, domain, seed, max_per_class)
        tasks.append(task)
        per_domain.append(info)
    source = {
        "kind": "decathlon-1.0", "root": str(root), "domains": domains[:num_tasks],
        "max_per_class": max_per_class, "input_shape": [3, IMAGE_SIZE, IMAGE_SIZE],
        "per_domain": per_domain, "decathlon": True,
        "split": {"val_fraction_of_train": VAL_FRACTION, "stratified": True, "seed": seed,
                  "test": "the official val split (the official test labels are stripped)"},
        "class_order_seed": None,
        "notes": ("the official val split is the test split; a seeded stratified 10% of each "
                  "domain's train split is the validation split; shorter side resized to 72, "
                  "training images stored as the central 72x72 with a random 64 crop + "
                  "horizontal flip drawn per sample every epoch, center 64 crop for evaluation "
                  "(gtsrb, omniglot, svhn: center crop, no flip, everywhere); per-domain "
                  "mean/std over the central 64x64 of the training split's images"),
    }
    return tasks, source
