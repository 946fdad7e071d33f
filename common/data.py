"""Fashion-MNIST for every framework: find or download the four IDX files, check
them, and turn them into shuffled NCHW float32 NumPy batches, resized here once so
that PyTorch, Gluon and Flax all see exactly the same pixels in the same order.

    data = load_fashion_mnist()            # full set if found/downloadable, else the bundled sample
    print(data.describe())                 # every report says which data it used
    for x, y in Loader(data.train_images, data.train_labels, resize=224): ...

No framework is imported here (a test checks it); matplotlib only inside
save_image_grid. `python -m common.data` says which data set it finds.
"""

import argparse
import functools
import gzip
import hashlib
import http.client
import os
import queue
import sys
import threading
import time
import urllib.request
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from .errors import DataError  # noqa: F401  (import it from common.errors)
from .files import atomic_path

CLASS_NAMES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
MEAN, STD = 0.2860, 0.3530  # training-set pixel statistics on a 0-1 scale (72.94 and 90.02 of 255)

MIRRORS = (
    "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
    "https://github.com/zalandoresearch/fashion-mnist/raw/master/data/fashion/",
)
FILES = {  # md5 of each .gz as Zalando publishes them (the data set's README)
    "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
    "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
    "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
    "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
}
SAMPLE_DIR = Path(__file__).resolve().parent / "data"
RETRY_BACKOFF = 1.0  # seconds before the first retry, doubled each time; tests set it to 0


def cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "vgg-three-ways" / "fashion-mnist"


def _where_to_put(folder) -> str:
    return (
        f"Put the four Fashion-MNIST files ({', '.join(FILES)}) in {folder}, or in any folder "
        f"named by --data-dir or the FASHION_MNIST_DIR environment variable. They are published at "
        f"{MIRRORS[0]} (MIT licence, https://github.com/zalandoresearch/fashion-mnist)."
    )


# ---------------------------------------------------------------------------- reading

MAGIC = {"images": 2051, "labels": 2049}


def read_idx(path, kind=None) -> np.ndarray:
    """Read one IDX file (gzipped or raw) of Fashion-MNIST images (magic 2051, N x 28 x 28)
    or labels (magic 2049, N, values 0-9) as a read-only uint8 array. kind ('images' or
    'labels'): what the file must hold; a file of the other kind is refused, saying so."""
    path = Path(path)
    if path.is_dir():
        raise DataError(f"{path} is a folder, not an IDX file; put the file itself there")
    if path.exists() and not path.is_file():  # a FIFO or a device would be read forever
        raise DataError(f"{path} is not a regular file (a pipe, socket or device); put the file itself there")
    try:
        raw = path.read_bytes()
        if raw[:2] == b"\x1f\x8b":  # sniff, not trust the name: some tools gunzip in place
            raw = gzip.decompress(raw)
    except FileNotFoundError:
        raise DataError(f"{path}: no such file") from None
    except (OSError, EOFError, zlib.error) as e:  # BadGzipFile is an OSError; a truncated .gz is EOFError
        raise DataError(f"{path}: corrupt or truncated gzip ({e}); delete it and download it again") from None
    if not raw:
        raise DataError(f"{path}: the file is empty; delete it and download it again")
    magic = int.from_bytes(raw[:4], "big") if len(raw) >= 4 else None
    if magic not in (2049, 2051):
        raise DataError(
            f"{path}: bad magic number {magic} (expected 2051 for images or 2049 for labels); "
            "this is not a Fashion-MNIST IDX file"
        )
    if kind is not None and magic != MAGIC[kind]:
        other = "labels" if kind == "images" else "images"
        raise DataError(
            f"{path}: holds {other} (magic number {magic}) where {kind} (magic {MAGIC[kind]}) were "
            f"expected; are the images and labels files swapped or misnamed?"
        )
    ndim, header = raw[3], 4 + 4 * raw[3]
    if len(raw) < header:
        raise DataError(f"{path}: header is truncated")
    dims = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    if magic == 2051 and dims[1:] != (28, 28):  # the magic's last byte is ndim: 3 here, 1 for labels
        raise DataError(f"{path}: dimensions {dims} are wrong (Fashion-MNIST images are N x 28 x 28)")
    size = int(np.prod(dims))
    if len(raw) - header != size:
        raise DataError(
            f"{path}: header promises {size:,} bytes of data for {dims} but the file holds "
            f"{len(raw) - header:,}; it is truncated or corrupt, download it again"
        )
    array = np.frombuffer(raw, np.uint8, offset=header).reshape(dims)
    if magic == 2049 and array.size and array.max() > 9:
        raise DataError(f"{path}: label {array.max()} is out of range (Fashion-MNIST labels are 0-9)")
    return array


@dataclass(frozen=True)
class FashionMNIST:
    train_images: np.ndarray  # (N, 28, 28) uint8, read-only: shared by everyone who loaded it
    train_labels: np.ndarray  # (N,) int64
    test_images: np.ndarray
    test_labels: np.ndarray
    source: str  # 'full' or 'sample'
    location: str  # the folder the files came from

    def describe(self) -> str:
        name = "Fashion-MNIST" if self.source == "full" else "Fashion-MNIST bundled SAMPLE"
        return f"{name}: {len(self.train_images):,} train / {len(self.test_images):,} test images from {self.location}"


def _find(folder: Path, stem: str):
    return next((p for p in (folder / f"{stem}.gz", folder / stem) if p.exists()), None)


def _load_dir(folder, source: str) -> FashionMNIST:
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise DataError(f"{folder} is a file, not a folder: name the folder that holds the four Fashion-MNIST files")
    paths = {name[:-3]: _find(folder, name[:-3]) for name in FILES}
    missing = [stem + "[.gz]" for stem, p in paths.items() if p is None]
    if missing:
        raise DataError(f"{folder}: missing {', '.join(missing)}. {_where_to_put(folder)}")
    arrays = []
    for split in ("train", "t10k"):
        ipath, lpath = paths[f"{split}-images-idx3-ubyte"], paths[f"{split}-labels-idx1-ubyte"]
        images, labels = read_idx(ipath, "images"), read_idx(lpath, "labels")
        if len(images) != len(labels):
            raise DataError(
                f"{ipath} has {len(images):,} images but {lpath} has {len(labels):,} labels; "
                "one of the two files is wrong"
            )
        if not len(images):
            raise DataError(f"{ipath} holds no images: the {split} set is empty; give the whole data set")
        arrays += [images, labels.astype(np.int64)]
    return FashionMNIST(*arrays, source=source, location=str(folder))


def sample_dataset() -> FashionMNIST:
    """The class-balanced sample bundled in common/data/ (6,000 train, 1,000 test; see make_sample.py)."""
    return _load_dir(SAMPLE_DIR, "sample")


# ---------------------------------------------------------------------------- finding and downloading


def _fetch(url: str, path: Path, md5: str, progress: bool, timeout: float):
    # Into a hidden temp file in the same folder, renamed only once the checksum matches
    # (common.files), so a killed or truncated download never leaves a file that later looks good.
    digest = hashlib.md5()
    with atomic_path(path) as tmp, open(tmp, "wb") as f, urllib.request.urlopen(url, timeout=timeout) as r:
        total, received = int(r.headers.get("Content-Length") or 0), 0
        with tqdm(
            total=total or None, unit="B", unit_scale=True, desc=path.name, disable=not progress, leave=False
        ) as bar:
            while chunk := r.read(1 << 16):
                f.write(chunk)
                digest.update(chunk)
                bar.update(len(chunk))
                received += len(chunk)
        f.flush()
        os.fsync(f.fileno())
        if total and received != total:
            raise DataError(f"truncated: received {received:,} of {total:,} bytes")
        if digest.hexdigest() != md5:
            raise DataError(f"checksum mismatch (md5 {digest.hexdigest()}, expected {md5})")


def download(dest_dir, *, mirrors=None, checksums=None, progress=True, retries=3, backoff=None, timeout=30.0) -> None:
    """Download and md5-verify the Fashion-MNIST files into dest_dir, skipping good ones already there.

    mirrors: base URLs tried in order (default: $FASHION_MNIST_MIRRORS, space or comma separated,
    else MIRRORS). checksums: {file name: md5}, default FILES. Each round tries every mirror;
    rounds are retried with exponential backoff. Raises DataError if a file cannot be had."""
    dest = Path(dest_dir)
    try:
        dest.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DataError(f"cannot create {dest} ({e}). {_where_to_put('a folder of your choice')}") from None
    if mirrors is None:
        mirrors = os.environ.get("FASHION_MNIST_MIRRORS", "").replace(",", " ").split() or MIRRORS
    mirrors = [m if m.endswith("/") else m + "/" for m in mirrors]
    backoff = RETRY_BACKOFF if backoff is None else backoff
    for name, md5 in (FILES if checksums is None else checksums).items():
        path = dest / name
        if path.is_file() and hashlib.md5(path.read_bytes()).hexdigest() == md5:
            continue
        errors = []
        for attempt in range(retries):
            if attempt:
                time.sleep(backoff * 2 ** (attempt - 1))
            for base in mirrors:
                try:
                    _fetch(base + name, path, md5, progress, timeout)
                    break
                except (OSError, http.client.HTTPException, DataError) as e:  # URLError is an OSError
                    errors.append(f"  {base + name}: {e}")
            else:
                continue
            break
        else:
            raise DataError(
                f"could not download {name} ({retries} tries of each mirror):\n"
                + "\n".join(dict.fromkeys(errors))
                + f"\n{_where_to_put(dest)}"
            )


_download = download  # load_fashion_mnist's `download` flag shadows the function's name


def check_data_dir(data_dir) -> None:
    """An empty --data-dir names no folder (and would otherwise read as no flag at all)."""
    if data_dir is not None and not str(data_dir).strip():
        raise DataError(
            '--data-dir "" names no folder; give the folder with the four Fashion-MNIST files, or leave the flag out'
        )


def load_fashion_mnist(data_dir=None, *, download=True, allow_sample=True, progress=True) -> FashionMNIST:
    """Find Fashion-MNIST: data_dir, else $FASHION_MNIST_DIR (either must hold good files: an
    explicit folder is never silently replaced), else the user cache (downloaded or repaired there
    if download=True), else, if allow_sample, the bundled sample with a warning on stderr."""
    check_data_dir(data_dir)
    explicit = data_dir or os.environ.get("FASHION_MNIST_DIR")
    if explicit:  # the bundled sample's own folder, named explicitly, is still the sample
        return _load_dir(explicit, "sample" if Path(explicit).resolve() == SAMPLE_DIR else "full")
    cache = cache_dir()
    problem = f"Fashion-MNIST is not in {cache} and downloading is off. {_where_to_put(cache)}"
    if all(_find(cache, name[:-3]) for name in FILES):
        try:
            return _load_dir(cache, "full")
        except DataError as e:  # the cache is ours to repair: download() replaces files that fail their md5
            problem = f"the cached copy is unusable: {e}"
    if download:
        try:
            _download(cache, progress=progress)
            return _load_dir(cache, "full")
        except DataError as e:
            problem = f"Fashion-MNIST could not be downloaded: {e}"
    if not allow_sample:
        raise DataError(problem)
    print(
        f"WARNING: {problem}\nWARNING: using the bundled sample of 6,000 train / 1,000 test images "
        f"from {SAMPLE_DIR}; results will not match the full data set.",
        file=sys.stderr,
    )
    return sample_dataset()


# ---------------------------------------------------------------------------- resizing and batches


@functools.cache
def _resize_matrix(n_in: int, n_out: int) -> np.ndarray:
    # Row i holds the bilinear weights of output pixel i: half-pixel centres,
    # source = (i + 0.5) * n_in / n_out - 0.5 clamped at 0, no antialiasing; this is
    # torch's interpolate(mode='bilinear', align_corners=False, antialias=False).
    src = np.maximum((np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5, 0.0)
    lo = np.floor(src).astype(np.int64)
    hi, frac = np.minimum(lo + 1, n_in - 1), src - lo
    m = np.zeros((n_out, n_in))
    np.add.at(m, (np.arange(n_out), lo), 1 - frac)
    np.add.at(m, (np.arange(n_out), hi), frac)
    m = m.astype(np.float32)
    m.flags.writeable = False  # cached and shared
    return m


def resize_bilinear(images, size: int, out=None) -> np.ndarray:
    """(N, H, W) images -> (N, size, size) float32 in the same value scale, bilinear as above.

    Separable: two small matrix products per image (H, then W), as stacked matmuls; not one
    GEMM for the batch, whose BLAS kernel, chosen by row count, would change an image's pixels
    in the last bit with the batch it lands in (data-parallel shards must not see that); also
    faster (benchmarks/README.md)."""
    x = np.asarray(images, dtype=np.float32)
    n, h, w = x.shape
    if out is None:
        out = np.empty((n, size, size), np.float32)
    elif out.shape != (n, size, size) or out.dtype != np.float32 or not out.flags.c_contiguous:
        raise ValueError(f"out must be a C-contiguous float32 array of shape {(n, size, size)}")
    rows = np.matmul(_resize_matrix(h, size), x)  # (N, size, W)
    np.matmul(rows, _resize_matrix(w, size).T, out=out)  # (N, size, size)
    return out


PIXELS = ("float", "d2l")  # Loader(pixels=...) and --pixels
_PRECISION_BITS = 22  # Pillow's fixed point for 8-bit images: 32 - 8 - 2 bits of fraction


@functools.cache
def _pillow_matrix(n_in: int, n_out: int) -> np.ndarray:
    # Pillow's bilinear weights (libImaging/Resample.c, precompute_coeffs with the triangle filter,
    # support 1 widened by the scale when shrinking; then normalize_coeffs_8bpc): row i holds output
    # pixel i's weights, normalised to sum 1, rounded half away from zero to whole 2**-22 steps.
    scale = n_in / n_out
    widen = max(scale, 1.0)
    m = np.zeros((n_out, n_in))
    for i in range(n_out):
        centre = (i + 0.5) * scale
        lo, hi = max(int(centre - widen + 0.5), 0), min(int(centre + widen + 0.5), n_in)
        w = np.maximum(1.0 - np.abs((np.arange(lo, hi) - centre + 0.5) / widen), 0.0)
        m[i, lo:hi] = w / w.sum() if w.sum() else w
    m = np.trunc(m * (1 << _PRECISION_BITS) + np.where(m < 0, -0.5, 0.5))
    m.flags.writeable = False  # cached and shared
    return m


def resize_like_pillow(images, size: int) -> np.ndarray:
    """(N, H, W) uint8 -> (N, size, size) uint8, bit for bit what Pillow's
    Image.resize((size, size), Image.BILINEAR) gives for each image (torchvision's Resize on a
    PIL image, d2l's load_data_fashion_mnist): rows first, then columns, each pass in Pillow's
    fixed point and rounded to whole 0-255 values. Written in NumPy, not a call into Pillow, so
    that common needs no image library and resizes a batch at once; tests/test_data.py checks
    it against Pillow itself. The sums are whole numbers below 2**53, exact in float64 whatever
    the BLAS kernel or the batch, so an image's pixels never depend on its batch."""
    x = np.asarray(images)
    if x.dtype != np.uint8:
        raise ValueError(f"resize_like_pillow takes uint8 images (0-255), got {x.dtype}")
    n, h, w = x.shape
    one, half = 2.0**-_PRECISION_BITS, float(1 << (_PRECISION_BITS - 1))

    def rounded(t):  # Pillow's (sum + half) >> 22, clipped to 0-255
        t += half
        t *= one
        return np.clip(np.floor(t, out=t), 0, 255, out=t)

    t = rounded(x.reshape(n * h, w).astype(np.float64) @ _pillow_matrix(w, size).T)  # along rows: (N*H, size)
    t = t.reshape(n, h, size).transpose(1, 0, 2).reshape(h, n * size)  # one product for the whole batch
    y = rounded(_pillow_matrix(h, size) @ t)  # along columns: (size, N*size)
    return y.reshape(size, n, size).transpose(1, 0, 2).astype(np.uint8)


def augment_pad(size: int) -> int:
    """--augment's crop padding: 4 px at 32 px (the CIFAR recipe of torchvision and the Gluon examples),
    in proportion at other sizes (28 px at 224)."""
    return max(1, round(4 * size / 32))


def augment_draws(rng, n: int, pad: int):
    """(dy, dx, flip) for n images: crop offsets in 0..2*pad (pad, pad: no shift), drawn as
    rng.integers(0, 2 * pad + 1, size=(2, n)), then flips where rng.random(n) < 0.5."""
    dy, dx = rng.integers(0, 2 * pad + 1, size=(2, n))
    return dy, dx, rng.random(n) < 0.5


def augment_batch(x, dy, dx, flip, pad: int, fill: float = 0.0):
    """Random crop with padding and horizontal flip, in place, of a (B, S, S) float batch: image i
    is padded by `pad` pixels of value `fill` on every side, cut back to S x S from row dy[i] and
    column dx[i] of the padded image, then mirrored left-right where flip[i]."""
    b, s, _ = x.shape
    padded = np.full((s + 2 * pad, s + 2 * pad), fill, x.dtype)
    for i in range(b):
        padded[pad : pad + s, pad : pad + s] = x[i]
        window = padded[dy[i] : dy[i] + s, dx[i] : dx[i] + s]
        x[i] = window[:, ::-1] if flip[i] else window
    return x


class Loader:
    """Batches of one epoch: x (B, 1, S, S) float32 C-contiguous NCHW in [0, 1] (or normalised
    with MEAN/STD), y (B,) int64. The order of epoch e is the permutation drawn by
    np.random.default_rng((seed, e)), so it is the same in every framework and every run.

    `for x, y in loader` runs epochs 0, 1, 2, ... on successive loops; epoch(e) asks for one
    (to resume). A background thread prepares `prefetch` batches ahead (0: no thread); the
    heavy work is BLAS, which releases the GIL. Each batch is a fresh array, safe to keep.

    shard=(i, n), for data parallelism: batch_size is the global batch, and this loader yields
    only part i of n of each one (contiguous rows, np.array_split), so the n processes of a
    job together see exactly the batches that one process with shard=(0, 1) sees.

    augment=True: batch k of epoch e is cropped and flipped (augment_batch) after resizing, with
    augment_draws(np.random.default_rng((seed, e, 2, k)), ...) made for the whole global batch before
    it is split into shards; the padding is augment_pad(resize) pixels of a black pixel's value.

    pixels="float" (the default): pixels scaled to 0-1 (and standardised), then resized
    (resize_bilinear). pixels="d2l": d2l's order (torchvision's Resize, then ToTensor): the
    uint8 image resized as Pillow's bilinear filter does (resize_like_pillow), rounded to
    whole values, then divided by 255, so every pixel is a whole multiple of 1/255 (then
    standardised if normalize). The two differ by up to 1/255 a pixel."""

    def __init__(
        self,
        images,
        labels,
        *,
        batch_size=128,
        resize=None,
        shuffle=True,
        seed=0,
        drop_last=False,
        normalize=False,
        prefetch=2,
        shard=(0, 1),
        augment=False,
        pixels="float",
    ):
        self.images, self.labels = np.asarray(images), np.asarray(labels).astype(np.int64, copy=False)
        if self.images.ndim != 3 or len(self.images) != len(self.labels):
            raise ValueError(f"need (N, H, W) images and N labels, got {self.images.shape} and {self.labels.shape}")
        if self.images.shape[1] != self.images.shape[2] and resize is None:
            raise ValueError(f"images are {self.images.shape[1:]}, pass resize= to make them square")
        self.batch_size, self.size, self.shuffle, self.seed = batch_size, resize or self.images.shape[1], shuffle, seed
        self.drop_last, self.normalize, self.prefetch, self.augment = drop_last, normalize, prefetch, augment
        if not 0 <= shard[0] < shard[1]:
            raise ValueError(f"shard=(index, count) needs 0 <= index < count, got {shard}")
        self.shard = tuple(shard)
        if pixels not in PIXELS:
            raise ValueError(f"pixels must be one of {PIXELS}, got {pixels!r}")
        if pixels == "d2l" and self.images.dtype != np.uint8:
            raise ValueError(f"pixels='d2l' resizes uint8 images (0-255), got {self.images.dtype}")
        self.pixels = pixels
        self.local_batch_size = -(-batch_size // shard[1])  # rows of this shard's largest part
        # uint8 is 0-255, floats are taken as 0-1. Normalising before resizing is exact
        # because each output pixel's weights sum to 1, and it touches 64x fewer pixels at 224.
        scale = 1 / 255 if self.images.dtype == np.uint8 else 1.0
        self._scale, self._shift = (scale / STD, -MEAN / STD) if normalize else (scale, 0.0)
        self._next_epoch = 0

    def __len__(self) -> int:
        n, b = len(self.images), self.batch_size
        return n // b if self.drop_last else -(-n // b)

    def __iter__(self):
        self._next_epoch += 1
        return self.epoch(self._next_epoch - 1)

    def _batch(self, idx, epoch=0, k=0):
        if self.augment:  # the draws cover the global batch, so that any sharding sees the same pixels
            draws = augment_draws(np.random.default_rng((self.seed, epoch, 2, k)), len(idx), augment_pad(self.size))
        part = np.array_split(np.arange(len(idx)), self.shard[1])[self.shard[0]]
        idx = idx[part]
        if self.pixels == "d2l":
            return self._batch_d2l(idx, draws if self.augment else None, part)
        x = self.images[idx].astype(np.float32)
        x *= np.float32(self._scale)
        if self._shift:
            x += np.float32(self._shift)
        b, h, w = x.shape
        if (h, w) == (self.size, self.size):
            out = x.reshape(b, 1, h, w)
        else:
            out = np.empty((b, 1, self.size, self.size), np.float32)
            resize_bilinear(x, self.size, out=out.reshape(b, self.size, self.size))
        if self.augment:
            augment_batch(
                out.reshape(b, self.size, self.size),
                *(d[part] for d in draws),
                augment_pad(self.size),
                np.float32(self._shift),
            )
        return out, self.labels[idx]

    def _batch_d2l(self, idx, draws, part):
        """pixels='d2l': resize the uint8 image, then ToTensor's img.float().div(255), then standardise."""
        u8 = self.images[idx]
        b, h, w = u8.shape
        if (h, w) != (self.size, self.size):
            u8 = resize_like_pillow(u8, self.size)
        out = u8.astype(np.float32).reshape(b, 1, self.size, self.size)
        out /= np.float32(255)
        shift = (np.float32(0) - np.float32(MEAN)) / np.float32(STD) if self.normalize else np.float32(0)
        if self.normalize:  # torchvision's Normalize(MEAN, STD): (x - mean) / std
            out -= np.float32(MEAN)
            out /= np.float32(STD)
        if draws is not None:
            augment_batch(
                out.reshape(b, self.size, self.size), *(d[part] for d in draws), augment_pad(self.size), shift
            )
        return out, self.labels[idx]

    def epoch(self, epoch: int):
        n, b = len(self.images), self.batch_size
        order = np.random.default_rng((self.seed, epoch)).permutation(n) if self.shuffle else np.arange(n)
        starts = range(0, len(self) * b, b)
        if not self.prefetch:
            for k, s in enumerate(starts):
                yield self._batch(order[s : s + b], epoch, k)
            return
        q, stop, done = queue.Queue(self.prefetch), threading.Event(), object()

        def put(item):  # gives up once the consumer has gone, so the thread always ends
            while not stop.is_set():
                try:
                    q.put(item, timeout=0.05)
                    return True
                except queue.Full:
                    pass
            return False

        def work():
            try:
                for k, s in enumerate(starts):
                    if not put(self._batch(order[s : s + b], epoch, k)):
                        return
                put(done)
            except BaseException as e:  # handed to the consumer, raised there
                put(e)

        thread = threading.Thread(target=work, name="fashion-mnist-prefetch", daemon=True)
        thread.start()
        try:
            while (item := q.get()) is not done:
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:  # runs on exhaustion, on close() of an abandoned generator and on exceptions
            stop.set()
            thread.join()


# ---------------------------------------------------------------------------- pictures


def save_image_grid(path, images, labels, *, ncols=8, predictions=None) -> None:
    """Save images (N, H, W) or (N, 1, H, W) as a PNG grid titled with class names, as d2l shows
    them; with predictions, titles read 'predicted (true)', red where wrong. Written atomically."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure  # imported here: slow, and only pictures need it

    images = np.asarray(images)
    images = images.reshape(len(images), *images.shape[-2:])
    nrows = max(1, -(-len(images) // ncols))
    fig = Figure(figsize=(1.4 * ncols, 1.6 * nrows + (0.3 * nrows if predictions is not None else 0)))
    FigureCanvasAgg(fig)
    for i, (image, label) in enumerate(zip(images, labels)):
        ax = fig.add_subplot(nrows, ncols, i + 1)
        ax.imshow(image, cmap="gray")
        ax.axis("off")
        title, color = CLASS_NAMES[int(label)], "black"
        if predictions is not None:
            p = int(np.argmax(predictions[i]) if np.ndim(predictions[i]) else predictions[i])
            title, color = f"{CLASS_NAMES[p]}\n({title})", ("black" if p == int(label) else "red")
        ax.set_title(title, fontsize=8, color=color)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")


def main(argv=None):
    p = argparse.ArgumentParser(description="Find (or download) Fashion-MNIST and say which data set it is.")
    p.add_argument(
        "--data-dir",
        metavar="PATH",
        help="folder with the four IDX files (default: $FASHION_MNIST_DIR, then the cache)",
    )
    p.add_argument("--no-download", action="store_true")
    p.add_argument("--grid", metavar="PNG", help="also save a grid of the first 32 training images")
    from .cli import main_guard  # the command line's edge; cli imports this module

    with main_guard():
        args = p.parse_args(argv)
        data = load_fashion_mnist(args.data_dir, download=not args.no_download)
        print(data.describe())
        if args.grid:
            save_image_grid(args.grid, data.train_images[:32], data.train_labels[:32])
            print(f"saved {args.grid}")


if __name__ == "__main__":
    main()
