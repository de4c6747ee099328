"""SIGMA: generative text-to-image retrieval with hierarchical identifiers.

The sub-packages follow the pipeline of the paper (see docs/ARCHITECTURE.md):
`data` → `identifiers` (stage 0) → `modeling` (the remote-code model) → `training` (stages 1–3) →
`evaluation` → `open_set` (adding images after training) → `hub` (publishing).
"""

import importlib

# Lazy exports: `import modeling_sigma.data.corpus` should not pay for importing the model stack.
_LAZY_EXPORTS = {
    "SigmaConfig": "modeling.configuration_sigma",
    "SigmaForRetrieval": "modeling.modeling_sigma",
    "SigmaPreTrainedModel": "modeling.modeling_sigma",
    "SigmaRetrievalOutput": "modeling.modeling_sigma",
    "SigmaProcessor": "modeling.processing_sigma",
    "SigmaIndex": "modeling.index",
    "SigmaIdentifierTrie": "modeling.trie",
    "SigmaTrieLogitsProcessor": "modeling.trie",
    "SigmaIdentifierLayout": "modeling.identifier_layout",
    "build_sigma_model": "training.backbone",
    "SigmaIdentifierBuilder": "identifiers.builder",
    "SigmaIdentifierBuilderConfig": "identifiers.builder",
    "load_codebook": "identifiers.builder",
}


def __getattr__(name):
    if name in _LAZY_EXPORTS:
        return getattr(importlib.import_module(f".{_LAZY_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = list(_LAZY_EXPORTS)
