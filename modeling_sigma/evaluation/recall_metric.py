"""Recall@K as an `evaluate` metric: `evaluate.load(modeling_sigma.evaluation.recall_metric.__file__)`.

>>> import evaluate, modeling_sigma.evaluation.recall_metric as m
>>> recall = evaluate.load(m.__file__)
>>> recall.compute(predictions=[["b", "a"]], references=[["a"]], ks=[1, 2])
{'recall@1': 0.0, 'recall@2': 1.0}
"""

import datasets
import evaluate

from modeling_sigma.evaluation.metrics import DEFAULT_KS, recall_at_k

_DESCRIPTION = "Share of queries with at least one relevant item among their top-K retrieved items."
_KWARGS_DESCRIPTION = """
Args:
    predictions: per query, the retrieved item ids (strings), best first.
    references: per query, the relevant item ids (strings).
    ks: cut-offs (default 1, 5, 10).
Returns:
    {"recall@1": float, "recall@5": float, "recall@10": float}
"""
_CITATION = "Huang et al., Generative Text-to-Image Retrieval via Hierarchical Identifiers and Semantic Internalization, Findings of ACL 2026."


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class SigmaRecall(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {
                    "predictions": datasets.Sequence(datasets.Value("string")),
                    "references": datasets.Sequence(datasets.Value("string")),
                }
            ),
        )

    def _compute(self, predictions, references, ks=DEFAULT_KS):
        return recall_at_k(predictions, [set(r) for r in references], ks)
