"""Moving Fashion-MNIST: bounce physics by hand, labels read back from the pixels, determinism, disjoint splits,
and the clip-folder loader on the prepared tree (synthetic 28x28 arrays; the real images where installed)."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from favit_probsparse.data.moving_fmnist import (
    CLASS_FOLDERS,
    DIRECTIONS,
    ClipSpec,
    bounce_trajectory,
    build_moving_fmnist,
    free_window,
    load_fashion_mnist,
    plan_clips,
    render_clip,
    window_range,
)
from favit_probsparse.data.video import VideoClipDataModule
from favit_probsparse.data.vision import FASHION_MNIST_SYSTEM_DIR, DatasetError

SIZES = (40, 10, 10)  # every class of both label kinds in every split


def _arrays(seed=0, n_train=300, n_test=60):
    """Synthetic stand-ins: images with no zero pixel (so an item's box is exactly its non-zero pixels)."""
    rng = np.random.default_rng(seed)
    tr = rng.integers(1, 256, (n_train, 28, 28), dtype=np.uint8)
    te = rng.integers(1, 256, (n_test, 28, 28), dtype=np.uint8)
    return tr, np.arange(n_train) % 10, te, np.arange(n_test) % 10


def _build(out, seed=0, **kw):
    return build_moving_fmnist(out, *_arrays(), sizes=SIZES, val_fraction=1 / 3, seed=seed, **kw)


def _manifest(out: Path) -> list[dict]:
    with open(out / "clips.csv") as f:
        return list(csv.DictReader(f))


def _frames(clip: Path) -> np.ndarray:
    return np.stack([np.asarray(Image.open(p)) for p in sorted(clip.iterdir())])


def test_bounce_trajectory_by_hand():
    # 30 -> 34 -> 38 reflects at 36 to 34, then moves back at -4
    assert bounce_trajectory(30, 4, 7, 36) == [30, 34, 34, 30, 26, 22, 18, 14]
    # 1 -> -2 reflects at 0 to 2, then moves on at +3
    assert bounce_trajectory(1, -3, 7, 36) == [1, 2, 5, 8, 11, 14, 17, 20]
    assert bounce_trajectory(7, 0, 3, 36) == [7, 7, 7, 7]
    with pytest.raises(ValueError, match="exceeds"):
        bounce_trajectory(0, 40, 2, 36)


def test_render_places_the_item_on_the_hand_computed_path():
    img = np.arange(1, 28 * 28 + 1).reshape(28, 28).astype(np.uint8) | 1  # no zero pixel
    spec = ClipSpec("c", "train", 3, 0, (0,), ((10, 5),), ((-2, -2),))  # 3_up_left, speed 2
    clip = render_clip([img], spec, frames=8, size=64)
    xs = [10, 8, 6, 4, 2, 0, 2, 4]  # bounces off the left border between frames 5 and 6
    ys = [5, 3, 1, 1, 3, 5, 7, 9]  # bounces off the top border between frames 2 and 3
    for t in range(8):
        expected = np.zeros((64, 64), np.uint8)
        expected[ys[t] : ys[t] + 28, xs[t] : xs[t] + 28] = img
        np.testing.assert_array_equal(clip[t], expected)


def test_a_clip_reversed_in_time_is_an_equally_likely_clip_of_the_opposite_direction():
    # the window ranges by hand: speed 4, 3 free moves, free range 36
    assert window_range(4, 3, 36) == (0, 24) and window_range(-4, 3, 36) == (12, 36)
    assert free_window(8, 3) == 2 and free_window(8, 1) == 3
    with pytest.raises(ValueError, match="even"):
        free_window(8, 2)
    opposite = {
        k: next(j for j, (_, v) in enumerate(DIRECTIONS) if v == (-d[0], -d[1]))
        for k, (_, d) in enumerate(DIRECTIONS)
    }
    rng = np.random.default_rng(0)
    labels = np.arange(400) % 10
    img = rng.integers(1, 256, (28, 28), dtype=np.uint8)
    bounced = 0
    for spec in plan_clips("train", 200, labels, np.arange(400), rng, frames=8, size=64):
        (vx, vy), (x0, y0) = spec.velocities[0], spec.starts[0]
        xs, ys = bounce_trajectory(x0, vx, 7, 36), bounce_trajectory(y0, vy, 7, 36)
        # the velocity after the last frame (one more step shows it) is the reversed clip's initial one, negated
        vx_end = _velocity_after(x0, vx, 7)
        vy_end = _velocity_after(y0, vy, 7)
        rev = ClipSpec(
            "r", "train", opposite[spec.direction], 0, (0,), ((xs[-1], ys[-1]),), ((-vx_end, -vy_end),)
        )
        clip = render_clip([img], spec, 8, 64)
        np.testing.assert_array_equal(render_clip([img], rev, 8, 64), clip[::-1])
        # the reversed clip's window start (frame 2) is in its direction's range: the planner draws it as often
        s = max(abs(vx), abs(vy))
        dx, dy = DIRECTIONS[rev.direction][1]
        assert window_range(s * dx, 3, 36)[0] <= xs[7 - 2] <= window_range(s * dx, 3, 36)[1]
        assert window_range(s * dy, 3, 36)[0] <= ys[7 - 2] <= window_range(s * dy, 3, 36)[1]
        bounced += (vx, vy) != (s * DIRECTIONS[spec.direction][1][0], s * DIRECTIONS[spec.direction][1][1])
    assert bounced > 20  # moves before the window do bounce


def _velocity_after(p: int, v: int, steps: int, limit: int = 36) -> int:
    """The velocity after ``steps`` moves, by hand: a move leaving [0, limit] reverses it."""
    for _ in range(steps):
        p += v
        if not 0 <= p <= limit:
            p, v = (-p if p < 0 else 2 * limit - p), -v
    return v


def test_direction_and_class_labels_match_the_pixels(tmp_path):
    out = _build(tmp_path / "mf")
    tr, ytr, te, yte = _arrays()
    rows = {r["clip_id"]: r for r in _manifest(out)}
    assert len(rows) == sum(SIZES)
    for split in ("train", "val", "test"):
        for name, (dx, dy) in DIRECTIONS:
            for clip in sorted((out / "motion" / split / name).iterdir()):
                f = _frames(clip)
                assert f.shape == (8, 64, 64)
                # frames 2-5 (the 3 bounce-free moves in the middle) move in the labelled direction
                ys, xs = zip(*[(np.flatnonzero(fr.any(1))[0], np.flatnonzero(fr.any(0))[0]) for fr in f[2:6]])
                step = [(xs[t + 1] - xs[t], ys[t + 1] - ys[t]) for t in range(3)]
                s = max(abs(step[0][0]), abs(step[0][1]))
                assert 2 <= s <= 4 and step == [(s * dx, s * dy)] * 3, (clip, step, name)
                row = rows[clip.name]
                assert row["direction"] == name
                src = int(row["sources"])
                images, labels = (te, yte) if split == "test" else (tr, ytr)
                assert row["fmnist_class"] == CLASS_FOLDERS[labels[src]]
                x0, y0 = map(int, row["starts"].split(","))
                np.testing.assert_array_equal(f[0][y0 : y0 + 28, x0 : x0 + 28], images[src])
                # the appearance view holds the same clip under its class
                same = out / "appearance" / split / row["fmnist_class"] / clip.name
                np.testing.assert_array_equal(_frames(same), f)
                # the sign view: the measured step points "forward" (up, or right along a row) or "backward"
                sx, sy = step[0]
                sign = "0_forward" if sy < 0 or (sy == 0 and sx > 0) else "1_backward"
                np.testing.assert_array_equal(_frames(out / "sign" / split / sign / clip.name), f)
    # both labels are balanced: 40 train clips give 5 per direction and 4 per class
    assert sorted(len(list(p.iterdir())) for p in (out / "motion" / "train").iterdir()) == [5] * 8
    assert sorted(len(list(p.iterdir())) for p in (out / "appearance" / "train").iterdir()) == [4] * 10
    assert sorted(len(list(p.iterdir())) for p in (out / "sign" / "train").iterdir()) == [20, 20]


def test_build_is_deterministic_from_the_seed(tmp_path):
    a, b, c = _build(tmp_path / "a"), _build(tmp_path / "b"), _build(tmp_path / "c", seed=1)
    assert (a / "clips.csv").read_text() == (b / "clips.csv").read_text()
    assert (a / "clips.csv").read_text() != (c / "clips.csv").read_text()
    files = sorted(p.relative_to(a) for p in (a / "motion").rglob("*.png"))
    assert len(files) == sum(SIZES) * 8
    assert all((a / p).read_bytes() == (b / p).read_bytes() for p in files)
    # an existing build with the same parameters is kept; other parameters are an error
    assert _build(tmp_path / "a") == a
    with pytest.raises(DatasetError, match="exists"):
        _build(tmp_path / "a", frames=6)


@pytest.mark.parametrize("items", [1, 2])
def test_splits_share_no_source_image(tmp_path, items):
    out = _build(tmp_path / "mf", items=items)
    _, ytr, _, yte = _arrays()
    used: dict[str, list[int]] = {"train": [], "val": [], "test": []}
    for r in _manifest(out):
        src = [int(s) for s in r["sources"].split()]
        assert len(src) == items and r["source_split"] == ("test" if r["split"] == "test" else "train")
        labels = yte if r["split"] == "test" else ytr
        assert {CLASS_FOLDERS[labels[s]] for s in src} == {r["fmnist_class"]}  # two items: one class
        used[r["split"]] += src
    assert all(len(v) == len(set(v)) for v in used.values())  # no image in two clips
    assert not set(used["train"]) & set(used["val"])  # train and val draw from the same official set


def test_clip_loader_reads_the_prepared_tree(tmp_path):
    out = _build(tmp_path / "mf")
    kw = dict(num_frames=8, img_size=64, batch_size=4, num_workers=0, hflip=0.0, train_crop="center")
    dm = VideoClipDataModule(str(out / "motion"), mean=[0.0] * 3, std=[1.0] * 3, **kw)
    dm.setup("fit")
    assert dm.num_classes == 8 and len(dm.train_set) == 40 and len(dm.val_set) == 10
    x, y = next(iter(dm.val_dataloader()))
    assert x.shape == (4, 3, 8, 64, 64)
    for i in range(4):
        clip, label = dm.val_set.samples[i]
        assert DIRECTIONS[int(y[i])][0] == clip.parent.name == DIRECTIONS[label][0]
        ref = torch.from_numpy(_frames(clip)).float() / 255  # grey replicated to RGB
        torch.testing.assert_close(x[i], ref.expand(3, -1, -1, -1), atol=1e-6, rtol=0)
    app = VideoClipDataModule(str(out / "appearance"), **kw)
    app.setup(None)
    assert app.num_classes == 10 and [len(app.train_set), len(app.val_set), len(app.test_set)] == list(SIZES)


@pytest.mark.skipif(
    not FASHION_MNIST_SYSTEM_DIR.is_dir(), reason="Debian's dataset-fashion-mnist not installed"
)
def test_real_fashion_mnist_through_the_cli(tmp_path, capsys):
    from favit_probsparse.cli import main

    out = tmp_path / "mf"
    assert (
        main(["prepare", "moving-fmnist", "--out", str(out), "--sizes", "16", "8", "8", "--items", "2"]) == 0
    )
    tr, _, te, _ = load_fashion_mnist(download=False)
    assert tr.shape == (60000, 28, 28) and te.shape == (10000, 28, 28)
    for r in _manifest(out)[:6]:
        images = te if r["split"] == "test" else tr
        clip = out / "motion" / r["split"] / r["direction"] / r["clip_id"]
        f0 = _frames(clip)[0]
        for s, xy in zip(r["sources"].split(), r["starts"].split()):
            x0, y0 = map(int, xy.split(","))
            # the real image is there (an overlapping second item can only brighten it)
            assert (f0[y0 : y0 + 28, x0 : x0 + 28] >= images[int(s)]).all()
    # a second prepare with other parameters is refused in one line, the tree left as it was
    assert (
        main(["prepare", "moving-fmnist", "--out", str(out), "--sizes", "16", "8", "8", "--frames", "6"]) == 2
    )
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and f"{out} exists and is not a moving Fashion-MNIST build" in err


@pytest.mark.parametrize(
    ("name", "view", "classes"), [("", "motion", 8), ("_sign", "sign", 2), ("_appearance", "appearance", 10)]
)
def test_data_configs_instantiate_on_a_prepared_tree(tmp_path, name, view, classes):
    from favit_probsparse.config import load_config

    cfg = load_config(
        Path(__file__).resolve().parents[1] / "configs" / "video" / f"_data_moving_fmnist{name}.yaml"
    )
    data = cfg["data"]
    assert data["class_path"] == "favit_probsparse.data.video.VideoClipDataModule"
    assert data["init_args"]["data_dir"] == f"moving-fmnist/{view}" and data["init_args"]["hflip"] == 0.0
    out = _build(tmp_path / "moving-fmnist")
    dm = VideoClipDataModule(**{**data["init_args"], "data_dir": str(out / view), "num_workers": 0})
    dm.setup("fit")
    x, y = next(iter(dm.train_dataloader()))
    assert (
        dm.num_classes == classes
        and x.shape == (32, 3, 8, 64, 64)
        and 0 <= int(y.min()) <= int(y.max()) < classes
    )


def test_cached_frames_give_the_same_batches(tmp_path, monkeypatch):
    out = _build(tmp_path / "mf")
    monkeypatch.setenv("PL_GLOBAL_SEED", "5")
    got = {}
    for cache in (False, True):
        dm = VideoClipDataModule(
            str(out / "motion"),
            img_size=48,
            batch_size=8,
            num_workers=0,
            train_crop="rrc",
            cache_frames=cache,
        )
        dm.setup("fit")
        assert bool(dm.train_set.cache) == cache
        got[cache] = [next(iter(dm.train_dataloader())), next(iter(dm.val_dataloader()))]
    for (x0, y0), (x1, y1) in zip(got[False], got[True]):
        torch.testing.assert_close(x0, x1, atol=0, rtol=0)
        assert y0.tolist() == y1.tolist()


def test_the_data_module_builds_a_missing_tree_in_prepare_data(tmp_path, monkeypatch):
    from favit_probsparse.data import moving_fmnist

    monkeypatch.setattr(moving_fmnist, "load_fashion_mnist", lambda fashion_dir=None: _arrays())
    prep = {"sizes": list(SIZES), "val_fraction": 1 / 3}
    kw = dict(num_frames=8, img_size=64, batch_size=4, num_workers=0, prepare_moving_fmnist=prep)
    motion = VideoClipDataModule(str(tmp_path / "mf" / "motion"), **kw)
    appearance = VideoClipDataModule(str(tmp_path / "mf" / "appearance"), **kw)
    assert motion.num_classes == 8 and appearance.num_classes == 10  # known before the build
    motion.prepare_data()
    assert (tmp_path / "mf" / "clips.csv").read_text() == (_build(tmp_path / "ref") / "clips.csv").read_text()
    appearance.prepare_data()  # the same parameters: the tree is kept
    appearance.setup("fit")
    assert len(appearance.train_set) == SIZES[0] and appearance.classes == list(CLASS_FOLDERS)
    with pytest.raises(ValueError, match="needs data_dir to name a view"):
        VideoClipDataModule(str(tmp_path / "mf"), prepare_moving_fmnist={})
