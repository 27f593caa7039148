"""Adapter ids whose files are the same weights share one host copy; a rewritten file does not.

Also: the one-gather packing of ``load_peft_lora`` lays weights out exactly as ``pack_lora``
does, from every source dtype.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from lorax_engine.adapters import AdapterRef, LoadLimits, load_peft_lora
from lorax_engine.adapters.host_cache import HostAdapterCache
from lorax_engine.adapters.loader import AdapterLoader
from lorax_engine.adapters.peft_loader import WEIGHTS_NAME
from lorax_engine.adapters.sources.base import SourceRegistry
from lorax_engine.adapters.sources.local import LocalSource
from lorax_engine.adapters.weights import LoraWeights
from lorax_engine.lora.packed import pack_lora

from .conftest import Spec


def _loader(root: Path, spec: Spec, host_bytes: int = 1 << 30) -> AdapterLoader:
    return AdapterLoader(
        SourceRegistry({"local": LocalSource([root])}),
        spec,
        LoadLimits(max_rank=16),
        HostAdapterCache(host_bytes),
    )


def _ref(name: str) -> AdapterRef:
    return AdapterRef(name, source="local")


def _link(root: Path, name: str, target: str) -> None:
    os.symlink(target, root / name)  # relative: stays under the root


def _file_weights(directory: Path) -> dict[tuple[int, str], tuple[torch.Tensor, torch.Tensor]]:
    """What the adapter file holds, keyed like ``LoraWeights.modules`` (the reference)."""
    out: dict[tuple[int, str], list[torch.Tensor]] = {}
    for name, t in load_file(str(directory / WEIGHTS_NAME)).items():
        parts = name.split(".")
        layer, target = int(parts[parts.index("layers") + 1]), parts[parts.index("layers") + 3]
        out.setdefault((layer, target), [torch.empty(0), torch.empty(0)])[
            0 if ".lora_A." in name else 1
        ] = t
    return {k: (a, b) for k, (a, b) in out.items()}


def _holds(weights: LoraWeights, directory: Path) -> bool:
    ref = _file_weights(directory)
    return weights.modules.keys() == ref.keys() and all(
        torch.equal(a, ref[k][0]) and torch.equal(b, ref[k][1])
        for k, (a, b) in weights.modules.items()
    )


def test_linked_ids_read_the_file_once_and_share_one_copy(
    tmp_path: Path, spec: Spec, make_adapter: Callable[..., Path]
) -> None:
    real = make_adapter("w0")
    _link(tmp_path, "a0", "w0")
    _link(tmp_path, "a1", "w0")
    loader = _loader(tmp_path, spec)
    a0, a1 = loader.load(_ref("a0")), loader.load(_ref("a1"))
    assert loader.disk_loads == 1
    assert a0.adapter_key != a1.adapter_key
    assert a0.packed is not None
    assert a0.packed is a1.packed
    assert a0.modules is a1.modules  # one set of views too, not one per id
    assert _holds(a0, real)
    assert _holds(a1, real)
    cache = loader.host_cache
    assert len(cache) == 2
    assert cache.nbytes == a0.nbytes


def test_evicting_one_id_keeps_the_other_valid(
    tmp_path: Path, spec: Spec, make_adapter: Callable[..., Path]
) -> None:
    real = make_adapter("w0")
    make_adapter("w1", seed=2)
    _link(tmp_path, "a0", "w0")
    _link(tmp_path, "a1", "w0")
    loader = _loader(tmp_path, spec)
    a0 = loader.load(_ref("a0"))
    # Room for one adapter's storage: both ids of w0 fit, w1 then evicts the older id only.
    loader.host_cache.capacity_bytes = a0.nbytes + a0.nbytes // 2
    a1 = loader.load(_ref("a1"))
    loader.load(_ref("w0"))  # a third id of the same file: still no new storage
    assert len(loader.host_cache) == 3
    assert loader.host_cache.nbytes == a0.nbytes
    assert loader.host_cache.pop(a0.adapter_key) is not None  # e.g. promoted to a GPU slot
    assert loader.host_cache.nbytes == a0.nbytes  # a1 and w0 still use it
    del a0
    assert _holds(a1, real)
    assert loader.host_cache.get(a1.adapter_key) is a1
    loader.load(_ref("w1"))  # another file: the w0 copies must all go to make room
    assert loader.disk_loads == 2
    assert a1.adapter_key not in loader.host_cache
    assert _holds(a1, real)  # the evicted id's tensors stay intact for whoever holds them


def test_a_copy_in_a_gpu_slot_is_shared_too(
    tmp_path: Path, spec: Spec, make_adapter: Callable[..., Path]
) -> None:
    """The manager pops a promoted adapter from the tier; its host copy still backs new ids."""
    make_adapter("w0")
    _link(tmp_path, "a0", "w0")
    _link(tmp_path, "a1", "w0")
    loader = _loader(tmp_path, spec)
    a0 = loader.load(_ref("a0"))
    loader.host_cache.pop(a0.adapter_key)
    assert loader.host_cache.nbytes == 0
    a1 = loader.load(_ref("a1"))
    assert loader.disk_loads == 1
    assert a1.packed is a0.packed
    del a0, a1
    loader.host_cache.pop(_ref("a1").cache_key())  # nothing holds the copy any more
    loader.load(_ref("a0"))
    assert loader.disk_loads == 2


def test_a_rewritten_file_is_read_again(
    tmp_path: Path, spec: Spec, make_adapter: Callable[..., Path]
) -> None:
    real = make_adapter("w0")
    _link(tmp_path, "a0", "w0")
    _link(tmp_path, "a1", "w0")
    loader = _loader(tmp_path, spec)
    a0 = loader.load(_ref("a0"))
    path = real / WEIGHTS_NAME
    tensors = {k: v * 2 for k, v in load_file(str(path)).items()}
    save_file(tensors, str(path))
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))  # a coarse clock
    a1 = loader.load(_ref("a1"))
    assert loader.disk_loads == 2
    assert a1.packed is not a0.packed
    assert _holds(a1, real)
    assert not _holds(a0, real)


def test_concurrent_loads_of_one_file_read_it_once(
    tmp_path: Path, spec: Spec, make_adapter: Callable[..., Path]
) -> None:
    make_adapter("w0")
    names = [f"a{i}" for i in range(6)]
    for name in names:
        _link(tmp_path, name, "w0")
    loader = _loader(tmp_path, spec)
    results: dict[str, LoraWeights] = {}
    threads = [
        threading.Thread(target=lambda n=n: results.__setitem__(n, loader.load(_ref(n))))
        for n in names
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert loader.disk_loads == 1
    assert len({id(w.packed) for w in results.values()}) == 1


@pytest.mark.parametrize("src_dtype", [torch.float32, torch.float64, torch.float16])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("layers", [None, [1]])  # [1]: layer 0 skipped, the per-module path
def test_one_gather_packs_like_pack_lora(
    tmp_path: Path,
    spec: Spec,
    make_adapter: Callable[..., Path],
    src_dtype: torch.dtype,
    dtype: torch.dtype,
    layers: list[int] | None,
) -> None:
    directory = make_adapter("w0", r=4, layers_to_transform=layers)
    path = directory / WEIGHTS_NAME
    save_file({k: v.to(src_dtype) for k, v in load_file(str(path)).items()}, str(path))
    weights = load_peft_lora(directory, "k", spec, LoadLimits(), dtype)
    assert weights.packed is not None
    assert weights.origin is not None
    ref = _file_weights(directory)
    modules = {
        k: (a.to(torch.float32).to(dtype), b.to(torch.float32).to(dtype))
        for k, (a, b) in ref.items()
    }
    expected = pack_lora(LoraWeights("k", 4, weights.scale, modules))
    assert torch.equal(weights.packed.buffer, expected.buffer)
    assert weights.packed.layers == expected.layers
    for k, (a, b) in weights.modules.items():
        assert torch.equal(a, modules[k][0])
        assert torch.equal(b, modules[k][1])
