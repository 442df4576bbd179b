"""What crosses the trust boundary: token-sequence codes in a versioned wire format, nothing else."""

from privacysf.exchange.wire import (
    FORMAT_VERSION,
    WIRE_DTYPES,
    CodeBatch,
    decode_codes,
    encode_codes,
    grid_to_tokens,
    split_messages,
    tokens_to_grid,
)

__all__ = [
    "FORMAT_VERSION",
    "WIRE_DTYPES",
    "CodeBatch",
    "decode_codes",
    "encode_codes",
    "grid_to_tokens",
    "split_messages",
    "tokens_to_grid",
]
