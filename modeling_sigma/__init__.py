"""SIGMA: generative text-to-image retrieval with hierarchical identifiers."""

import importlib

# Lazy exports: `import modeling_sigma.corpus` should not pay for importing the model stack.
_LAZY_EXPORTS = {
    "SigmaConfig": "configuration_sigma",
    "SigmaForRetrieval": "modeling_sigma",
    "SigmaPreTrainedModel": "modeling_sigma",
    "SigmaRetrievalOutput": "modeling_sigma",
    "SigmaProcessor": "processing_sigma",
    "SigmaIdentifierTrie": "trie",
    "SigmaTrieLogitsProcessor": "trie",
    "build_sigma_model": "embedded_backbone",
    "SigmaIdentifierLayout": "identifier_tokens",
    "SigmaIdentifierBuilder": "stage0_identifiers",
    "SigmaIdentifierBuilderConfig": "stage0_identifiers",
    "load_codebook": "stage0_identifiers",
}


def __getattr__(name):
    if name in _LAZY_EXPORTS:
        return getattr(importlib.import_module(f".{_LAZY_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = list(_LAZY_EXPORTS)
