"""Publishing on the Hugging Face Hub: the model repo, the stage-0 codebook and corpus dataset repos.

Every push is two steps. `export_*_repo(source, folder)` writes exactly the files of the repo into a local
folder (`model_repo`, `dataset_repos`, written atomically through `repo_folder`); `upload_repo_folder(folder,
repo_id, repo_type=...)` sends it with `HfApi.create_repo(exist_ok=True)` and `HfApi.upload_folder`.
`push_to_hub(kind, source, ...)` (`upload`) does both through a temporary folder, or only the first when given
`local_dir` (no network: the folder is the repo as it would be on the Hub, and `datasets.load_dataset(folder)`,
`AutoModel.from_pretrained(folder, trust_remote_code=True)` and `load_builder_folder(folder)` read it):

    push_model_to_hub("outputs/tiny-shapes/stage3", "you/sigma-tiny-shapes")
    push_codebook_to_hub("outputs/tiny-shapes/stage0", "you/sigma-tiny-shapes-codebook", private=True)
    push_corpus_to_hub("tiny-shapes", "you/tiny-shapes", local_dir="exports/tiny-shapes")  # writes, no upload

Repo layouts:

    model:    the save_pretrained files (weights, config, remote code, processor, sigma_index/) + README.md
    codebook: data/codebook-00000-of-00001.parquet (image_id, identifier, codes), quantizer.safetensors,
              stage0_config.json, README.md
    corpus:   data/<split>-00000-of-0000N.parquet (image with embedded bytes, image_id, captions), README.md

Bad input (a missing or incomplete source, a malformed repo id, a target that overlaps the source) raises
before anything is written.
"""

from . import dataset_repos, model_repo, repo_folder, upload
from .dataset_repos import export_codebook_repo as export_codebook_repo
from .dataset_repos import export_corpus_repo as export_corpus_repo
from .model_repo import export_model_repo as export_model_repo
from .repo_folder import check_repo_id as check_repo_id
from .upload import push_codebook_to_hub as push_codebook_to_hub
from .upload import push_corpus_to_hub as push_corpus_to_hub
from .upload import push_model_to_hub as push_model_to_hub
from .upload import push_to_hub as push_to_hub
from .upload import upload_repo_folder as upload_repo_folder

__all__ = [*dataset_repos.__all__, *model_repo.__all__, *repo_folder.__all__, *upload.__all__]
