"""Stage 0, identifier construction (paper section 3.1): frozen encoders, Semi-NMF, the hierarchical builder
and the stage-0 codebook folder (a dataset on the Hub)."""
