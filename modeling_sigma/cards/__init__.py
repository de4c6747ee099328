"""README cards of the dataset repos SIGMA publishes (the model card is `model_card.md` at the repo root)."""

from .dataset_cards import SplitFiles, codebook_card, corpus_card, dataset_card_data, size_category

__all__ = ["SplitFiles", "codebook_card", "corpus_card", "dataset_card_data", "size_category"]
