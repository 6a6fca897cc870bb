"""Wire format of `pirl serve`: msgpack maps, numpy arrays as a msgpack extension type (code 1).

    data = pack({"type": "infer", "id": 3, "obs": {"state": np.zeros(9, np.float32)}})
    msg = unpack(data)          # WireError for anything malformed: truncated, wrong types, bad arrays, too deep

An array travels as ExtType(1, msgpack([dtype name, shape, raw bytes])), C order, little-endian. Decoding never
trusts the sender: the dtype must be one of DTYPES, the shape at most MAX_DIMS non-negative ints whose product
matches the byte count, and msgpack's own container limits apply, so a hostile message cannot allocate more
than it carries.
"""

from __future__ import annotations

import math
from typing import Any

import msgpack
import numpy as np

ARRAY_EXT = 1
DTYPES = ("uint8", "float32", "float64", "int32", "int64", "bool")
MAX_DIMS = 4
MAX_DEPTH = 6  # nesting of maps/lists (messages are shallow: msg -> obs -> images -> array)


class WireError(ValueError):
    """A message that is not valid msgpack of the shape this protocol uses."""


def _default(obj: Any):
    if isinstance(obj, np.ndarray):
        a = np.ascontiguousarray(obj)
        if a.dtype.name not in DTYPES:
            raise TypeError(f"arrays of dtype {a.dtype} are not sent; use one of {DTYPES}")
        a = a.astype(a.dtype.newbyteorder("<"), copy=False)
        return msgpack.ExtType(ARRAY_EXT, msgpack.packb([a.dtype.name, list(a.shape), a.tobytes()]))
    if isinstance(obj, np.generic):
        return obj.item()
    raise TypeError(f"cannot send {type(obj).__name__}")


def pack(msg: dict) -> bytes:
    return msgpack.packb(msg, default=_default, use_bin_type=True)


def _array(code: int, payload: bytes) -> np.ndarray:
    if code != ARRAY_EXT:
        raise WireError(f"unknown msgpack extension type {code}")
    try:
        dtype, shape, data = msgpack.unpackb(payload, raw=False, max_array_len=MAX_DIMS + 3)
    except (ValueError, TypeError, msgpack.UnpackException) as e:
        raise WireError(f"malformed array: {e}") from None
    if dtype not in DTYPES or not isinstance(shape, list) or not isinstance(data, bytes):
        raise WireError(f"malformed array header (dtype {dtype!r}; allowed {DTYPES})")
    if len(shape) > MAX_DIMS or not all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in shape):
        raise WireError(f"malformed array shape {shape!r}")
    dt = np.dtype(dtype).newbyteorder("<")
    if math.prod(shape) * dt.itemsize != len(data):
        raise WireError(f"array of shape {shape} and dtype {dtype} needs {math.prod(shape) * dt.itemsize} bytes, "
                        f"got {len(data)}")
    return np.frombuffer(data, dtype=dt).reshape(shape).astype(dt.newbyteorder("="), copy=True)


def _depth(obj: Any, level: int = 0) -> None:
    if level > MAX_DEPTH:
        raise WireError(f"message nested deeper than {MAX_DEPTH}")
    if isinstance(obj, dict):
        for v in obj.values():
            _depth(v, level + 1)
    elif isinstance(obj, list):
        for v in obj:
            _depth(v, level + 1)


def unpack(data: bytes | str, max_bytes: int = 1 << 24) -> dict:
    """One message (a msgpack map with string keys). WireError on anything else."""
    if not isinstance(data, (bytes, bytearray)):
        raise WireError("messages are binary frames (msgpack), not text")
    if len(data) > max_bytes:
        raise WireError(f"message of {len(data)} bytes exceeds the limit of {max_bytes}")
    try:
        msg = msgpack.unpackb(data, raw=False, ext_hook=_array, strict_map_key=True)
    except WireError:
        raise
    except (ValueError, TypeError, msgpack.UnpackException, RecursionError) as e:
        raise WireError(f"not a valid msgpack message: {type(e).__name__}: {e}") from None
    if not isinstance(msg, dict):
        raise WireError(f"a message is a msgpack map, got {type(msg).__name__}")
    _depth(msg)
    return msg
