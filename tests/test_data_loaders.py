import pickle

import jax
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from optinc_jax.network.data import (
    BYTE_VOCAB_SIZE,
    ImageData,
    TextData,
    decode_bytes,
    encode_bytes,
    heldout_batches,
    load_cifar100,
    load_digits_data,
    load_text,
    stdlib_text_corpus,
    train_batches,
)


@pytest.fixture(scope="module")
def mesh4():
    return Mesh(np.array(jax.devices()[:4]), ("data",))


@pytest.fixture(scope="module")
def digits():
    return load_digits_data()


def tiny_images(n_train=12, n_heldout=5, classes=12):
    """Images whose first pixel is their label: each example is identifiable."""
    rng = np.random.default_rng(0)
    train = rng.normal(size=(n_train, 4, 4, 1)).astype(np.float32)
    held = rng.normal(size=(n_heldout, 4, 4, 1)).astype(np.float32)
    train_labels = np.arange(n_train, dtype=np.int32) % classes
    train[:, 0, 0, 0] = np.arange(n_train)
    return ImageData(
        train, train_labels, held, np.zeros(n_heldout, np.int32), classes, "tiny", "test"
    )


# ---- images ------------------------------------------------------------------------


def test_digits_split_partitions_the_real_digits_and_depends_on_the_seed(digits):
    from sklearn.datasets import load_digits

    raw = load_digits()
    assert digits.train_images.shape == (1438, 8, 8, 1)
    assert digits.heldout_images.shape == (359, 8, 8, 1)
    assert digits.num_classes == 10
    # Standardisation is one increasing affine map for both parts, so it keeps the
    # lexicographic order of images: the union of the parts sorted must be the sorted
    # raw digits mapped by one affine map, with the same labels (a partition: disjoint).
    union = np.concatenate([digits.train_images, digits.heldout_images]).reshape(1797, 64)
    labels = np.concatenate([digits.train_labels, digits.heldout_labels])
    mine = np.lexsort(np.column_stack([labels, union]).T[::-1])
    theirs = np.lexsort(np.column_stack([raw.target, raw.data]).T[::-1])
    x, y = raw.data[theirs].ravel(), union[mine].ravel().astype(np.float64)
    slope, intercept = np.polyfit(x, y, 1)
    np.testing.assert_allclose(slope * x + intercept, y, atol=1e-4)
    np.testing.assert_array_equal(labels[mine], raw.target[theirs])
    # The training part is standardised; the same seed gives the same split.
    assert abs(float(digits.train_images.mean())) < 1e-5
    again = load_digits_data(seed=0)
    np.testing.assert_array_equal(again.heldout_labels, digits.heldout_labels)
    other = load_digits_data(seed=1)
    assert not np.array_equal(other.heldout_images, digits.heldout_images)


def test_train_batches_are_deterministic_by_seed_and_resume_mid_stream(digits):
    def first(seed, count=3, start=0):
        stream = train_batches(digits, batch_size=16, seed=seed, start_step=start)
        return [next(stream) for _ in range(count)]

    a, b, c = first(7), first(7), first(8)
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x.inputs, y.inputs)
        np.testing.assert_array_equal(x.targets, y.targets)
    assert not np.array_equal(a[0].inputs, c[0].inputs)
    resumed = first(7, count=1, start=2)[0]
    np.testing.assert_array_equal(resumed.inputs, a[2].inputs)
    assert a[0].inputs.dtype == np.float32 and a[0].targets.dtype == np.int32
    np.testing.assert_array_equal(a[0].weights, np.ones(16))


def test_every_epoch_is_a_permutation_of_the_training_set():
    data = tiny_images()
    stream = train_batches(data, batch_size=4, seed=3)
    epochs = []
    for _ in range(2):
        ids = np.concatenate([np.asarray(next(stream).inputs)[:, 0, 0, 0] for _ in range(3)])
        assert sorted(ids.astype(int).tolist()) == list(range(12))
        epochs.append(ids)
    assert not np.array_equal(epochs[0], epochs[1])
    # A batch that straddles two epochs takes the end of one and the start of the next.
    straddle = train_batches(data, batch_size=5, seed=3)
    ids = np.concatenate([np.asarray(next(straddle).inputs)[:, 0, 0, 0] for _ in range(3)])
    assert sorted(ids[:12].astype(int).tolist()) == list(range(12))


def test_batches_are_sharded_over_the_data_axis(digits, mesh4):
    batch = next(train_batches(digits, batch_size=16, seed=0, mesh=mesh4))
    assert batch.inputs.shape == (16, 8, 8, 1)
    for array in batch:
        assert array.sharding == NamedSharding(mesh4, P("data"))
        shards = array.addressable_shards
        assert len(shards) == 4 and all(s.data.shape[0] == 4 for s in shards)
    with pytest.raises(ValueError, match="batch_size must be divisible by the 4 servers"):
        next(train_batches(digits, batch_size=6, seed=0, mesh=mesh4))
    with pytest.raises(ValueError, match="axis_name must be an axis"):
        next(train_batches(digits, batch_size=8, seed=0, mesh=mesh4, axis_name="model"))


def test_heldout_batches_visit_every_heldout_example_once(digits, mesh4):
    batches = list(heldout_batches(digits, batch_size=128, mesh=mesh4))
    assert len(batches) == 3
    weights = np.concatenate([np.asarray(b.weights) for b in batches])
    assert weights.sum() == 359 and np.all(weights[:359] == 1) and np.all(weights[359:] == 0)
    labels = np.concatenate([np.asarray(b.targets) for b in batches])[:359]
    np.testing.assert_array_equal(labels, digits.heldout_labels)
    capped = list(heldout_batches(digits, batch_size=128, mesh=mesh4, max_examples=100))
    assert sum(float(b.weights.sum()) for b in capped) == 100


def test_image_data_refuses_inconsistent_arrays():
    data = tiny_images()
    with pytest.raises(ValueError, match="train_labels must lie in"):
        ImageData(data.train_images, data.train_labels + 20, data.heldout_images,
                  data.heldout_labels, 12, "x", "y")  # fmt: skip
    with pytest.raises(ValueError, match="heldout_images must be"):
        ImageData(data.train_images, data.train_labels, data.heldout_images[0],
                  data.heldout_labels, 12, "x", "y")  # fmt: skip


# ---- CIFAR-100 ---------------------------------------------------------------------


def write_fake_cifar(folder, n_train=5, n_test=3, protocol=2):
    """The python-format layout of cifar-100-python, tiny: bytes keys, uint8 rows."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(1)
    for name, count in (("train", n_train), ("test", n_test)):
        data = rng.integers(0, 100, size=(count, 3072), dtype=np.uint8)
        data[:, 1 * 32 + 2] = 255  # red channel, row 1, column 2: the brightest value
        part = {
            b"filenames": [f"{i}.png".encode() for i in range(count)],
            b"batch_label": name.encode(),
            b"fine_labels": [int(i) % 100 for i in range(count)],
            b"coarse_labels": [int(i) % 20 for i in range(count)],
            b"data": data,
        }
        (folder / name).write_bytes(pickle.dumps(part, protocol=protocol))
    meta = {
        b"fine_label_names": [f"class{i}".encode() for i in range(100)],
        b"coarse_label_names": [f"super{i}".encode() for i in range(20)],
    }
    (folder / "meta").write_bytes(pickle.dumps(meta, protocol=protocol))
    return folder


@pytest.mark.parametrize("protocol", [2, 5])
def test_cifar100_loads_from_the_folder_or_its_parent(tmp_path, protocol):
    folder = write_fake_cifar(tmp_path / "cifar-100-python", protocol=protocol)
    for path in (folder, tmp_path):
        data = load_cifar100(path)
        assert data.train_images.shape == (5, 32, 32, 3)
        assert data.heldout_images.shape == (3, 32, 32, 3)
        assert data.num_classes == 100 and data.augment
        np.testing.assert_array_equal(data.train_labels, [0, 1, 2, 3, 4])
        # NCHW rows become NHWC: the marked red pixel is at (1, 2) of channel 0.
        red = data.train_images[0, :, :, 0]
        assert np.unravel_index(np.argmax(red), red.shape) == (1, 2)
    coarse = load_cifar100(folder, label="coarse")
    assert coarse.num_classes == 20
    batch = next(train_batches(data, batch_size=4, seed=0))  # crop and flip
    assert batch.inputs.shape == (4, 32, 32, 3)


def test_missing_cifar_files_name_what_to_put_where(tmp_path):
    with pytest.raises(ValueError, match=r"put the python-format files train, test, meta"):
        load_cifar100(tmp_path / "nowhere")
    folder = write_fake_cifar(tmp_path / "cifar-100-python")
    (folder / "test").unlink()
    with pytest.raises(ValueError, match=r"missing: test\)") as error:
        load_cifar100(folder)
    assert str(folder) in str(error.value) and "\n" not in str(error.value)


def test_corrupt_or_foreign_cifar_files_are_refused_with_the_file_named(tmp_path):
    folder = write_fake_cifar(tmp_path / "cifar-100-python")
    (folder / "train").write_bytes(b"not a pickle at all")
    with pytest.raises(ValueError, match=r"train is not a CIFAR-100 python-format pickle"):
        load_cifar100(folder)

    class Payload:  # a pickle that would run code when loaded
        def __reduce__(self):
            return (exec, ("raise SystemExit('executed')",))

    (folder / "train").write_bytes(pickle.dumps({b"data": Payload()}))
    with pytest.raises(ValueError, match=r"refusing to load builtins\.exec"):
        load_cifar100(folder)
    write_fake_cifar(tmp_path / "wrong")
    bad = {b"data": np.zeros((2, 100), np.uint8), b"fine_labels": [0, 1]}
    (tmp_path / "wrong" / "test").write_bytes(pickle.dumps(bad))
    with pytest.raises(ValueError, match=r"'data' must be uint8 \[n, 3072\]"):
        load_cifar100(tmp_path / "wrong")


# ---- text --------------------------------------------------------------------------


@given(st.text())
def test_byte_tokenizer_round_trips(text):
    tokens = encode_bytes(text)
    assert tokens.dtype == np.int32
    assert tokens.size == 0 or (tokens.min() >= 0 and tokens.max() < BYTE_VOCAB_SIZE)
    assert decode_bytes(tokens) == text


def test_byte_tokenizer_refuses_out_of_range_tokens():
    with pytest.raises(ValueError, match=r"tokens must lie in \[0, 256\)"):
        decode_bytes([65, 256])


def test_text_folder_reads_text_files_in_order_and_splits_the_tail(tmp_path):
    (tmp_path / "b").mkdir()
    (tmp_path / "a.txt").write_text("alpha " * 50)
    (tmp_path / "b" / "c.md").write_text("gamma " * 50)
    (tmp_path / "binary.bin").write_bytes(b"\x00\x01\x02" * 40)
    (tmp_path / ".hidden").write_text("secret " * 50)
    data = load_text(tmp_path, heldout_fraction=0.25)
    stream = ("alpha " * 50 + "\n" + "gamma " * 50).encode()
    joined = np.concatenate([data.train_tokens, data.heldout_tokens]).tobytes()
    assert joined == stream  # binary and hidden files skipped; nothing overlaps
    assert data.heldout_tokens.size == round(0.25 * len(stream))
    assert "(2 files)" in data.source
    single = load_text(tmp_path / "a.txt")
    assert decode_bytes(single.train_tokens).startswith("alpha alpha")
    with pytest.raises(ValueError, match="not found"):
        load_text(tmp_path / "missing.txt")
    with pytest.raises(ValueError, match="is not a UTF-8 text file"):
        load_text(tmp_path / "binary.bin")


def test_text_batches_are_shifted_windows_deterministic_by_seed(mesh4):
    data = TextData(
        np.frombuffer(bytes(range(200)), np.uint8), np.frombuffer(bytes(50), np.uint8), "t", "t"
    )
    a = next(train_batches(data, batch_size=8, seed=1, seq_len=16, mesh=mesh4))
    b = next(train_batches(data, batch_size=8, seed=1, seq_len=16, mesh=mesh4))
    c = next(train_batches(data, batch_size=8, seed=2, seq_len=16, mesh=mesh4))
    assert a.inputs.shape == a.targets.shape == (8, 16) and a.inputs.dtype == np.int32
    np.testing.assert_array_equal(a.inputs, b.inputs)
    assert not np.array_equal(a.inputs, c.inputs)
    np.testing.assert_array_equal(np.asarray(a.targets), np.asarray(a.inputs) + 1)
    assert a.inputs.sharding == NamedSharding(mesh4, P("data"))
    held = list(heldout_batches(data, batch_size=4, seq_len=16, mesh=mesh4))
    assert sum(float(b.weights.sum()) for b in held) == 3  # (50 - 1) // 16 windows
    with pytest.raises(ValueError, match="seq_len must be < the 50 held-out tokens"):
        next(heldout_batches(data, batch_size=4, seq_len=60))


def test_stdlib_corpus_is_a_deterministic_text_stand_in():
    first = stdlib_text_corpus(max_bytes=1 << 16)
    second = stdlib_text_corpus(max_bytes=1 << 16)
    assert first.train_tokens.size + first.heldout_tokens.size == 1 << 16
    np.testing.assert_array_equal(first.train_tokens, second.train_tokens)
    assert first.source == second.source and "stand-in" in first.source
    text = decode_bytes(first.train_tokens)
    assert "def " in text or "import " in text
