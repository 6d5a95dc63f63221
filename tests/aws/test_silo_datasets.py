"""A silo's named datasets from `--data` values: NAME=PATH, a bare path, and a TFF-format file's splits."""

import numpy as np
import pytest

from fedsim.aws.silo import load_silo_datasets
from fedsim.simulation.datasets.sql_writer import write_sqlite


def rows(dataset):
    return sorted(float(e["x"].numpy().sum()) for e in dataset)


def test_named_npz_files_and_sqlite_splits(tmp_path):
    rng = np.random.RandomState(0)
    train, test = rng.randn(6, 3).astype(np.float32), rng.randn(4, 3).astype(np.float32)
    np.savez(tmp_path / "train.npz", x=train)
    np.savez(tmp_path / "test.npz", x=test)
    named = load_silo_datasets([f"train={tmp_path / 'train.npz'}", f"test={tmp_path / 'test.npz'}"])
    assert sorted(named) == ["test", "train"]
    assert rows(named["test"]) == pytest.approx(sorted(test.sum(axis=1)))
    assert sorted(load_silo_datasets([str(tmp_path / "train.npz")])) == ["train"]  # a bare path is `train`

    path = str(tmp_path / "silo.sqlite")
    write_sqlite(path, {"train": {"c1": {"x": train}}, "test": {"c1": {"x": test}}})
    splits = load_silo_datasets([path])  # no --split: one dataset per split in the file
    assert sorted(splits) == ["test", "train"]
    assert rows(splits["train"]) == pytest.approx(sorted(train.sum(axis=1)), rel=1e-6)
    assert sorted(load_silo_datasets([path], split="test")) == ["train"]  # --split: that split, as the training data

    with pytest.raises(ValueError, match="dataset 'train' is given twice"):
        load_silo_datasets([str(tmp_path / "train.npz"), f"train={tmp_path / 'test.npz'}"])
    with pytest.raises(ValueError, match="a dataset name is letters"):
        load_silo_datasets([f"bad name={tmp_path / 'test.npz'}"])
