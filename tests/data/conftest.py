"""Shared data-test fixtures: id-encoding task sources, and tiny datasets written in the real on-disk formats."""

from __future__ import annotations

import io
import pickle
import tarfile
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from lightning_meta.data import ClassificationTasks, EpisodicDataModule


def id_images(num_examples: int) -> torch.Tensor:
    """uint8 (M, 2, 2) images; pixel (0, 0) holds id // 256 and pixel (0, 1) holds id % 256."""
    ids = torch.arange(num_examples)
    images = torch.zeros(num_examples, 2, 2, dtype=torch.uint8)
    images[:, 0, 0], images[:, 0, 1] = ids // 256, ids % 256
    return images


def decode_ids(x: torch.Tensor) -> torch.Tensor:
    """Example ids of sampled images. Shapes: x (..., 1, 2, 2) floats in [0, 1] -> (...,) int64."""
    pixels = (x[..., 0, 0, :] * 255).round().long()
    return pixels[..., 0] * 256 + pixels[..., 1]


def id_tasks(classes: int = 12, per_class: int = 20, ways: int = 5, offset: int = 0) -> ClassificationTasks:
    """`classes` classes of `per_class` examples each, over shuffled ids starting at `offset`."""
    order = torch.randperm(classes * per_class, generator=torch.Generator().manual_seed(1)) + offset
    table = list(order.view(classes, per_class))
    return ClassificationTasks(id_images(offset + classes * per_class), table, ways)


def class_of(source: ClassificationTasks) -> dict[int, int]:
    """Example id -> class index of a source."""
    return {int(i): c for c, ids in enumerate(source.class_examples) for i in ids}


class IdDataModule(EpisodicDataModule):
    """Train, val and test splits over disjoint example ids (test ids start at 1000)."""

    def build_sources(self):
        return {
            "train": id_tasks(ways=self.ways),
            "val": id_tasks(classes=8, ways=self.ways, offset=500),
            "test": id_tasks(classes=8, ways=self.ways, offset=1000),
        }


def fake_trainer(global_step: int = 0, max_steps: int = 10, global_rank: int = 0, world_size: int = 1):
    """The four trainer attributes the data module reads."""
    return SimpleNamespace(global_step=global_step, max_steps=max_steps, global_rank=global_rank, world_size=world_size)


@pytest.fixture
def make_datamodule():
    """Build a set-up IdDataModule attached to a stand-in trainer."""

    def make(trainer=None, **kwargs) -> IdDataModule:
        defaults = dict(ways=3, shots=2, queries=3, meta_batch_size=4, val_episodes=6, test_episodes=6)
        dm = IdDataModule(**{**defaults, **kwargs})
        dm.trainer = trainer if trainer is not None else fake_trainer()
        dm.setup("fit")
        return dm

    return make


@pytest.fixture
def idkit() -> SimpleNamespace:
    """The helpers above, for test modules (conftest modules are not imported by name)."""
    return SimpleNamespace(
        images=id_images, decode=decode_ids, tasks=id_tasks, class_of=class_of, trainer=fake_trainer,
        DataModule=IdDataModule,
    )  # fmt: skip


# ---------------------------------------------------------------- fixtures in the real on-disk formats
# CIFAR-100's 20 superclasses (coarse_label_names order) and their fine classes, as in the real `meta` file.
CIFAR100_TAXONOMY = {
    "aquatic_mammals": ["beaver", "dolphin", "otter", "seal", "whale"],
    "fish": ["aquarium_fish", "flatfish", "ray", "shark", "trout"],
    "flowers": ["orchid", "poppy", "rose", "sunflower", "tulip"],
    "food_containers": ["bottle", "bowl", "can", "cup", "plate"],
    "fruit_and_vegetables": ["apple", "mushroom", "orange", "pear", "sweet_pepper"],
    "household_electrical_devices": ["clock", "keyboard", "lamp", "telephone", "television"],
    "household_furniture": ["bed", "chair", "couch", "table", "wardrobe"],
    "insects": ["bee", "beetle", "butterfly", "caterpillar", "cockroach"],
    "large_carnivores": ["bear", "leopard", "lion", "tiger", "wolf"],
    "large_man-made_outdoor_things": ["bridge", "castle", "house", "road", "skyscraper"],
    "large_natural_outdoor_scenes": ["cloud", "forest", "mountain", "plain", "sea"],
    "large_omnivores_and_herbivores": ["camel", "cattle", "chimpanzee", "elephant", "kangaroo"],
    "medium_mammals": ["fox", "porcupine", "possum", "raccoon", "skunk"],
    "non-insect_invertebrates": ["crab", "lobster", "snail", "spider", "worm"],
    "people": ["baby", "boy", "girl", "man", "woman"],
    "reptiles": ["crocodile", "dinosaur", "lizard", "snake", "turtle"],
    "small_mammals": ["hamster", "mouse", "rabbit", "shrew", "squirrel"],
    "trees": ["maple_tree", "oak_tree", "palm_tree", "pine_tree", "willow_tree"],
    "vehicles_1": ["bicycle", "bus", "motorcycle", "pickup_truck", "train"],
    "vehicles_2": ["lawn_mower", "rocket", "streetcar", "tank", "tractor"],
}


def write_cifar100(folder: Path, train_per_class: int = 4, test_per_class: int = 2) -> Path:
    """A miniature `cifar-100-python.tar.gz` with the real member names, keys (bytes, as Python 2 pickled them) and
    dtypes. Pixel planes: red = fine class id, green = index within the class, blue = 1 in the test file."""
    fine_names = sorted(n for names in CIFAR100_TAXONOMY.values() for n in names)
    coarse_of = {n: c for c, names in enumerate(CIFAR100_TAXONOMY.values()) for n in names}
    members = {}
    for part, (count, blue) in {"train": (train_per_class, 0), "test": (test_per_class, 1)}.items():
        fine = np.repeat(np.arange(100), count)
        index = np.tile(np.arange(count), 100)
        order = np.random.default_rng(0).permutation(len(fine))  # the real files are not sorted by class
        fine, index = fine[order], index[order]
        planes = [
            np.repeat(fine[:, None], 1024, 1),
            np.repeat(index[:, None], 1024, 1),
            np.full((len(fine), 1024), blue),
        ]
        members[part] = {
            b"batch_label": f"{part} batch".encode(), b"filenames": [b"x.png"] * len(fine),
            b"fine_labels": fine.tolist(), b"coarse_labels": [coarse_of[fine_names[f]] for f in fine],
            b"data": np.concatenate(planes, 1).astype(np.uint8),
        }  # fmt: skip
    members["meta"] = {
        b"fine_label_names": [n.encode() for n in fine_names],
        b"coarse_label_names": [n.encode() for n in CIFAR100_TAXONOMY],
    }
    folder.mkdir(parents=True, exist_ok=True)
    archive = folder / "cifar-100-python.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        for name, content in members.items():
            data = pickle.dumps(content, protocol=2)
            info = tarfile.TarInfo(f"cifar-100-python/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return archive


def write_miniimagenet_pickles(root: Path, classes: int = 5, per_class: int = 20, size: int = 84) -> dict[str, dict]:
    """`mini-imagenet-cache-{split}.pkl` as learn2learn distributes them: {"image_data": uint8 (N, S, S, 3),
    "class_dict": {wnid: [row, ...]}}, rows shuffled. Pixel (0, 0) holds (split, class, index); the rest is noise so
    that the channel statistics are not trivial. Returns the written dicts."""
    rng = np.random.default_rng(1)
    written = {}
    for s, split in enumerate(("train", "val", "test")):
        n = classes * per_class
        images = rng.integers(0, 256, size=(n, size, size, 3), dtype=np.uint8)
        rows = rng.permutation(n)
        class_dict = {}
        for c in range(classes):
            ids = rows[c * per_class : (c + 1) * per_class]
            class_dict[f"n0{s}{c:06d}"] = ids.tolist()
            images[ids, 0, 0] = np.stack([np.full(per_class, s), np.full(per_class, c), np.arange(per_class)], 1)
        written[split] = {"image_data": images, "class_dict": class_dict}
        root.mkdir(parents=True, exist_ok=True)
        with open(root / f"mini-imagenet-cache-{split}.pkl", "wb") as f:
            pickle.dump(written[split], f)
    return written


def write_miniimagenet_csv(root: Path, classes: int = 2, per_class: int = 3) -> None:
    """Ravi & Larochelle's `{split}.csv` (`filename,label`) and `images/`: flat-colour images of odd sizes, PNG and
    JPEG, colour (split*80, class*60, index*40) so that tests can read them back after resizing."""
    (root / "images").mkdir(parents=True)
    for s, split in enumerate(("train", "val", "test")):
        lines = ["filename,label"]
        for c in range(classes):
            for i in range(per_class):
                name = f"n{s}{c}{i:04d}.{'jpg' if i % 2 else 'png'}"
                Image.new("RGB", (100 + 10 * i, 90), (s * 80, c * 60, i * 40)).save(root / "images" / name)
                lines.append(f"{name},n0{s}{c:06d}")
        (root / f"{split}.csv").write_text("\n".join(lines) + "\n")


def write_class_folders(root: Path, classes: dict[str, int], size: int = 10, mode: str = "RGB") -> None:
    """`root/<class>/<i>.png`, each a flat colour (class*20, index*10, 7) (grey: class*20 + index)."""
    for c, (name, count) in enumerate(classes.items()):
        (root / name).mkdir(parents=True)
        for i in range(count):
            colour = (c * 20, i * 10, 7) if mode == "RGB" else c * 20 + i
            Image.new(mode, (size, size), colour).save(root / name / f"{i}.png")


@pytest.fixture
def formats() -> SimpleNamespace:
    """Writers of tiny datasets in the exact on-disk formats of CIFAR-100, Mini-ImageNet and folder-per-class."""
    return SimpleNamespace(
        cifar100=write_cifar100, mini_pickles=write_miniimagenet_pickles, mini_csv=write_miniimagenet_csv,
        class_folders=write_class_folders, taxonomy=CIFAR100_TAXONOMY,
    )  # fmt: skip
