"""Dataset preparation for Prefix-RFT: training data with demonstrations and the paper's eval sets.

Command line: ``python -m prefix_rft.data prepare {openr1,generic,eval} ...`` (see docs/DATA_AND_EVAL.md).
The data contract checks (:func:`validate_rows`, :func:`validate_parquet`) are importable from here.
"""

from prefix_rft.data.contract import (
    DEMO_KEY,
    INSTRUCTION,
    ContractError,
    read_parquet_rows,
    row_problems,
    validate_parquet,
    validate_rows,
)

__all__ = [
    "DEMO_KEY",
    "INSTRUCTION",
    "ContractError",
    "read_parquet_rows",
    "row_problems",
    "validate_parquet",
    "validate_rows",
]
