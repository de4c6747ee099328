import os
import sys

import numpy as np
import pytest

from modeling_sigma.identifiers.encoders import SigmaDualEncoder, encode_split, l2_normalise, load_encoder
from modeling_sigma.identifiers.tiny_clip import TinyClipConfig, get_tiny_clip, train_tokenizer

SMALL = TinyClipConfig(hidden_size=32, projection_dim=16, num_layers=1, epochs=1, batch_size=16)


@pytest.fixture(scope="module")
def tiny_clip_dir(tmp_path_factory, tiny_corpus_config):
    cache = tmp_path_factory.mktemp("cache")
    return get_tiny_clip(cache, tiny_corpus_config, SMALL, progress=False)


def test_tiny_clip_is_a_saved_clip_checkpoint(tiny_clip_dir):
    for name in ("config.json", "model.safetensors", "tokenizer.json", "preprocessor_config.json"):
        assert os.path.isfile(os.path.join(tiny_clip_dir, name))
    assert not [p for p in os.listdir(os.path.dirname(tiny_clip_dir)) if p.startswith(".tiny-clip-")]


def test_features_are_normalised_float32(tiny_clip_dir, tiny_corpus):
    encoder = load_encoder(tiny_clip_dir)
    images = encoder.encode_images(tiny_corpus["test"]["image"][:5], batch_size=2)
    texts = encoder.encode_texts(["a red circle", "two shapes on a gray background", "unknownword"])
    for features in (images, texts):
        assert features.dtype == np.float32 and features.shape[1] == SMALL.projection_dim
        np.testing.assert_allclose(np.linalg.norm(features, axis=1), 1.0, rtol=1e-5)
    # batching does not change the result
    np.testing.assert_allclose(
        images, encoder.encode_images(tiny_corpus["test"]["image"][:5], batch_size=5), atol=1e-5
    )


def test_odd_image_modes_are_encoded(tiny_clip_dir):
    from PIL import Image

    encoder = load_encoder(tiny_clip_dir)
    images = [Image.new(mode, (30, 90)) for mode in ("L", "RGBA", "P")]
    assert encoder.encode_images(images).shape == (3, SMALL.projection_dim)


def test_feature_cache_is_keyed_and_atomic(tiny_clip_dir, tiny_corpus, tmp_path):
    encoder = load_encoder(tiny_clip_dir)
    first = encode_split(encoder, tiny_corpus["test"], "tiny-shapes", "test", tmp_path, progress=False)
    captions = encode_split(encoder, tiny_corpus["test"], "tiny-shapes", "test", tmp_path, kind="captions")
    assert captions.shape[0] == 5 * first.shape[0]
    files = sorted(os.listdir(tmp_path))
    assert len(files) == 2 and all(f.endswith(".npy") for f in files)
    encoder.encode_images = None  # a second call must come from the cache
    np.testing.assert_array_equal(
        first, encode_split(encoder, tiny_corpus["test"], "tiny-shapes", "test", tmp_path)
    )
    with pytest.raises(ValueError, match="kind"):
        encode_split(encoder, tiny_corpus["test"], "tiny-shapes", "test", tmp_path, kind="videos")
    image_cache = next(tmp_path / name for name in files if "-images-" in name)
    np.save(image_cache, np.array([{"a pickled": "object"}], dtype=object), allow_pickle=True)
    with pytest.raises(ValueError, match="allow_pickle=False"):  # a cache is never unpickled
        encode_split(encoder, tiny_corpus["test"], "tiny-shapes", "test", tmp_path)


def test_interrupted_cache_write_leaves_nothing(tiny_clip_dir, tiny_corpus, tmp_path, monkeypatch):
    encoder = load_encoder(tiny_clip_dir)
    monkeypatch.setattr(np, "save", lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt()))
    with pytest.raises(KeyboardInterrupt):
        encode_split(encoder, tiny_corpus["test"], "tiny-shapes", "test", tmp_path, progress=False)
    assert os.listdir(tmp_path) == []


def test_siglip_checkpoint_loads_through_the_same_path(tmp_path, tiny_corpus):
    from transformers import SiglipConfig, SiglipImageProcessorPil, SiglipModel

    tokenizer = train_tokenizer(["a red circle", "a blue square"])
    config = SiglipConfig(
        text_config=dict(
            vocab_size=len(tokenizer),
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=1,
            num_attention_heads=2,
            max_position_embeddings=64,
        ),
        vision_config=dict(
            image_size=32,
            patch_size=8,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=1,
            num_attention_heads=2,
        ),
    )
    SiglipModel(config).save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    SiglipImageProcessorPil(size={"height": 32, "width": 32}).save_pretrained(tmp_path)
    encoder = SigmaDualEncoder(str(tmp_path))
    assert encoder.padding == "max_length"
    assert encoder.encode_texts(["a red circle"]).shape == (1, 32)
    assert encoder.encode_images(tiny_corpus["test"]["image"][:2]).shape == (2, 32)


def test_l2_normalise_keeps_zero_rows():
    out = l2_normalise(np.array([[3.0, 4.0], [0.0, 0.0]]))
    np.testing.assert_allclose(out, [[0.6, 0.8], [0.0, 0.0]])


def _landscape_corpus(folder, num_images: int, seed: int):
    import importlib.util

    from sigma_testing_utils import REPO_ROOT

    from modeling_sigma.data.user_corpus import prepare_corpus

    spec = importlib.util.spec_from_file_location("landscapes", REPO_ROOT / "examples" / "landscapes.py")
    landscapes = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("landscapes", landscapes)  # its dataclasses look their module up
    spec.loader.exec_module(sys.modules["landscapes"])
    landscapes = sys.modules["landscapes"]
    source = landscapes.generate_landscapes(folder / "source", num_images=num_images, seed=seed)
    prepare_corpus(str(source), folder / "corpus", num_test=4, num_unseen=2)
    return str(folder / "corpus")


def test_tiny_clip_is_trained_on_the_corpus_it_encodes_and_keyed_by_it(tmp_path, tiny_corpus_config):
    cache = tmp_path / "cache"
    first = _landscape_corpus(tmp_path / "a", 24, seed=0)
    path = get_tiny_clip(cache, config=SMALL, progress=False, corpus=first)
    weights = os.path.join(path, "model.safetensors")
    stamp = os.stat(weights).st_mtime_ns
    assert get_tiny_clip(cache, config=SMALL, progress=False, corpus=first) == path  # reused, not retrained
    assert os.stat(weights).st_mtime_ns == stamp
    changed = _landscape_corpus(tmp_path / "b", 24, seed=1)
    assert get_tiny_clip(cache, config=SMALL, progress=False, corpus=changed) != path
    shapes = get_tiny_clip(cache, tiny_corpus_config, SMALL, progress=False)
    assert shapes != path
    encoder = load_encoder("tiny-clip", cache_dir=cache, corpus=first, config=SMALL, progress=False)
    assert encoder.name == path
    vocabulary = encoder.tokenizer.get_vocab()  # the words of this corpus, not TinyShapes'
    assert "mountain" in vocabulary and "triangle" not in vocabulary
