"""Federated datasets: `ClientData`, TFF's SQLite format, the published datasets, synthetic data.

Example::

    from fedsim.simulation import datasets
    train, test = datasets.emnist.load_data(only_digits=True, cache_dir="/data/tff")
    print(len(train.client_ids), train.element_type_structure)
    client = train.create_tf_dataset_for_client(train.client_ids[0])
"""

from fedsim.simulation.datasets import cifar100, emnist, leaf_synthetic, shakespeare, stackoverflow
from fedsim.simulation.datasets.client_data import ClientData, TestClientData
from fedsim.simulation.datasets.download import DownloadError, download_file
from fedsim.simulation.datasets.files import locate_database
from fedsim.simulation.datasets.sql_writer import compress_lzma, to_example, write_sqlite
from fedsim.simulation.datasets.sql_client_data import MalformedDatasetError, SqlClientData

__all__ = [
    "ClientData",
    "DownloadError",
    "MalformedDatasetError",
    "SqlClientData",
    "TestClientData",
    "cifar100",
    "compress_lzma",
    "download_file",
    "emnist",
    "leaf_synthetic",
    "locate_database",
    "shakespeare",
    "stackoverflow",
    "to_example",
    "write_sqlite",
]
