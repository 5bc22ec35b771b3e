"""The agents' model folders (quality classifier, topic model): atomic writes, clear errors."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import safetensors.numpy

from acodm.agents.quality import HashedNgramFeaturizer, QualityClassifier, train_quality
from acodm.agents.topic import TopicModel
from acodm.errors import AcodmError, AnnotationError

WORDS = ["river", "stone", "cloud", "market", "engine", "garden", "signal", "harbor", "lantern"]
TEXTS = [" ".join(WORDS[(i + j) % 9] for j in range(8)) + f" item{i % 4}" for i in range(40)]


def quality(folder: Path) -> QualityClassifier:
    feat = HashedNgramFeaturizer(n_features=2**10)
    return train_quality(TEXTS[:20], TEXTS[20:], seed=0, featurizer=feat, epochs=5)


def topic(folder: Path) -> TopicModel:
    model = TopicModel(dim=3, n_init=1, min_df=1, max_df=1.0)
    model.fit(TEXTS, k=3, seed=0)
    return model


# (make a model, its class, its file stem, one array and the shape that does not fit)
KINDS: dict[str, tuple[Callable[[Path], Any], Any, str, str]] = {
    "quality": (quality, QualityClassifier, "quality", "weight"),
    "topic": (topic, TopicModel, "topic", "idf"),
}


@pytest.fixture(params=sorted(KINDS))
def saved(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[Path, Any, str, str]:
    make, cls, stem, array = KINDS[request.param]
    folder = tmp_path / "model"
    make(folder).save(folder)
    return folder, cls, stem, array


def load_error(cls: Any, folder: Path, match: str) -> str:
    with pytest.raises(AnnotationError, match=match) as info:
        cls.load(folder)
    message = str(info.value)
    # an AcodmError prints as one line (`acodm: error: ...`) without a traceback, naming the fix
    assert isinstance(info.value, AcodmError) and "\n" not in message
    assert "save it again" in message and "acodm annotate" in message
    return message


def test_save_is_atomic_and_reloads(saved: tuple[Path, Any, str, str]) -> None:
    folder, cls, stem, _ = saved
    again = cls.load(folder)
    again.save(folder)  # over the old files, each replaced by rename
    assert sorted(p.name for p in folder.iterdir()) == [f"{stem}.json", f"{stem}.safetensors"]
    if isinstance(again, TopicModel):
        np.testing.assert_array_equal(cls.load(folder).assign(TEXTS), again.assign(TEXTS))
    else:
        np.testing.assert_array_equal(cls.load(folder).score(TEXTS), again.score(TEXTS))


def test_missing_folder_or_file(saved: tuple[Path, Any, str, str], tmp_path: Path) -> None:
    folder, cls, stem, _ = saved
    load_error(cls, tmp_path / "nowhere", f"no {stem}.json")
    (folder / f"{stem}.safetensors").unlink()
    load_error(cls, folder, "missing or corrupt")


def test_foreign_file(saved: tuple[Path, Any, str, str]) -> None:
    folder, cls, stem, _ = saved
    meta = json.loads((folder / f"{stem}.json").read_text())
    (folder / f"{stem}.json").write_text(json.dumps({**meta, "format": "acodm-policy"}))
    load_error(cls, folder, r"not an acodm (quality classifier|topic model) manifest")
    (folder / f"{stem}.json").write_text(json.dumps({**meta, "schema_version": 99}))
    load_error(cls, folder, "schema version 99")
    (folder / f"{stem}.json").write_text("[1, 2]")
    load_error(cls, folder, "manifest")


def test_corrupt_files(saved: tuple[Path, Any, str, str]) -> None:
    folder, cls, stem, array = saved
    json_file, tensors_file = folder / f"{stem}.json", folder / f"{stem}.safetensors"
    good_json, good_tensors = json_file.read_text(), tensors_file.read_bytes()
    json_file.write_text(good_json[: len(good_json) // 2])  # truncated
    load_error(cls, folder, "not valid JSON")
    json_file.write_text(good_json)
    tensors_file.write_bytes(good_tensors[: len(good_tensors) // 2])
    load_error(cls, folder, "missing or corrupt")
    arrays = safetensors.numpy.load(good_tensors)
    tensors_file.write_bytes(safetensors.numpy.save({**arrays, array: np.zeros(3)}))
    load_error(cls, folder, "damaged .*shape")
    del arrays[array]
    tensors_file.write_bytes(safetensors.numpy.save(arrays))
    load_error(cls, folder, f"damaged .*missing '{array}'")
    tensors_file.write_bytes(good_tensors)
    meta = json.loads(good_json)
    key = "featurizer" if stem == "quality" else "settings"
    json_file.write_text(json.dumps({k: v for k, v in meta.items() if k != key}))
    load_error(cls, folder, f"missing '{key}'")
    json_file.write_text(json.dumps({**meta, key: {"n_features": "many"}}))
    load_error(cls, folder, "damaged")


def test_a_model_of_an_annotation_folder_names_its_store(
    saved: tuple[Path, Any, str, str], tmp_path: Path
) -> None:
    folder, cls, stem, _ = saved
    inside = tmp_path / "store" / "annotations" / stem
    inside.parent.mkdir(parents=True)
    folder.rename(inside)
    (inside / f"{stem}.safetensors").write_bytes(b"\0" * 7)
    message = load_error(cls, inside, "missing or corrupt")
    assert f"`acodm annotate {tmp_path / 'store'} --overwrite`" in message
