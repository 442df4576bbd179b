"""What crosses the trust boundary: token-sequence codes in a versioned wire format, nothing else."""

from privacysf.exchange.dataset import (
    DATASET_PARTS,
    CodeDataset,
    CodeSpace,
    DatasetLayout,
    check_dataset_stream,
    merge_datasets,
    one_code_space,
    read_dataset,
    split_dataset,
)
from privacysf.exchange.wire import (
    FORMAT_VERSION,
    WIRE_DTYPES,
    CodeBatch,
    decode_codes,
    encode_codes,
    encode_header,
    finer_dtypes,
    grid_to_tokens,
    read_header,
    split_messages,
    tokens_to_grid,
)

__all__ = [
    "DATASET_PARTS",
    "FORMAT_VERSION",
    "WIRE_DTYPES",
    "CodeBatch",
    "CodeDataset",
    "CodeSpace",
    "DatasetLayout",
    "check_dataset_stream",
    "decode_codes",
    "encode_codes",
    "encode_header",
    "finer_dtypes",
    "grid_to_tokens",
    "merge_datasets",
    "one_code_space",
    "read_dataset",
    "read_header",
    "split_dataset",
    "split_messages",
    "tokens_to_grid",
]
