"""Dataset cards (README.md) of the two dataset repos SIGMA publishes: the stage-0 codebook and a corpus.

Each card is a `huggingface_hub.DatasetCard`: YAML front matter (`configs` / `data_files` naming the parquet
shards of every split, `dataset_info` with features and split sizes, license, task categories, tags) and
prose on the columns, how the data was made and how to load it. `modeling_sigma.hub.dataset_repos` writes them.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Any

from huggingface_hub import DatasetCard, DatasetCardData

REPO_PLACEHOLDER = "ORG/NAME"
LEVELS = {
    "1": ("semantic anchor", "nearest MiniBatchKMeans centroid of the image feature"),
    "2": ("dominant component", "argmax of the coefficients of the anchor's Semi-NMF basis"),
    "3": ("fine-grained group", "argmax of a second-order Semi-NMF fitted on the residual of level 2"),
    "4": ("residual code", "nearest residual centroid (k-means per subspace) of the residual r = v − c_id1"),
    "5": ("instance suffix", "0, 1, … among the images that share levels 1–4 (makes identifiers unique)"),
}
_SIZE_CATEGORIES = ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M"),
                    (10_000_000, "1M<n<10M"), (100_000_000, "10M<n<100M"))  # fmt: skip


@dataclass
class SplitFiles:
    """What `hub` wrote for one split: its parquet shards (paths in the repo) and sizes."""

    name: str
    files: list[str]
    num_examples: int
    num_bytes: int  # Arrow size in memory (dataset_size on the Hub)
    download_bytes: int  # size of the parquet shards


def size_category(num_rows: int) -> str:
    """The Hub's `size_categories` bucket of a dataset with `num_rows` rows."""
    for bound, name in _SIZE_CATEGORIES:
        if num_rows < bound:
            return name
    return "n>100M"


def dataset_card_data(features: Any, splits: list[SplitFiles], **fields: Any) -> DatasetCardData:
    """Card metadata: `fields` plus `configs` (one default config, a `data_files` entry per split) and
    `dataset_info` (features, split sizes) in the form `Dataset.push_to_hub` writes."""
    from datasets import DatasetInfo, SplitDict, SplitInfo
    from datasets.info import DatasetInfosDict
    from datasets.utils.metadata import MetadataConfigs

    data = DatasetCardData(**fields)
    data_files = [{"split": split.name, "path": f"data/{split.name}-*"} for split in splits]
    MetadataConfigs({"default": {"data_files": data_files}}).to_dataset_card_data(data)
    split_dict = SplitDict()
    for split in splits:
        split_dict.add(SplitInfo(name=split.name, num_bytes=split.num_bytes, num_examples=split.num_examples))
    info = DatasetInfo(
        features=features, splits=split_dict,
        download_size=sum(split.download_bytes for split in splits),
        dataset_size=sum(split.num_bytes for split in splits),
    )  # fmt: skip
    DatasetInfosDict({"default": info}).to_dataset_card_data(data)
    return data


def _card(data: DatasetCardData, body: str) -> DatasetCard:
    return DatasetCard(f"---\n{data.to_yaml()}\n---\n\n{body.strip()}\n")


def _table(header: tuple[str, ...], rows: list[tuple[Any, ...]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------- codebook
def codebook_card(
    repo_id: str | None,
    features: Any,
    split: SplitFiles,
    stage0_config: dict[str, Any],
    quantizer_shapes: dict[str, tuple[tuple[int, ...], str]],
    license: str = "apache-2.0",
    pretty_name: str | None = None,
) -> DatasetCard:
    """Card of a stage-0 codebook repo (`stage0_config`: the folder's `stage0_config.json`)."""
    from modeling_sigma.modeling.identifier_layout import SigmaIdentifierLayout

    repo = repo_id or REPO_PLACEHOLDER
    layout = SigmaIdentifierLayout.from_dict(stage0_config["layout"])
    data = dataset_card_data(
        features, [split], license=license, pretty_name=pretty_name or "SIGMA identifier codebook",
        task_categories=["image-feature-extraction"], size_categories=size_category(split.num_examples),
        tags=["sigma", "generative-retrieval", "text-to-image-retrieval", "semantic-ids", "codebook"],
    )  # fmt: skip
    example = layout.codes_to_string([0] * layout.length)
    columns = _table(("column", "type", "meaning"), [
        ("`image_id`", "string", "id of the image in its corpus (e.g. `train-000012`)"),
        ("`identifier`", "string", f"the identifier as the model's tokens, e.g. `{example}`"),
        ("`codes`", f"list of int32 (length {layout.length})", "one code per position below; `identifier` spells them"),
    ])  # fmt: skip
    levels = _table(("position", "level", "values", "how"), _layout_rows(layout))
    builder_settings = json.dumps(stage0_config.get("builder_config", {}), indent=2, sort_keys=True)
    body = f"""
# {data.pretty_name}

One row per indexed image: the hierarchical identifier that SIGMA stage 0 gave it, which a SIGMA model is
trained to write for the image. With `quantizer.safetensors` and `stage0_config.json` this repo is a complete
stage-0 folder: it assigns identifiers to new images without refitting anything.

## Columns

{columns}

Split `{split.name}`: {split.num_examples:,} images, in the order of the codebook (row i of `codes` is image
i); files `{", ".join(split.files)}`.

## Identifier layout

An image feature v (from a frozen image encoder) becomes one code per position:

{levels}

Capacity: {layout.prefix_capacity:,} distinct prefixes (levels 1–4) and {layout.capacity:,} identifiers with
the suffix. The token of position p with value v is `<id{{p}}_{{v}}>`, written without spaces.

{_statistics_section(stage0_config.get("statistics", {}))}

## Files

- `data/{split.name}-*.parquet`: the codebook above.
- `quantizer.safetensors`: the fitted quantiser:
{_quantizer_lines(quantizer_shapes)}
- `stage0_config.json`: layout, builder settings, statistics and `format_version`.

## How it was made

`python recipes/stage0.py --config recipes/configs/<setting>.yaml` (SIGMA, paper §3.1): the images are
embedded with a frozen encoder, then `modeling_sigma.identifiers.builder.SigmaIdentifierBuilder` fits the
levels in order (k-means, Semi-NMF per anchor, second-order Semi-NMF, residual k-means) and numbers the
suffixes. Builder settings:

```json
{builder_settings}
```

## How to load

```python
from datasets import load_dataset

codebook = load_dataset("{repo}", split="{split.name}")  # image_id, identifier, codes

from modeling_sigma.identifiers.storage import load_builder_folder

quantizer, stage0_config, codebook = load_builder_folder("{repo}")  # tensors, JSON, datasets.Dataset

from modeling_sigma.identifiers.builder import SigmaIdentifierBuilder

builder = SigmaIdentifierBuilder.load("{repo}")
codes = builder.assign(features, image_ids)  # new images: features from the same encoder as stage 0
```

## Limitations

- The codes quantise the features of one image encoder: new images must be encoded with the same encoder,
  or their identifiers are meaningless.
- Images that share levels 1–4 differ only by the arbitrary suffix, which no query can predict.
- The image ids name images of the source corpus, whose license and privacy constraints still apply.
"""
    return _card(data, body)


def _layout_rows(layout) -> list[tuple[str, str, int, str]]:
    rows = []
    for position, size in zip(layout.positions, layout.sizes):
        name, how = LEVELS[position.split(".")[0]]
        if "." in position:
            how = f"{how}, subspace {position.split('.')[1]} of {layout.num_subspaces}"
        rows.append((f"id{position}", name, size, how))
    return rows


def _statistics_section(statistics: dict[str, Any]) -> str:
    if not statistics:
        return ""
    rows = [(f"`{key}`", round(value, 4) if isinstance(value, float) else value)
            for key, value in sorted(statistics.items())]  # fmt: skip
    return "Statistics of this codebook (from `stage0_config.json`):\n\n" + _table(
        ("statistic", "value"), rows
    )


def _quantizer_lines(shapes: dict[str, tuple[tuple[int, ...], str]]) -> str:
    return "\n".join(
        f"  - `{name}`: shape {list(shape)}, {dtype}" for name, (shape, dtype) in sorted(shapes.items())
    )


# ------------------------------------------------------------------------------------------------ corpus
SPLIT_ROLES = {
    "train": "images and captions are trained on",
    "test": "indexed; its captions are only ever queries",
    "unseen": "never trained on; added to the index afterwards (open-set)",
}


def corpus_card(
    repo_id: str | None,
    features: Any,
    splits: list[SplitFiles],
    num_captions: dict[str, int],
    tiny_shapes: Any | None = None,
    description: str | None = None,
    license: str | None = None,
    pretty_name: str | None = None,
) -> DatasetCard:
    """Card of an image–caption corpus in the SIGMA schema; `tiny_shapes` (a `TinyShapesConfig`) describes
    the embedded generator, `description` (markdown) any other corpus."""
    repo = repo_id or REPO_PLACEHOLDER
    name = pretty_name or ("TinyShapes" if tiny_shapes is not None else "SIGMA image–caption corpus")
    data = dataset_card_data(
        features, splits, license=license or ("apache-2.0" if tiny_shapes is not None else "other"),
        pretty_name=name, language=["en"], task_categories=["text-to-image", "image-to-text"],
        size_categories=size_category(sum(split.num_examples for split in splits)),
        tags=["sigma", "text-to-image-retrieval", "image-captioning"]
        + (["synthetic", "tiny-shapes"] if tiny_shapes is not None else []),
    )  # fmt: skip
    split_rows = [
        (
            f"`{split.name}`",
            f"{split.num_examples:,}",
            f"{num_captions[split.name]:,}",
            SPLIT_ROLES.get(split.name, ""),
        )
        for split in splits
    ]
    splits_table = _table(("split", "images", "captions", "role"), split_rows)
    about = _tiny_shapes_section(tiny_shapes) if tiny_shapes is not None else (description or "").strip()
    limitations = TINY_SHAPES_LIMITATIONS if tiny_shapes is not None else ""
    columns = _table(("column", "type", "meaning"), [
        ("`image`", "image (PNG/JPEG bytes in the parquet)", "the image; decodes to a PIL image"),
        ("`image_id`", "string", "unique id of the image within the corpus"),
        ("`captions`", "list of string", "captions of the image; each is a query for it"),
    ])  # fmt: skip
    split_names, first = ", ".join(split.name for split in splits), splits[0].name
    body = f"""
# {name}

Image–caption pairs in the schema every SIGMA corpus shares: one row per image, with several captions.
Each caption of a split is a text query whose only relevant image is its own row (Recall@K).

## Columns

{columns}

## Splits

{splits_table}

{about}

## How to load

```python
from datasets import load_dataset

corpus = load_dataset("{repo}")  # DatasetDict: {split_names}
image, captions = corpus["{first}"][0]["image"], corpus["{first}"][0]["captions"]

from modeling_sigma.data.corpus import validate_corpus

validate_corpus(corpus)  # the schema the SIGMA recipes expect
```

{limitations}
"""
    return _card(data, body)


def _tiny_shapes_section(config: Any) -> str:
    from modeling_sigma.data import corpus as tiny_shapes

    settings = ", ".join(f"{key}={value!r}" for key, value in asdict(config).items())
    return f"""## How it was made

TinyShapes is procedural and seeded: `generate_tiny_shapes(TinyShapesConfig({settings}))` (from
`modeling_sigma.data.corpus`) regenerates the same images and captions, with no download. Each image is a {config.image_size}×{config.image_size} RGB
scene of 1–3 objects at distinct positions on a background; objects vary in shape ({len(tiny_shapes.SHAPES)}:
{", ".join(tiny_shapes.SHAPES)}), colour ({len(tiny_shapes.COLOURS)}), size ({len(tiny_shapes.SIZES)}) and
position ({len(tiny_shapes.POSITIONS)}); backgrounds: {", ".join(tiny_shapes.BACKGROUNDS)}. Every image has five
captions of different granularity, in this order:

1. full: every object with size, colour, shape and position, and the background;
2. partial: one object's colour and shape (matches many images);
3. relational: two objects and their spatial relation (or one object and where it is);
4. coarse: the number of shapes and the background;
5. paraphrase: the full description in other words (synonyms), objects in reverse order.

Attributes come from small vocabularies, so many images share them: the coarse and partial captions have
several correct images, as Flickr30K captions often do."""


TINY_SHAPES_LIMITATIONS = """## Limitations

Synthetic shapes: results on TinyShapes say nothing about photographs. It exists so that the whole SIGMA
pipeline trains and evaluates offline on a CPU."""


__all__ = ["SplitFiles", "codebook_card", "corpus_card", "dataset_card_data", "size_category"]
