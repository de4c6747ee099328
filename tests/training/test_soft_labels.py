"""Stage-3 soft labels at real sizes: the reranker's bare-float reply, its device, chunked decoding, the cache."""

import threading
import time

import datasets
import numpy as np
import pytest
import torch
from PIL import Image

from modeling_sigma.training import soft_labels
from modeling_sigma.training.soft_labels import (
    SigmaRerankerTeacher,
    SigmaSoftLabelTeacher,
    add_soft_labels,
    pair_chunks,
    soft_label_scores,
)


class FakeJinaRerankerM0(torch.nn.Module):
    """Mimics jina-reranker-m0's `compute_score`: a list of floats, but a bare float for a single pair."""

    def __init__(self):
        super().__init__()
        self.calls, self.devices = [], []

    def to(self, device):
        self.devices.append(device)
        return self

    def compute_score(self, pairs, max_length=1024, doc_type="text"):
        assert doc_type == "image" and all(isinstance(image, Image.Image) for _, image in pairs)
        self.calls.append(len(pairs))
        scores = [image.getpixel((0, 0))[0] / 255 for _, image in pairs]
        return scores[0] if len(scores) == 1 else scores


def corpus(num_images=3, captions_per_image=5):
    return datasets.Dataset.from_dict(
        {
            "image": [Image.new("RGB", (50, 37), (40 * i, 0, 0)) for i in range(num_images)],
            "image_id": [str(i) for i in range(num_images)],
            "captions": [[f"c{i}-{j}" for j in range(captions_per_image)] for i in range(num_images)],
        },
        features=datasets.Features(
            {
                "image": datasets.Image(),
                "image_id": datasets.Value("string"),
                "captions": [datasets.Value("string")],
            }
        ),
    )


@pytest.fixture
def reranker(monkeypatch):
    import transformers

    fake = FakeJinaRerankerM0()
    monkeypatch.setattr(transformers.AutoModel, "from_pretrained", lambda *a, **k: fake)
    return SigmaRerankerTeacher("jinaai/jina-reranker-m0", batch_size=2, device="cuda:1"), fake


def test_reranker_moves_to_the_device_and_accepts_a_bare_float_for_one_pair(reranker):
    teacher, fake = reranker
    assert fake.devices == ["cuda:1"]  # `.to(device)`; the default is "cuda" on a GPU machine
    scores = teacher.score_split(corpus(), chunk_size=15)  # 15 pairs in batches of 2: the last holds one
    assert fake.calls == [2] * 7 + [1]
    assert scores.tolist() == pytest.approx([v / 255 for v in [0] * 5 + [40] * 5 + [80] * 5])


def test_pairs_are_decoded_one_chunk_at_a_time():
    dataset = corpus(num_images=6)
    chunks = list(pair_chunks(dataset, chunk_size=4))
    assert [len(images) for images, _ in chunks] == [4] * 7 + [2]
    images, captions = chunks[1]  # pairs 4..7: image 0 once, image 1 three times
    assert captions == ["c0-4", "c1-0", "c1-1", "c1-2"] and images[1] is images[3]


class CountingTeacher(SigmaSoftLabelTeacher):
    name = "counting-teacher"

    def __init__(self):
        self.pairs = 0

    def score(self, images, captions):
        self.pairs += len(captions)
        return np.linspace(0, 1, len(captions), dtype=np.float32)


def test_scores_are_computed_once_and_read_from_the_cache(tmp_path, monkeypatch):
    dataset, teacher = corpus(), CountingTeacher()
    first = soft_label_scores(dataset, teacher, cache_dir=tmp_path)
    assert teacher.pairs == 15 and len(list((tmp_path / "soft-labels").glob("*.npy"))) == 1
    monkeypatch.setattr(soft_labels, "load_teacher", lambda name: pytest.fail("the teacher was loaded again"))
    again = soft_label_scores(dataset, "counting-teacher", cache_dir=tmp_path)  # another rank: reads the file
    np.testing.assert_array_equal(first, again)
    labelled = add_soft_labels(dataset, "counting-teacher", cache_dir=tmp_path)
    assert [len(row) for row in labelled["soft_labels"]] == [5, 5, 5]


def test_a_wrong_number_of_scores_is_an_error():
    class Short(CountingTeacher):
        def score_split(self, dataset, chunk_size=256):
            return np.zeros(3, np.float32)

    with pytest.raises(ValueError, match="3 scores for 15 pairs"):
        add_soft_labels(corpus(), Short())


def test_other_ranks_wait_for_the_main_process_file(tmp_path, monkeypatch):
    dataset = corpus()
    path = soft_labels.soft_label_path(tmp_path, "counting-teacher", dataset)
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setattr(
        soft_labels, "load_teacher", lambda name: pytest.fail("a non-main rank loaded the teacher")
    )

    def main_process_writes():
        time.sleep(0.3)
        # as `_write_scores` writes: whole or not at all (a plain np.save to the path could be read half-written,
        # which made this test fail now and then)
        with soft_labels.atomic_file(path) as stream:
            np.save(stream, np.full(15, 0.5, np.float32))

    writer = threading.Thread(target=main_process_writes)
    writer.start()
    scores = soft_label_scores(dataset, "counting-teacher", cache_dir=tmp_path, poll_seconds=0.05)
    writer.join()
    assert scores.tolist() == [0.5] * 15
    assert (
        soft_labels.soft_label_path(tmp_path, "counting-teacher", corpus()) == path
    )  # same key on every rank
