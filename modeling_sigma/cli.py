# Copyright 2026 The SIGMA release team. Licensed under the Apache License, Version 2.0.
"""The `sigma` command: search, open-set indexing and evaluation from the shell.

    sigma search "a red circle" --model DIR [--index DIR] -k 10 [--rerank]
    sigma index add IMAGES... --model DIR --index DIR [--mode generate|quantizer]
    sigma index remove IDS... --model DIR --index DIR
    sigma index info --index DIR
    sigma eval --model DIR --split test [--corpus tiny-shapes] [--index DIR] [-k 1 5 10]
    sigma push model|codebook|corpus SOURCE --repo-id ORG/NAME [--private] [--to-folder DIR [--overwrite]]
    sigma corpus SOURCE --output DIR [--caption-columns C ...] [--id-column I] [--num-test N] [--num-unseen N]
    sigma e2e [--corpus SOURCE] [run_embedded.py options]   # the whole job; a repository checkout only

Heavy imports happen inside the commands so that `--help` is instant. Errors in the input (unknown ids, an
unreadable image, an index built for another model) print one line and exit with status 2.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff"}


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every subcommand."""
    parser = argparse.ArgumentParser(prog="sigma", description="SIGMA generative text-to-image retrieval.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress (INFO)")
    commands = parser.add_subparsers(dest="command", required=True)

    search = commands.add_parser("search", help="retrieve images for text queries")
    search.add_argument("queries", nargs="+", help="one or more text queries")
    _add_model_and_index(search, index_required=False)
    search.add_argument("-k", type=int, default=10, help="images per query")
    search.add_argument("--num-beams", type=int, default=None, help="beam width (default: model config)")
    search.add_argument("--rerank", action="store_true", help="rescore beams with the similarity head")
    search.add_argument("--rerank-weight", type=float, default=1.0, help="w in score + w * log(similarity)")
    search.add_argument("--json", action="store_true", help="print the hits as JSON")
    search.add_argument(
        "--no-truncate",
        action="store_true",
        help="refuse queries over the model's max_query_length prompt tokens (default: cut them, with a warning)",
    )
    search.set_defaults(handler=run_search)

    index = commands.add_parser("index", help="add, remove or describe images of an index folder")
    index_commands = index.add_subparsers(dest="index_command", required=True)
    add = index_commands.add_parser("add", help="index new images (the folder is created if missing)")
    add.add_argument("images", nargs="+", help="image files, or folders of image files")
    _add_model_and_index(add, index_required=True)
    add.add_argument("--ids", nargs="+", default=None, help="image ids (default: file names without suffix)")
    add.add_argument("--mode", choices=("generate", "quantizer"), default="generate")
    add.add_argument("--quantizer", default=None, help="stage-0 folder (mode quantizer)")
    add.add_argument("--encoder", default="tiny-clip", help="stage-0 encoder name or path (mode quantizer)")
    add.add_argument("--batch-size", type=int, default=64)
    add.set_defaults(handler=run_index_add)
    remove = index_commands.add_parser("remove", help="remove images by id")
    remove.add_argument("ids", nargs="+", help="image ids to remove")
    _add_model_and_index(remove, index_required=True)
    remove.set_defaults(handler=run_index_remove)
    info = index_commands.add_parser("info", help="size and layout of an index folder")
    info.add_argument("--index", required=True, help="index folder")
    info.set_defaults(handler=run_index_info)

    evaluate = commands.add_parser("eval", help="Recall@K of the model on a corpus split")
    _add_model_and_index(evaluate, index_required=False)
    evaluate.add_argument("--corpus", default="tiny-shapes", help="load_corpus name or folder")
    evaluate.add_argument("--split", default="test")
    evaluate.add_argument("-k", type=int, nargs="+", default=[1, 5, 10], help="the K of Recall@K")
    evaluate.add_argument("--max-queries", type=int, default=None, help="evaluate the first N captions only")
    evaluate.set_defaults(handler=run_eval)

    push = commands.add_parser("push", help="publish a checkpoint, a stage-0 codebook or a corpus on the Hub")
    push_commands = push.add_subparsers(dest="push_command", required=True)
    sources = {
        "model": "SIGMA checkpoint folder (save_pretrained); the model card is model_card.md",
        "codebook": "stage-0 folder written by recipes/stage0.py",
        "corpus": "'tiny-shapes' (generated), or a folder written by save_corpus",
    }
    for kind, source_help in sources.items():
        command = push_commands.add_parser(kind, help=f"push a {kind} repo ({source_help.split(' (')[0]})")
        command.add_argument("source", help=source_help)
        command.add_argument(
            "--repo-id", required=True, metavar="ORG/NAME", help="Hub repo id (also in the card)"
        )
        command.add_argument("--private", action="store_true", help="create the repo private")
        command.add_argument("--revision", default=None, help="branch to commit to (created if missing)")
        command.add_argument("--commit-message", default=None)
        command.add_argument(
            "--to-folder", default=None, metavar="DIR", help="write the repo files here, no upload"
        )
        command.add_argument("--overwrite", action="store_true", help="replace a non-empty --to-folder")
        if kind == "model":
            command.add_argument(
                "--card", default=None, metavar="PATH", help="model card (default: model_card.md)"
            )
            command.add_argument(
                "--base-model",
                default=None,
                metavar="ID",
                help="set the card's base_model ('none' removes it)",
            )
        else:
            command.add_argument("--license", default=None, help="license of the dataset card")
        command.set_defaults(handler=run_push, push_kind=kind)

    corpus = commands.add_parser(
        "corpus", help="check and convert an image-caption collection to a SIGMA corpus (split if needed)"
    )
    from modeling_sigma.training.corpus_config import add_corpus_arguments

    add_corpus_arguments(corpus)
    corpus.add_argument("--output", required=True, help="folder for the corpus (datasets save_to_disk)")
    corpus.set_defaults(handler=run_corpus)
    e2e = commands.add_parser(
        "e2e", help="the end-to-end job (recipes/run_embedded.py), e.g. on --corpus DIR"
    )
    e2e.add_argument("job_args", nargs=argparse.REMAINDER, help="options of recipes/run_embedded.py")
    e2e.set_defaults(handler=run_e2e)
    return parser


def _add_model_and_index(parser: argparse.ArgumentParser, index_required: bool) -> None:
    parser.add_argument("--model", required=True, help="SIGMA checkpoint folder")
    index_help = "index folder" if index_required else "index folder (default: the model's own index)"
    parser.add_argument("--index", required=index_required, default=None, help=index_help)


# ------------------------------------------------------------------------------------------ commands
def run_search(args: argparse.Namespace) -> None:
    from modeling_sigma.open_set.index import search

    model = _load_model(args.model)
    index = _open_index(args.index, model)
    results = search(
        index, model, args.queries, k=args.k, rerank=args.rerank, rerank_weight=args.rerank_weight,
        num_beams=args.num_beams, truncate=not args.no_truncate,
    )  # fmt: skip
    if args.json:
        print(json.dumps([{"query": q, "hits": hits} for q, hits in zip(args.queries, results)], indent=2))
        return
    for query, hits in zip(args.queries, results):
        print(f"query: {query}")
        for rank, hit in enumerate(hits, start=1):
            fused = f"  fused {hit['fused_score']:.3f}" if "fused_score" in hit else ""
            path = f"  {hit['metadata']['path']}" if hit["metadata"].get("path") else ""
            print(
                f"{rank:>3}. {hit['image_id']}  {hit['identifier']}  score {hit['score']:.3f}  "
                f"similarity {hit['similarity']:.3f}{fused}{path}"
            )


def run_index_add(args: argparse.Namespace) -> None:
    from modeling_sigma.open_set.index import check_new_images, commit_images, image_prefixes
    from modeling_sigma.open_set.storage import update_index_folder

    paths = _expand_images(args.images)
    ids = args.ids if args.ids is not None else [Path(path).stem for path in paths]
    model = _load_model(args.model)
    quantizer = encoder = None
    if args.mode == "quantizer":
        quantizer, encoder = _load_quantizer(args.quantizer, args.encoder)
    # the model call runs before the lock (it does not depend on the index); suffixes are allocated under it
    check_new_images(_open_index(args.index, model, must_exist=False), model, paths, ids, mode=args.mode)
    prefixes = image_prefixes(model, paths, args.mode, quantizer, encoder, args.batch_size)
    with update_index_folder(args.index, model, new_index=lambda: _model_index(model)) as index:
        _, records = check_new_images(index, model, paths, ids, mode=args.mode)  # against the fresh read
        codes = commit_images(index, prefixes, ids, records)
    for image_id, row in zip(ids, codes.tolist()):
        print(f"{image_id}\t{index.layout.codes_to_string(row)}")
    print(f"added {len(ids)} images; {args.index} holds {len(index)}")


def run_index_remove(args: argparse.Namespace) -> None:
    from modeling_sigma.modeling.configuration_sigma import SigmaConfig
    from modeling_sigma.open_set.index import remove_images
    from modeling_sigma.open_set.storage import update_index_folder

    config = SigmaConfig.from_pretrained(args.model)  # the fingerprint needs the config, not the weights
    if not Path(args.index).exists():
        raise FileNotFoundError(f"--index {args.index!r} does not exist")
    with update_index_folder(args.index, config) as index:
        remove_images(index, args.ids)
    print(f"removed {len(set(args.ids))} images; {args.index} holds {len(index)}")


def run_index_info(args: argparse.Namespace) -> None:
    from modeling_sigma.open_set.storage import read_index_folder

    index = read_index_folder(args.index)
    print(json.dumps({"images": len(index), **index.fingerprint}, indent=2))


def run_eval(args: argparse.Namespace) -> None:
    try:
        from modeling_sigma.evaluation.retrieval import evaluate_retrieval
    except ImportError as error:
        raise ValueError(f"evaluation is not available in this install: {error}") from error
    from modeling_sigma.data.corpus import get_split, load_corpus

    model = _load_model(args.model)
    index = _open_index(args.index, model)
    dataset = get_split(load_corpus(args.corpus), args.split)
    metrics = evaluate_retrieval(
        model, dataset, ks=tuple(sorted(set(args.k))), max_queries=args.max_queries, index=index
    )
    print(json.dumps(metrics, indent=2))


def run_corpus(args: argparse.Namespace) -> None:
    from modeling_sigma.data.user_corpus import prepare_corpus
    from modeling_sigma.training.corpus_config import corpus_options

    if not args.corpus:
        raise ValueError("sigma corpus needs --corpus SOURCE (a folder, a saved DatasetDict or a Hub id)")
    corpus = prepare_corpus(args.corpus, args.output, **corpus_options(args))
    sizes = {split: len(dataset) for split, dataset in corpus.items()}
    print(f"wrote {args.output}: {sizes}; train on it with `sigma e2e --corpus {args.output}`")


def run_e2e(args: argparse.Namespace) -> None:
    """Runs `recipes/run_embedded.py` of the repository checkout this package was installed from."""
    import runpy

    script = Path(__file__).resolve().parents[1] / "recipes" / "run_embedded.py"
    if not script.is_file():
        raise FileNotFoundError(
            f"{script} not found: `sigma e2e` runs the recipes of a repository checkout (pip install -e .)"
        )
    sys.argv = [str(script), *args.job_args]
    sys.path.insert(0, str(script.parent))
    runpy.run_path(str(script), run_name="__main__")


def run_push(args: argparse.Namespace) -> None:
    from huggingface_hub.errors import HfHubHTTPError

    from modeling_sigma import hub

    push = {
        "model": hub.push_model_to_hub,
        "codebook": hub.push_codebook_to_hub,
        "corpus": hub.push_corpus_to_hub,
    }
    options = {"card": args.card} if args.push_kind == "model" else {}
    if args.push_kind == "model" and args.base_model is not None:
        options["card_metadata"] = {
            "base_model": None if args.base_model.lower() == "none" else args.base_model
        }
    if args.push_kind != "model" and args.license is not None:
        options["license"] = args.license
    try:
        result = push[args.push_kind](
            args.source, args.repo_id, local_dir=args.to_folder, private=args.private or None, revision=args.revision,
            commit_message=args.commit_message, overwrite=args.overwrite, **options,
        )  # fmt: skip
    except (HfHubHTTPError, ConnectionError) as error:  # auth, permissions, offline mode
        raise ValueError(f"could not push to {args.repo_id}: {error}") from error
    where = "wrote" if args.to_folder else "pushed"
    print(f"{where} {args.push_kind} repo {args.repo_id}: {result}")


# ------------------------------------------------------------------------------------------- helpers
def _load_model(path: str):
    from modeling_sigma.modeling.modeling_sigma import SigmaForRetrieval

    if not Path(path).is_dir():
        raise FileNotFoundError(f"--model {path!r} is not a folder (a checkpoint saved with save_pretrained)")
    return SigmaForRetrieval.from_pretrained(path).eval()


def _open_index(folder: str | None, model, must_exist: bool = True):
    """The index folder (checked against `model`), else a copy of the model's own index."""
    from modeling_sigma.open_set.storage import read_index_folder

    if folder is not None and Path(folder).exists():
        return read_index_folder(folder, model=model)
    if folder is not None and must_exist:
        raise FileNotFoundError(f"--index {folder!r} does not exist")
    return _model_index(model)


def _model_index(model):
    """A copy of the model's own index (an empty one for a model without)."""
    from modeling_sigma.modeling.index import SigmaIndex

    return model.index.copy() if model.index is not None else SigmaIndex.from_model(model)


def _expand_images(inputs: list[str]) -> list[str]:
    """Files as given; folders become their image files, sorted."""
    paths = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            paths.extend(str(p) for p in sorted(path.iterdir()) if p.suffix.lower() in IMAGE_SUFFIXES)
        else:
            paths.append(item)
    return paths


def _load_quantizer(folder: str | None, encoder_name: str):
    if folder is None:
        raise ValueError("--mode quantizer needs --quantizer (a stage-0 folder written by recipes/stage0.py)")
    from modeling_sigma.identifiers.builder import SigmaIdentifierBuilder
    from modeling_sigma.identifiers.encoders import load_encoder

    return SigmaIdentifierBuilder.load(folder), load_encoder(encoder_name)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `sigma` console script; returns the exit status."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(message)s")
    try:
        args.handler(args)
    except (ValueError, FileNotFoundError, FileExistsError, KeyError, TimeoutError) as error:
        print(f"sigma: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
