"""Stages 1–3 (paper section 3.2): backbone building, examples, collator, trainer, soft-label teachers and the
YAML recipe runner used by `recipes/stage*.py`."""
