"""Node ids, shared by the trainer and the scorer.

:class:`IdMap` turns the user's node ids (integers or strings) into contiguous indices and back.
Both stages map ids through here, so the same bad id gets the same message everywhere.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numba
import numpy as np
import polars as pl
import torch

from ncnc.core.errors import InputError, examples
from ncnc.core.hashing import KeyTable
from ncnc.core.tables import read_parquet_table


def id_kind(dtype: pl.DataType) -> str | None:
    """``"integer"`` or ``"string"`` for a column that can hold node ids, else ``None``."""
    if dtype.is_integer():
        return "integer"
    if dtype in (pl.String, pl.Categorical) or isinstance(dtype, pl.Enum):
        return "string"
    return None


def as_id_series(values: pl.Series) -> pl.Series:
    """Cast an id column to the canonical dtype of its kind (Int64 or String)."""
    kind = id_kind(values.dtype)
    if kind is None:
        raise TypeError(f"node ids must be integers or strings, got dtype {values.dtype}")
    return values.cast(pl.Int64 if kind == "integer" else pl.String, strict=True)


@dataclass(frozen=True)
class IdMap:
    """Index -> original node id.

    ``ids[i]`` is the user's id of node ``i``; ``ids`` is a polars Series of dtype Int64 or String,
    without nulls or duplicates. Build one with :meth:`from_ids`, which sorts the distinct ids, so
    the same set of ids always gives the same indices.
    """

    ids: pl.Series

    def __post_init__(self) -> None:
        if self.ids.dtype not in (pl.Int64, pl.String):
            raise TypeError(f"IdMap ids must be Int64 or String, got {self.ids.dtype}")
        if self.ids.null_count() or self.ids.n_unique() != self.ids.len():
            raise ValueError("IdMap ids must be distinct and not null")

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, IdMap):
            return NotImplemented
        return self.ids.dtype == other.ids.dtype and self.ids.equals(other.ids)

    @classmethod
    def from_ids(cls, ids: pl.Series | Iterable[int] | Iterable[str]) -> IdMap:
        """The map over the distinct values of ``ids``, in sorted order (integer or string ids)."""
        series = ids if isinstance(ids, pl.Series) else pl.Series(list(ids))
        series = as_id_series(series.drop_nulls())
        return cls(series.unique().sort().rename("id"))

    def __len__(self) -> int:
        return self.ids.len()

    @property
    def is_string(self) -> bool:
        """True when the original ids are strings, False when they are integers."""
        return self.ids.dtype == pl.String

    @property
    def kind(self) -> str:
        """``"string"`` or ``"integer"``, for error messages."""
        return "string" if self.is_string else "integer"

    def to_index(self, values: pl.Series, *, what: str) -> torch.Tensor:
        """Map original ids to node indices (int64 tensor of the same length).

        ``what`` names the input in errors, e.g. ``"pairs file x.parquet column src"``.

        Raises:
            InputError: the values are of the other id kind, or some are not in the map (the message
                gives how many distinct ids are unknown and the first few).
        """
        index = self.indices(values, what=what)
        refuse_unknown(values, index, what=what)
        return torch.from_numpy(index)

    def lookup(self, values: pl.Series, *, what: str) -> tuple[torch.Tensor, torch.Tensor]:
        """Map original ids to node indices without raising on unknown ids.

        Returns:
            ``(index, known)``: int64 and bool tensors of the same length as ``values``; ``index``
            is -1 where ``known`` is False (an id that is not a node, or a null).

        Raises:
            InputError: the values are of the other id kind (``what`` names the input).
        """
        index = self.indices(values, what=what)
        # numpy, not torch, for the element-wise work: tiny torch ops pay a thread-pool handoff.
        return torch.from_numpy(index), torch.from_numpy(index >= 0)

    def indices(self, values: pl.Series, *, what: str) -> np.ndarray:
        """The node index of each of ``values`` as an int64 array, -1 where it is no node (or
        null): the work of :meth:`lookup`, which batch jobs call per batch.

        Dense integer ids (spanning at most 8x their count) take one compiled pass of array
        lookups; other ids a hash index (open addressing, compiled). Both are built once
        (by the first call), so the cost per call grows with
        ``len(values)`` only, not with the size of the graph. Integers outside the Int64 range
        (uint64 above 2^63 - 1) are unknown ids, like any other id that is not a node.

        Raises:
            InputError: the values are of the other id kind (``what`` names the input).
        """
        kind = id_kind(values.dtype)
        if values.dtype == pl.Null or values.len() == 0:
            kind = self.kind  # an empty or all-null column carries no kind of its own
        if kind != self.kind:
            raise InputError(
                f"{what}: ids are {kind or values.dtype} but the graph's node ids are {self.kind}"
                f" (examples: {examples(values)})"
            )
        values, valid = _canonical(values, self.ids.dtype)
        dense = self._dense_table()
        if dense is None:
            return self._hash_index().find(values, valid)
        low, table = dense
        index = np.empty(values.len(), dtype=np.int64)
        _dense_find(table, np.int64(low), values.to_numpy(), index)
        if valid is not None:
            index[~valid] = -1
        return index

    def _hash_index(self) -> _HashIndex:
        if not hasattr(self, "_hashed"):
            object.__setattr__(self, "_hashed", _HashIndex(self.ids))
        return self._hashed

    def _dense_table(self) -> tuple[int, np.ndarray] | None:
        """For integer ids spanning at most 8 x their count: ``(min id, index by id - min)``.

        Built on first use and kept; a lookup is then one gather.
        """
        if not hasattr(self, "_dense"):
            dense = None
            if not self.is_string and len(self):
                low, high = int(self.ids.min()), int(self.ids.max())
                if high - low < 8 * len(self) + 1024:
                    table = np.full(high - low + 1, -1, dtype=np.int32 if len(self) < 2**31
                                    else np.int64)
                    table[self.ids.to_numpy() - low] = np.arange(len(self))
                    dense = (low, table)
            object.__setattr__(self, "_dense", dense)
        return self._dense

    def to_original(self, index: torch.Tensor) -> pl.Series:
        """Map node indices (any shape, flattened) back to the original ids."""
        flat = index.detach().reshape(-1).to("cpu", torch.int64)
        if flat.numel() and (int(flat.min()) < 0 or int(flat.max()) >= len(self)):
            raise IndexError(
                f"IdMap.to_original: indices must lie in [0, {len(self)}),"
                f" got min {int(flat.min())} and max {int(flat.max())}"
            )
        return self.ids.gather(flat.numpy())

    def save(self, path: Path) -> None:
        """Write a Parquet file with columns ``index`` (Int64) and ``id``."""
        frame = pl.DataFrame(
            {"index": pl.int_range(len(self), dtype=pl.Int64, eager=True), "id": self.ids}
        )
        frame.write_parquet(path)

    @classmethod
    def load(cls, path: Path) -> IdMap:
        """Read a file written by :meth:`save` (plain Parquet; nothing is unpickled)."""
        frame = read_parquet_table(path, columns=["index", "id"], what="id map file")
        what = f"id map file {path}"
        if not frame["index"].dtype.is_integer() or id_kind(frame["id"].dtype) is None:
            raise InputError(
                f"{what}: column index must be integer and column id integer or string, got "
                f"{frame['index'].dtype} and {frame['id'].dtype}"
            )
        frame = frame.sort("index")
        expected = pl.int_range(frame.height, dtype=pl.Int64, eager=True)
        bad = frame.filter(frame["index"].cast(pl.Int64) != expected)
        if bad.height:
            raise InputError(
                f"{what} column index: must be 0..{frame.height - 1} exactly once each, found "
                f"{examples(bad['index'])} out of place"
            )
        ids = as_id_series(frame["id"]).rename("id")
        duplicated = ids.filter(ids.is_duplicated()).unique(maintain_order=True)
        if duplicated.len():
            raise InputError(
                f"{what} column id: {duplicated.len()} id(s) appear more than once: "
                f"{examples(duplicated)}"
            )
        return cls(ids)


def refuse_unknown(values: pl.Series, index: np.ndarray, *, what: str) -> None:
    """Raise :class:`InputError` when ``index`` (from :meth:`IdMap.indices` of ``values``) holds
    an id that is no node: how many distinct ones, and the first few."""
    if (index < 0).any():
        unknown = values.filter(pl.Series(index < 0)).unique(maintain_order=True)
        raise InputError(
            f"{what}: {unknown.len()} id(s) are not nodes of the graph: {examples(unknown)}"
        )


_INT64_MAX = 2**63 - 1


@numba.njit(nogil=True, cache=True)
def _dense_find(table, low, values, out) -> None:
    """``out[i] = table[values[i] - low]``, -1 outside the table: one pass, no temporaries."""
    size = np.uint64(table.size)
    for i in range(values.size):
        # Wrapping subtraction: exactly the ids in [low, low + size) land in [0, size).
        offset = np.uint64(values[i]) - np.uint64(low)
        out[i] = table[offset] if offset < size else -1


def _canonical(values: pl.Series, dtype: pl.DataType) -> tuple[pl.Series, np.ndarray | None]:
    """``values`` in the map's dtype (Int64 or String) with nulls filled, and a bool array of
    the entries that can be ids at all (not null; for integers, inside the Int64 range), or
    None when all can (the common case, checked without a pass over the values)."""
    if values.dtype == dtype and not values.null_count():
        return values, None
    valid = ~values.is_null().to_numpy()
    if dtype == pl.Int64 and values.dtype == pl.UInt64:
        inside = (values <= _INT64_MAX).fill_null(False).to_numpy()
        valid &= inside
        values = pl.Series(values.name, np.where(inside, values.fill_null(0).to_numpy(), 0)
                           .astype(np.int64))
    values = values.cast(dtype)
    return values.fill_null(0 if dtype == pl.Int64 else ""), valid


class _HashIndex:
    """Id -> index through a :class:`~ncnc.core.hashing.KeyTable`, built once per map.

    Integer ids are their own keys (exact). String ids are keyed by polars' 64-bit hash, and a
    hit is confirmed by comparing the strings, so an unknown id whose hash collides with a node's
    is still unknown; should two of the map's own ids share a hash, the map binary-searches its
    sorted ids instead.
    """

    def __init__(self, ids: pl.Series) -> None:
        self.ids = ids
        self.strings = ids.dtype == pl.String
        self.table = KeyTable(len(ids))
        # Positions are insertion order, i.e. node indices; -2 marks a repeated key.
        self.usable = bool((self.table.insert(self._keys(ids)) >= 0).all())
        self.sorted = bool(ids.is_sorted())

    def _keys(self, values: pl.Series) -> np.ndarray:
        if self.strings:
            return values.hash(seed=0).to_numpy()
        return values.to_numpy().view(np.uint64)

    def find(self, values: pl.Series, valid: np.ndarray | None) -> np.ndarray:
        """Node indices of ``values`` (-1 where unknown or not ``valid``; None: all valid)."""
        if len(self.ids) == 0:
            return np.full(values.len(), -1, dtype=np.int64)
        if not self.usable:
            return self._search(values, valid)
        index = self.table.find(self._keys(values), valid)
        if self.strings:
            hit = index >= 0
            same = (self.ids.gather(np.where(hit, index, 0)) == values).to_numpy()
            index[hit & ~same] = -1
        return index

    def _search(self, values: pl.Series, valid: np.ndarray | None) -> np.ndarray:
        ids = self.ids if self.sorted else self.ids.sort()
        order = None if self.sorted else self.ids.arg_sort().to_numpy()
        position = ids.search_sorted(values).clip(upper_bound=len(ids) - 1).to_numpy().astype(
            np.int64)
        found = (ids.gather(position) == values).to_numpy()
        if valid is not None:
            found &= valid
        index = np.where(found, position if order is None else order[position], -1)
        return index.astype(np.int64)
