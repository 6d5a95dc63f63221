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


def test_pip_wheel_leaves_no_build_folders_in_the_source_tree(tmp_path):
    """`pip install .` builds through `packaging/fedsim_build.py` on a scratch copy: the tree stays clean."""
    import pathlib
    import shutil
    import subprocess
    import sys
    import zipfile

    root = pathlib.Path(__file__).resolve().parents[1]
    tracked = subprocess.run(["git", "ls-files"], cwd=root, capture_output=True, text=True, check=True).stdout.split()
    if not tracked:  # not a git checkout: copy what matters
        tracked = [str(p.relative_to(root)) for p in root.rglob("*") if p.is_file() and ".venv" not in p.parts]
    source = tmp_path / "source"
    for name in tracked:
        (source / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(root / name, source / name)
    before = sorted(p.name for p in source.iterdir())
    completed = subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
                                "--wheel-dir", str(tmp_path / "wheels"), str(source)], capture_output=True, text=True, timeout=600)
    assert completed.returncode == 0, completed.stderr[-2000:]
    assert sorted(p.name for p in source.iterdir()) == before  # no build/, no fedsim.egg-info/
    (wheel,) = (tmp_path / "wheels").glob("fedsim-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "fedsim/aws/server.yaml" in names and "fedsim/core/__init__.py" in names
    assert not any(name.startswith(("tests/", "packaging/")) for name in names)
