"""Hub publishing: each repo is exported to a local folder that the ordinary loaders read back, the upload path
goes through HfApi (recorded here, no network), and bad input leaves the target untouched."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import datasets
import numpy as np
import pytest
from huggingface_hub import DatasetCard, HfApi, ModelCard
from sigma_testing_utils import build_tiny_model

from modeling_sigma import hub
from modeling_sigma.cli import main
from modeling_sigma.data.corpus import SPLITS, save_corpus
from modeling_sigma.hub import dataset_repos
from modeling_sigma.identifiers.builder import SigmaIdentifierBuilder, SigmaIdentifierBuilderConfig
from modeling_sigma.identifiers.storage import load_builder_folder

QUERIES = ["a red circle on a blue background", "two green squares next to a yellow star"]
CODEBOOK_FILES = {
    "README.md",
    "quantizer.safetensors",
    "stage0_config.json",
    "data/codebook-00000-of-00001.parquet",
}
CORPUS_FILES = {"README.md", *(f"data/{split}-00000-of-00001.parquet" for split in SPLITS)}
CARD_PLOTS = {
    f"results/{name}.png" for name in ("quality", "latency", "efficiency")
}  # model_card.md's images


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def stage0_dir(tmp_path_factory, tiny_corpus):
    """A stage-0 folder over every image of the tiny corpus (features: 4×4 thumbnails)."""
    images = [image for split in SPLITS for image in tiny_corpus[split]["image"]]
    features = np.stack(
        [np.asarray(image.resize((4, 4)), dtype=np.float32).reshape(-1) / 255 for image in images]
    )
    image_ids = [image_id for split in SPLITS for image_id in tiny_corpus[split]["image_id"]]
    config = SigmaIdentifierBuilderConfig(k1=4, k2=3, k3=2, k4=3, num_subspaces=2, suffix_size=32,
                                          kmeans_batch_size=64, coherence_pairs=100, num_workers=1)  # fmt: skip
    builder = SigmaIdentifierBuilder(config)
    builder.fit(features, image_ids)
    folder = tmp_path_factory.mktemp("stage0") / "stage0"
    builder.save(str(folder))
    return folder


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    model, _, _, _ = build_tiny_model()
    folder = tmp_path_factory.mktemp("checkpoint") / "model"
    model.save_pretrained(folder)
    return folder


@pytest.fixture
def cache(tmp_path):
    return str(tmp_path / "datasets-cache")


def listing(folder):
    """`{relative path: bytes}` of every file under `folder`."""
    root = Path(folder)
    return {
        path.relative_to(root).as_posix(): path.read_bytes() for path in root.rglob("*") if path.is_file()
    }


def split_paths(card):
    return {entry["split"]: entry["path"] for entry in card.data.configs[0]["data_files"]}


# ---------------------------------------------------------------------------------------- local folders
def test_corpus_repo_loads_with_datasets(tiny_corpus, tiny_corpus_config, tmp_path, cache):
    folder = tmp_path / "corpus"
    assert hub.push_corpus_to_hub(
        tiny_corpus, "me/tiny-shapes", local_dir=folder, tiny_shapes=tiny_corpus_config
    ) == str(folder)
    assert set(listing(folder)) == CORPUS_FILES
    loaded = datasets.load_dataset(str(folder), cache_dir=cache)
    assert set(loaded) == set(SPLITS)
    for split in SPLITS:
        assert loaded[split].column_names == ["image", "image_id", "captions"]
        assert isinstance(loaded[split].features["image"], datasets.Image)
        assert list(loaded[split]["image_id"]) == list(tiny_corpus[split]["image_id"])
        assert list(loaded[split]["captions"]) == list(tiny_corpus[split]["captions"])
    original, pushed = tiny_corpus["test"][3]["image"], loaded["test"][3]["image"]
    assert pushed.size == (64, 64) and np.array_equal(np.asarray(pushed), np.asarray(original))
    card = DatasetCard.load(folder / "README.md")
    assert split_paths(card) == {split: f"data/{split}-*" for split in SPLITS}
    assert card.data.license == "apache-2.0" and card.data.pretty_name == "TinyShapes"
    assert [feature["name"] for feature in card.data.dataset_info["features"]] == [
        "image",
        "image_id",
        "captions",
    ]
    assert 'load_dataset("me/tiny-shapes")' in card.text and "seed=3" in card.text


def test_corpus_repo_by_name_is_the_generated_corpus(tiny_corpus, tiny_corpus_config, tmp_path, cache):
    folder = hub.export_corpus_repo("tiny-shapes", tmp_path / "corpus", tiny_shapes=tiny_corpus_config)
    loaded = datasets.load_dataset(str(folder), cache_dir=cache)
    assert list(loaded["unseen"]["captions"]) == list(tiny_corpus["unseen"]["captions"])


def test_codebook_repo_round_trips(stage0_dir, tmp_path, cache):
    folder = tmp_path / "codebook"
    hub.push_codebook_to_hub(stage0_dir, "me/codebook", local_dir=folder)
    files = listing(folder)
    assert set(files) == CODEBOOK_FILES
    for name in ("quantizer.safetensors", "stage0_config.json"):
        assert files[name] == (stage0_dir / name).read_bytes()
    loaded = datasets.load_dataset(str(folder), cache_dir=cache)
    assert set(loaded) == {"codebook"} and loaded["codebook"].column_names == [
        "image_id",
        "identifier",
        "codes",
    ]
    assert loaded["codebook"].num_rows == 72
    quantizer, metadata, codebook = load_builder_folder(stage0_dir)
    pushed_quantizer, pushed_metadata, pushed_codebook = load_builder_folder(folder)
    assert pushed_quantizer.keys() == quantizer.keys() and pushed_metadata == metadata
    for name, tensor in quantizer.items():
        assert pushed_quantizer[name].dtype == tensor.dtype and np.array_equal(pushed_quantizer[name], tensor)
    assert pushed_codebook.features == codebook.features and pushed_codebook.to_dict() == codebook.to_dict()
    original, pushed = SigmaIdentifierBuilder.load(str(stage0_dir)), SigmaIdentifierBuilder.load(str(folder))
    assert np.array_equal(pushed.codes, original.codes) and pushed.image_ids == original.image_ids
    features = np.random.default_rng(0).random((5, 48), dtype=np.float32)
    new_ids = [f"new-{i}" for i in range(5)]
    assert np.array_equal(pushed.assign(features, new_ids), original.assign(features, new_ids))
    card = DatasetCard.load(folder / "README.md")
    assert split_paths(card) == {"codebook": "data/codebook-*"}
    assert card.data.dataset_info["splits"][0]["num_examples"] == 72
    assert 'load_builder_folder("me/codebook")' in card.text and "| id4.2 | residual code | 3 |" in card.text
    again = hub.export_codebook_repo(folder, tmp_path / "again")  # the pushed layout is a valid source too
    assert (
        listing(again)["data/codebook-00000-of-00001.parquet"]
        == files["data/codebook-00000-of-00001.parquet"]
    )


def test_codebook_repo_id_reads_the_pushed_layout(stage0_dir, tmp_path, monkeypatch):
    import huggingface_hub

    folder = hub.export_codebook_repo(stage0_dir, tmp_path / "snapshot")
    calls = []
    fake_download = lambda repo_id, **kwargs: calls.append((repo_id, kwargs)) or str(folder)  # noqa: E731
    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_download)
    builder = SigmaIdentifierBuilder.load("me/codebook", revision="v1")
    assert calls == [("me/codebook", {"repo_type": "dataset", "revision": "v1"})]
    assert np.array_equal(builder.codes, SigmaIdentifierBuilder.load(str(stage0_dir)).codes)


REMOTE_SCRIPT = """
import json, sys
from transformers import AutoModel
model = AutoModel.from_pretrained(sys.argv[1], trust_remote_code=True).eval()
print(json.dumps({"module": type(model).__module__, "hits": model.retrieve(json.loads(sys.argv[2]), k=3)}))
"""


def test_model_repo_loads_with_remote_code(checkpoint, tmp_path):
    from modeling_sigma.modeling.modeling_sigma import SigmaForRetrieval

    folder = tmp_path / "model-repo"
    hub.push_model_to_hub(checkpoint, "me/sigma-tiny", local_dir=folder)
    files, source = listing(folder), listing(checkpoint)
    plots = {f"results/{name}.png" for name in ("quality", "latency", "efficiency")}  # the card's images
    assert set(files) == set(source) | {"README.md"} | plots
    assert all(files[name] == content for name, content in source.items())
    assert all(
        files[name] == (hub.model_repo.DEFAULT_MODEL_CARD.parent / name).read_bytes() for name in plots
    )
    card = ModelCard.load(folder / "README.md")
    assert card.data.base_model == "Qwen/Qwen2.5-VL-3B-Instruct" and "custom_code" in card.data.tags
    assert 'AutoModel.from_pretrained("me/sigma-tiny", trust_remote_code=True)' in card.text
    assert "path/or/repo" not in card.text
    expected = SigmaForRetrieval.from_pretrained(checkpoint).eval().retrieve(QUERIES, k=3)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf_home"), "PYTHONPATH": "",
           "OMP_NUM_THREADS": "1"}  # fmt: skip
    completed = subprocess.run(
        [sys.executable, "-c", REMOTE_SCRIPT, str(folder), json.dumps(QUERIES)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert completed.returncode == 0, completed.stderr[-3000:]
    reloaded = json.loads(completed.stdout.strip().splitlines()[-1])
    assert reloaded["module"].startswith("transformers_modules") and reloaded["hits"] == expected


def test_model_card_override(checkpoint, tmp_path):
    card = ModelCard(
        "---\nlicense: mit\nbase_model: Qwen/Qwen2.5-VL-3B-Instruct\ntags:\n- custom_code\n---\n# Tiny\n"
    )
    folder = hub.export_model_repo(checkpoint, tmp_path / "repo", card=card,
                                   card_metadata={"base_model": None, "datasets": ["me/tiny-shapes"]})  # fmt: skip
    written = ModelCard.load(folder / "README.md")
    assert written.data.to_dict() == {
        "license": "mit",
        "tags": ["custom_code"],
        "datasets": ["me/tiny-shapes"],
    }


def test_model_repo_carries_an_index_folder(checkpoint, tmp_path, caplog):
    source = tmp_path / "model"
    shutil.copytree(checkpoint, source)
    for name in ("sigma_index.pt", "sigma_index.json"):
        (source / name).unlink(missing_ok=True)
    shutil.rmtree(source / "sigma_index", ignore_errors=True)  # replaced by a recognisable one
    (source / "sigma_index").mkdir()
    (source / "sigma_index" / "index.safetensors").write_bytes(b"codes")
    (source / "sigma_index" / "index.json").write_text("{}")
    with caplog.at_level("WARNING", logger="modeling_sigma.hub.model_repo"):
        files = listing(hub.export_model_repo(source, tmp_path / "repo"))
    assert files["sigma_index/index.safetensors"] == b"codes" and "sigma_index/index.json" in files
    assert "holds no identifier index" not in caplog.text
    shutil.rmtree(source / "sigma_index")
    with caplog.at_level("WARNING", logger="modeling_sigma.hub.model_repo"):
        hub.export_model_repo(source, tmp_path / "repo", overwrite=True)
    assert "holds no identifier index" in caplog.text


def test_card_images_travel_with_the_card(checkpoint, tmp_path, caplog):
    (tmp_path / "card" / "plots").mkdir(parents=True)
    (tmp_path / "card" / "plots" / "a.png").write_bytes(b"\x89PNG a")
    (tmp_path / "secret.png").write_bytes(b"\x89PNG outside")
    (tmp_path / "card" / "README.md").write_text(
        '---\nlicense: mit\n---\n# Tiny\n![a](plots/a.png) ![a again](plots/a.png "title")\n'
        "![gone](plots/missing.png) ![web](https://example.com/b.png) ![up](../secret.png)\n"
    )
    with caplog.at_level("WARNING", logger="modeling_sigma.hub.model_repo"):
        folder = hub.export_model_repo(checkpoint, tmp_path / "repo", card=tmp_path / "card" / "README.md")
    files = listing(folder)
    assert files["plots/a.png"] == b"\x89PNG a"
    assert not any(name.endswith(("missing.png", "b.png", "secret.png")) for name in files)
    assert "plots/missing.png" in caplog.text


# ------------------------------------------------------------------------------------------ Hub path
class Recorder:
    """Stands in for the network methods of HfApi; keeps each call and the uploaded folder's files."""

    def __init__(self):
        self.calls = []

    def create_repo(self, repo_id, **kwargs):
        self.calls.append(("create_repo", {"repo_id": repo_id, **kwargs}))

    def create_branch(self, repo_id, **kwargs):
        self.calls.append(("create_branch", {"repo_id": repo_id, **kwargs}))

    def upload_folder(self, **kwargs):
        self.calls.append(("upload_folder", {**kwargs, "files": listing(kwargs["folder_path"])}))
        return f"https://huggingface.co/{kwargs['repo_id']}/commit/0123"


@pytest.fixture
def recorder(monkeypatch):
    recorder = Recorder()
    for name in ("create_repo", "create_branch", "upload_folder"):
        monkeypatch.setattr(HfApi, name, lambda self, *args, _name=name, **kwargs: getattr(recorder, _name)(*args, **kwargs))  # fmt: skip
    return recorder


@pytest.mark.parametrize("kind", ["model", "codebook", "corpus"])
def test_push_goes_through_hf_api(kind, recorder, checkpoint, stage0_dir, tiny_corpus):
    push, source, repo_type, files = {
        "model": (
            hub.push_model_to_hub,
            checkpoint,
            "model",
            {*listing(checkpoint), "README.md", *CARD_PLOTS},
        ),
        "codebook": (hub.push_codebook_to_hub, stage0_dir, "dataset", CODEBOOK_FILES),
        "corpus": (hub.push_corpus_to_hub, tiny_corpus, "dataset", CORPUS_FILES),
    }[kind]
    url = push(
        source, "me/sigma-repo", private=True, token="hf_test", revision="dev", commit_message="Add it"
    )
    assert url == "https://huggingface.co/me/sigma-repo/commit/0123"
    (_, create), (_, branch), (_, upload) = recorder.calls
    assert create == {"repo_id": "me/sigma-repo", "repo_type": repo_type, "private": True, "exist_ok": True,
                      "token": "hf_test"}  # fmt: skip
    assert branch == {"repo_id": "me/sigma-repo", "branch": "dev", "repo_type": repo_type, "exist_ok": True,
                      "token": "hf_test"}  # fmt: skip
    assert upload["repo_id"] == "me/sigma-repo" and upload["repo_type"] == repo_type
    assert (
        upload["revision"] == "dev" and upload["commit_message"] == "Add it" and upload["token"] == "hf_test"
    )
    assert upload["delete_patterns"] == hub.upload.STALE_FILES[repo_type]  # shards of an earlier push go
    assert set(upload["files"]) == files and b"me/sigma-repo" in upload["files"]["README.md"]
    assert not os.path.exists(upload["folder_path"])  # the staging folder is gone


def test_stage0_builder_pushes_the_dataset_layout(stage0_dir, recorder):
    """`SigmaIdentifierBuilder.push_to_hub` (recipes/stage0.py --push_to_hub) uploads the same repo."""
    from modeling_sigma.identifiers.builder import SigmaIdentifierBuilder

    SigmaIdentifierBuilder.load(stage0_dir).push_to_hub("me/sigma-codebook", private=False)
    (_, create), (_, upload) = recorder.calls
    assert create["repo_type"] == upload["repo_type"] == "dataset" and create["private"] is False
    assert set(upload["files"]) == CODEBOOK_FILES


def test_push_accepts_an_api_object(stage0_dir):
    api = Recorder()
    hub.push_codebook_to_hub(stage0_dir, "me/codebook", api=api)
    assert [name for name, _ in api.calls] == ["create_repo", "upload_folder"]
    assert api.calls[0][1]["private"] is None and api.calls[1][1]["revision"] is None


# ---------------------------------------------------------------------------------------- bad inputs
def snapshot(folder):
    return sorted(os.listdir(folder.parent)), listing(folder) if folder.exists() else None


def test_non_empty_target_is_kept_unless_overwrite(stage0_dir, tmp_path, recorder):
    target = tmp_path / "out"
    target.mkdir()
    (target / "keep.txt").write_text("mine")
    before = snapshot(target)
    with pytest.raises(FileExistsError, match="not empty"):
        hub.push_codebook_to_hub(stage0_dir, "me/codebook", local_dir=target)
    assert snapshot(target) == before and recorder.calls == []
    hub.push_codebook_to_hub(stage0_dir, "me/codebook", local_dir=target, overwrite=True)
    assert set(listing(target)) == CODEBOOK_FILES and sorted(os.listdir(tmp_path)) == ["out"]


def test_failure_while_writing_leaves_the_target_untouched(stage0_dir, tmp_path, monkeypatch):
    target = tmp_path / "out"
    hub.export_codebook_repo(stage0_dir, target)
    before = snapshot(target)
    monkeypatch.setattr(dataset_repos, "codebook_card", lambda *args, **kwargs: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        hub.export_codebook_repo(stage0_dir, target, overwrite=True)
    assert snapshot(target) == before


@pytest.mark.parametrize("repo_id", ["a/b/c", "bad..name", "", "me/name with space"])
def test_malformed_repo_id(repo_id, stage0_dir, tmp_path, recorder):
    with pytest.raises(ValueError, match="repo id"):
        hub.push_codebook_to_hub(stage0_dir, repo_id, local_dir=tmp_path / "out")
    with pytest.raises(ValueError, match="repo id"):
        hub.push_codebook_to_hub(stage0_dir, repo_id)
    assert os.listdir(tmp_path) == [] and recorder.calls == []


def incomplete_copy(source, tmp_path, missing):
    folder = tmp_path / "incomplete"
    shutil.copytree(source, folder)
    os.remove(folder / missing)
    return folder


@pytest.mark.parametrize("missing", ["trie.py", "model.safetensors", "config.json"])
def test_incomplete_checkpoint(missing, checkpoint, tmp_path, recorder):
    source = incomplete_copy(checkpoint, tmp_path, missing)
    with pytest.raises(FileNotFoundError, match=missing.replace(".", r"\.")):
        hub.push_model_to_hub(source, "me/model", local_dir=tmp_path / "out")
    with pytest.raises(FileNotFoundError):
        hub.push_model_to_hub(source, "me/model")
    assert sorted(os.listdir(tmp_path)) == ["incomplete"] and recorder.calls == []


def test_missing_or_incomplete_sources(checkpoint, stage0_dir, tmp_path):
    out = tmp_path / "out"
    with pytest.raises(FileNotFoundError, match="does not exist"):
        hub.push_model_to_hub(tmp_path / "nowhere", local_dir=out)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        hub.push_codebook_to_hub("nowhere/stage0", local_dir=out)  # not mistaken for a Hub repo id
    with pytest.raises(FileNotFoundError, match="neither"):
        hub.push_corpus_to_hub(str(tmp_path / "no-corpus"), local_dir=out)
    with pytest.raises(FileNotFoundError, match="quantizer.safetensors"):
        hub.push_codebook_to_hub(
            incomplete_copy(stage0_dir, tmp_path, "quantizer.safetensors"), local_dir=out
        )
    shutil.rmtree(tmp_path / "incomplete")
    with pytest.raises(ValueError, match="overlaps"):
        hub.push_model_to_hub(checkpoint, local_dir=checkpoint / "repo")
    with pytest.raises(ValueError, match="repo_id .* or local_dir"):
        hub.push_model_to_hub(checkpoint)
    assert os.listdir(tmp_path) == [] and not (checkpoint / "repo").exists()


def test_stage0_folder_without_any_codebook(stage0_dir, tmp_path):
    folder = tmp_path / "stage0"
    shutil.copytree(stage0_dir, folder)
    shutil.rmtree(folder / "codebook")
    with pytest.raises(FileNotFoundError, match=r"codebook/ \(save_to_disk\) or data/\*\.parquet"):
        load_builder_folder(folder)


# ----------------------------------------------------------------------------------------------- CLI
@pytest.mark.parametrize("argv", [["push"], ["push", "model"], ["push", "codebook"], ["push", "corpus"]])
def test_push_help(argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([*argv, "--help"])
    assert exit_info.value.code == 0 and "usage: sigma push" in capsys.readouterr().out


def test_cli_push_to_folder(checkpoint, stage0_dir, tiny_corpus, tmp_path, capsys, cache):
    save_corpus(tiny_corpus, tmp_path / "saved-corpus")
    sources = {"model": checkpoint, "codebook": stage0_dir, "corpus": tmp_path / "saved-corpus"}
    for kind, source in sources.items():
        argv = ["push", kind, str(source), "--repo-id", f"me/{kind}", "--to-folder", str(tmp_path / kind)]
        assert main(argv) == 0
        assert f"wrote {kind} repo me/{kind}: {tmp_path / kind}" in capsys.readouterr().out
        assert main(argv) == 2 and "not empty" in capsys.readouterr().err
        assert main([*argv, "--overwrite"]) == 0
    assert set(listing(tmp_path / "codebook")) == CODEBOOK_FILES
    assert set(listing(tmp_path / "corpus")) == CORPUS_FILES
    assert datasets.load_dataset(str(tmp_path / "corpus"), cache_dir=cache)["train"].num_rows == 48
    assert ModelCard.load(tmp_path / "model" / "README.md").data.base_model == "Qwen/Qwen2.5-VL-3B-Instruct"
    argv = ["push", "model", str(checkpoint), "--repo-id", "me/m", "--to-folder", str(tmp_path / "m")]
    assert main([*argv, "--base-model", "none"]) == 0
    front_matter = (tmp_path / "m" / "README.md").read_text().split("---")[1]
    assert "base_model" not in front_matter and "custom_code" in front_matter
    assert main([*argv, "--base-model", "me/tiny-base", "--overwrite"]) == 0
    assert ModelCard.load(tmp_path / "m" / "README.md").data.base_model == "me/tiny-base"
    argv = ["push", "model", str(checkpoint), "--repo-id", "a/b/c", "--to-folder", str(tmp_path / "x")]
    assert main(argv) == 2
    assert "malformed repo id" in capsys.readouterr().err and not (tmp_path / "x").exists()


def test_cli_push_offline_is_a_clear_error(stage0_dir, capsys, monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "is_offline_mode", lambda: True)  # the real HfApi, blocked
    assert main(["push", "codebook", str(stage0_dir), "--repo-id", "me/codebook"]) == 2
    assert "could not push to me/codebook" in capsys.readouterr().err


# --------------------------------------------------------------------------------- needs the Hub
@pytest.mark.slow
def test_dataset_cards_pass_hub_validation(stage0_dir, tiny_corpus, tmp_path):
    hub.export_codebook_repo(stage0_dir, tmp_path / "codebook", repo_id="me/codebook")
    hub.export_corpus_repo(tiny_corpus, tmp_path / "corpus", repo_id="me/corpus")
    for name in ("codebook", "corpus"):
        DatasetCard.load(tmp_path / name / "README.md").validate()  # posts to the Hub's validate-yaml


def test_push_to_hub_names_the_kinds(stage0_dir, tmp_path):
    with pytest.raises(ValueError, match="unknown repo kind 'space'"):
        hub.push_to_hub("space", stage0_dir, local_dir=tmp_path / "out")
    assert hub.push_codebook_to_hub.__name__ == "push_codebook_to_hub"
    direct = hub.push_to_hub("codebook", stage0_dir, local_dir=tmp_path / "a")
    named = hub.push_codebook_to_hub(stage0_dir, local_dir=tmp_path / "b")
    assert listing(direct) == listing(named)
