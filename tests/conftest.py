import os

import numpy as np
import pytest

# Keep generated caches inside the test session, never in the user's cache dir.
os.environ.setdefault("PRUNUS_CACHE_DIR", os.path.join(os.path.dirname(__file__), ".cache"))


@pytest.fixture
def blobs():
    """A tiny 3-class dataset of Gaussian blobs in 8 dimensions (train 240, test 60)."""
    from prunus.datasets import Dataset

    rng = np.random.default_rng(0)
    centers = rng.normal(0, 3, size=(3, 8))

    def draw(n, offset):
        y = np.arange(n) % 3
        x = centers[y] + rng.normal(0, 1, size=(n, 8))
        return Dataset("blobs", np.arange(n) + offset, x.astype(np.float32), y, 3)

    test = draw(60, 10_000)
    train = draw(240, 0)
    train.test = test
    return train


def pytest_configure(config):
    # Tiny models run fastest single-threaded, and one thread per test process avoids
    # oversubscribing small machines (two threads per process on a busy 2-core box is ~5x slower).
    import torch

    torch.set_num_threads(1)
