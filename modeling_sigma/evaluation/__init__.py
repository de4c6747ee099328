"""Evaluation (paper section 4): Recall@K, the two-tower baseline, and retrieval of a SIGMA checkpoint on a
corpus split."""
