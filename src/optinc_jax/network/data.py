"""Training data for the data-parallel experiments, all local: nothing is downloaded.

Two kinds of data, each a frozen value holding NumPy arrays (a training part and a
held-out part, disjoint by construction):

- :class:`ImageData`: images ``[n, height, width, channels]`` float32 (standardised) and
  integer labels ``[n]``.

  * :func:`load_cifar100` reads CIFAR-100 from its standard *python-format* files (the
    ``train``, ``test`` and ``meta`` pickles of the ``cifar-100-python`` folder of
    ``cifar-100-python.tar.gz``) at a path the user gives; the held-out part is the
    official test set. Missing files are one ``ValueError`` saying which files to put
    where; a file that is not a CIFAR-100 pickle is one ``ValueError`` naming it. The
    pickles are read with an unpickler that only accepts the NumPy array constructors
    the format uses, so a foreign pickle cannot run code.
  * :func:`load_digits_data`, the offline default: scikit-learn's bundled handwritten
    digits (1,797 real 8 x 8 grayscale images, 10 classes; scikit-learn is imported only
    here), split by seed into a training and a held-out part.

- :class:`TextData`: a byte stream ``[n]`` uint8; the tokenizer is the identity on UTF-8
  bytes (:func:`encode_bytes` / :func:`decode_bytes`, a vocabulary of 256, no download).

  * :func:`load_text` reads any plain-text file, or every text file under a folder.
  * :func:`stdlib_text_corpus`, the offline default: the Python standard library's own
    ``.py`` source files, a deterministic selection (sorted relative paths, test folders
    and ``site-packages`` left out, up to ``max_bytes``). It is a **stand-in** for a
    natural-language corpus that every machine with Python has; its content depends on
    the Python version, which the description records with a SHA-256 of the bytes.

  The held-out part is the last ``heldout_fraction`` of the stream (contiguous, so no
  training window overlaps a held-out one).

Batches are deterministic by seed and by step: :func:`train_batches` is an endless
iterator whose batch ``i`` is a pure function of ``(seed, i)`` (images: a fresh
permutation of the training set per epoch, seeded by ``(seed, epoch)``; text: windows at
uniformly drawn offsets, seeded by ``(seed, i)``), so a resumed run starting at step ``i``
sees exactly the batches an uninterrupted one would. :func:`heldout_batches` goes once
over the held-out part in order, the last batch padded with zero-weight examples. Every
batch is placed on the devices with ``jax.device_put`` and a ``NamedSharding`` that
splits the leading (batch) axis over the mesh's data axis: each server holds its own
shard.
"""

import dataclasses
import functools
import hashlib
import os
import pickle
import sys
import sysconfig
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from optinc_jax.learning.step import DATA_AXIS
from optinc_jax.validation import require_int, require_real

__all__ = [
    "BYTE_VOCAB_SIZE",
    "CIFAR100_FILES",
    "Batch",
    "ImageData",
    "TextData",
    "decode_bytes",
    "encode_bytes",
    "heldout_batches",
    "load_cifar100",
    "load_digits_data",
    "load_text",
    "stdlib_text_corpus",
    "train_batches",
]

BYTE_VOCAB_SIZE = 256
"""Vocabulary of the byte tokenizer: one token per byte value."""

CIFAR100_FILES = ("train", "test", "meta")
"""The python-format files of CIFAR-100 (inside the ``cifar-100-python`` folder)."""

CIFAR100_FOLDER = "cifar-100-python"
"""The folder ``cifar-100-python.tar.gz`` unpacks to."""

CIFAR_AUGMENT_PAD = 4
"""Zero padding (pixels per side) of the random-crop augmentation of CIFAR images."""

DEFAULT_STDLIB_BYTES = 8 << 20
"""Bytes of the standard-library stand-in corpus by default (8 MiB)."""

_SKIPPED_FOLDERS = frozenset(
    {"site-packages", "dist-packages", "test", "tests", "idle_test", "__pycache__"}
)


class Batch(NamedTuple):
    """One batch, sharded over the servers along its first axis.

    Attributes:
        inputs: images ``[batch, height, width, channels]`` float32, or tokens
            ``[batch, seq]`` int32.
        targets: labels ``[batch]`` int32, or next tokens ``[batch, seq]`` int32.
        weights: ``[batch]`` float32; 1 for a real example, 0 for padding (only the last
            held-out batch has padding).
    """

    inputs: jax.Array
    targets: jax.Array
    weights: jax.Array


# ------------------------------------------------------------------------------ images


@functools.lru_cache(maxsize=4)
def _epoch_order(seed: int, epoch: int, size: int) -> np.ndarray:
    """The training set's order in one epoch: a permutation seeded by ``(seed, epoch)``."""
    order = np.random.default_rng([seed, epoch]).permutation(size)
    order.setflags(write=False)
    return order


@dataclasses.dataclass(frozen=True, eq=False)
class ImageData:
    """A labelled image set with a disjoint held-out part (NumPy arrays, NHWC).

    Attributes:
        train_images: ``[n, height, width, channels]`` float32, standardised with the
            training part's statistics.
        train_labels: ``[n]`` int32 in ``[0, num_classes)``.
        heldout_images: ``[m, height, width, channels]`` float32, same standardisation.
        heldout_labels: ``[m]`` int32.
        num_classes: number of classes.
        name: short name (``"digits"``, ``"cifar100"``).
        source: where the data came from.
        augment: random crop (``CIFAR_AUGMENT_PAD`` pixels of zero padding) and horizontal
            flip of the training batches (CIFAR); ``False`` for digits, where a flip
            changes the class.
    """

    train_images: np.ndarray
    train_labels: np.ndarray
    heldout_images: np.ndarray
    heldout_labels: np.ndarray
    num_classes: int
    name: str
    source: str
    augment: bool = False

    kind = "image"

    def __post_init__(self):
        """Checks the shapes and labels (one ``ValueError`` naming the field)."""
        for part in ("train", "heldout"):
            images = getattr(self, f"{part}_images")
            labels = getattr(self, f"{part}_labels")
            if images.ndim != 4 or images.shape[0] < 1:
                raise ValueError(
                    f"{part}_images must be [n >= 1, height, width, channels], got shape "
                    f"{images.shape}"
                )
            if labels.shape != (images.shape[0],):
                raise ValueError(
                    f"{part}_labels must have shape ({images.shape[0]},), got {labels.shape}"
                )
            if labels.size and (labels.min() < 0 or labels.max() >= self.num_classes):
                raise ValueError(
                    f"{part}_labels must lie in [0, {self.num_classes}), got "
                    f"[{labels.min()}, {labels.max()}]"
                )
        if self.train_images.shape[1:] != self.heldout_images.shape[1:]:
            raise ValueError(
                f"held-out images {self.heldout_images.shape[1:]} differ in shape from the "
                f"training images {self.train_images.shape[1:]}"
            )

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """``(height, width, channels)`` of one image."""
        return tuple(self.train_images.shape[1:])

    def describe(self) -> dict[str, Any]:
        """JSON-ready description (name, source, sizes)."""
        return {
            "name": self.name,
            "kind": self.kind,
            "source": self.source,
            "train_examples": int(self.train_images.shape[0]),
            "heldout_examples": int(self.heldout_images.shape[0]),
            "image_shape": list(self.image_shape),
            "num_classes": self.num_classes,
            "augment": self.augment,
        }

    def train_arrays(
        self, seed: int, step: int, batch_size: int, seq_len: int | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Training batch ``step``: ``([batch, h, w, c] float32, [batch] int32)``.

        Example ``j`` of the batch is position ``p = step * batch + j`` of an endless
        stream of epochs, each a permutation seeded by ``(seed, epoch)``.
        """
        del seq_len  # text only
        size = self.train_images.shape[0]
        positions = step * batch_size + np.arange(batch_size)
        epochs, offsets = np.divmod(positions, size)
        index = np.empty(batch_size, np.int64)
        for epoch in np.unique(epochs):  # one or two epochs per batch
            chosen = epochs == epoch
            index[chosen] = _epoch_order(seed, int(epoch), size)[offsets[chosen]]
        images, labels = self.train_images[index], self.train_labels[index]
        if self.augment:
            images = _crop_and_flip(images, np.random.default_rng([seed, step, 1]))
        return images, labels

    def heldout_arrays(
        self, seq_len: int | None = None, max_examples: int | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """The held-out part in order, at most ``max_examples`` of it."""
        del seq_len
        stop = self.heldout_images.shape[0] if max_examples is None else max_examples
        return self.heldout_images[:stop], self.heldout_labels[:stop]


def _crop_and_flip(images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Random crop after zero padding and random horizontal flip, per image."""
    batch, height, width, _ = images.shape
    pad = CIFAR_AUGMENT_PAD
    padded = np.pad(images, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    dy = rng.integers(0, 2 * pad + 1, batch)
    dx = rng.integers(0, 2 * pad + 1, batch)
    flip = rng.random(batch) < 0.5
    out = np.empty_like(images)
    for i in range(batch):  # host-side, a few microseconds per image
        crop = padded[i, dy[i] : dy[i] + height, dx[i] : dx[i] + width]
        out[i] = crop[:, ::-1] if flip[i] else crop
    return out


def _standardise(train: np.ndarray, heldout: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel standardisation with the training part's mean and standard deviation."""
    mean = train.mean(axis=(0, 1, 2), dtype=np.float64)
    std = train.std(axis=(0, 1, 2), dtype=np.float64)
    std = np.where(std > 0, std, 1.0)
    scale = lambda x: ((x - mean) / std).astype(np.float32)  # noqa: E731
    return scale(train), scale(heldout)


def load_digits_data(*, heldout_fraction: float = 0.2, seed: int = 0) -> ImageData:
    """scikit-learn's bundled handwritten digits: 1,797 real 8 x 8 grayscale images.

    The offline image default (no download: the data ship with scikit-learn, which is
    imported only here). The split is a permutation seeded by ``seed``; pixel values
    ``0..16`` are standardised with the training part's mean and deviation.

    Args:
        heldout_fraction: share of the images held out, in ``(0, 1)``.
        seed: seed of the split.

    Returns:
        :class:`ImageData` with images ``[n, 8, 8, 1]`` and 10 classes.

    Raises:
        ValueError: on a bad ``heldout_fraction`` or ``seed``.

    Examples:
        >>> data = load_digits_data()
        >>> data.train_images.shape, data.heldout_images.shape, data.num_classes
        ((1438, 8, 8, 1), (359, 8, 8, 1), 10)
    """
    fraction = require_real(
        "heldout_fraction",
        heldout_fraction,
        low=0.0,
        high=1.0,
        low_inclusive=False,
        high_inclusive=False,
    )
    seed = require_int("seed", seed, 0)
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = np.asarray(digits.images, np.float32)[..., None]  # [1797, 8, 8, 1]
    labels = np.asarray(digits.target, np.int32)
    order = np.random.default_rng([seed, 0x5EED]).permutation(len(labels))
    heldout_count = max(1, round(fraction * len(labels)))
    held, train = order[:heldout_count], order[heldout_count:]
    train_images, heldout_images = _standardise(images[train], images[held])
    return ImageData(
        train_images,
        labels[train],
        heldout_images,
        labels[held],
        num_classes=10,
        name="digits",
        source=f"sklearn.datasets.load_digits (held-out {fraction:g}, split seed {seed})",
    )


_NUMPY_GLOBALS = frozenset(
    {
        ("_codecs", "encode"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        *(
            (f"numpy.{core}.{module}", name)
            for core in ("core", "_core")
            for module, name in (
                ("multiarray", "_reconstruct"),
                ("multiarray", "scalar"),
                ("numeric", "_frombuffer"),
            )
        ),
    }
)


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles dicts, lists, bytes and NumPy arrays only (the CIFAR format); no code."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _NUMPY_GLOBALS:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
        return super().find_class(module, name)


def _read_pickle(path: Path) -> dict:
    try:
        with open(path, "rb") as stream:
            document = _ArrayUnpickler(stream, encoding="bytes").load()
    except Exception as error:  # unpickling raises many kinds; all mean "not this format"
        raise ValueError(
            f"{path} is not a CIFAR-100 python-format pickle ({type(error).__name__}: "
            f"{error}); replace it with the file of the same name from cifar-100-python.tar.gz"
        ) from None
    if not isinstance(document, dict):
        raise ValueError(f"{path} is not a CIFAR-100 python-format pickle (not a dict)")
    return {
        key.decode() if isinstance(key, bytes) else key: value for key, value in document.items()
    }


def _cifar_folder(path: Path) -> Path:
    """The folder holding the files: ``path`` itself, or its ``cifar-100-python``."""
    if all((path / name).is_file() for name in CIFAR100_FILES):
        return path
    inner = path / CIFAR100_FOLDER
    if inner.is_dir():
        return inner
    return path


def _cifar_part(path: Path, field: str) -> tuple[np.ndarray, np.ndarray]:
    document = _read_pickle(path)
    try:
        data = np.asarray(document["data"])
        labels = np.asarray(document[field], np.int64)
    except (KeyError, ValueError, TypeError) as error:
        raise ValueError(
            f"{path} is not a CIFAR-100 python-format pickle (missing or bad {error})"
        ) from None
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 32 * 32 * 3:
        raise ValueError(
            f"{path}: 'data' must be uint8 [n, 3072] (32 x 32 x 3 images), got "
            f"{data.dtype} {data.shape}"
        )
    if labels.shape != (data.shape[0],):
        raise ValueError(f"{path}: {data.shape[0]} images but {labels.shape} '{field}'")
    images = data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)  # NCHW rows -> NHWC
    return images, labels


def load_cifar100(path: str | Path, *, label: str = "fine", augment: bool = True) -> ImageData:
    """CIFAR-100 from its python-format files (``train``, ``test``, ``meta``).

    Nothing is downloaded: put the three files of ``cifar-100-python.tar.gz`` (from
    https://www.cs.toronto.edu/~kriz/cifar.html) in ``path``, or give the folder that
    holds ``cifar-100-python/``. The held-out part is the official test set (10,000
    images); images are standardised per channel with the training set's statistics.

    Args:
        path: the ``cifar-100-python`` folder, or its parent.
        label: ``"fine"`` (100 classes) or ``"coarse"`` (20 superclasses).
        augment: random crop and flip of the training batches.

    Returns:
        :class:`ImageData` with images ``[n, 32, 32, 3]``.

    Raises:
        ValueError: if a file is missing (the message says which files to put where), is
            not a CIFAR-100 pickle, or the labels exceed the classes of ``meta``.
    """
    if label not in ("fine", "coarse"):
        raise ValueError(f"label must be 'fine' or 'coarse', got {label!r}")
    folder = _cifar_folder(Path(path))
    missing = [name for name in CIFAR100_FILES if not (folder / name).is_file()]
    if missing:
        raise ValueError(
            f"CIFAR-100 not found: put the python-format files {', '.join(CIFAR100_FILES)} "
            f"(the {CIFAR100_FOLDER}/ folder of cifar-100-python.tar.gz) in {folder} "
            f"(missing: {', '.join(missing)})"
        )
    meta = _read_pickle(folder / "meta")
    names = meta.get(f"{label}_label_names")
    if not isinstance(names, list) or not names:
        raise ValueError(f"{folder / 'meta'} lacks the list '{label}_label_names'")
    train_images, train_labels = _cifar_part(folder / "train", f"{label}_labels")
    heldout_images, heldout_labels = _cifar_part(folder / "test", f"{label}_labels")
    train_x, heldout_x = _standardise(
        train_images.astype(np.float32) / 255, heldout_images.astype(np.float32) / 255
    )
    return ImageData(
        train_x,
        train_labels.astype(np.int32),
        heldout_x,
        heldout_labels.astype(np.int32),
        num_classes=len(names),
        name="cifar100" if label == "fine" else "cifar100-coarse",
        source=str(folder),
        augment=augment,
    )


# -------------------------------------------------------------------------------- text


def encode_bytes(text: str) -> np.ndarray:
    """Byte tokenizer: the UTF-8 bytes of ``text`` as tokens ``[n]`` int32 in ``[0, 256)``.

    Examples:
        >>> encode_bytes("hé").tolist()
        [104, 195, 169]
    """
    return np.frombuffer(text.encode("utf-8"), np.uint8).astype(np.int32)


def decode_bytes(tokens: Any) -> str:
    """Inverse of :func:`encode_bytes` (invalid UTF-8 sequences become U+FFFD).

    Args:
        tokens: ``[n]`` integers in ``[0, 256)``.

    Raises:
        ValueError: if a token is outside ``[0, 256)``.

    Examples:
        >>> decode_bytes(encode_bytes("naïve ✓"))
        'naïve ✓'
    """
    tokens = np.asarray(tokens)
    if tokens.size and (tokens.min() < 0 or tokens.max() >= BYTE_VOCAB_SIZE):
        raise ValueError(
            f"tokens must lie in [0, {BYTE_VOCAB_SIZE}), got [{tokens.min()}, {tokens.max()}]"
        )
    return tokens.astype(np.uint8).tobytes().decode("utf-8", errors="replace")


@dataclasses.dataclass(frozen=True, eq=False)
class TextData:
    """A byte-token stream with a disjoint held-out tail.

    Attributes:
        train_tokens: ``[n]`` uint8 tokens (bytes).
        heldout_tokens: ``[m]`` uint8 tokens, the stream's last part.
        name: short name.
        source: where the text came from (files, bytes, SHA-256).
        vocab_size: 256 (bytes).
    """

    train_tokens: np.ndarray
    heldout_tokens: np.ndarray
    name: str
    source: str
    vocab_size: int = BYTE_VOCAB_SIZE

    kind = "text"

    def __post_init__(self):
        """Checks that both parts are 1-D byte arrays of at least 2 tokens."""
        for part in ("train", "heldout"):
            tokens = getattr(self, f"{part}_tokens")
            if tokens.ndim != 1 or tokens.dtype != np.uint8 or tokens.size < 2:
                raise ValueError(
                    f"{part}_tokens must be uint8 [n >= 2], got {tokens.dtype} {tokens.shape}"
                )

    def describe(self) -> dict[str, Any]:
        """JSON-ready description (name, source, sizes)."""
        return {
            "name": self.name,
            "kind": self.kind,
            "source": self.source,
            "train_tokens": int(self.train_tokens.size),
            "heldout_tokens": int(self.heldout_tokens.size),
            "vocab_size": self.vocab_size,
            "tokenizer": "bytes (UTF-8)",
        }

    def _require_seq_len(self, seq_len: int | None, tokens: np.ndarray, part: str) -> int:
        seq_len = require_int("seq_len", seq_len, 1)
        if tokens.size < seq_len + 1:
            raise ValueError(
                f"seq_len must be < the {tokens.size} {part} tokens, got {seq_len}; give a "
                "larger corpus or a shorter sequence"
            )
        return seq_len

    def train_arrays(
        self, seed: int, step: int, batch_size: int, seq_len: int | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Training batch ``step``: ``(tokens [batch, seq], next tokens [batch, seq])``.

        Windows of ``seq + 1`` tokens at offsets drawn uniformly with the seed
        ``(seed, step)``.
        """
        seq_len = self._require_seq_len(seq_len, self.train_tokens, "training")
        rng = np.random.default_rng([seed, step])
        starts = rng.integers(0, self.train_tokens.size - seq_len, batch_size)
        windows = self.train_tokens[starts[:, None] + np.arange(seq_len + 1)].astype(np.int32)
        return windows[:, :-1], windows[:, 1:]

    def heldout_arrays(
        self, seq_len: int | None = None, max_examples: int | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Consecutive non-overlapping held-out windows, at most ``max_examples``."""
        seq_len = self._require_seq_len(seq_len, self.heldout_tokens, "held-out")
        count = (self.heldout_tokens.size - 1) // seq_len
        if max_examples is not None:
            count = min(count, max_examples)
        starts = np.arange(count) * seq_len
        windows = self.heldout_tokens[starts[:, None] + np.arange(seq_len + 1)].astype(np.int32)
        return windows[:, :-1], windows[:, 1:]


def _split_text(stream: bytes, fraction: float, name: str, source: str) -> TextData:
    fraction = require_real(
        "heldout_fraction",
        fraction,
        low=0.0,
        high=1.0,
        low_inclusive=False,
        high_inclusive=False,
    )
    tokens = np.frombuffer(stream, np.uint8)
    cut = tokens.size - max(2, round(fraction * tokens.size))
    if cut < 2:
        raise ValueError(f"{source} holds {tokens.size} bytes of text; at least 4 are needed")
    digest = hashlib.sha256(stream).hexdigest()[:16]
    return TextData(
        tokens[:cut].copy(),
        tokens[cut:].copy(),
        name,
        f"{source} ({tokens.size} bytes, sha256 {digest}..., held-out last {fraction:g})",
    )


def _is_text(data: bytes) -> bool:
    if b"\x00" in data:
        return False
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _text_files(folder: Path) -> list[Path]:
    """Regular files under ``folder`` in sorted relative-path order, hidden ones left out."""
    files = []
    for path in folder.rglob("*"):
        parts = path.relative_to(folder).parts
        if any(part.startswith(".") for part in parts) or not path.is_file():
            continue
        files.append(path)
    return sorted(files, key=lambda p: p.relative_to(folder).as_posix())


def load_text(
    path: str | Path, *, heldout_fraction: float = 0.1, max_bytes: int | None = None
) -> TextData:
    """A byte-level corpus from a plain-text file or from every text file under a folder.

    A folder's files are read in sorted relative-path order (hidden files and folders
    left out) and joined with a newline; files that are not UTF-8 text (or hold a NUL
    byte) are skipped. The held-out part is the stream's last ``heldout_fraction``.

    Args:
        path: a file or a folder.
        heldout_fraction: share of the bytes held out, in ``(0, 1)``.
        max_bytes: stop reading files once this many bytes are collected (``None``: all).

    Returns:
        :class:`TextData`.

    Raises:
        ValueError: if ``path`` does not exist, holds no text, or is too short.
    """
    path = Path(path)
    if max_bytes is not None:
        max_bytes = require_int("max_bytes", max_bytes, 4)
    if path.is_file():
        data = path.read_bytes()
        if not _is_text(data):
            raise ValueError(f"{path} is not a UTF-8 text file")
        return _split_text(data[:max_bytes], heldout_fraction, path.name, str(path))
    if not path.is_dir():
        raise ValueError(f"text path must be a file or a folder, got {str(path)!r} (not found)")
    chunks, total, used = [], 0, 0
    for file in _text_files(path):
        data = file.read_bytes()
        if not _is_text(data):
            continue
        chunks.append(data)
        total += len(data) + 1
        used += 1
        if max_bytes is not None and total >= max_bytes:
            break
    if not chunks:
        raise ValueError(f"{path} holds no UTF-8 text file")
    stream = b"\n".join(chunks)[:max_bytes]
    return _split_text(stream, heldout_fraction, path.name, f"{path} ({used} files)")


def stdlib_text_corpus(
    *, max_bytes: int = DEFAULT_STDLIB_BYTES, heldout_fraction: float = 0.1
) -> TextData:
    """The offline text default: the Python standard library's ``.py`` sources (a stand-in).

    Every machine with Python has these files, so a language model trains on real text
    with no download; it is Python source, not natural language, and stands in for the
    paper's (unstated) corpus. The selection is deterministic for a given Python version:
    the ``.py`` files under ``sysconfig.get_paths()["stdlib"]`` in sorted relative-path
    order, without ``site-packages``, ``dist-packages``, test folders and ``__pycache__``,
    up to ``max_bytes``. The description records the Python version and a SHA-256.

    Args:
        max_bytes: bytes to collect.
        heldout_fraction: share held out (the last files), in ``(0, 1)``.

    Returns:
        :class:`TextData` named ``"python-stdlib"``.

    Raises:
        ValueError: if no source file is found (a Python installed without its sources).
    """
    max_bytes = require_int("max_bytes", max_bytes, 4)
    root = Path(sysconfig.get_paths()["stdlib"])
    found = []
    for folder, subfolders, names in os.walk(root):
        # Pruned in place: site-packages and the test suites are never walked.
        subfolders[:] = [
            name for name in subfolders if name not in _SKIPPED_FOLDERS and name[0] != "."
        ]
        found += [Path(folder) / name for name in names if name.endswith(".py")]
    files = sorted(found, key=lambda path: path.relative_to(root).as_posix())
    chunks, total = [], 0
    for file in files:
        try:
            data = file.read_bytes()
        except OSError:
            continue
        if not _is_text(data):
            continue
        chunks.append(data)
        total += len(data) + 1
        if total >= max_bytes:
            break
    if not chunks:
        raise ValueError(f"no Python source files found under {root}")
    version = ".".join(map(str, sys.version_info[:3]))
    return _split_text(
        b"\n".join(chunks)[:max_bytes],
        heldout_fraction,
        "python-stdlib",
        f"Python {version} standard library sources under {root} ({len(chunks)} .py files, "
        "a stand-in corpus)",
    )


# ----------------------------------------------------------------------------- batches


def _sharding(mesh: Mesh | None, axis_name: str, batch_size: int) -> Any:
    """Where a batch goes: split over ``axis_name`` of ``mesh``, or the default device."""
    if mesh is None:
        return jax.devices()[0]
    if axis_name not in mesh.axis_names:
        raise ValueError(
            f"axis_name must be an axis of the mesh {mesh.axis_names}, got {axis_name!r}"
        )
    servers = mesh.shape[axis_name]
    if batch_size % servers:
        raise ValueError(
            f"batch_size must be divisible by the {servers} servers of axis {axis_name!r}, got "
            f"{batch_size}"
        )
    return NamedSharding(mesh, PartitionSpec(axis_name))


def train_batches(
    data: ImageData | TextData,
    *,
    batch_size: int,
    seed: int,
    mesh: Mesh | None = None,
    axis_name: str = DATA_AXIS,
    seq_len: int | None = None,
    start_step: int = 0,
) -> Iterator[Batch]:
    """Endless training batches, deterministic by ``(seed, step)``, sharded over servers.

    Args:
        data: the data.
        batch_size: examples per step over all servers (divisible by the server count).
        seed: data seed.
        mesh: the servers' mesh (``None``: the default device, unsharded).
        axis_name: the mesh axis the batch is split over.
        seq_len: tokens per sequence (text only).
        start_step: index of the first batch (a resumed run continues the stream).

    Yields:
        :class:`Batch` number ``start_step``, ``start_step + 1``, ...; inputs
        ``[batch_size, ...]`` with a ``NamedSharding`` over ``axis_name``.

    Raises:
        ValueError: on a bad size, seed or mesh axis (at the first ``next``).

    Examples:
        >>> data = load_digits_data()
        >>> batch = next(train_batches(data, batch_size=8, seed=0))
        >>> batch.inputs.shape, batch.targets.dtype
        ((8, 8, 8, 1), dtype('int32'))
    """
    batch_size = require_int("batch_size", batch_size, 1)
    seed = require_int("seed", seed, 0)
    step = require_int("start_step", start_step, 0)
    sharding = _sharding(mesh, axis_name, batch_size)
    weights = np.ones(batch_size, np.float32)
    while True:
        inputs, targets = data.train_arrays(seed, step, batch_size, seq_len)
        yield Batch(*jax.device_put((inputs, targets, weights), sharding))
        step += 1


def heldout_batches(
    data: ImageData | TextData,
    *,
    batch_size: int,
    mesh: Mesh | None = None,
    axis_name: str = DATA_AXIS,
    seq_len: int | None = None,
    max_examples: int | None = None,
) -> Iterator[Batch]:
    """One pass over the held-out part, in order; the last batch padded with weight 0.

    Args:
        data: the data.
        batch_size: examples per batch (divisible by the server count).
        mesh: the servers' mesh (``None``: the default device).
        axis_name: the mesh axis the batch is split over.
        seq_len: tokens per sequence (text only); text is cut into consecutive windows.
        max_examples: evaluate at most this many examples (``None``: all).

    Yields:
        :class:`Batch` es whose weights sum to the number of held-out examples used.

    Raises:
        ValueError: on a bad size or mesh axis.

    Examples:
        >>> data = load_digits_data()
        >>> sum(float(b.weights.sum()) for b in heldout_batches(data, batch_size=256))
        359.0
    """
    batch_size = require_int("batch_size", batch_size, 1)
    if max_examples is not None:
        max_examples = require_int("max_examples", max_examples, 1)
    sharding = _sharding(mesh, axis_name, batch_size)
    inputs, targets = data.heldout_arrays(seq_len, max_examples)
    count = inputs.shape[0]
    for start in range(0, count, batch_size):
        x, y = inputs[start : start + batch_size], targets[start : start + batch_size]
        real = x.shape[0]
        weights = np.zeros(batch_size, np.float32)
        weights[:real] = 1.0
        if real < batch_size:  # pad with copies of the first example, weight 0
            fill = batch_size - real
            x = np.concatenate([x, np.repeat(x[:1], fill, axis=0)])
            y = np.concatenate([y, np.repeat(y[:1], fill, axis=0)])
        yield Batch(*jax.device_put((x, y, weights), sharding))
