"""Tests of common.data: the IDX reader and its checks, the download path (against a local
HTTP server on 127.0.0.1 only), the resize (against torch), the Loader, the bundled sample,
and the real files from ../shared/fashion-mnist when they are there."""

import gzip
import hashlib
import http.server
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from common import data
from common.data import (
    CLASS_NAMES,
    MEAN,
    STD,
    DataError,
    Loader,
    download,
    load_fashion_mnist,
    read_idx,
    resize_bilinear,
    sample_dataset,
    save_image_grid,
)

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("FASHION_MNIST_DIR") or Path(__file__).resolve().parents[2] / "shared" / "fashion-mnist")


def closed_port_url():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there now: connection refused, as offline
    return f"http://127.0.0.1:{port}/"


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    # No test may find the developer's cache or reach the internet: the cache is a temp
    # folder and the only mirror is a closed port on this machine unless a test says otherwise.
    monkeypatch.delenv("FASHION_MNIST_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv("FASHION_MNIST_MIRRORS", closed_port_url())
    monkeypatch.setattr(data, "RETRY_BACKOFF", 0.0)


# ---------------------------------------------------------------------------- synthetic IDX files


def idx(array, magic=None):
    """IDX bytes written by hand (independently of common.make_sample); the magic's last byte is ndim."""
    array = np.asarray(array, np.uint8)
    magic = magic or (2049 if array.ndim == 1 else 2051)
    return magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in array.shape) + array.tobytes()


def synthetic(n_train=20, n_test=10, seed=0):
    rng = np.random.default_rng(seed)
    return {
        "train-images-idx3-ubyte": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "train-labels-idx1-ubyte": np.arange(n_train, dtype=np.uint8) % 10,
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": np.arange(n_test, dtype=np.uint8) % 10,
    }


def write_dir(folder, arrays=None, gz=True, override=None):
    """Write the four files to folder; override maps a stem to raw bytes to put there instead."""
    folder.mkdir(parents=True, exist_ok=True)
    for stem, array in (arrays or synthetic()).items():
        raw = (override or {}).get(stem, idx(array))
        if gz:
            (folder / f"{stem}.gz").write_bytes(gzip.compress(raw, mtime=0) if raw[:2] != b"\x1f\x8b" else raw)
        else:
            (folder / stem).write_bytes(raw)
    return folder


@pytest.mark.parametrize("gz", [True, False])
def test_read_good_files(tmp_path, gz):
    arrays = synthetic()
    d = load_fashion_mnist(write_dir(tmp_path / "d", arrays, gz=gz))
    assert (d.source, d.location) == ("full", str(tmp_path / "d"))
    assert np.array_equal(d.train_images, arrays["train-images-idx3-ubyte"])
    assert np.array_equal(d.test_images, arrays["t10k-images-idx3-ubyte"])
    assert d.train_images.dtype == np.uint8 and d.train_labels.dtype == np.int64
    assert np.array_equal(d.train_labels, arrays["train-labels-idx1-ubyte"])
    assert "from " + str(tmp_path / "d") in d.describe()


def corruptions():
    a = synthetic()
    images, labels = a["train-images-idx3-ubyte"], a["train-labels-idx1-ubyte"]
    good_gz = gzip.compress(idx(images), mtime=0)
    bad_crc = bytearray(good_gz)
    bad_crc[-6] ^= 0xFF  # flip a byte of the CRC trailer
    garbled = bytearray(good_gz)
    garbled[20:60] = b"\x00" * 40
    return {
        "bad magic": ("train-images-idx3-ubyte", idx(images, magic=2050), "bad magic number 2050"),
        "labels magic for images": ("train-images-idx3-ubyte", idx(labels), "holds labels"),
        "images magic for labels": ("t10k-labels-idx1-ubyte", idx(images), "holds images"),
        # a labels file whose magic says images: its header would read as absurd image dimensions
        "labels with the images magic": (
            "t10k-labels-idx1-ubyte",
            (2051).to_bytes(4, "big") + idx(labels)[4:],
            "holds images (magic number 2051) where labels (magic 2049) were expected",
        ),
        "images with the labels magic": (
            "train-images-idx3-ubyte",
            (2049).to_bytes(4, "big") + idx(images)[4:],
            "holds labels (magic number 2049) where images (magic 2051) were expected",
        ),
        "wrong dims": ("train-images-idx3-ubyte", idx(images[:, :27, :]), "dimensions (20, 27, 28)"),
        "truncated data": ("train-images-idx3-ubyte", idx(images)[:-100], "truncated or corrupt"),
        "extra data": ("train-labels-idx1-ubyte", idx(labels) + b"\x00", "truncated or corrupt"),
        "truncated header": ("train-labels-idx1-ubyte", idx(labels)[:6], "header is truncated"),
        "empty file": ("train-labels-idx1-ubyte", b"", "the file is empty"),
        "truncated gzip": ("train-images-idx3-ubyte", good_gz[: len(good_gz) // 2], "corrupt or truncated gzip"),
        "corrupt gzip crc": ("train-images-idx3-ubyte", bytes(bad_crc), "corrupt or truncated gzip"),
        "garbled gzip": ("train-images-idx3-ubyte", bytes(garbled), "corrupt or truncated gzip"),
        "label out of range": (
            "t10k-labels-idx1-ubyte",
            idx(np.array([1, 2, 10] + [0] * 7)),
            "label 10 is out of range",
        ),
        "count mismatch": ("train-labels-idx1-ubyte", idx(labels[:-1]), "has 20 images but"),
    }


@pytest.mark.parametrize("case", list(corruptions()))
def test_corrupt_files_raise_dataerror_naming_the_file(tmp_path, case, capsys):
    stem, raw, message = corruptions()[case]
    folder = write_dir(tmp_path / "d", override={stem: raw})
    with pytest.raises(DataError) as e:
        load_fashion_mnist(folder)  # an explicit folder: an error, never the sample
    assert message in str(e.value)
    assert stem in str(e.value)
    assert "sample" not in capsys.readouterr().err


def test_a_folder_where_a_file_belongs_and_a_file_where_the_folder_belongs(tmp_path):
    folder = write_dir(tmp_path / "d")
    (folder / "t10k-images-idx3-ubyte.gz").unlink()
    (folder / "t10k-images-idx3-ubyte.gz").mkdir()
    with pytest.raises(DataError, match=r"t10k-images-idx3-ubyte\.gz is a folder, not an IDX file"):
        load_fashion_mnist(folder)
    (tmp_path / "file").write_bytes(b"x")
    with pytest.raises(DataError, match="is a file, not a folder"):
        load_fashion_mnist(tmp_path / "file")


def test_read_idx_direct(tmp_path):
    p = tmp_path / "labels"
    p.write_bytes(idx(np.array([9, 0, 3])))
    assert read_idx(p).tolist() == [9, 0, 3]
    with pytest.raises(DataError, match="no such file"):
        read_idx(tmp_path / "nope")


def test_explicit_dir_missing_files_is_an_error(tmp_path, monkeypatch):
    folder = write_dir(tmp_path / "d")
    (folder / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DataError, match=r"(?s)t10k-labels-idx1-ubyte\[\.gz\].*Put the four"):
        load_fashion_mnist(folder)
    monkeypatch.setenv("FASHION_MNIST_DIR", str(folder))  # the environment variable is just as explicit
    with pytest.raises(DataError, match="t10k-labels"):
        load_fashion_mnist()
    monkeypatch.setenv("FASHION_MNIST_DIR", str(write_dir(tmp_path / "good")))
    assert load_fashion_mnist().location == str(tmp_path / "good")


# ---------------------------------------------------------------------------- download (127.0.0.1 only)


class Server:
    """A local HTTP server: routes maps '/mirror/file' to (bytes, mode), mode 'good' or 'truncate'."""

    def __init__(self):
        routes, self.hits = {}, []
        self.routes = routes
        hits = self.hits

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                hits.append(self.path)
                if self.path not in routes:
                    self.send_error(404)
                    return
                body, mode = routes[self.path]
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body[: len(body) // 2] if mode == "truncate" else body)

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/"
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()


@pytest.fixture
def server():
    s = Server()
    yield s
    s.httpd.shutdown()
    s.httpd.server_close()


def gz_files(arrays=None):
    return {f"{stem}.gz": gzip.compress(idx(a), mtime=0) for stem, a in (arrays or synthetic()).items()}


def md5s(files):
    return {name: hashlib.md5(body).hexdigest() for name, body in files.items()}


def no_partial_files(folder):
    return not [p for p in Path(folder).iterdir() if p.name.startswith(".") or p.suffix == ".part"]


def test_download_good_files(server, tmp_path):
    files = gz_files()
    server.routes.update({f"/a/{n}": (b, "good") for n, b in files.items()})
    download(tmp_path / "d", mirrors=[server.url + "a"], checksums=md5s(files), progress=False)
    assert {p.name: p.read_bytes() for p in (tmp_path / "d").iterdir()} == files
    n = len(server.hits)  # a second call finds good files and fetches nothing
    download(tmp_path / "d", mirrors=[server.url + "a"], checksums=md5s(files), progress=False)
    assert len(server.hits) == n


@pytest.mark.parametrize("mode", ["corrupt", "truncate", "missing"])
def test_bad_first_mirror_falls_to_second(server, tmp_path, mode):
    files = gz_files()
    name = "train-images-idx3-ubyte.gz"
    server.routes.update({f"/b/{n}": (b, "good") for n, b in files.items()})
    server.routes.update({f"/a/{n}": (b, "good") for n, b in files.items()})
    if mode == "corrupt":
        server.routes[f"/a/{name}"] = (files[name][:-1] + b"!", "good")
    elif mode == "truncate":
        server.routes[f"/a/{name}"] = (files[name], "truncate")
    else:
        del server.routes[f"/a/{name}"]
    download(tmp_path / "d", mirrors=[server.url + "a", server.url + "b"], checksums=md5s(files), progress=False)
    assert (tmp_path / "d" / name).read_bytes() == files[name]
    assert f"/b/{name}" in server.hits and no_partial_files(tmp_path / "d")


@pytest.mark.parametrize("mode", ["corrupt", "truncate"])
def test_bad_only_mirror_fails_clearly_and_leaves_nothing(server, tmp_path, mode):
    files = gz_files()
    name = "t10k-images-idx3-ubyte.gz"
    server.routes.update({f"/a/{n}": (b, "good") for n, b in files.items()})
    server.routes[f"/a/{name}"] = (b"X" + files[name][1:], "good") if mode == "corrupt" else (files[name], "truncate")
    with pytest.raises(DataError) as e:
        download(
            tmp_path / "d", mirrors=[server.url + "a"], checksums=md5s(files), progress=False, retries=2, backoff=0
        )
    message = str(e.value)
    assert f"could not download {name} (2 tries of each mirror)" in message and "Put the four" in message
    assert ("checksum mismatch" if mode == "corrupt" else "truncated: received") in message
    assert server.hits.count(f"/a/{name}") == 2  # retried
    assert not (tmp_path / "d" / name).exists() and no_partial_files(tmp_path / "d")


def test_mirrors_from_environment(server, tmp_path, monkeypatch):
    files = gz_files()
    server.routes.update({f"/env/{n}": (b, "good") for n, b in files.items()})
    monkeypatch.setenv("FASHION_MNIST_MIRRORS", f"{closed_port_url()}, {server.url}env")
    download(tmp_path / "d", checksums=md5s(files), progress=False)
    assert sorted(p.name for p in (tmp_path / "d").iterdir()) == sorted(files)


def test_first_use_downloads_into_the_cache(server, tmp_path, monkeypatch):
    files = gz_files()
    server.routes.update({f"/a/{n}": (b, "good") for n, b in files.items()})
    monkeypatch.setenv("FASHION_MNIST_MIRRORS", server.url + "a")
    monkeypatch.setattr(data, "FILES", md5s(files))
    d = load_fashion_mnist(progress=False)
    cache = tmp_path / "cache" / "vgg-three-ways" / "fashion-mnist"
    assert (d.source, d.location, len(d.train_images)) == ("full", str(cache), 20)
    n = len(server.hits)
    assert load_fashion_mnist().location == str(cache) and len(server.hits) == n  # found, not fetched again


def test_interrupted_download_leaves_nothing(server, tmp_path, monkeypatch):
    files = gz_files()
    server.routes.update({f"/a/{n}": (b, "good") for n, b in files.items()})

    class Interrupted(data.tqdm):
        def update(self, n=1):
            raise KeyboardInterrupt  # as if the user pressed Ctrl-C mid-file

    monkeypatch.setattr(data, "tqdm", Interrupted)
    with pytest.raises(KeyboardInterrupt):
        download(tmp_path / "d", mirrors=[server.url + "a"], checksums=md5s(files), progress=False)
    assert list((tmp_path / "d").iterdir()) == []


def test_corrupt_cache_is_repaired_by_download(server, tmp_path, monkeypatch, capsys):
    files = gz_files()
    server.routes.update({f"/a/{n}": (b, "good") for n, b in files.items()})
    cache = tmp_path / "cache" / "vgg-three-ways" / "fashion-mnist"
    write_dir(cache, override={"train-images-idx3-ubyte": b"garbage"})
    monkeypatch.setattr(data, "FILES", md5s(files))
    d = load_fashion_mnist(download=False)  # offline: says what is wrong, uses the sample
    assert d.source == "sample" and "cached copy is unusable" in capsys.readouterr().err
    monkeypatch.setenv("FASHION_MNIST_MIRRORS", server.url + "a")
    d = load_fashion_mnist(progress=False)
    assert (d.source, d.location) == ("full", str(cache))
    assert server.hits == ["/a/train-images-idx3-ubyte.gz"]  # only the bad file is fetched again


def test_offline_falls_back_to_the_sample_with_a_warning(capsys):
    start = time.perf_counter()
    d = load_fashion_mnist(progress=False)
    assert d.source == "sample" and len(d.train_images) == 6000
    err = capsys.readouterr().err
    assert "WARNING" in err and "could not be downloaded" in err and "Put the four" in err and "bundled sample" in err
    assert "Connection refused" in err or "refused" in err.lower()
    assert time.perf_counter() - start < 10


def test_offline_without_sample_is_an_error():
    with pytest.raises(DataError, match="(?s)could not be downloaded.*Put the four"):
        load_fashion_mnist(progress=False, allow_sample=False)
    with pytest.raises(DataError, match="(?s)downloading is off.*Put the four"):
        load_fashion_mnist(download=False, allow_sample=False)
    assert load_fashion_mnist(download=False).source == "sample"


def test_checksum_table_matches_the_published_files():
    if not (SHARED / "README.md").is_file():
        pytest.skip(f"no {SHARED}/README.md")
    readme = (SHARED / "README.md").read_text()
    for name, md5 in data.FILES.items():
        assert f"| {name} |" in readme and md5 in readme.split(f"| {name} |")[1].splitlines()[0]


# ---------------------------------------------------------------------------- resize


def test_resize_hand_computed_2_to_4():
    # half-pixel centres: output pixel i samples source (i + 0.5) / 2 - 0.5,
    # = -0.25 (clamped to 0), 0.25, 0.75, 1.25 (-> edge)
    x = np.array([[[0, 4], [8, 12]]], np.uint8)
    want = [[0, 1, 3, 4], [2, 3, 5, 6], [6, 7, 9, 10], [8, 9, 11, 12]]
    got = resize_bilinear(x, 4)
    assert got.dtype == np.float32 and got.shape == (1, 4, 4)
    assert np.array_equal(got[0], np.array(want, np.float32))
    assert np.array_equal(resize_bilinear(x, 2), x.astype(np.float32))  # same size: identity


@pytest.mark.parametrize("size", [14, 32, 96, 224, 227])
def test_resize_matches_torch_on_real_images(size):
    torch = pytest.importorskip("torch")
    images = sample_dataset().train_images[:64].astype(np.float32) / 255
    want = torch.nn.functional.interpolate(
        torch.from_numpy(images)[:, None], size=(size, size), mode="bilinear", align_corners=False, antialias=False
    )[:, 0].numpy()
    got = resize_bilinear(images, size)
    # float32 rounding only: the two compute the same weights in a different order
    assert np.abs(got - want).max() < 1e-5


@pytest.mark.parametrize("size", [32, 96, 224])
def test_resize_of_an_image_does_not_depend_on_its_batch(size):
    # Data-parallel shards resize parts of the global batch: each image must come out bit for
    # bit as it does alone (one large GEMM over the whole batch did not, on some CPUs).
    images = sample_dataset().train_images[:37].astype(np.float32) / 255
    whole = resize_bilinear(images, size)
    for part in (slice(0, 1), slice(5, 6), slice(0, 16), slice(16, None), slice(3, 29)):
        assert np.array_equal(resize_bilinear(images[part], size), whole[part])


@pytest.mark.parametrize("size", [32, 96, 224, 20])
def test_resize_like_pillow_is_pillow_bit_for_bit(size):
    """d2l's pixels: Pillow's own Image.resize(BILINEAR) of each uint8 image is the truth (20 px:
    a shrink, where Pillow widens its filter)."""
    image_mod = pytest.importorskip("PIL.Image")
    images = np.concatenate([sample_dataset().train_images[:48], small(16)[0]])  # real, and random noise
    want = np.stack([np.asarray(image_mod.fromarray(im).resize((size, size), image_mod.BILINEAR)) for im in images])
    got = data.resize_like_pillow(images, size)
    assert got.dtype == np.uint8 and np.array_equal(got, want)
    assert np.array_equal(data.resize_like_pillow(images[5:9], size), got[5:9])  # not the batch's doing


@pytest.mark.parametrize("size", [32, 96, 224])
def test_loader_d2l_pixels_are_torchvision_resize_then_to_tensor(size):
    """--pixels d2l gives, bit for bit, what d2l's load_data_fashion_mnist gives: torchvision's
    Resize(size) then ToTensor() on the PIL image of each Fashion-MNIST digit. The project's
    default (float pixels resized) differs from it by at most 1/255 and at some pixels."""
    transforms = pytest.importorskip("torchvision.transforms")
    image_mod = pytest.importorskip("PIL.Image")
    images, labels = sample_dataset().train_images[:40], np.arange(40)
    d2l = transforms.Compose([transforms.Resize(size), transforms.ToTensor()])
    want = np.stack([d2l(image_mod.fromarray(im)).numpy() for im in images])  # (40, 1, size, size)
    x, y = next(iter(Loader(images, labels, batch_size=40, resize=size, shuffle=False, pixels="d2l", prefetch=0)))
    assert x.dtype == np.float32 and np.array_equal(x, want) and np.array_equal(y, labels)
    assert np.array_equal(np.round(x * 255) / np.float32(255), x)  # whole multiples of 1/255
    plain = next(iter(Loader(images, labels, batch_size=40, resize=size, shuffle=False, prefetch=0)))[0]
    diff = np.abs(plain - want)
    assert 0 < diff.max() <= 1 / 255 + 1e-6 and (diff > 1e-6).mean() > 0.1


def test_loader_d2l_pixels_normalized_and_refused_for_floats():
    images, labels = small(8)
    x = next(iter(Loader(images, labels, batch_size=8, resize=32, pixels="d2l", normalize=True, prefetch=0)))[0]
    raw = next(iter(Loader(images, labels, batch_size=8, resize=32, pixels="d2l", prefetch=0)))[0]
    assert np.allclose(x, (raw - MEAN) / STD, atol=1e-6)  # torchvision's Normalize(MEAN, STD) after ToTensor
    with pytest.raises(ValueError, match="uint8"):
        Loader(images.astype(np.float32) / 255, labels, resize=32, pixels="d2l")


# ---------------------------------------------------------------------------- Loader


def small(n=50):
    rng = np.random.default_rng(1)
    return rng.integers(0, 256, (n, 28, 28), dtype=np.uint8), np.arange(n)  # labels = identities


def collect(batches):
    return [(x.copy(), y.copy()) for x, y in batches]


def test_loader_shapes_dtypes_and_values():
    images, labels = small()
    for size in (None, 32):
        x, y = next(iter(Loader(images, labels, batch_size=16, resize=size, shuffle=False)))
        s = size or 28
        assert x.shape == (16, 1, s, s) and x.dtype == np.float32 and x.flags.c_contiguous
        assert y.shape == (16,) and y.dtype == np.int64
        assert np.allclose(x[:, 0], resize_bilinear(images[:16] / 255, s), atol=1e-6)
        assert 0 <= x.min() and x.max() <= 1


def test_loader_normalize():
    images, labels = small()
    plain = next(iter(Loader(images, labels, batch_size=8, resize=96)))[0]
    norm = next(iter(Loader(images, labels, batch_size=8, resize=96, normalize=True)))[0]
    assert np.allclose(norm, (plain - MEAN) / STD, atol=1e-5)


def test_loader_same_seed_same_batches_and_fresh_order_each_epoch():
    images, labels = small()
    a = collect(Loader(images, labels, batch_size=16, resize=32, seed=5).epoch(3))
    b = collect(Loader(images, labels, batch_size=16, resize=32, seed=5, prefetch=0).epoch(3))
    assert all(np.array_equal(xa, xb) and np.array_equal(ya, yb) for (xa, ya), (xb, yb) in zip(a, b))
    order = lambda loader_epoch: np.concatenate([y for _, y in loader_epoch])
    loader = Loader(images, labels, batch_size=16, seed=5)
    e0, e1 = order(loader), order(loader)  # iterating again runs the next epoch
    assert np.array_equal(e0, order(loader.epoch(0))) and np.array_equal(e1, order(loader.epoch(1)))
    assert not np.array_equal(e0, e1)
    assert not np.array_equal(e0, order(Loader(images, labels, batch_size=16, seed=6).epoch(0)))
    assert np.array_equal(e0, np.random.default_rng((5, 0)).permutation(50))  # the documented rule
    assert np.array_equal(order(Loader(images, labels, shuffle=False).epoch(7)), labels)


@pytest.mark.parametrize("drop_last, n_batches, last", [(False, 4, 2), (True, 3, 16)])
def test_loader_drop_last_and_every_sample_once(drop_last, n_batches, last):
    images, labels = small()
    loader = Loader(images, labels, batch_size=16, drop_last=drop_last)
    batches = list(loader)
    assert len(loader) == len(batches) == n_batches and len(batches[-1][1]) == last
    seen = np.concatenate([y for _, y in batches])
    assert len(seen) == len(set(seen.tolist())) == (48 if drop_last else 50)


def prefetch_threads():
    time.sleep(0.05)
    return [t for t in threading.enumerate() if t.name == "fashion-mnist-prefetch"]


def test_loader_early_stop_does_not_hang_or_leak():
    images, labels = small(2000)
    loader = Loader(images, labels, batch_size=8, resize=64, prefetch=2)
    for _ in loader:
        break
    it = loader.epoch(1)
    next(it)
    it.close()
    with pytest.raises(RuntimeError, match="consumer"):
        for _ in loader.epoch(2):
            raise RuntimeError("consumer failed")
    assert prefetch_threads() == []


def test_loader_producer_error_reaches_consumer(monkeypatch):
    images, labels = small()
    loader = Loader(images, labels, batch_size=8)
    calls = []

    def failing(idx, *where):  # where: (epoch, batch), for --augment's draws
        calls.append(1)
        if len(calls) == 3:
            raise ValueError("broken batch")
        return Loader._batch(loader, idx, *where)

    monkeypatch.setattr(loader, "_batch", failing)
    got = []
    with pytest.raises(ValueError, match="broken batch"):
        for batch in loader:
            got.append(batch)
    assert len(got) == 2 and prefetch_threads() == []


# ---------------------------------------------------------------------------- the sample and the real files


def test_sample_is_balanced_and_labelled_as_sample():
    d = sample_dataset()
    assert (d.source, d.location) == ("sample", str(data.SAMPLE_DIR))
    assert d.train_images.shape == (6000, 28, 28) and d.test_images.shape == (1000, 28, 28)
    assert np.bincount(d.train_labels).tolist() == [600] * 10 and np.bincount(d.test_labels).tolist() == [100] * 10
    assert "SAMPLE" in d.describe() and (data.SAMPLE_DIR / "LICENSE").read_text().startswith("The MIT License")


@pytest.fixture(scope="module")
def full():
    if not (SHARED / "train-images-idx3-ubyte.gz").is_file():
        pytest.skip(f"full Fashion-MNIST not found at {SHARED} (set FASHION_MNIST_DIR)")
    return load_fashion_mnist(data_dir=SHARED, download=False, allow_sample=False)


def test_real_files(full):
    assert (full.source, full.location) == ("full", str(SHARED))
    assert full.train_images.shape == (60000, 28, 28) and full.test_images.shape == (10000, 28, 28)
    assert np.bincount(full.train_labels).tolist() == [6000] * 10
    assert np.bincount(full.test_labels).tolist() == [1000] * 10
    pixels = full.train_images.astype(np.float64) / 255
    assert abs(pixels.mean() - MEAN) < 5e-5 and abs(pixels.std() - STD) < 5e-4
    assert full.train_labels[:10].tolist() == [9, 0, 0, 3, 0, 2, 7, 2, 5, 5]


def test_sample_regenerates_identically(full, tmp_path):
    from common.make_sample import make_sample

    make_sample(SHARED, tmp_path)
    for name in data.FILES:  # decompressed: the .gz bytes also depend on the zlib version
        assert gzip.decompress((tmp_path / name).read_bytes()) == gzip.decompress(
            (data.SAMPLE_DIR / name).read_bytes()
        ), name
    # and the sample is exactly the documented selection of full images, with their labels
    from common.make_sample import SEED, sample_indices

    sample, picked = sample_dataset(), sample_indices(full.train_labels, 600, (SEED, 0))
    assert np.array_equal(full.train_images[picked], sample.train_images)
    assert np.array_equal(full.train_labels[picked], sample.train_labels)


# ---------------------------------------------------------------------------- pictures and isolation


def test_save_image_grid(tmp_path):
    d = sample_dataset()
    path = tmp_path / "out" / "grid.png"
    save_image_grid(path, d.train_images[:10], d.train_labels[:10], ncols=5, predictions=d.train_labels[:10][::-1])
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in path.parent.iterdir()] == ["grid.png"]
    assert len(CLASS_NAMES) == 10 and CLASS_NAMES[0] == "T-shirt/top" and CLASS_NAMES[9] == "Ankle boot"


def test_common_data_imports_no_framework():
    code = (
        'import sys, common.data; bad = [m for m in ("torch", "mxnet", "jax", "flax", "matplotlib") '
        "if m in sys.modules]; assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True)
