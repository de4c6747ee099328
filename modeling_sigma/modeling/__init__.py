"""The model: configuration, `SigmaForRetrieval`, processor, identifier layout, trie and searchable index.

Every file of this folder travels with a checkpoint as remote code (`trust_remote_code=True`), so each imports
only the standard library, torch, transformers, safetensors and its siblings (`tests/test_remote_code.py`).
"""
