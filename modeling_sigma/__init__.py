"""SIGMA: generative text-to-image retrieval with hierarchical identifiers."""
