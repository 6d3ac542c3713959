"""Read the tensors of a TorchScript archive (OpenAI's CLIP ``.pt`` files) as data, without running its code.

A TorchScript archive is a zip: ``<name>/data.pkl`` pickles the module tree (objects of ``__torch__.*``
classes whose state is a dict of attributes), and each tensor's bytes are in ``<name>/data/<key>``.
``torch.jit.load`` would compile and run the archive's code; here only the pickle is read, with an
unpickler that builds nothing but plain objects, tensors and the few containers the format uses.
"""

from __future__ import annotations

import collections
import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch

# Storage classes as the pickle names them, and the element type of their bytes.
STORAGE_DTYPES = {
    "FloatStorage": torch.float32,
    "DoubleStorage": torch.float64,
    "HalfStorage": torch.float16,
    "BFloat16Storage": torch.bfloat16,
    "LongStorage": torch.int64,
    "IntStorage": torch.int32,
    "ShortStorage": torch.int16,
    "CharStorage": torch.int8,
    "ByteStorage": torch.uint8,
    "BoolStorage": torch.bool,
}


class TorchScriptError(ValueError):
    """An archive that is not a TorchScript module this reader understands."""


class ScriptObject:
    """A ``__torch__`` object of the archive: only its attribute dict is kept."""

    def __init__(self, *args: Any) -> None:
        self.state: dict[str, Any] = {}

    def __setstate__(self, state: Any) -> None:
        self.state = state if isinstance(state, dict) else {}


def is_torchscript(path: str | Path) -> bool:
    """Whether ``path`` is a zip holding a TorchScript module (a ``code/`` folder beside ``data.pkl``)."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
    return any(name.endswith("/data.pkl") for name in names) and any("/code/" in name for name in names)


def _rebuild_tensor(storage: tuple[torch.UntypedStorage, torch.dtype], offset: int, size, stride, *_: Any):
    """A tensor over the bytes of ``storage`` (offset and strides in elements), as torch's own rebuild makes it."""
    data, dtype = storage
    return torch.empty(0, dtype=dtype).set_(data, offset, torch.Size(size), tuple(stride))


class _ArchiveUnpickler(pickle.Unpickler):
    """Builds tensors from the archive's storages and ``ScriptObject`` for every ``__torch__`` class."""

    _ALLOWED = {
        ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
        ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
        ("torch._utils", "_rebuild_parameter"): lambda data, *_: data,
        ("collections", "OrderedDict"): collections.OrderedDict,
        ("builtins", "set"): set,
        # typed lists and tagged values of TorchScript attributes: plain data, kept as it is
        **{("torch.jit._pickle", f"build_{kind}list"): list for kind in ("int", "double", "bool", "tensor")},
        ("torch.jit._pickle", "restore_type_tag"): lambda value, _type: value,
    }

    def __init__(self, file, archive: zipfile.ZipFile, prefix: str) -> None:
        super().__init__(file)
        self.archive, self.prefix = archive, prefix

    def find_class(self, module: str, name: str) -> Any:
        if module.startswith("__torch__"):
            return ScriptObject
        if module == "torch" and name in STORAGE_DTYPES:
            return STORAGE_DTYPES[name]
        if (module, name) in self._ALLOWED:
            return self._ALLOWED[(module, name)]
        raise TorchScriptError(f"the archive's pickle needs {module}.{name}, which is not plain tensor data")

    def persistent_load(self, pid: Any) -> tuple[torch.UntypedStorage, torch.dtype]:
        kind, dtype, key, _location, _numel = pid
        if kind != "storage" or not isinstance(dtype, torch.dtype):
            raise TorchScriptError(f"unexpected persistent id {pid!r} in the archive")
        data = bytearray(self.archive.read(f"{self.prefix}/data/{key}"))
        return torch.UntypedStorage.from_buffer(data, dtype=torch.uint8), dtype


def _walk(obj: Any, prefix: str, tensors: dict[str, torch.Tensor]) -> None:
    for name, value in obj.state.items():
        key = f"{prefix}{name}"
        if isinstance(value, torch.Tensor):
            tensors[key] = value
        elif isinstance(value, ScriptObject):
            _walk(value, f"{key}.", tensors)


def read_torchscript_tensors(path: str | Path) -> dict[str, torch.Tensor]:
    """Every tensor attribute of the archived module tree, named as ``state_dict`` names them."""
    with zipfile.ZipFile(path) as archive:
        pickles = [name for name in archive.namelist() if name.endswith("/data.pkl")]
        if len(pickles) != 1:
            raise TorchScriptError(f"{path}: expected one data.pkl in the archive, found {len(pickles)}")
        prefix = pickles[0].rsplit("/", 1)[0]
        with archive.open(pickles[0]) as file:
            root = _ArchiveUnpickler(file, archive, prefix).load()
    if not isinstance(root, ScriptObject):
        raise TorchScriptError(f"{path}: the archive does not hold a module")
    tensors: dict[str, torch.Tensor] = {}
    _walk(root, "", tensors)
    return tensors
