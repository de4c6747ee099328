import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def tiny_corpus_config():
    from modeling_sigma.data.corpus import TinyShapesConfig

    return TinyShapesConfig(num_train=48, num_test=16, num_unseen=8, seed=3)


@pytest.fixture(scope="session")
def tiny_corpus(tiny_corpus_config):
    from modeling_sigma.data.corpus import generate_tiny_shapes

    return generate_tiny_shapes(tiny_corpus_config)


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny models run fastest on one thread (and several threads crawl on a loaded machine). Modules opt in
    with `pytestmark = pytest.mark.usefixtures("one_torch_thread")`."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
