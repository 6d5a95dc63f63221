"""`import fedsim` reaches every package (lazily) and TFF's newer spellings, as TFF's top level does."""

import textwrap

import tensorflow as tf


def test_packages_are_reachable_after_import_fedsim_and_loaded_on_first_use(tmp_path, python_subprocess):
    completed = python_subprocess(textwrap.dedent("""
        import sys
        import fedsim as tff
        loaded_at_import = sorted(m for m in ("fedsim.learning", "fedsim.simulation", "fedsim.aggregators", "fedsim.aws", "boto3")
                                  if m in sys.modules)
        assert callable(tff.learning.algorithms.build_weighted_fed_avg)
        assert tff.simulation.datasets.TestClientData is not None
        assert tff.aggregators.MeanFactory is not None
        assert tff.aws.LocalStack is not None
        assert "learning" in dir(tff)
        print(loaded_at_import)
    """), cwd=str(tmp_path))
    assert completed.stdout.strip().splitlines()[-1] == "[]"


def test_tff_087_spellings_of_the_tensorflow_entry_points():
    import fedsim as tff
    import fedsim.tensorflow

    assert fedsim.tensorflow is tff.tensorflow

    @tff.tensorflow.computation(tf.int32, tf.int32)
    def add(x, y):
        return x + y

    assert add(2, 3) == 5
    assert tff.tensorflow.to_type((tf.float32, [2])) == tff.to_type((tf.float32, [2])) == tff.TensorType(tf.float32, [2])
    assert str(add.type_signature) == "(<x=int32,y=int32> -> int32)"
