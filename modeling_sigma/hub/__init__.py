"""Publishing on the Hugging Face Hub: the model repo, the stage-0 codebook and corpus dataset repos."""

from .export import (
    export_codebook_repo,
    export_corpus_repo,
    export_model_repo,
    push_codebook_to_hub,
    push_corpus_to_hub,
    push_model_to_hub,
    upload_repo_folder,
)

__all__ = [
    "export_codebook_repo",
    "export_corpus_repo",
    "export_model_repo",
    "push_codebook_to_hub",
    "push_corpus_to_hub",
    "push_model_to_hub",
    "upload_repo_folder",
]
