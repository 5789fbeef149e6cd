"""The quick job's CIFAR subset on a machine without it: torchvision's download, then the fixed rows as PNGs.

The real download needs the network; these tests run the same code path (torchvision's ``download=True``,
its md5 checks, our subset writer and atomic rename) against a local mirror holding a small archive in the
upstream format (``cifar-10-batches-py/`` with pickled batches, as ``cifar-10-python.tar.gz``). The mirror is a
folder served over loopback HTTP rather than a ``file://`` URL because torchvision's downloader reads the HTTP
``Content-Length`` (``response.length``), which urllib's ``file://`` responses lack.
"""

from __future__ import annotations

import functools
import hashlib
import http.server
import io
import pickle
import socket
import tarfile
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from torchvision.datasets import CIFAR10

from favit_probsparse.data import vision
from favit_probsparse.data.vision import (
    KNOWN_SUBSETS,
    DatasetError,
    ImageClassificationDataModule,
    KnownSubset,
    build_known_subset,
)

ROWS = 12  # rows per fake batch (the real ones hold 10,000)
NAMES = [f"class{k}" for k in range(10)]
# rows spanning three of the five training batches, as the real spec does
SPEC = KnownSubset("CIFAR10", "cifar10", 10, {"train": ((0, 10), (12, 3), (48, 10)), "test": ((0, 10),)})


def _batch(b: int) -> dict:
    rng = np.random.default_rng(b)
    return {
        "data": rng.integers(0, 256, size=(ROWS, 3072), dtype=np.uint8),
        "labels": [(r + b) % 10 for r in range(ROWS)],
    }


def _md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


@pytest.fixture
def serve(tmp_path):
    """Serve tmp_path/mirror on a loopback port for the test; yields the base URL."""
    (tmp_path / "mirror").mkdir()
    handler = functools.partial(_QuietHandler, directory=str(tmp_path / "mirror"))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


def _mirror(tmp_path: Path, monkeypatch, base_url: str) -> str:
    """Write the fake archive under tmp_path/mirror and point torchvision's CIFAR10 at it; returns its URL."""
    files = {f"data_batch_{b}": pickle.dumps(_batch(b)) for b in range(1, 6)}
    files["test_batch"] = pickle.dumps(_batch(0))
    files["batches.meta"] = pickle.dumps({"label_names": NAMES})
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    (tmp_path / "mirror" / "cifar-10-python.tar.gz").write_bytes(buf.getvalue())
    url = f"{base_url}/cifar-10-python.tar.gz"
    monkeypatch.setattr(CIFAR10, "url", url)
    monkeypatch.setattr(CIFAR10, "tgz_md5", _md5(buf.getvalue()))
    monkeypatch.setattr(
        CIFAR10, "train_list", [[f"data_batch_{b}", _md5(files[f"data_batch_{b}"])] for b in range(1, 6)]
    )
    monkeypatch.setattr(CIFAR10, "test_list", [["test_batch", _md5(files["test_batch"])]])
    monkeypatch.setattr(
        CIFAR10,
        "meta",
        {"filename": "batches.meta", "key": "label_names", "md5": _md5(files["batches.meta"])},
    )
    monkeypatch.setitem(KNOWN_SUBSETS, "cifar10-subset", SPEC)
    return url


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _files(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file()]


def test_subset_built_from_mirror_is_the_spec_rows_and_deterministic(tmp_path, monkeypatch, serve):
    _mirror(tmp_path, monkeypatch, serve)
    a = build_known_subset(tmp_path / "a" / "cifar10-subset")
    b = build_known_subset(tmp_path / "b" / "cifar10-subset")
    assert (
        tmp_path / "a" / "cifar10" / "cifar-10-python.tar.gz"
    ).is_file()  # torchvision's download, beside it
    tree_a = _tree(a)
    assert tree_a == _tree(b), "two builds must write the same files, byte for byte"
    assert not list((tmp_path / "a").glob(".cifar10-subset.partial-*"))
    # every image is its row of the upstream arrays (batch b row r = train index 12 (b-1) + r), in its class folder
    batches = [_batch(b) for b in range(1, 6)]
    train_idx = [*range(0, 10), *range(12, 15), *range(48, 58)]
    pngs = sorted(p for p in tree_a if p.endswith(".png"))
    assert len(pngs) == len(train_idx) + 10
    for i in train_idx:
        bat, r = batches[i // ROWS], i % ROWS
        (path,) = [p for p in pngs if p.startswith("train/") and p.endswith(f"/{i:05d}.png")]
        assert path.split("/")[1] == NAMES[bat["labels"][r]]
        want = bat["data"][r].reshape(3, 32, 32).transpose(1, 2, 0)
        np.testing.assert_array_equal(np.asarray(Image.open(a / path)), want)
    test = _batch(0)
    for r in range(10):
        np.testing.assert_array_equal(
            np.asarray(Image.open(a / "test" / NAMES[test["labels"][r]] / f"{r:05d}.png")),
            test["data"][r].reshape(3, 32, 32).transpose(1, 2, 0),
        )
    assert "rows 0-9, 12-14, 48-57" in (a / "SOURCE.md").read_text()


def test_datamodule_builds_a_missing_subset_in_prepare_data(tmp_path, monkeypatch, serve):
    _mirror(tmp_path, monkeypatch, serve)
    monkeypatch.setenv("FAVIT_DATA", str(tmp_path / "data"))
    dm = ImageClassificationDataModule(
        dataset="imagefolder", data_dir="cifar10-subset", normalization="cifar10", img_size=32, batch_size=4,
        num_workers=0, auto_augment=None, re_prob=0.0,
    )  # fmt: skip
    assert (
        dm.num_classes == 10 and not dm.data_path.exists()
    )  # known before the download (the model needs it)
    dm.prepare_data()
    dm.setup("fit")
    assert dm.data_path == tmp_path / "data" / "cifar10-subset"
    assert (len(dm.train_set), len(dm.val_set)) == (23, 10)
    assert dm.classes == NAMES
    # without download a missing subset stays an error, which says how it gets built
    with pytest.raises(DatasetError, match=r"does not exist.*download=true"):
        ImageClassificationDataModule(dataset="imagefolder", data_dir="cifar100-subset", download=False)


def test_checksum_mismatch_leaves_nothing_and_names_it(tmp_path, monkeypatch, serve):
    url = _mirror(tmp_path, monkeypatch, serve)
    monkeypatch.setattr(CIFAR10, "tgz_md5", "0" * 32)
    root = tmp_path / "data"
    with pytest.raises(DatasetError, match=rf"checksum mismatch for {url}.*0{{32}}"):
        build_known_subset(root / "cifar10-subset")
    assert not (root / "cifar10-subset").exists()
    assert _files(root) == [], "neither the corrupt archive nor a partial subset may be left behind"


def test_unreachable_url_is_named(tmp_path, monkeypatch, serve):
    _mirror(tmp_path, monkeypatch, serve)
    with socket.socket() as s:  # a loopback port that nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/cifar-10-python.tar.gz"
    monkeypatch.setattr(CIFAR10, "url", url)
    root = tmp_path / "data"
    with pytest.raises(DatasetError, match=rf"could not download {url}"):
        build_known_subset(root / "cifar10-subset")
    assert not (root / "cifar10-subset").exists() and _files(root) == []


def test_real_subset_spec_matches_the_documented_rows():
    """5,438 / 1,017 CIFAR-10 rows, the leading rows of each 10,000-row batch; the shared copy, where present,
    holds exactly these rows (its file names are the row indices)."""
    spec = vision.KNOWN_SUBSETS["cifar10-subset"]
    assert (len(spec.indices("train")), len(spec.indices("test"))) == (5438, 1017)
    assert [first for first, _ in spec.rows["train"]] == [0, 10000, 20000, 30000, 40000]
    assert all(n <= 10000 for _, n in spec.rows["train"])
    c100 = vision.KNOWN_SUBSETS["cifar100-subset"]
    assert (len(c100.indices("train")), len(c100.indices("test"))) == (1117, 916)
    from favit_probsparse.paths import data_root

    for name, s in vision.KNOWN_SUBSETS.items():
        shared = data_root() / name
        if not shared.is_dir():
            continue
        for split in ("train", "test"):
            got = sorted(int(p.stem) for p in (shared / split).glob("*/*.png"))
            assert got == s.indices(split), f"{shared / split} holds other rows than KNOWN_SUBSETS[{name!r}]"


def test_reproduce_quick_prepares_its_subset_before_the_runs(tmp_path, monkeypatch, serve, capsys):
    """`favit-ps reproduce quick` on a machine without the subset: the data is fetched and built once, in the
    foreground, before the ablation runner starts its runs."""
    from favit_probsparse.experiments import ablate, reproduce

    _mirror(tmp_path, monkeypatch, serve)
    monkeypatch.setenv("FAVIT_DATA", str(tmp_path / "data"))
    monkeypatch.chdir(tmp_path)
    # the vision grid only (ETT's download for the forecasting grid: tests/test_reproduce_data.py)
    monkeypatch.setitem(reproduce.TARGET_GRIDS, "quick", ("quick",))
    seen = {}
    monkeypatch.setattr(
        ablate,
        "main",
        lambda argv: seen.setdefault("built", (tmp_path / "data" / "cifar10-subset").is_dir()) and 0,
    )
    assert reproduce.main(["quick"]) == 0
    assert seen["built"], "the subset must exist before the runs start"
    assert "building" in capsys.readouterr().out
    # the mirror going away afterwards does not matter: the built subset is reused, nothing is fetched again
    monkeypatch.setattr(CIFAR10, "url", "http://127.0.0.1:9/cifar-10-python.tar.gz")
    assert reproduce.prepare_grid_data(reproduce._grid_file("quick")) == 1
