"""Parquet tables with fixed-size vector columns and JSON metadata in the file footer."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

METADATA_KEY = b"dva"


def vector_column(values: np.ndarray, dtype: pa.DataType = pa.float32()) -> pa.FixedSizeListArray:
    """A (N, D) array as a fixed-size list column of width D."""
    values = np.asarray(values)
    flat = values.reshape(len(values), -1)
    width = flat.shape[1]
    return pa.FixedSizeListArray.from_arrays(pa.array(flat.reshape(-1), type=dtype), width)


def column_matrix(table: pa.Table, name: str) -> np.ndarray:
    """A fixed-size list column back as an (N, D) numpy array."""
    column = table.column(name).combine_chunks()
    width = column.type.list_size
    return column.flatten().to_numpy(zero_copy_only=False).reshape(len(column), width)


def write_table(path: Path, columns: dict[str, pa.Array | list | np.ndarray], metadata: dict) -> None:
    """Write a Parquet file whose footer carries `metadata` as JSON under the key `dva`."""
    table = pa.table(columns)
    schema_metadata = dict(table.schema.metadata or {})
    schema_metadata[METADATA_KEY] = json.dumps(metadata, sort_keys=True).encode()
    pq.write_table(table.replace_schema_metadata(schema_metadata), str(path))


def read_table(path: Path) -> tuple[pa.Table, dict]:
    """Read a Parquet file written by `write_table` and its `dva` metadata."""
    table = pq.read_table(str(path))
    raw = (table.schema.metadata or {}).get(METADATA_KEY, b"{}")
    return table, json.loads(raw)
