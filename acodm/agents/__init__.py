"""Offline annotation for the multi-agent scores (METHOD.md, "Multi-agent scores")."""

from acodm.agents.quality import (
    HashedNgramFeaturizer,
    QualityClassifier,
    quantile_bins,
    roc_auc,
    train_quality,
)
from acodm.agents.scorers import (
    HFSequenceClassifier,
    hf_sequence_classifier,
    load_scorer,
    scorer_identity,
)
from acodm.agents.topic import TopicModel, kmeans, nmi, purity, sentence_embeddings

__all__ = [
    "HFSequenceClassifier",
    "HashedNgramFeaturizer",
    "QualityClassifier",
    "TopicModel",
    "hf_sequence_classifier",
    "kmeans",
    "load_scorer",
    "nmi",
    "purity",
    "quantile_bins",
    "roc_auc",
    "scorer_identity",
    "sentence_embeddings",
    "train_quality",
]
