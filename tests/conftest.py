import os

# Nothing in the test suite may reach a hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import numpy as np
import pytest
import torch
from PIL import Image

torch.set_num_threads(2)


@pytest.fixture(scope="session")
def rand_image():
    return Image.fromarray((np.random.RandomState(0).rand(48, 64, 3) * 255).astype("uint8"))


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models: two threads on a shared machine mostly wait for each other (a module asks for it with
    ``pytestmark = pytest.mark.usefixtures("one_thread")``)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
