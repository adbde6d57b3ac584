"""What every per-image stage shares: the batch's bookkeeping columns and the per-sample failure type.

Image helpers (decode, resize, column checks) are in ``preprocess.common.images``; the device/dtype rule in
``preprocess.common.device``. Stages import from here and from nothing above (tests/test_imports.py).

A Ray Data batch is a ``dict[str, np.ndarray]``. Every batch carries these columns from decode on:

    image_id      str    the image id (DESIGN.md: dot-free, never ``__``)
    status        str    ``"ok"`` or the reject reason of the stage that failed the row
    reject_stage  str    ``""`` or the stage that failed the row
    detail        str    ``""`` or a human-readable reason naming the file

A stage computes only rows whose status is ``"ok"``, passes the others through untouched, and fills its
own output columns for them with placeholders of the right dtype and shape (the row is never written).
A stage never drops a row: the pipeline accounts for every one.
"""

from __future__ import annotations

import numpy as np

STATUS_OK = "ok"


class SampleError(Exception):
    """A failure that belongs to one sample (bad input, nothing found), not to the stage or the job."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


def ok_indices(batch: dict[str, np.ndarray]) -> np.ndarray:
    """Indices of the rows still alive."""
    return np.flatnonzero(np.asarray(batch["status"]) == STATUS_OK)


def batch_len(batch: dict[str, np.ndarray]) -> int:
    return len(batch["image_id"])


def mark_failed(batch: dict[str, np.ndarray], index: int, *, stage: str, error: SampleError) -> None:
    """Record one row's failure in the batch dict (its bookkeeping columns are replaced by writable copies,
    since Ray may hand a stage read-only arrays)."""
    for column in ("status", "reject_stage", "detail"):
        batch[column] = np.array(batch[column], dtype=object)
    batch["status"][index] = error.reason
    batch["reject_stage"][index] = stage
    batch["detail"][index] = f"{batch['image_id'][index]}: {error.detail}"


def sorted_positions(haystack: np.ndarray, wanted: np.ndarray) -> np.ndarray:
    """Each wanted value's position in the sorted ``haystack`` (binary search, no dict), -1 where absent."""
    found = np.searchsorted(haystack, wanted)
    if not len(haystack):
        return np.full(len(wanted), -1, np.int64)
    found = np.minimum(found, len(haystack) - 1)
    return np.where(haystack[found] == wanted, found, -1)


def object_column(values: list) -> np.ndarray:
    """A 1-d object array of per-row arrays (numpy would otherwise try to stack equal shapes)."""
    column = np.empty(len(values), dtype=object)
    for i, value in enumerate(values):
        column[i] = value
    return column


def as_rgb_uint8(image: np.ndarray, *, what: str) -> np.ndarray:
    """Bring a decoded image to H x W x 3 uint8 RGB, or raise a SampleError naming what is wrong."""
    array = np.asarray(image)
    if array.size == 0 or array.ndim < 2 or array.shape[0] == 0 or array.shape[1] == 0:
        raise SampleError("bad_image", f"{what} has no pixels (shape {array.shape})")
    if array.dtype == np.uint16:
        array = (array >> 8).astype(np.uint8)
    elif array.dtype != np.uint8:
        raise SampleError("bad_image", f"{what} has dtype {array.dtype}; expected uint8 or uint16")
    if array.ndim == 2:
        array = np.repeat(array[:, :, None], 3, axis=2)
    elif array.ndim == 3 and array.shape[2] == 1:
        array = np.repeat(array, 3, axis=2)
    elif array.ndim == 3 and array.shape[2] == 4:
        array = array[:, :, :3]
    elif not (array.ndim == 3 and array.shape[2] == 3):
        raise SampleError("bad_image", f"{what} has shape {array.shape}; expected H x W x 1, 3 or 4")
    return np.ascontiguousarray(array)


def store_float16(
    batch: dict[str, np.ndarray],
    rows: np.ndarray,
    values: np.ndarray,
    *,
    columns: tuple[tuple[str, str], ...],
    shape: tuple[int, ...],
    stage: str,
    reason: str,
    what: str,
) -> dict[str, np.ndarray]:
    """Output columns in float16 from a model's float32 results, one per (input column, output column) pair
    of ``columns``.

    ``values`` holds the results of the ok ``rows`` for each input column in turn. A row whose result is not
    finite, in float32 or after the float16 cast (an overflow past 65504), is rejected with ``reason``
    and gets zeros; the others are stored as they are.
    """
    outputs = {name: np.zeros((batch_len(batch), *shape), np.float16) for _, name in columns}
    for k, i in enumerate(rows):
        problems = []
        for j, (column, name) in enumerate(columns):
            value = values[j * len(rows) + k]
            with np.errstate(over="ignore"):  # an overflow is caught below and rejected with its reason
                stored = value.astype(np.float16)
            if not np.isfinite(stored).all():
                where = "in float32" if not np.isfinite(value).all() else "after the float16 cast (overflow)"
                problems.append(f"{column} {what} has non-finite values {where}")
            outputs[name][i] = stored
        if problems:
            for _, name in columns:
                outputs[name][i] = 0
            mark_failed(batch, i, stage=stage, error=SampleError(reason, "; ".join(problems)))
    return outputs
