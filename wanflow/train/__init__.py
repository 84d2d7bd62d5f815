"""Training: the dataset (metadata, media checks, sizes and buckets) a training stage reads.

Importing this package is cheap and torch-free: media are opened when a dataset is loaded.
"""

from wanflow.train.buckets import (
    BucketRow,
    Sizing,
    Target,
    bucket_table,
    format_bucket_table,
)
from wanflow.train.dataset import (
    COLUMNS,
    Dataset,
    DatasetError,
    InputRef,
    Sample,
    load_dataset,
)

__all__ = ["COLUMNS", "BucketRow", "Dataset", "DatasetError", "InputRef", "Sample", "Sizing", "Target",
           "bucket_table", "format_bucket_table", "load_dataset"]
