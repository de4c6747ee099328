"""model_card.md is a Hub model card: its front matter parses with the metadata intact, its sections are there,
and its measured block is the one `make bench` wrote from results/benchmarks.json."""

import json
import os
import re

import pytest
from huggingface_hub import ModelCard, ModelCardData
from huggingface_hub.utils import validate_repo_id
from sigma_testing_utils import REPO_ROOT

CARD_PATH = os.path.join(REPO_ROOT, "model_card.md")
RESULTS_PATH = os.path.join(REPO_ROOT, "results", "benchmarks.json")
PAPER_TABLE_1_SIGMA = ["77.4", "92.5", "97.2", "49.3", "72.6", "79.5"]  # Flickr30K then MS-COCO R@1/5/10


@pytest.fixture(scope="module")
def card():
    return ModelCard.load(CARD_PATH, ignore_metadata_errors=False)


def section(text, title):
    """Body of the `## title` / `### title` section, up to the next heading of the same or a higher level."""
    match = re.search(rf"^(#+) {re.escape(title)}$", text, re.M)
    assert match, f"no section {title!r}"
    rest = text[match.end() :]
    end = re.search(rf"^#{{1,{len(match.group(1))}}} ", rest, re.M)
    return rest[: end.start()] if end else rest


def table_rows(text):
    """`{first cell: [other cells]}` of the markdown table rows in `text`."""
    rows = {}
    for line in text.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if line.startswith("|") and not set(cells[0]) <= {"-"}:
            rows[cells[0]] = cells[1:]
    return rows


def test_front_matter_has_every_hub_key(card):
    data = card.data
    assert data.library_name == "transformers"
    assert data.pipeline_tag == "image-text-to-text"
    assert data.license == "apache-2.0"
    assert isinstance(data.base_model, str) and data.base_model == "Qwen/Qwen2.5-VL-3B-Instruct"
    assert data.datasets == ["nlphuji/flickr30k", "yerevann/coco-karpathy"]
    assert data.metrics == ["recall"]
    assert "custom_code" in data.tags and "text-to-image-retrieval" in data.tags
    assert data.language == ["en"]


def test_metadata_values_are_valid_offline(card):
    # ModelCard.validate posts the card to the Hub; these are the checks that need no network.
    assert ModelCardData(**card.data.to_dict()).to_dict() == card.data.to_dict()
    for repo_id in [card.data.base_model, *card.data.datasets]:
        validate_repo_id(repo_id)
    assert (
        card.data.pipeline_tag != "text-to-image"
    )  # the Hub's image-generation task: wrong widget and filters
    assert all(isinstance(tag, str) and tag == tag.lower() for tag in card.data.tags)


def test_sections(card):
    text = card.text
    for title in ("Usage", "Training", "Results", "Benchmarks", "Limitations", "Ethical considerations"):
        assert re.search(rf"^## {title}$", text, re.M), title
    assert 'AutoModel.from_pretrained("path/or/repo", trust_remote_code=True)' in section(text, "Usage")
    training = section(text, "Training")
    assert "recipes/stage0.py --config recipes/configs/tiny-shapes.yaml" in training
    assert "recipes/stage1.py --config recipes/configs/flickr30k.yaml" in training
    assert "make bench" in section(text, "Benchmarks")


def test_measured_tables_match_results_json(card):
    """The measured block is the one `make bench` wrote from results/benchmarks.json (same rows, same figures)."""
    with open(RESULTS_PATH) as handle:
        results = json.load(handle)
    measured = section(card.text, "Measured: embedded default (TinyShapes, CPU)")
    block = measured.split("<!-- benchmarks:start -->", 1)[1].split("<!-- benchmarks:end -->", 1)[0]
    quality = block.split("#### Quality", 1)[1].split("#### Efficiency", 1)[0].strip()
    recall_table = quality.split("\n\n", 1)[0]  # then the differences and the caption-type tables
    rows = [
        [cell.strip() for cell in line.strip().strip("|").split("|")]
        for line in recall_table.splitlines()
        if line.startswith("| ") and not line.startswith("| system")
    ]
    expected = [
        [row["system"], row["queries_on"], row["gallery"], "yes" if row["reranked"] else "no",
         *(str(row[f"R@{k}"]) for k in (1, 5, 10))]
        for row in results["quality"]["rows"]
    ]  # fmt: skip
    assert rows == expected and len(rows) >= 15  # SIGMA-tiny, baseline, open set and ablations, ± re-ranking
    systems = {re.sub(r" \(seed \d+\)$", "", row[0]) for row in rows}  # make bench trains two seeds
    assert {"two-tower (tiny CLIP + faiss)", "SIGMA-tiny", "random identifiers (codes shuffled)"} <= systems
    if results["quality"].get("differences"):
        assert "| difference (paired bootstrap over images, 95 % interval) |" in quality


def test_paper_table_is_labelled_and_separate(card):
    paper = section(card.text, "Reported in the paper (not reproduced here)")
    assert "Table 1" in paper and "Huang et al." in paper
    table_1, table_2 = paper.split("Table 2", 1)
    assert table_rows(table_1)["SIGMA"] == PAPER_TABLE_1_SIGMA
    assert table_rows(table_2)["SIGMA"] == PAPER_TABLE_1_SIGMA[:3]  # the ablation's full model is Flickr30K
    assert "SIGMA" not in table_rows(section(card.text, "Measured: embedded default (TinyShapes, CPU)"))


@pytest.mark.slow
def test_card_passes_hub_validation(card):
    card.validate()  # posts to https://huggingface.co/api/validate-yaml
