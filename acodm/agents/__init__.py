"""Offline annotation for the multi-agent scores (METHOD.md, "Multi-agent scores")."""

from acodm.agents.quality import (
    HashedNgramFeaturizer,
    QualityClassifier,
    quantile_bins,
    roc_auc,
    train_quality,
)
from acodm.agents.topic import TopicModel, kmeans, nmi, purity, sentence_embeddings

__all__ = [
    "HashedNgramFeaturizer",
    "QualityClassifier",
    "TopicModel",
    "kmeans",
    "nmi",
    "purity",
    "quantile_bins",
    "roc_auc",
    "sentence_embeddings",
    "train_quality",
]
