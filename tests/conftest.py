"""Test-wide set-up. Without CUDA, Triton kernels run in the interpreter, which must be selected
before triton is first imported. The independent nets' cache of the whole session lives in a
temporary directory ($L2BG_CACHE_DIR): the Python API and the command line use it by default, and
a test must never read or fill the user's own cache."""

import os
import tempfile
from pathlib import Path

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

_SESSION_CACHE = tempfile.TemporaryDirectory(prefix="l2bg-test-cache-")
os.environ["L2BG_CACHE_DIR"] = _SESSION_CACHE.name  # subprocesses of tests inherit it

SHARED = Path(__file__).resolve().parents[2] / "shared"


@pytest.fixture(scope="session", autouse=True)
def private_cache_dir(tmp_path_factory) -> Path:
    """Tests never read or write the user's cache: $L2BG_CACHE_DIR (the cache of every run,
    search and Learner that names none, and of the subprocesses tests start) is a fresh
    directory of the session."""
    root = tmp_path_factory.mktemp("l2bg-cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("L2BG_CACHE_DIR", str(root))
        yield root
MNIST_DIR = SHARED / "data" / "mnist"


@pytest.fixture(scope="session")
def mnist_dir() -> Path:
    if not (MNIST_DIR / "t10k-images-idx3-ubyte.gz").exists():
        pytest.skip(f"real MNIST test set not found at {MNIST_DIR}")
    return MNIST_DIR


def write_idx(path, array) -> None:
    """An uncompressed IDX file (the MNIST format) of uint8 ``array``."""
    import struct

    import numpy as np

    arr = np.ascontiguousarray(array, dtype=np.uint8)
    header = struct.pack(">BBBB", 0, 0, 8, arr.ndim) + b"".join(
        struct.pack(">I", d) for d in arr.shape)
    Path(path).write_bytes(header + arr.tobytes())


def write_tiny_mnist(root, n: int = 200, size: int = 4, seed: int = 0) -> Path:
    """An MNIST root with only a t10k pair of ``n`` random ``size`` x ``size`` digits (every
    class present): split 70/15/15, it makes tasks that train in milliseconds."""
    import numpy as np

    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 10
    images = rng.integers(0, 256, size=(n, size, size))
    images[:, 0, 0] = labels * 25  # a little signal, so accuracies are not all chance
    write_idx(root / "t10k-images-idx3-ubyte", images)
    write_idx(root / "t10k-labels-idx1-ubyte", labels)
    return root


@pytest.fixture(scope="session")
def tiny_mnist(tmp_path_factory) -> Path:
    return write_tiny_mnist(tmp_path_factory.mktemp("tiny-mnist"))


def wait_for(pred, timeout, what):
    """Poll ``pred`` every 0.2 s until it is true, else fail after ``timeout`` seconds."""
    import time

    end = time.time() + timeout
    while time.time() < end:
        if pred():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def one_line(capsys, *needles: str) -> str:
    """The CLI's stderr: one ``l2bg: error:`` line holding every needle."""
    err = capsys.readouterr().err.strip()
    assert err.startswith("l2bg: error:") and "\n" not in err, err
    for n in needles:
        assert n in err, (n, err)
    return err


@pytest.fixture
def no_training(monkeypatch):
    """Any training fails the test: input is checked before any work."""
    def fail(*a, **k):
        raise AssertionError("trained before the input was checked")
    import l2bg.learn.independent  # noqa: F401 - imported before fit is patched (it binds fit)
    import l2bg.learn.step  # noqa: F401
    for where in ("l2bg.learn.training", "l2bg.learn.independent", "l2bg.learn.step"):
        monkeypatch.setattr(f"{where}.fit", fail, raising=False)

