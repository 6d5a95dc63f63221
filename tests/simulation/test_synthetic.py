import numpy as np
import pytest

from fedsim import simulation


def test_emnist_like_data_is_seeded_shaped_and_skewed():
    first = simulation.emnist_like_client_arrays(5, seed=3)
    again = simulation.emnist_like_client_arrays(5, seed=3)
    for (x1, y1), (x2, y2) in zip(first, again):
        np.testing.assert_array_equal(x1, x2)
        np.testing.assert_array_equal(y1, y2)
    for x, y in first:
        assert x.shape[1:] == (28, 28, 1) and x.dtype == np.float32 and y.dtype == np.int32
        assert 80 <= len(y) <= 120 and y.min() >= 0 and y.max() < 62
        top_three = np.sort(np.bincount(y, minlength=62))[-3:].sum()
        assert top_three / len(y) > 0.6  # most labels from a few classes: non-IID
    datasets = simulation.emnist_like_client_datasets(2, batch_size=20)
    assert datasets[0].element_spec["x"].shape.as_list() == [None, 28, 28, 1]
    with pytest.raises(ValueError, match="num_clients"):
        simulation.emnist_like_client_arrays(0)
