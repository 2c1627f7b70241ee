"""Reading checkpoint folders and writing sharded safetensors, one tensor at a time.

The reader goes through the source shards in order and reads one tensor at a time with
``safe_open`` (closing the handle after each tensor releases the memory-mapped pages), and the
writer knows every output tensor's name, shape and dtype before it starts, so it writes each
safetensors header first and then streams the tensors into place. Peak memory is therefore a few
tensors, never a shard and never the model.
"""

from __future__ import annotations

import json
import math
import pickle
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open

from worker.convert.errors import ConversionError
from worker.convert.files import read_json

ST_INDEX = "model.safetensors.index.json"
BIN_INDEX = "pytorch_model.bin.index.json"

DTYPE_CODES: dict[torch.dtype, str] = {
    torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
    torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8",
    torch.bool: "BOOL", torch.float8_e4m3fn: "F8_E4M3", torch.float8_e5m2: "F8_E5M2",
}
CODE_DTYPES = {code: dtype for dtype, code in DTYPE_CODES.items()}


@dataclass(frozen=True)
class TensorMeta:
    shape: tuple[int, ...]
    dtype: torch.dtype

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * self.dtype.itemsize



def dominant_dtype(metas: list[TensorMeta]) -> torch.dtype:
    """The floating dtype holding most of the bytes (float32 when none is floating)."""
    weight: dict[torch.dtype, int] = {}
    for m in metas:
        if m.dtype.is_floating_point:
            weight[m.dtype] = weight.get(m.dtype, 0) + m.nbytes
    return max(weight, key=weight.__getitem__) if weight else torch.float32


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


class CheckpointReader:
    """The weights of one checkpoint folder: safetensors (sharded or not), or pickle ``.bin`` files
    loaded with ``torch.load(weights_only=True)``, which refuses anything but tensors."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.files, self._index = self._discover()
        self.meta: dict[str, TensorMeta] = {}
        self.file_of: dict[str, Path] = {}
        for path in self.files:
            for name, meta in self._file_meta(path).items():
                if name in self.meta:
                    raise ConversionError(f"tensor {name} appears in two weight files ({path.name})")
                self.meta[name] = meta
                self.file_of[name] = path
        for name, fname in self._index.items():
            if self.file_of.get(name) is None or self.file_of[name].name != fname:
                raise ConversionError(f"the weight index lists tensor {name} in {fname}, which does not hold it")

    @property
    def is_pickle(self) -> bool:
        return self.files[0].suffix == ".bin"

    def _discover(self) -> tuple[list[Path], dict[str, str]]:
        for index_name in (ST_INDEX, BIN_INDEX):
            index_path = self.folder / index_name
            if index_path.exists():
                weight_map = read_json(index_path).get("weight_map")
                if not isinstance(weight_map, dict) or not weight_map:
                    raise ConversionError(f"{index_name}: no 'weight_map'")
                names = sorted(set(weight_map.values()))
                missing = [n for n in names if not (self.folder / n).is_file()]
                if missing:
                    raise ConversionError(
                        f"{index_name} lists {len(missing)} missing weight file(s): {', '.join(missing)}")
                return [self.folder / n for n in names], weight_map
        single = sorted(self.folder.glob("*.safetensors"))
        if single:
            return single, {}
        bins = sorted(p for p in self.folder.glob("*.bin") if p.name.startswith(("pytorch_model", "model")))
        if bins:
            return bins, {}
        raise ConversionError(f"{self.folder}: no weights (*.safetensors or pytorch_model*.bin) found")

    def _file_meta(self, path: Path) -> dict[str, TensorMeta]:
        if path.suffix == ".bin":
            with self._open_bin(path) as state:
                return {k: TensorMeta(tuple(v.shape), v.dtype) for k, v in state.items()}
        try:
            with safe_open(str(path), framework="pt") as f:
                out = {}
                for name in f.keys():
                    sl = f.get_slice(name)
                    code = sl.get_dtype()
                    if code not in CODE_DTYPES:
                        raise ConversionError(f"{path.name}: tensor {name} has unsupported dtype {code}")
                    out[name] = TensorMeta(tuple(sl.get_shape()), CODE_DTYPES[code])
                return out
        except SafetensorError as e:
            raise ConversionError(f"{path.name}: not a readable safetensors file ({e})") from None

    @contextmanager
    def _open_bin(self, path: Path) -> Iterator[dict[str, torch.Tensor]]:
        try:
            try:
                state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
            except RuntimeError as e:
                if "mmap" not in str(e):
                    raise
                state = torch.load(path, map_location="cpu", weights_only=True)
        except (pickle.UnpicklingError, RuntimeError, EOFError, AttributeError, ValueError) as e:
            lines = [ln for ln in str(e).splitlines() if ln.strip()] or [type(e).__name__]
            # torch's first line advises weights_only=False; the useful part names the refused object
            first = next((ln for ln in lines if "GLOBAL" in ln), lines[0])
            raise ConversionError(
                f"{path.name}: refused to load this pickle checkpoint: it is not a plain tensor file that "
                f"torch.load(weights_only=True) accepts ({first}). Convert it to safetensors with a tool you "
                "trust first.") from None
        if not isinstance(state, dict) or not all(
                isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()):
            raise ConversionError(f"{path.name}: expected a dict of named tensors")
        try:
            yield state
        finally:
            del state

    @contextmanager
    def open_file(self, path: Path) -> Iterator[Callable[[str], torch.Tensor]]:
        """A getter for the tensors of one weight file.

        For safetensors the file is opened for each tensor: ``safe_open`` memory-maps the whole file
        and every page read stays resident (and counts in the process's memory) until the handle is
        closed, so one handle per file would hold a whole shard in memory by its end. Re-opening costs
        a header parse per tensor and keeps the peak at the tensors in flight.
        """
        if path.suffix == ".bin":
            with self._open_bin(path) as state:
                yield lambda name: state[name]
            return

        def get(name: str) -> torch.Tensor:
            with safe_open(str(path), framework="pt") as f:
                return f.get_tensor(name)

        yield get


def _tensor_bytes(t: torch.Tensor) -> memoryview:
    flat = t.detach().contiguous().reshape(-1)
    return memoryview(flat.view(torch.uint8).numpy())


class ShardedWriter:
    """Writes a known list of tensors into safetensors shards of at most ``max_shard_bytes`` each,
    in the given order, streaming each tensor to disk as it arrives."""

    def __init__(self, folder: Path, entries: list[tuple[str, TensorMeta]], max_shard_bytes: int) -> None:
        self.folder = folder
        self.entries = entries
        shards: list[list[tuple[str, TensorMeta]]] = [[]]
        size = 0
        for name, meta in entries:
            if shards[-1] and size + meta.nbytes > max_shard_bytes:
                shards.append([])
                size = 0
            shards[-1].append((name, meta))
            size += meta.nbytes
        n = len(shards)
        self.shards = shards
        self.file_names = (["model.safetensors"] if n == 1 else
                           [f"model-{i + 1:05d}-of-{n:05d}.safetensors" for i in range(n)])
        self._pos = 0  # index into entries
        self._shard = -1
        self._left_in_shard = 0
        self._fh = None

    @property
    def total_bytes(self) -> int:
        return sum(meta.nbytes for _, meta in self.entries)

    def _open_next_shard(self) -> None:
        if self._fh is not None:
            self._fh.close()
        self._shard += 1
        shard = self.shards[self._shard]
        header: dict[str, object] = {"__metadata__": {"format": "pt"}}
        offset = 0
        for name, meta in shard:
            header[name] = {"dtype": DTYPE_CODES[meta.dtype], "shape": list(meta.shape),
                            "data_offsets": [offset, offset + meta.nbytes]}
            offset += meta.nbytes
        raw = json.dumps(header, separators=(",", ":")).encode()
        raw += b" " * (-len(raw) % 8)  # the format aligns the data section to 8 bytes
        self._fh = open(self.folder / self.file_names[self._shard], "wb")  # noqa: SIM115
        self._fh.write(len(raw).to_bytes(8, "little"))
        self._fh.write(raw)
        self._left_in_shard = len(shard)

    def write(self, name: str, tensor: torch.Tensor) -> None:
        want_name, meta = self.entries[self._pos]
        if name != want_name or tuple(tensor.shape) != meta.shape or tensor.dtype != meta.dtype:
            raise ConversionError(
                f"internal: tensor {name} {tuple(tensor.shape)} {tensor.dtype} arrived where "
                f"{want_name} {meta.shape} {meta.dtype} was planned")
        if self._left_in_shard == 0:
            self._open_next_shard()
        self._fh.write(_tensor_bytes(tensor))
        self._left_in_shard -= 1
        self._pos += 1

    def abort(self) -> None:
        """Close the open shard after a failure (the caller removes the folder)."""
        if self._fh is not None:
            self._fh.close()
            self._fh = None

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None
        if self._pos != len(self.entries):
            raise ConversionError(f"internal: {len(self.entries) - self._pos} planned tensor(s) were not written")
        if len(self.file_names) > 1:
            weight_map = {name: self.file_names[i] for i, shard in enumerate(self.shards) for name, _ in shard}
            index = {"metadata": {"total_size": self.total_bytes}, "weight_map": weight_map}
            (self.folder / ST_INDEX).write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
