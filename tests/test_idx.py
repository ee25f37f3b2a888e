"""idx reader and MNIST loader: raw and gzip, every type code, bad files, MD5 verification."""

from __future__ import annotations

import gzip
import hashlib
import struct
from pathlib import Path

import numpy as np
import pytest

from onnx_dns.errors import DataError
from onnx_dns.idx import load_mnist_split, parse_idx, read_idx

MNIST_DIR = Path(__file__).resolve().parents[1] / "models" / "data" / "mnist"

TYPE_CODES = {np.dtype(np.uint8): 0x08, np.dtype(np.int8): 0x09, np.dtype(">i2"): 0x0B, np.dtype(">i4"): 0x0C,
              np.dtype(">f4"): 0x0D, np.dtype(">f8"): 0x0E}


def idx_bytes(array: np.ndarray, dtype=None) -> bytes:
    """Encode `array` in the idx format (from the format's description, not from the reader)."""
    dtype = np.dtype(dtype or array.dtype)
    header = bytes([0, 0, TYPE_CODES[dtype], array.ndim]) + b"".join(struct.pack(">I", n) for n in array.shape)
    return header + array.astype(dtype).tobytes()


def write(path: Path, data: bytes, compress: bool = False) -> Path:
    path.write_bytes(gzip.compress(data) if compress else data)
    return path


@pytest.mark.parametrize("compress", [False, True], ids=["raw", "gz"])
def test_reads_raw_and_gzip_files(tmp_path, compress):
    images = np.random.default_rng(0).integers(0, 256, (7, 28, 28)).astype(np.uint8)
    path = write(tmp_path / ("x.gz" if compress else "x"), idx_bytes(images), compress)
    got = read_idx(path)
    assert got.dtype == np.uint8 and got.shape == (7, 28, 28)
    np.testing.assert_array_equal(got, images)


@pytest.mark.parametrize("dtype", [np.int8, ">i2", ">i4", ">f4", ">f8"])
def test_every_type_code_decodes_to_native_values(tmp_path, dtype):
    values = (np.arange(24).reshape(2, 3, 4) - 12) * 3
    path = write(tmp_path / "v", idx_bytes(values, dtype))
    got = read_idx(path)
    assert got.shape == (2, 3, 4)
    assert got.dtype.isnative
    assert got.dtype.kind == np.dtype(dtype).kind and got.dtype.itemsize == np.dtype(dtype).itemsize
    np.testing.assert_array_equal(got, values)


def test_one_dimensional_labels(tmp_path):
    labels = np.array([5, 0, 4, 1, 9], dtype=np.uint8)
    np.testing.assert_array_equal(read_idx(write(tmp_path / "l", idx_bytes(labels))), labels)


@pytest.mark.parametrize("data", [
    b"\x00\x01\x08\x01\x00\x00\x00\x01\x07",  # second byte not zero
    b"\x00\x00\x07\x01\x00\x00\x00\x01\x07",  # unknown type code
    b"PK\x03\x04 not an idx file at all",
    b"\x00\x00",
], ids=["nonzero", "type", "zip", "short"])
def test_bad_magic_is_a_data_error(tmp_path, data):
    with pytest.raises(DataError, match="magic"):
        read_idx(write(tmp_path / "bad", data))


def test_truncated_payload_is_a_data_error(tmp_path):
    data = idx_bytes(np.zeros((4, 28, 28), np.uint8))
    with pytest.raises(DataError, match="payload"):
        read_idx(write(tmp_path / "t", data[:-100]))
    with pytest.raises(DataError, match="payload"):
        read_idx(write(tmp_path / "t.gz", data[:-1], compress=True))


def test_trailing_bytes_are_a_data_error(tmp_path):
    data = idx_bytes(np.zeros((3,), np.uint8)) + b"\x00"
    with pytest.raises(DataError):
        read_idx(write(tmp_path / "t", data))


def test_truncated_header_is_a_data_error(tmp_path):
    data = idx_bytes(np.zeros((4, 28, 28), np.uint8))[:10]
    with pytest.raises(DataError, match="header"):
        read_idx(write(tmp_path / "h", data))


def test_damaged_gzip_is_a_data_error(tmp_path):
    packed = bytearray(gzip.compress(idx_bytes(np.arange(200, dtype=np.uint8))))
    cut = write(tmp_path / "cut.gz", bytes(packed[: len(packed) // 2]))
    with pytest.raises(DataError):
        read_idx(cut)
    packed[10:16] = b"\xff" * 6  # corrupt the deflate stream itself
    with pytest.raises(DataError):
        read_idx(write(tmp_path / "bad.gz", bytes(packed)))


def test_missing_file_is_a_data_error(tmp_path):
    with pytest.raises(DataError):
        read_idx(tmp_path / "nope")


def test_parse_idx_of_bytes():
    values = np.array([[1, 2], [3, 4]], dtype=np.uint8)
    np.testing.assert_array_equal(parse_idx(idx_bytes(values)), values)


# ---------------------------------------------------------------- MNIST folders


def fake_mnist(folder: Path, n_images: int = 5, n_labels: int = 5, compress: bool = False) -> Path:
    folder.mkdir(exist_ok=True)
    rng = np.random.default_rng(0)
    suffix = ".gz" if compress else ""
    write(folder / f"t10k-images-idx3-ubyte{suffix}",
          idx_bytes(rng.integers(0, 256, (n_images, 28, 28)).astype(np.uint8)), compress)
    write(folder / f"t10k-labels-idx1-ubyte{suffix}", idx_bytes(rng.integers(0, 10, n_labels).astype(np.uint8)),
          compress)
    return folder


@pytest.mark.parametrize("compress", [False, True], ids=["raw", "gz"])
def test_fake_folder_loads_without_verify_and_fails_md5_with_verify(tmp_path, compress):
    folder = fake_mnist(tmp_path / "mnist", compress=compress)
    images, labels = load_mnist_split(folder, "t10k")
    assert images.shape == (5, 28, 28) and labels.shape == (5,)
    with pytest.raises(DataError, match="MD5"):
        load_mnist_split(folder, "t10k", verify=True)


def test_missing_split_file_is_a_data_error(tmp_path):
    folder = fake_mnist(tmp_path / "mnist")
    (folder / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(DataError, match="t10k-labels-idx1-ubyte"):
        load_mnist_split(folder, "t10k")
    with pytest.raises(DataError):
        load_mnist_split(folder, "train")


def test_image_and_label_counts_must_agree(tmp_path):
    folder = fake_mnist(tmp_path / "mnist", n_images=5, n_labels=4)
    with pytest.raises(DataError, match="5"):
        load_mnist_split(folder, "t10k")


def _md5_of_gz(path: Path) -> str:
    return hashlib.md5(gzip.decompress(path.read_bytes())).hexdigest()


def test_bundled_mnist_test_split_passes_verify():
    images, labels = load_mnist_split(MNIST_DIR, "t10k", verify=True)
    assert images.shape == (10000, 28, 28) and images.dtype == np.uint8
    assert labels.shape == (10000,) and labels.dtype == np.uint8
    assert set(np.unique(labels)) == set(range(10))
    assert images.max() == 255 and images.min() == 0
    # the documented MD5s of the original release (models/data/mnist/README.md)
    readme = (MNIST_DIR / "README.md").read_text()
    for stem in ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        assert f"{stem} {_md5_of_gz(MNIST_DIR / (stem + '.gz'))}" in readme


def test_bundled_mnist_train_split_passes_verify():
    images, labels = load_mnist_split(MNIST_DIR, "train", verify=True)
    assert images.shape == (60000, 28, 28) and labels.shape == (60000,)
    assert np.bincount(labels, minlength=10).min() > 5000  # every digit is well represented


def test_bundled_mnist_with_one_byte_changed_fails_verify(tmp_path):
    folder = tmp_path / "mnist"
    folder.mkdir()
    labels = bytearray(gzip.decompress((MNIST_DIR / "t10k-labels-idx1-ubyte.gz").read_bytes()))
    labels[100] = (labels[100] + 1) % 10  # still a valid idx file, one label different
    (folder / "t10k-labels-idx1-ubyte").write_bytes(bytes(labels))
    (folder / "t10k-images-idx3-ubyte.gz").write_bytes((MNIST_DIR / "t10k-images-idx3-ubyte.gz").read_bytes())
    assert load_mnist_split(folder, "t10k")[1].shape == (10000,)
    with pytest.raises(DataError, match="MD5"):
        load_mnist_split(folder, "t10k", verify=True)
