"""Video-classification data: clip folders ``<root>/<split>/<class>/<clip>`` as one LightningDataModule.

A clip is either a video file (``.mp4``, ``.avi``, ``.webm``, ``.mkv``, ``.mov``) or a frame folder (a folder of
images, ``.png``/``.jpg``..., read in natural name order: ``2.png`` before ``10.png``). Both kinds may sit side by
side. Class folders are sorted by name, as in torchvision's ImageFolder, and give the label index.

``VideoClipDataModule(data_dir=..., num_frames=8, img_size=112)`` returns clips ``[C, T, H, W]`` float (normalized)
and integer labels, batched to ``[B, C, T, H, W]``:

* **Temporal sampling** (:func:`sample_indices`). ``sampling="segments"`` (TSN): the clip's N frames are cut into T
  equal segments; evaluation takes each segment's middle frame (``floor((i + 0.5) N / T)``), training a random
  frame of each segment. ``sampling="dense"``: T frames ``frame_stride`` apart; evaluation takes the centred
  window, training a random start. A clip with fewer frames than the sampling needs is an error (no silent
  repetition).
* **Spatial**: torchvision's ``transforms.v2`` on a ``tv_tensors.Video``, so each random decision (crop box,
  flip) is drawn once per clip and applied to all its frames. Evaluation resizes the shorter side to ``resize``
  (default ``img_size``) and centre-crops ``img_size``; training crops ``img_size`` at random (``train_crop=
  "random"``), or a random resized crop (``"rrc"``, area ``scale``), or the centre crop (``"center"``), then
  flips horizontally with probability ``hflip``. A horizontal flip mirrors motion: set ``hflip: 0`` when labels
  depend on the direction of motion (moving Fashion-MNIST).
* **Normalization**: ``mean``/``std`` (ImageNet's by default) after scaling to [0, 1].

Decoding goes through **PyAV** (``av`` on PyPI), one maintained library whose wheels bundle FFmpeg, so nothing
has to be installed on the system. The alternatives do not fit: torchvision 0.29 dropped ``read_video``; its
successor ``torchcodec`` loads FFmpeg's shared libraries from the system (Debian's ``ffmpeg`` packages), which a
pip-only install does not have; ``decord`` has had no release since 2021. Frames are decoded sequentially from
the start and decoding stops after the last sampled frame, so the indices are exact (seeking is keyframe-bound)
and :func:`read_video_frames` returns exactly the frames an independent full decode gives at those indices. The
frame count is counted from the demuxed packets at setup (container headers may lack it or be wrong, e.g. WebM).

Frame folders are decoded once into memory at setup when they fit (``cache_frames``, bit-identical items; moving
Fashion-MNIST's training split of 3000 clips takes 98 MB). ``prepare_moving_fmnist`` builds moving Fashion-MNIST
(:mod:`favit_probsparse.data.moving_fmnist`) in ``prepare_data`` when its folder is missing.

Errors are one line naming the file (:class:`~favit_probsparse.data.vision.DatasetError`): a missing split, a
class folder without clips, a file that cannot be decoded or has no video stream, a clip with fewer frames than
the sampling needs, frames of different sizes.

Data paths are resolved like the image data (:func:`favit_probsparse.paths.resolve_data_path`: relative names
live under ``$FAVIT_DATA``, else ``../shared/data``, else a per-user cache). Training order and augmentation are
reproducible and resumable through the image module's :class:`~favit_probsparse.data.vision.EpochShuffleSampler`
and :class:`~favit_probsparse.data.vision.SeededSamples` (temporal offsets and crops draw from torch's generator,
which is seeded per (seed, epoch, clip)).
"""

from __future__ import annotations

import itertools
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from lightning.pytorch import LightningDataModule
from PIL import Image, UnidentifiedImageError
from torch.utils.data import DataLoader, Dataset

from favit_probsparse.data.vision import (
    CACHE_AUTO_BYTES,
    IMAGENET_MEAN,
    IMAGENET_STD,
    IMG_EXTENSIONS,
    DatasetError,
    seeded_loader,
)
from favit_probsparse.paths import resolve_data_path

__all__ = [
    "VIDEO_EXTENSIONS",
    "ClipFolder",
    "VideoClipDataModule",
    "build_video_transform",
    "count_video_frames",
    "read_frame_folder",
    "read_video_frames",
    "sample_indices",
]

VIDEO_EXTENSIONS = (".mp4", ".avi", ".webm", ".mkv", ".mov")
SAMPLINGS = ("segments", "dense")
TRAIN_CROPS = ("random", "rrc", "center")


# --------------------------------------------------------------------------------------------- sampling
def sample_indices(
    num_frames: int, t: int, train: bool, sampling: str = "segments", frame_stride: int = 1, source: str = ""
) -> list[int]:
    """The ``t`` frame indices taken from a clip of ``num_frames`` frames (see the module docstring).

    Random choices (``train=True``) draw from torch's default generator. ``source`` names the clip in errors.
    """
    if sampling == "segments":
        if num_frames < t:
            raise DatasetError(f"{source}: {num_frames} frames, fewer than num_frames={t}")
        bounds = [(i * num_frames) // t for i in range(t + 1)]
        if not train:
            return [int((2 * i + 1) * num_frames // (2 * t)) for i in range(t)]
        return [a + int(torch.randint(b - a, ())) for a, b in itertools.pairwise(bounds)]
    if sampling == "dense":
        span = (t - 1) * frame_stride + 1
        if num_frames < span:
            raise DatasetError(
                f"{source}: {num_frames} frames, fewer than the {span} that num_frames={t} at "
                f"frame_stride={frame_stride} spans"
            )
        start = int(torch.randint(num_frames - span + 1, ())) if train else (num_frames - span) // 2
        return [start + i * frame_stride for i in range(t)]
    raise ValueError(f"sampling must be one of {', '.join(SAMPLINGS)}, got {sampling!r}")


# --------------------------------------------------------------------------------------------- decoding
def _av_error(path: Path, e: Exception) -> DatasetError:
    return DatasetError(f"cannot decode video {path}: {type(e).__name__}: {e}")


def _video_stream(container, path: Path):
    if not container.streams.video:
        raise DatasetError(f"{path} has no video stream")
    return container.streams.video[0]


def count_video_frames(path: str | os.PathLike) -> int:
    """Number of frames of a video file's first video stream, counted from its demuxed packets."""
    import av

    path = Path(path)
    try:
        with av.open(str(path)) as container:
            stream = _video_stream(container, path)
            return sum(1 for pkt in container.demux(stream) if pkt.size > 0)
    except DatasetError:
        raise
    except (av.FFmpegError, OSError, ValueError) as e:
        raise _av_error(path, e) from None


def read_video_frames(path: str | os.PathLike, indices: Sequence[int]) -> np.ndarray:
    """Frames ``indices`` (in decode order, 0-based) of a video file as uint8 RGB ``[len(indices), H, W, 3]``.

    Decodes sequentially from the first frame and stops after ``max(indices)``.
    """
    import av

    path = Path(path)
    wanted = sorted(set(int(i) for i in indices))
    got: dict[int, np.ndarray] = {}
    try:
        with av.open(str(path)) as container:
            stream = _video_stream(container, path)
            for i, frame in enumerate(container.decode(stream)):
                if i in wanted:
                    got[i] = frame.to_ndarray(format="rgb24")
                if i >= wanted[-1]:
                    break
    except DatasetError:
        raise
    except (av.FFmpegError, OSError, ValueError) as e:
        raise _av_error(path, e) from None
    if len(got) < len(wanted):
        raise DatasetError(
            f"{path}: decoding ended before frame {wanted[-1]} (it yielded {len(got)} of them)"
        )
    return np.stack([got[int(i)] for i in indices])


def _natural_key(name: str) -> list:
    return [int(s) if s.isdigit() else s for s in re.split(r"(\d+)", name)]


def _frame_files(folder: Path) -> list[Path]:
    files = [p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMG_EXTENSIONS]
    return sorted(files, key=lambda p: _natural_key(p.name))


def _read_frame(path: Path) -> np.ndarray:
    """uint8 ``[H, W, 1]`` for a grey image (``convert("RGB")`` would only repeat it), else ``[H, W, 3]``."""
    try:
        with Image.open(path) as im:
            if im.mode == "L":
                return np.asarray(im, dtype=np.uint8)[..., None]
            return np.asarray(im.convert("RGB"), dtype=np.uint8)
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError) as e:
        raise DatasetError(f"cannot read frame {path}: {e}") from None


def read_frame_folder(files: Sequence[Path], indices: Sequence[int], rgb: bool = True) -> np.ndarray:
    """Images ``files[i]`` for ``i`` in ``indices`` as uint8 ``[len(indices), H, W, 3]`` (all of one size).

    ``rgb=False`` keeps an all-grey clip as ``[len(indices), H, W, 1]`` (a third of the memory when cached).
    """
    frames = [_read_frame(files[i]) for i in indices]
    for i, f in zip(indices, frames):
        if f.shape[:2] != frames[0].shape[:2]:
            raise DatasetError(
                f"frame {files[i]} is {f.shape[1]}x{f.shape[0]}, the clip's first sampled frame "
                f"{files[indices[0]]} is {frames[0].shape[1]}x{frames[0].shape[0]}"
            )
    channels = 3 if rgb or any(f.shape[2] == 3 for f in frames) else 1
    return np.stack([np.repeat(f, channels // f.shape[2], axis=2) for f in frames])


# --------------------------------------------------------------------------------------------- transforms
def build_video_transform(
    train: bool,
    img_size: int,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    resize: int | None = None,
    train_crop: str = "random",
    scale: Sequence[float] = (0.35, 1.0),
    hflip: float = 0.5,
):
    """uint8 ``tv_tensors.Video`` ``[T, C, H, W]`` -> normalized float ``[T, C, img_size, img_size]``.

    Random parameters are drawn once per call, i.e. once per clip, and applied to every frame.
    """
    from torchvision.transforms import v2

    if train_crop not in TRAIN_CROPS:
        raise ValueError(f"train_crop must be one of {', '.join(TRAIN_CROPS)}, got {train_crop!r}")
    resize = int(resize or img_size)
    if resize < img_size:
        raise ValueError(f"resize={resize} is smaller than img_size={img_size}")
    if train and train_crop == "rrc":
        tfs: list[Any] = [v2.RandomResizedCrop(img_size, scale=tuple(scale), antialias=True)]
    else:
        crop = v2.RandomCrop(img_size) if train and train_crop == "random" else v2.CenterCrop(img_size)
        tfs = [v2.Resize(resize, antialias=True), crop]
    if train and hflip > 0:
        tfs.append(v2.RandomHorizontalFlip(hflip))
    tfs += [v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(mean), list(std))]
    return v2.Compose(tfs)


# --------------------------------------------------------------------------------------------- dataset
def _list_clips(class_dir: Path) -> list[Path]:
    def is_clip(p: Path) -> bool:
        if p.is_dir():
            return any(f.suffix.lower() in IMG_EXTENSIONS for f in p.iterdir())
        return p.is_file() and p.suffix.lower() in VIDEO_EXTENSIONS

    return [p for p in sorted(class_dir.iterdir(), key=lambda p: _natural_key(p.name)) if is_clip(p)]


class ClipFolder(Dataset):
    """The clips of ``root/split/<class>/``, each a video file or a frame folder; item ``(clip, label)``.

    Args:
        root: dataset folder.
        split: split sub-folder (``train``, ``val``, ``test``).
        num_frames: frames T per sampled clip.
        train: random temporal sampling (else uniform/centred).
        transform: callable on a uint8 ``tv_tensors.Video`` ``[T, C, H, W]`` (e.g. :func:`build_video_transform`);
            ``None`` returns that uint8 tensor.
        sampling / frame_stride: see :func:`sample_indices`.
        expected_classes: the training split's classes; another list here is an error.
        cache_frames: decode every frame folder once into memory (uint8; a grey clip keeps one channel) instead
            of reading its PNG/JPEG files for each item; ``None`` caches when the split's frame folders take at
            most ``CACHE_AUTO_BYTES`` (1 GiB) decoded. Items are the same either way. Video files are never
            cached (their frames decoded would be large).

    Every clip is opened at construction to count its frames, so an unreadable file, a clip shorter than the
    sampling needs or an empty class folder is reported before training starts.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        split: str,
        num_frames: int,
        train: bool = False,
        transform=None,
        sampling: str = "segments",
        frame_stride: int = 1,
        expected_classes: Sequence[str] | None = None,
        cache_frames: bool | None = False,
    ):
        self.root, self.split_dir = Path(root), Path(root) / split
        self.num_frames, self.train, self.transform = int(num_frames), train, transform
        self.sampling, self.frame_stride = sampling, int(frame_stride)
        self.classes = self._classes(expected_classes)
        self.class_to_idx = {c: i for i, c in enumerate(self.classes)}
        self.samples: list[tuple[Path, int]] = []
        self.frame_files: dict[Path, list[Path]] = {}
        self.lengths: list[int] = []
        for c in self.classes:
            clips = _list_clips(self.split_dir / c)
            if not clips:
                raise DatasetError(
                    f"class folder {self.split_dir / c} holds no clips (video files {', '.join(VIDEO_EXTENSIONS)} "
                    "or folders of frames)"
                )
            for clip in clips:
                self.samples.append((clip, self.class_to_idx[c]))
                self.lengths.append(self._count(clip))
                # checks the length now: a clip too short for the sampling is named at setup
                sample_indices(self.lengths[-1], self.num_frames, False, sampling, frame_stride, str(clip))
        self.targets = [y for _, y in self.samples]
        self.cache: dict[int, np.ndarray] = {}
        self._fill_cache(cache_frames)

    def _fill_cache(self, cache: bool | None) -> None:
        folders = [i for i, (clip, _) in enumerate(self.samples) if clip in self.frame_files]
        if not folders or cache is False:
            return
        if cache is None:
            first = _read_frame(self.frame_files[self.samples[folders[0]][0]][0])
            if first.nbytes * sum(self.lengths[i] for i in folders) > CACHE_AUTO_BYTES:
                return
        for i in folders:
            files = self.frame_files[self.samples[i][0]]
            self.cache[i] = read_frame_folder(files, range(len(files)), rgb=False)

    def _classes(self, expected: Sequence[str] | None) -> list[str]:
        if not self.split_dir.is_dir():
            present = sorted(p.name for p in self.root.iterdir() if p.is_dir()) if self.root.is_dir() else []
            raise DatasetError(
                f"split folder {self.split_dir} does not exist (sub-folders of {self.root}: "
                f"{present or 'none'}); expected {self.root}/<split>/<class>/<clip>"
            )
        classes = sorted(p.name for p in self.split_dir.iterdir() if p.is_dir())
        if not classes:
            raise DatasetError(f"split folder {self.split_dir} has no class sub-folders")
        if expected is not None and list(expected) != classes:
            missing, extra = sorted(set(expected) - set(classes)), sorted(set(classes) - set(expected))
            raise DatasetError(
                f"class mismatch: {self.split_dir} lacks {missing[:10] or 'nothing'} and has extra "
                f"{extra[:10] or 'nothing'} compared with the training split"
            )
        return classes

    def _count(self, clip: Path) -> int:
        if clip.is_dir():
            self.frame_files[clip] = _frame_files(clip)
            return len(self.frame_files[clip])
        return count_video_frames(clip)

    def __len__(self) -> int:
        return len(self.samples)

    def clip_indices(self, index: int) -> list[int]:
        """Frame indices that item ``index`` samples now (random for a training split)."""
        clip = self.samples[index][0]
        return sample_indices(
            self.lengths[index], self.num_frames, self.train, self.sampling, self.frame_stride, str(clip)
        )

    def read(self, index: int, indices: Sequence[int]) -> torch.Tensor:
        """uint8 ``[T, 3, H, W]`` frames ``indices`` of clip ``index``."""
        clip = self.samples[index][0]
        if index in self.cache:
            frames = torch.from_numpy(self.cache[index][list(indices)]).permute(0, 3, 1, 2)
            return frames.expand(-1, 3, -1, -1)  # grey -> RGB as PIL's convert("RGB") does
        if clip in self.frame_files:
            frames = read_frame_folder(self.frame_files[clip], indices)
        else:
            frames = read_video_frames(clip, indices)
        return torch.from_numpy(frames).permute(0, 3, 1, 2)

    def __getitem__(self, index: int):
        from torchvision import tv_tensors

        video = tv_tensors.Video(self.read(index, self.clip_indices(index)))
        if self.transform is not None:
            try:
                video = self.transform(video)
            except (ValueError, RuntimeError, TypeError) as e:
                h, w = video.shape[-2:]
                raise DatasetError(f"cannot transform clip {self.samples[index][0]} ({w}x{h}): {e}") from None
        return video.as_subclass(torch.Tensor).transpose(0, 1), self.targets[index]  # [C, T, H, W]


# --------------------------------------------------------------------------------------------- datamodule
class VideoClipDataModule(LightningDataModule):
    """Clip folders ``data_dir/<split>/<class>/<clip>`` for video classification (see the module docstring).

    Args:
        data_dir: dataset folder (relative names live under the data root, ``$FAVIT_DATA``).
        num_frames: frames T per clip.
        img_size: output height and width.
        batch_size: per-process batch size.
        num_workers: DataLoader workers.
        train_split / val_split / test_split: split sub-folders (``test`` falls back to ``val_split`` when the
            folder is missing).
        sampling: ``segments`` (TSN: segment middles / a random frame per segment) or ``dense``.
        frame_stride: frame step of ``dense`` sampling.
        resize: shorter side before the centre/random crop (default ``img_size``).
        train_crop: ``random`` (random ``img_size`` crop after the resize), ``rrc`` (random resized crop,
            area ``scale``) or ``center``.
        scale: area range of ``rrc``.
        hflip: horizontal-flip probability in training (one decision per clip); 0 for direction labels.
        mean / std: normalization (ImageNet's by default).
        pin_memory: DataLoader pin_memory (default: when CUDA is available).
        prepare_moving_fmnist: build moving Fashion-MNIST in ``prepare_data`` when ``data_dir`` (a view,
            ``<folder>/motion``, ``<folder>/sign`` or ``<folder>/appearance``) is missing: keyword arguments of
            :func:`~favit_probsparse.data.moving_fmnist.build_moving_fmnist` (``{}``: the defaults, as
            ``favit-ps prepare moving-fmnist`` builds them) plus ``fashion_dir``.
        cache_frames: decode frame folders once into memory at setup (:class:`ClipFolder`); ``None`` (the
            default) when a split's frame folders take at most 1 GiB decoded (moving Fashion-MNIST's train
            split of 3000 clips: 98 MB).
    """

    def __init__(
        self,
        data_dir: str,
        num_frames: int = 8,
        img_size: int = 112,
        batch_size: int = 16,
        num_workers: int = 2,
        train_split: str = "train",
        val_split: str = "val",
        test_split: str = "test",
        sampling: str = "segments",
        frame_stride: int = 1,
        resize: int | None = None,
        train_crop: str = "random",
        scale: list[float] | None = None,
        hflip: float = 0.5,
        mean: list[float] | None = None,
        std: list[float] | None = None,
        pin_memory: bool | None = None,
        cache_frames: bool | None = None,
        prepare_moving_fmnist: dict[str, Any] | None = None,
    ):
        super().__init__()
        if sampling not in SAMPLINGS:
            raise ValueError(f"sampling must be one of {', '.join(SAMPLINGS)}, got {sampling!r}")
        if int(num_frames) < 1 or int(frame_stride) < 1:
            raise ValueError(f"num_frames and frame_stride must be >= 1, got {num_frames}, {frame_stride}")
        self.save_hyperparameters()
        self.data_path = resolve_data_path(data_dir, data_dir)
        self._prepare = prepare_moving_fmnist
        if self._prepare is not None and self.data_path.name not in ("motion", "sign", "appearance"):
            raise ValueError(
                "prepare_moving_fmnist needs data_dir to name a view, <folder>/motion, <folder>/sign or "
                f"<folder>/appearance; got {data_dir!r}"
            )
        if self._prepare is None and not (self.data_path / train_split).is_dir():
            hint = "; `favit-ps prepare moving-fmnist` builds it" if "moving-fmnist" in str(data_dir) else ""
            raise DatasetError(
                f"clip folder {self.data_path / train_split} does not exist (data_dir={data_dir!r}; relative "
                f"paths are looked up under $FAVIT_DATA / ../shared/data); expected "
                f"<data_dir>/{train_split}/<class>/<clip>{hint}"
            )
        self.batch_size, self.num_workers = int(batch_size), int(num_workers)
        # what the classifier reads from its datamodule (input check, GMACs, the export's data record)
        self.img_size, self.num_frames = int(img_size), int(num_frames)
        self.pin_memory = torch.cuda.is_available() if pin_memory is None else pin_memory
        self.train_set: Any = None
        self.val_set: Any = None
        self.test_set: Any = None
        self.classes: list[str] | None = None

    @property
    def num_classes(self) -> int:
        return len(self._classes())

    def _classes(self) -> list[str]:
        if self.classes is None:
            train_dir = self.data_path / self.hparams.train_split
            if train_dir.is_dir():
                self.classes = sorted(p.name for p in train_dir.iterdir() if p.is_dir())
            else:  # a moving Fashion-MNIST view that prepare_data has not built yet
                from favit_probsparse.data.moving_fmnist import VIEWS

                return list(VIEWS[self.data_path.name])
        return self.classes

    def prepare_data(self) -> None:
        """Build moving Fashion-MNIST into the view's parent folder when ``prepare_moving_fmnist`` asks for it."""
        if self._prepare is None or (self.data_path / self.hparams.train_split).is_dir():
            return
        from favit_probsparse.data.moving_fmnist import build_moving_fmnist, load_fashion_mnist

        kwargs = dict(self._prepare)
        images = load_fashion_mnist(kwargs.pop("fashion_dir", None))
        print(f"[data] building moving Fashion-MNIST in {self.data_path.parent}", flush=True)
        build_moving_fmnist(self.data_path.parent, *images, **kwargs)

    def transform(self, train: bool):
        h = self.hparams
        return build_video_transform(
            train,
            h.img_size,
            h.mean or IMAGENET_MEAN,
            h.std or IMAGENET_STD,
            resize=h.resize,
            train_crop=h.train_crop,
            scale=h.scale or (0.35, 1.0),
            hflip=h.hflip,
        )

    def _split(self, split: str, train: bool) -> ClipFolder:
        h = self.hparams
        return ClipFolder(
            self.data_path,
            split,
            h.num_frames,
            train=train,
            transform=self.transform(train),
            sampling=h.sampling,
            frame_stride=h.frame_stride,
            expected_classes=None if train else self._classes(),
            cache_frames=h.cache_frames,
        )

    def setup(self, stage: str | None = None) -> None:
        h = self.hparams
        if stage in (None, "fit", "validate") and self.val_set is None:
            if self.train_set is None and stage != "validate":
                self.train_set = self._split(h.train_split, True)
                self.classes = self.train_set.classes
            self.val_set = self._split(h.val_split, False)
        if stage in (None, "test", "predict") and self.test_set is None:
            test = h.test_split if (self.data_path / h.test_split).is_dir() else h.val_split
            self.test_set = self._split(test, False)

    def _loader(self, ds, train: bool) -> DataLoader:
        trainer = getattr(self, "trainer", None)
        return seeded_loader(ds, train, self.batch_size, self.num_workers, self.pin_memory, trainer)

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.test_set, False)
