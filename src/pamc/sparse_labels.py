"""Observed labels of huge label sets (OpenImages: 1.7M images x 5,000 classes), stored sparsely.

`SparseLabels` keeps only the observed entries and offers the interface of `pamc.labels.LabelStore`
(`batch`, `apply`, `num_edits`, `state_dict`, `load_state_dict`, `shape`, `len`), so the engine can
hold either.  Values use the pamc encoding: 1 positive, -1 negative, (-1, 0) soft negative; every
entry not stored is 0 (unobserved).

Layout (why it stays small):
* the labels as read (`initial`) form a CSR matrix: `indptr` (int64, one per row), `cols` (int32)
  and `initial` (int8) per entry, plus `values` (float32), the current value of the same entries,
  which edits overwrite in place: 9 bytes per observed entry, 8 per row (1.7M x 10 entries: ~0.17 GB);
* edits that observe an entry the CSR lacks (LL-Cp turning an unobserved 0 into a 1) go to an
  overlay of sorted keys (row * C + col, int64) with float32 values: 12 bytes per new entry.  The
  overlay has two levels so that an edit costs O(small level) rather than O(all edits): new keys are
  inserted into a small sorted level, which is merged into the large one once it holds
  `merge_threshold` keys.  Keys are unique across the CSR and both levels, so lookups need no
  precedence rules.  An overlay entry edited back to 0 stays stored with value 0 (unobserved).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from .errors import PamcError


def _ranges(starts: np.ndarray, ends: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Concatenated aranges [starts[i], ends[i]) and, for each position, the i it came from."""
    lengths = ends - starts
    owner = np.repeat(np.arange(len(starts)), lengths)
    first = np.cumsum(lengths) - lengths  # where range i begins in the output
    return np.arange(int(lengths.sum()), dtype=np.int64) + np.repeat(starts - first, lengths), owner


def _find(sorted_keys: np.ndarray, queries: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(hit mask, positions) of `queries` in the sorted unique array `sorted_keys`."""
    pos = np.searchsorted(sorted_keys, queries)
    hit = pos < len(sorted_keys)
    hit[hit] = sorted_keys[pos[hit]] == queries[hit]
    return hit, pos


def _last_unique(keys: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sorted unique keys, each with the value of its last occurrence (later edits win)."""
    reversed_keys = keys[::-1]
    unique, first = np.unique(reversed_keys, return_index=True)
    return unique, values[::-1][first]


def _tensor_to_numpy(x) -> np.ndarray:
    return x.detach().cpu().numpy() if torch.is_tensor(x) else np.asarray(x)


class SparseLabels:
    """Observed labels with only the observed entries stored; a drop-in for `LabelStore`."""

    #: keys in the small overlay level before it is merged into the large one
    merge_threshold: int = 1 << 18

    def __init__(self, indptr, cols, values, num_classes: int):
        indptr = np.asarray(indptr, dtype=np.int64)
        cols = np.asarray(cols, dtype=np.int32)
        values = np.asarray(values)
        if indptr.ndim != 1 or len(indptr) < 1 or indptr[0] != 0 or indptr[-1] != len(cols) or (np.diff(indptr) < 0).any():
            raise PamcError("sparse labels: indptr must start at 0, never decrease and end at the number of entries")
        if len(values) != len(cols):
            raise PamcError(f"sparse labels: {len(cols)} column indices but {len(values)} values")
        if len(cols) and (cols.min() < 0 or cols.max() >= num_classes):
            raise PamcError(f"sparse labels: column indices must lie in [0, {num_classes})")
        if not np.isin(values, (1, -1)).all():
            raise PamcError("sparse labels: stored entries must be 1 (positive) or -1 (negative); leave unobserved entries out")
        self.num_classes = int(num_classes)
        self.indptr, self.cols = indptr, cols
        self.initial = values.astype(np.int8)
        self.values = values.astype(np.float32)
        self._clear_overlay()

    # -- construction -------------------------------------------------------------------------
    @classmethod
    def from_coo(cls, rows, cols, values, shape: tuple[int, int]) -> "SparseLabels":
        """Entries given as (row, col, value) triples in any order; 0 values are dropped.

        A (row, col) pair given twice with different values is one observation: positive wins
        (OpenImages lists some labels once per verification source).
        """
        num_rows, num_classes = int(shape[0]), int(shape[1])
        rows, cols, values = (np.asarray(a).ravel() for a in (rows, cols, values))
        if not (len(rows) == len(cols) == len(values)):
            raise PamcError("sparse labels: rows, cols and values must have the same length")
        if len(rows) and (rows.min() < 0 or rows.max() >= num_rows):
            raise PamcError(f"sparse labels: row indices must lie in [0, {num_rows})")
        keep = values != 0
        keys = rows[keep].astype(np.int64) * num_classes + cols[keep]
        values = values[keep]
        order = np.lexsort((-values, keys))  # by key, positive first
        keys, values = keys[order], values[order]
        first = np.ones(len(keys), dtype=bool)
        first[1:] = keys[1:] != keys[:-1]
        keys, values = keys[first], values[first]
        indptr = np.zeros(num_rows + 1, dtype=np.int64)
        np.cumsum(np.bincount(keys // num_classes, minlength=num_rows), out=indptr[1:])
        return cls(indptr, keys % num_classes, values, num_classes)

    @classmethod
    def from_dense(cls, matrix) -> "SparseLabels":
        matrix = np.asarray(matrix)
        rows, cols = np.nonzero(matrix)
        return cls.from_coo(rows, cols, matrix[rows, cols], matrix.shape)

    # -- the LabelStore interface -------------------------------------------------------------
    @property
    def shape(self) -> tuple[int, int]:
        return (len(self.indptr) - 1, self.num_classes)

    def __len__(self) -> int:
        return len(self.indptr) - 1

    def batch(self, index) -> torch.Tensor:
        """Dense float32 B x C labels of the rows `index` (dataset indices)."""
        index = _tensor_to_numpy(index).astype(np.int64).ravel()
        out = np.zeros((len(index), self.num_classes), dtype=np.float32)
        pos, owner = _ranges(self.indptr[index], self.indptr[index + 1])
        out[owner, self.cols[pos]] = self.values[pos]
        for keys, vals in self._levels():
            pos, owner = _ranges(np.searchsorted(keys, index * self.num_classes),
                                 np.searchsorted(keys, (index + 1) * self.num_classes))
            out[owner, keys[pos] % self.num_classes] = vals[pos]
        return torch.from_numpy(out)

    def apply(self, index, mask, values) -> int:
        """Write `values` where `mask` is set, for the rows `index`; returns the number of edits.

        A row repeated in `index` (padding under DDP) takes the masked entries of every copy, the
        later copy winning where both write the same entry.
        """
        index = _tensor_to_numpy(index).astype(np.int64).ravel()
        mask = _tensor_to_numpy(mask).astype(bool)
        values = _tensor_to_numpy(values).astype(np.float32)
        b, c = np.nonzero(mask)
        if len(b) == 0:
            return 0
        keys, vals = _last_unique(index[b] * self.num_classes + c, values[b, c])
        rows = np.unique(keys // self.num_classes)
        pos, owner = _ranges(self.indptr[rows], self.indptr[rows + 1])
        base_keys = rows[owner] * self.num_classes + self.cols[pos]
        order = np.argsort(base_keys)
        hit, where = _find(base_keys[order], keys)
        self.values[pos[order[where[hit]]]] = vals[hit]
        self._upsert(keys[~hit], vals[~hit])
        return len(b)

    def num_edits(self) -> int:
        added = sum(int(np.count_nonzero(vals)) for _, vals in self._levels())
        return int(np.count_nonzero(self.values != self.initial)) + added

    def state_dict(self) -> dict[str, torch.Tensor]:
        self._merge()
        arrays = {"shape": np.asarray(self.shape, dtype=np.int64), "indptr": self.indptr, "cols": self.cols,
                  "initial": self.initial, "values": self.values,
                  "added_keys": self._big_keys, "added_values": self._big_vals}
        return {name: torch.from_numpy(array.copy()) for name, array in arrays.items()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        if "indptr" not in state:
            raise PamcError("checkpoint holds dense labels but this dataset uses sparse ones; resume with the same dataset")
        shape = tuple(int(x) for x in state["shape"])
        if shape != self.shape:
            raise PamcError(f"checkpoint labels have shape {shape}, data has {self.shape}; resume with the same dataset")
        self.indptr = state["indptr"].numpy().astype(np.int64)
        self.cols = state["cols"].numpy().astype(np.int32)
        self.initial = state["initial"].numpy().astype(np.int8)
        self.values = state["values"].numpy().astype(np.float32)
        self._clear_overlay()
        self._big_keys = state["added_keys"].numpy().astype(np.int64)
        self._big_vals = state["added_values"].numpy().astype(np.float32)

    # -- helpers for data handling ------------------------------------------------------------
    @property
    def nnz(self) -> int:
        """Stored entries (as read plus those added by edits)."""
        return len(self.cols) + sum(len(keys) for keys, _ in self._levels())

    @property
    def nbytes(self) -> int:
        arrays = [self.indptr, self.cols, self.initial, self.values, *(a for level in self._levels() for a in level)]
        return sum(a.nbytes for a in arrays)

    def to_dense(self) -> np.ndarray:
        """The full float32 matrix; only for label sets that fit in memory."""
        return self.batch(np.arange(len(self))).numpy()

    def subset(self, rows) -> "SparseLabels":
        """The current labels of `rows` (in that order) as a new store without edit history
        (soft negatives become -1)."""
        rows = np.asarray(rows, dtype=np.int64)
        current = self._compacted()
        pos, owner = _ranges(current.indptr[rows], current.indptr[rows + 1])
        return SparseLabels.from_coo(owner, current.cols[pos], current.initial[pos], (len(rows), self.num_classes))

    def class_counts(self) -> tuple[np.ndarray, np.ndarray]:
        """(positives, negatives) per class, over the current labels."""
        current = self._compacted()
        return (np.bincount(current.cols[current.initial == 1], minlength=self.num_classes),
                np.bincount(current.cols[current.initial < 0], minlength=self.num_classes))

    def row_counts(self) -> tuple[np.ndarray, np.ndarray]:
        """(positives, observed entries) per row, over the current labels."""
        current = self._compacted()
        row = np.repeat(np.arange(len(self)), np.diff(current.indptr))
        return (np.bincount(row[current.initial == 1], minlength=len(self)),
                np.bincount(row, minlength=len(self)))

    def save(self, path: str | Path) -> None:
        """Write the current labels (soft negatives as -1) as CSR arrays to an .npz file:
        indptr (int64, rows + 1), cols (int32), values (int8, 1 / -1), shape (rows, classes)."""
        current = self._compacted()
        np.savez(path, indptr=current.indptr, cols=current.cols, values=current.initial,
                 shape=np.asarray(self.shape, dtype=np.int64))

    @classmethod
    def load(cls, path: str | Path) -> "SparseLabels":
        with np.load(path) as data:
            try:
                return cls(data["indptr"], data["cols"], data["values"], int(data["shape"][1]))
            except KeyError as exc:
                raise PamcError(f"{path} is not a sparse label file (missing {exc}); prepare the dataset again") from None

    # -- overlay internals ---------------------------------------------------------------------
    def _clear_overlay(self) -> None:
        empty_keys, empty_vals = np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32)
        self._big_keys, self._big_vals = empty_keys, empty_vals
        self._small_keys, self._small_vals = empty_keys.copy(), empty_vals.copy()

    def _levels(self) -> list[tuple[np.ndarray, np.ndarray]]:
        return [(self._big_keys, self._big_vals), (self._small_keys, self._small_vals)]

    def _upsert(self, keys: np.ndarray, vals: np.ndarray) -> None:
        for level_keys, level_vals in self._levels():
            hit, where = _find(level_keys, keys)
            level_vals[where[hit]] = vals[hit]
            keys, vals = keys[~hit], vals[~hit]
        at = np.searchsorted(self._small_keys, keys)
        self._small_keys = np.insert(self._small_keys, at, keys)
        self._small_vals = np.insert(self._small_vals, at, vals)
        if len(self._small_keys) >= self.merge_threshold:
            self._merge()

    def _merge(self) -> None:
        at = np.searchsorted(self._big_keys, self._small_keys)
        self._big_keys = np.insert(self._big_keys, at, self._small_keys)
        self._big_vals = np.insert(self._big_vals, at, self._small_vals)
        self._small_keys, self._small_vals = self._small_keys[:0], self._small_vals[:0]

    def _compacted(self) -> "SparseLabels":
        """The current labels as a plain CSR store whose `initial` holds them (self if unedited).

        Soft negatives become -1 and entries edited back to 0 are dropped.
        """
        if self.nnz == len(self.cols) and np.array_equal(self.values, self.initial):
            return self
        row = np.repeat(np.arange(len(self), dtype=np.int64), np.diff(self.indptr))
        keys = np.concatenate([row * self.num_classes + self.cols, self._big_keys, self._small_keys])
        vals = np.concatenate([self.values, self._big_vals, self._small_vals])
        return SparseLabels.from_coo(keys // self.num_classes, keys % self.num_classes, np.sign(vals), self.shape)
