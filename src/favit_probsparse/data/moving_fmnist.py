"""Moving Fashion-MNIST: a motion task on real images, written once as clip folders.

**The motion is synthetic; the images are real.** Each clip is ``frames`` (default 8) grey frames of a ``size`` x
``size`` (default 64) black canvas on which ``items`` (default 1, or 2) real 28x28 Fashion-MNIST images move at a
constant integer velocity and bounce off the borders (elastic reflection: a coordinate that would leave
``[0, size - 28]`` is mirrored back and that velocity component changes sign; overlapping items are composed by
pixel-wise maximum, as in Moving MNIST).

Labels, two views of the same clips:

* ``motion``: the direction of motion in the middle of the clip, 8 classes (``0_right``, ``1_up_right``,
  ``2_up``, ..., ``7_down_right``; image coordinates, y downwards): velocity ``speed * (dx, dy)`` with ``dx, dy``
  in {-1, 0, 1} and an integer ``speed`` drawn from ``speed`` (default 2-4 pixels a frame). The ``free_steps``
  (default 3) moves in the middle of the clip hit no border (frames 2-5 of 8 show the labelled direction); the
  item's position at the start of those moves is uniform over the positions that allow it, and the physics runs
  forwards and backwards from there, so earlier and later moves may bounce.
  **Why the middle and not the initial velocity:** the distribution of clips is then exactly symmetric in time,
  and reversing a clip gives a clip of the opposite direction with the same probability
  (:func:`window_range`). A model that ignores the order of the frames (one that pools per-frame features)
  cannot tell a direction from its opposite, so it scores at most 50 % (the axis of motion, 4 classes, stays
  visible in the set of positions). With the initial velocity as the label, a bounce gives the sign away to such
  a model: the item gathers near the border it was first heading for.
* ``sign``: the sign of the motion along its axis, 2 classes: ``0_forward`` (right, up-right, up, up-left) and
  ``1_backward`` (the four opposite directions). A clip and its reversal always carry opposite labels, so a model
  that ignores the order of the frames scores chance (50 %) exactly, whatever it sees of the axis: the label
  needs time and nothing else.
* ``appearance``: the item's Fashion-MNIST class, 10 classes (``0_t-shirt_top``, ...); one frame is enough. It is
  the control. With two items both are of the same class and share the direction (each has its own speed and
  start), so both labels stay well defined.

Both labels are balanced (each split cycles through the classes in a seeded order). Splits are made by source
image: ``test`` uses the official test images; ``train`` and ``val`` use disjoint parts of the official training
images (a seeded permutation puts ``val_fraction``, default 1/6, of them in the val pool), and no image is used by
two clips. Default sizes: 2000 / 400 / 1000 clips (``train`` / ``val`` / ``test``), 3,400 x 8 PNGs, about 29 MB.

Layout (one physical tree, three label views, so the tasks see exactly the same clips and differ only in the
label; the other views cost no disk)::

    OUT/motion/<split>/<k_direction>/<clip>/{00..}.png      the frames (grey PNG)
    OUT/appearance/<split>/<k_class>/<clip>                relative symlink to the motion clip (a copy where
                                                           the file system has no symlinks)
    OUT/sign/<split>/<k_sign>/<clip>                       the same, by the sign of the motion
    OUT/clips.csv                                          per clip: split, labels, source images, start, velocity
    OUT/build.json                                         the build parameters (seed, sizes, ...)

Either view is a clip-folder tree for :class:`favit_probsparse.data.video.VideoClipDataModule`
(``data_dir: OUT/motion``, ``OUT/sign`` or ``OUT/appearance``). The build is deterministic: the same images, parameters and
``seed`` give the same files. Fashion-MNIST is read from Debian's ``dataset-fashion-mnist`` package when installed
(``/usr/share/datasets/fashion-mnist``), else from ``fashion_dir``, else torchvision downloads it into the data root
(as :class:`favit_probsparse.data.vision.ImageClassificationDataModule` does).
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from favit_probsparse.data.vision import (
    FASHION_MNIST_CLASSES,
    FASHION_MNIST_SYSTEM_DIR,
    DatasetError,
    FashionMNISTIDX,
)
from favit_probsparse.data.vision.datasets import _find_idx
from favit_probsparse.paths import resolve_data_path

__all__ = [
    "DIRECTIONS",
    "SIGN_FOLDERS",
    "VIEWS",
    "ClipSpec",
    "bounce_trajectory",
    "build_moving_fmnist",
    "load_fashion_mnist",
    "plan_clips",
    "render_clip",
]

#: (folder name, (dx, dy)) in image coordinates (y grows downwards), counter-clockwise from "right"
DIRECTIONS: tuple[tuple[str, tuple[int, int]], ...] = (
    ("0_right", (1, 0)),
    ("1_up_right", (1, -1)),
    ("2_up", (0, -1)),
    ("3_up_left", (-1, -1)),
    ("4_left", (-1, 0)),
    ("5_down_left", (-1, 1)),
    ("6_down", (0, 1)),
    ("7_down_right", (1, 1)),
)
CLASS_FOLDERS = tuple(
    f"{k}_{name.lower().replace('/', '_').replace(' ', '_')}" for k, name in enumerate(FASHION_MNIST_CLASSES)
)
#: the sign view: directions 0-3 and their opposites 4-7
SIGN_FOLDERS = ("0_forward", "1_backward")
#: label view -> its class folders, in label order
VIEWS: dict[str, tuple[str, ...]] = {
    "motion": tuple(name for name, _ in DIRECTIONS),
    "sign": SIGN_FOLDERS,
    "appearance": CLASS_FOLDERS,
}
SPLITS = ("train", "val", "test")
ITEM = 28


@dataclass(frozen=True)
class ClipSpec:
    """One clip: its split, labels, source images (indices into the official train or test arrays) and motion."""

    clip_id: str
    split: str
    direction: int
    fmnist_class: int
    sources: tuple[int, ...]
    starts: tuple[tuple[int, int], ...]  # (x, y) of each item's top-left corner in frame 0
    velocities: tuple[tuple[int, int], ...]  # (vx, vy) of each item between frames 0 and 1


def _step(p: int, v: int, limit: int) -> tuple[int, int]:
    """One move of a coordinate in ``[0, limit]``; leaving it reflects the position and reverses the velocity.

    Reversible: stepping ``(p', -v')`` gives ``(p, -v)`` back, so the physics runs backwards in time too.
    """
    p += v
    if p < 0:
        return -p, -v
    if p > limit:
        return 2 * limit - p, -v
    return p, v


def bounce_trajectory(start: int, velocity: int, steps: int, limit: int) -> list[int]:
    """Positions ``p_0 .. p_steps`` of one coordinate moving at ``velocity`` in ``[0, limit]`` with reflection."""
    if abs(velocity) > limit:
        raise ValueError(f"|velocity|={abs(velocity)} exceeds the free range {limit}")
    p, v, out = int(start), int(velocity), [int(start)]
    for _ in range(steps):
        p, v = _step(p, v, limit)
        out.append(p)
    return out


def free_window(frames: int, free_steps: int) -> int:
    """First frame of the ``free_steps`` bounce-free moves centred in the clip (moves ``a .. a+free_steps-1``)."""
    if not 1 <= free_steps < frames or (frames - 1 - free_steps) % 2:
        raise ValueError(
            f"free_steps={free_steps} must be in 1..frames-1 and frames - 1 - free_steps even (frames={frames}), "
            "so that the bounce-free moves sit in the middle of the clip"
        )
    return (frames - 1 - free_steps) // 2


def window_range(v: int, free_steps: int, limit: int) -> tuple[int, int]:
    """Positions from which ``free_steps`` moves of ``v`` stay in ``[0, limit]`` (inclusive bounds).

    ``window_range(-v)`` is ``window_range(v)`` shifted by ``free_steps * v``: the window's last position for ``v``
    is uniform where its first one for ``-v`` is, which makes the clips' distribution symmetric in time.
    """
    lo, hi = max(0, -v * free_steps), min(limit, limit - v * free_steps)
    if lo > hi:
        raise ValueError(f"speed {abs(v)} x free_steps {free_steps} does not fit the free range {limit}")
    return lo, hi


def _item_motion(rng, v: tuple[int, int], first: int, free_steps: int, limit: int):
    """Start and initial velocity of an item moving at ``v`` without bounce from frame ``first`` on."""
    start, vel = [], []
    for vc in v:
        lo, hi = window_range(vc, free_steps, limit)
        p, back = int(rng.integers(lo, hi + 1)), -vc
        for _ in range(first):  # run the physics backwards to frame 0
            p, back = _step(p, back, limit)
        start.append(p)
        vel.append(-back)
    return tuple(start), tuple(vel)


def render_clip(images: list[np.ndarray], spec: ClipSpec, frames: int, size: int) -> np.ndarray:
    """uint8 ``[frames, size, size]``: the items of ``spec`` moved along their bouncing trajectories."""
    limit = size - ITEM
    canvas = np.zeros((frames, size, size), np.uint8)
    for img, (x0, y0), (vx, vy) in zip(images, spec.starts, spec.velocities):
        xs = bounce_trajectory(x0, vx, frames - 1, limit)
        ys = bounce_trajectory(y0, vy, frames - 1, limit)
        for t, (x, y) in enumerate(zip(xs, ys)):
            patch = canvas[t, y : y + ITEM, x : x + ITEM]
            np.maximum(patch, img, out=patch)
    return canvas


def _class_pools(labels: np.ndarray, indices: np.ndarray, rng: np.random.Generator) -> list[list[int]]:
    return [list(rng.permutation(indices[labels[indices] == c])) for c in range(len(FASHION_MNIST_CLASSES))]


def plan_clips(
    split: str,
    n: int,
    labels: np.ndarray,
    pool: np.ndarray,
    rng: np.random.Generator,
    frames: int = 8,
    size: int = 64,
    items: int = 1,
    speed: tuple[int, int] = (2, 4),
    free_steps: int = 3,
) -> list[ClipSpec]:
    """``n`` clips of ``split`` whose images come from ``pool`` (indices into ``labels``), each image used once."""
    limit, first = size - ITEM, free_window(frames, free_steps)
    directions = rng.permutation(np.arange(n) % len(DIRECTIONS))
    classes = rng.permutation(np.arange(n) % len(FASHION_MNIST_CLASSES))
    pools = _class_pools(labels, pool, rng)
    out = []
    for i, (d, c) in enumerate(zip(directions, classes)):
        if len(pools[c]) < items:
            have = int((labels[pool] == c).sum())
            raise DatasetError(
                f"the {split} pool has {have} images of class {FASHION_MNIST_CLASSES[c]!r}, too few for "
                f"{n} clips of {items} item(s); lower the {split} size"
            )
        dx, dy = DIRECTIONS[d][1]
        sources, starts, velocities = [], [], []
        for _ in range(items):
            s = int(rng.integers(speed[0], speed[1] + 1))
            start, vel = _item_motion(rng, (s * dx, s * dy), first, free_steps, limit)
            sources.append(int(pools[c].pop()))
            starts.append(start)
            velocities.append(vel)
        out.append(
            ClipSpec(f"{split}_{i:05d}", split, int(d), int(c), *map(tuple, (sources, starts, velocities)))
        )
    return out


def _link_or_copy(target: Path, link: Path) -> None:
    link.parent.mkdir(parents=True, exist_ok=True)
    try:
        link.symlink_to(os.path.relpath(target, link.parent), target_is_directory=True)
    except OSError:  # no symlinks (e.g. Windows without the privilege): a copy reads the same
        shutil.copytree(target, link)


def _write_clip(root: Path, spec: ClipSpec, frames: np.ndarray) -> None:
    clip = root / "motion" / spec.split / DIRECTIONS[spec.direction][0] / spec.clip_id
    clip.mkdir(parents=True)
    for t, f in enumerate(frames):
        Image.fromarray(f, mode="L").save(clip / f"{t:02d}.png")
    _link_or_copy(clip, root / "appearance" / spec.split / CLASS_FOLDERS[spec.fmnist_class] / spec.clip_id)
    _link_or_copy(clip, root / "sign" / spec.split / SIGN_FOLDERS[spec.direction // 4] / spec.clip_id)


def _write_manifest(path: Path, specs: list[ClipSpec]) -> None:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(
            [
                "clip_id",
                "split",
                "direction",
                "fmnist_class",
                "source_split",
                "sources",
                "starts",
                "velocities",
            ]
        )
        for s in specs:
            src = "test" if s.split == "test" else "train"
            w.writerow(
                [
                    s.clip_id,
                    s.split,
                    DIRECTIONS[s.direction][0],
                    CLASS_FOLDERS[s.fmnist_class],
                    src,
                    " ".join(map(str, s.sources)),
                    " ".join(f"{x},{y}" for x, y in s.starts),
                    " ".join(f"{x},{y}" for x, y in s.velocities),
                ]
            )


def _check_images(name: str, images: np.ndarray, labels: np.ndarray) -> None:
    if images.ndim != 3 or images.shape[1:] != (ITEM, ITEM) or images.dtype != np.uint8:
        raise DatasetError(
            f"{name} images must be uint8 [N, 28, 28], got {images.dtype} {list(images.shape)}"
        )
    if len(labels) != len(images) or labels.min() < 0 or labels.max() >= len(FASHION_MNIST_CLASSES):
        raise DatasetError(f"{name}: {len(images)} images need as many labels in 0..9, got {len(labels)}")


def build_moving_fmnist(
    out: str | os.PathLike,
    train_images: np.ndarray,
    train_labels: np.ndarray,
    test_images: np.ndarray,
    test_labels: np.ndarray,
    sizes: tuple[int, int, int] = (2000, 400, 1000),
    frames: int = 8,
    size: int = 64,
    items: int = 1,
    speed: tuple[int, int] = (2, 4),
    free_steps: int = 3,
    val_fraction: float = 1 / 6,
    seed: int = 0,
) -> Path:
    """Write moving Fashion-MNIST clips (module docstring) built from the given images to ``out``.

    ``train_*`` feed the train and val splits (disjoint pools), ``test_*`` the test split; any uint8
    ``[N, 28, 28]`` arrays with labels 0..9 work (the tests pass small synthetic ones). The tree is written into a
    temporary folder beside ``out`` and renamed into place when complete. An existing ``out`` built with the same
    parameters is returned untouched; one built otherwise is an error.
    """
    out = Path(out)
    train_labels, test_labels = np.asarray(train_labels, np.int64), np.asarray(test_labels, np.int64)
    _check_images("train", train_images, train_labels)
    _check_images("test", test_images, test_labels)
    if items not in (1, 2) or size <= ITEM:
        raise ValueError(f"need items in (1, 2) and size > 28; got {items}, {size}")
    free_window(frames, free_steps)
    params = {
        "sizes": dict(zip(SPLITS, map(int, sizes))),
        **{"frames": frames, "size": size, "items": items, "speed": list(speed), "free_steps": free_steps},
        **{"val_fraction": val_fraction, "seed": seed},
        "source_images": {"train": len(train_labels), "test": len(test_labels)},
    }
    if out.exists():
        built = out / "build.json"
        if built.is_file() and json.loads(built.read_text())["params"] == params:
            return out
        raise DatasetError(
            f"{out} exists and is not a moving Fashion-MNIST build with these parameters; remove it"
        )
    rng = np.random.default_rng(seed)
    perm = rng.permutation(len(train_labels))
    n_val = round(len(perm) * val_fraction)
    pools = {"train": perm[n_val:], "val": perm[:n_val], "test": np.arange(len(test_labels))}
    specs = []
    for k, split in enumerate(SPLITS):
        labels = test_labels if split == "test" else train_labels
        split_rng = np.random.default_rng(
            [seed, k]
        )  # splits drawn independently: one size does not move another
        specs += plan_clips(
            split, int(sizes[k]), labels, pools[split], split_rng, frames, size, items, speed, free_steps
        )
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    try:
        for spec in specs:
            images = test_images if spec.split == "test" else train_images
            _write_clip(tmp, spec, render_clip([images[i] for i in spec.sources], spec, frames, size))
        _write_manifest(tmp / "clips.csv", specs)
        note = "Moving Fashion-MNIST: the motion is synthetic, the images are real (favit_probsparse.data.moving_fmnist)"
        (tmp / "build.json").write_text(json.dumps({"note": note, "params": params}, indent=1) + "\n")
        tmp.rename(out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return out


def load_fashion_mnist(fashion_dir: str | os.PathLike | None = None, download: bool = True):
    """``(train_images, train_labels, test_images, test_labels)`` of the real Fashion-MNIST.

    Read from ``fashion_dir`` or Debian's package folder when they hold the IDX files, else downloaded by
    torchvision into ``fashion_dir`` (default ``<data root>/fashion-mnist``, shared with the image data module).
    """
    folder = resolve_data_path(fashion_dir, "fashion-mnist")
    found = next(
        (d for d in (folder, FASHION_MNIST_SYSTEM_DIR) if _find_idx(d, "train-images-idx3-ubyte")), None
    )
    if found is None:
        if not download:
            raise DatasetError(f"Fashion-MNIST IDX files not found in {folder} or {FASHION_MNIST_SYSTEM_DIR}")
        from torchvision import datasets

        for train in (True, False):
            datasets.FashionMNIST(str(folder), train=train, download=True)
        found = folder
    train, test = FashionMNISTIDX(found, True), FashionMNISTIDX(found, False)
    return train.images, train.targets, test.images, test.targets
