"""Which device holds which layers: a contiguous, byte-balanced plan, validated before loading.

Layers stay contiguous (activations cross each device boundary once), embeddings go with the
first layers, final norm and unembedding with the last. Among all contiguous cuts the planner
takes the one whose fullest device is least full (bytes, or fill ratio under ``max_memory``),
and among those the most even one, so uniform layers differ by at most one layer per device.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch
from accelerate.utils import convert_file_size_to_int

from hooklab.errors import PlacementError
from hooklab.loading.skeleton import Parts
from hooklab.paths import human_bytes

DeviceLike = str | int | torch.device
MaxMemory = Mapping[DeviceLike, int | str] | Sequence[int | str]

GiB = 1024**3


@dataclass(frozen=True)
class Placement:
    """Layer ``i`` lives on ``devices[layers[i]]``; embeddings on ``devices[first]``,
    final norm and unembedding on ``devices[last]`` (defaults: those of the first and last layer).

    ``devices`` may repeat a device (``("cpu", "cpu")``) to exercise multi-device logic on CPU.
    Example: ``Placement(devices=("cuda:0", "cuda:1"), layers=(0,) * 20 + (1,) * 12)``.
    """

    devices: tuple[str, ...]
    layers: tuple[int, ...]
    first: int | None = None
    last: int | None = None
    nbytes: tuple[int, ...] | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "devices", tuple(canonical_device(d) for d in self.devices))
        object.__setattr__(self, "layers", tuple(self.layers))
        if self.first is None:
            object.__setattr__(self, "first", self.layers[0] if self.layers else 0)
        if self.last is None:
            object.__setattr__(self, "last", self.layers[-1] if self.layers else 0)
        slots = range(len(self.devices))
        bad = [s for s in (*self.layers, self.first, self.last) if s not in slots]
        if bad:
            raise PlacementError(
                f"placement refers to device slot(s) {sorted(set(bad))}, but it lists only "
                f"{len(self.devices)} device(s) {list(self.devices)}; use slots 0..{len(self.devices) - 1}."
            )

    def device_of_layer(self, layer: int) -> torch.device:
        return torch.device(self.devices[self.layers[layer]])

    @property
    def distinct_devices(self) -> list[str]:
        return list(dict.fromkeys(self.devices))

    def device_map(self, parts: Parts) -> dict[str, str]:
        """An accelerate/transformers device map: HF module path → device."""
        dmap = {m: self.devices[self.first] for m in parts.first_modules}
        for i, slot in enumerate(self.layers):
            dmap[f"{parts.layers_path}.{i}"] = self.devices[slot]
        dmap.update({m: self.devices[self.last] for m in parts.last_modules})
        return dmap

    def with_sizes(self, parts: Parts) -> Placement:
        """This plan with the bytes each device slot receives filled in."""
        if len(self.layers) != parts.n_layers:
            raise PlacementError(
                f"placement assigns {len(self.layers)} layers but the model has {parts.n_layers}; "
                "give one device slot per layer."
            )
        sizes = [0] * len(self.devices)
        for slot, size in zip(self.layers, parts.layer_bytes):
            sizes[slot] += size
        sizes[self.first] += parts.first_bytes
        sizes[self.last] += parts.last_bytes
        return Placement(self.devices, self.layers, self.first, self.last, tuple(sizes))

    def __str__(self) -> str:
        lines = ["device      layers      GiB"]
        for slot, device in enumerate(self.devices):
            mine = [i for i, s in enumerate(self.layers) if s == slot]
            span = f"{mine[0]}-{mine[-1]}" if mine else "-"
            extra = ("+emb " if slot == self.first else "") + ("+head" if slot == self.last else "")
            size = f"{self.nbytes[slot] / GiB:8.3f}" if self.nbytes else "       ?"
            lines.append(f"{device:<11} {span:<11} {size} {extra}".rstrip())
        return "\n".join(lines)


def canonical_device(device: DeviceLike) -> str:
    """``"cuda"``/``0``/``torch.device`` → ``"cuda:0"``; unknown devices fail with a clear error."""
    if isinstance(device, int):
        device = f"cuda:{device}"
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise PlacementError(
            f"unknown device {device!r}; use 'cpu', 'cuda', 'cuda:N' or an integer GPU index."
        ) from e
    if dev.type == "cpu":
        return "cpu"
    if dev.type != "cuda":
        raise PlacementError(f"device {device!r} is not supported; hooklab places models on 'cpu' or 'cuda:N'.")
    return f"cuda:{dev.index or 0}"


def resolve_devices(
    device: DeviceLike | None, n_devices: int | None, devices: Sequence[DeviceLike] | None
) -> tuple[str, ...]:
    """The device slots to plan over, checked to exist on this machine."""
    given = [x is not None for x in (device, n_devices, devices)]
    if sum(given) > 1:
        raise PlacementError("give only one of device=, n_devices= and devices= (they say the same thing).")
    n_gpus = torch.cuda.device_count()
    if n_devices is not None:
        if n_devices < 1:
            raise PlacementError(f"n_devices must be at least 1, got {n_devices}.")
        if n_devices > n_gpus:
            raise PlacementError(
                f"asked for {n_devices} GPUs but this machine has {n_gpus} visible; lower "
                "n_devices, or check CUDA_VISIBLE_DEVICES. For a CPU dry run use devices=['cpu'] * n."
            )
        slots = [f"cuda:{i}" for i in range(n_devices)]
    elif devices is not None:
        slots = [canonical_device(d) for d in devices]
        if not slots:
            raise PlacementError("devices= is empty; list at least one device.")
    elif device is not None:
        slots = [canonical_device(device)]
    else:
        slots = ["cuda:0" if n_gpus else "cpu"]
    kinds = {s.split(":")[0] for s in slots}
    if len(kinds) > 1:
        raise PlacementError(
            f"devices {slots} mix CPU and GPU; hooklab does not offload layers to the CPU. "
            "Place every layer on GPUs, or every layer on the CPU."
        )
    for slot in slots:
        if slot.startswith("cuda") and int(slot.split(":")[1]) >= n_gpus:
            have = f"cuda:0..cuda:{n_gpus - 1}" if n_gpus else "no GPU"
            raise PlacementError(f"device {slot} is not there: this machine has {have}. Pick a device that exists.")
    return tuple(slots)


def capacities(devices: Sequence[str], max_memory: MaxMemory | None) -> list[int | None]:
    """Bytes each slot may take: ``max_memory`` where given, else a GPU's free memory, else no limit.

    ``max_memory`` is one budget for every device, a list with one per slot, or a dict by device;
    each budget is bytes (int) or a size string such as ``"20GiB"``.
    """
    if max_memory is None:
        return [torch.cuda.mem_get_info(torch.device(d))[0] if d.startswith("cuda") else None for d in devices]
    if isinstance(max_memory, (int, str)):
        values = [max_memory] * len(devices)
    elif isinstance(max_memory, Mapping):
        by_device = {canonical_device(k): v for k, v in max_memory.items()}
        missing = [d for d in devices if d not in by_device]
        if missing:
            raise PlacementError(f"max_memory has no entry for {missing}; give a budget for every device.")
        values = [by_device[d] for d in devices]
    elif isinstance(max_memory, Sequence):
        values = list(max_memory)
        if len(values) != len(devices):
            raise PlacementError(
                f"max_memory lists {len(values)} budgets for {len(devices)} devices; give one per device."
            )
    else:
        raise PlacementError(f"max_memory is a {type(max_memory).__name__}; {_BUDGET_FORMS}")
    return [_budget(v) for v in values]


_BUDGET_FORMS = (
    "give one budget for every device (20 * 2**30 or '20GiB'), a list with one per device, or a "
    "dict by device ({'cuda:0': '20GiB', 'cuda:1': '30GiB'})."
)


def _budget(value: object) -> int:
    """One device's budget in bytes, from bytes or a size string."""
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise PlacementError(f"max_memory budget {value!r} is neither bytes nor a size string; {_BUDGET_FORMS}")
    try:
        size = value if isinstance(value, int) else convert_file_size_to_int(value.strip())
    except ValueError as e:
        raise PlacementError(f"max_memory budget {value!r} is not a size ({e}); use e.g. '20GiB' or '500MB'.") from e
    if size <= 0:
        raise PlacementError(f"max_memory budget {value!r} is not positive; give each device some memory.")
    return size


def plan_layers(
    parts: Parts, devices: Sequence[str], caps: Sequence[int | None], weighted: bool = False
) -> Placement:
    """The contiguous cut of layers over ``devices`` that fits ``caps`` and balances bytes.

    ``weighted`` balances fill ratios (bytes / cap) instead of raw bytes, for budgets that differ.
    """
    k, n = len(devices), parts.n_layers
    if k > n:
        raise PlacementError(
            f"{k} devices for a model of {n} layers: every device needs at least one layer. "
            f"Use at most {n} devices."
        )
    prefix = [0]
    for size in parts.layer_bytes:
        prefix.append(prefix[-1] + size)

    def load(slot: int, a: int, b: int) -> int:
        extra = (parts.first_bytes if slot == 0 else 0) + (parts.last_bytes if slot == k - 1 else 0)
        return prefix[b] - prefix[a] + extra

    def cost(slot: int, a: int, b: int) -> float:
        size = load(slot, a, b)
        cap = caps[slot]
        if cap is not None and size > cap:
            return math.inf
        return size / cap if weighted and cap else float(size)

    best_max = _partition(k, n, cost, lambda acc, c: max(acc, c))
    if math.isinf(best_max[0]):
        offer = ", ".join(f"{d}: {human_bytes(c)}" if c else f"{d}: unlimited" for d, c in zip(devices, caps))
        raise PlacementError(
            f"the model ({human_bytes(parts.total_bytes)}) does not fit the devices' memory ({offer}) as contiguous "
            "layers; raise max_memory, add devices, or load in a smaller dtype."
        )
    limit = best_max[0] * (1 + 1e-9)

    def within_limit(slot: int, a: int, b: int) -> float:
        c = cost(slot, a, b)
        return c if c <= limit else math.inf

    # Among the cuts whose fullest device is as empty as possible, the most even one.
    _, cuts = _partition(k, n, within_limit, lambda acc, c: acc + c * c)
    layers = [slot for slot, (a, b) in enumerate(zip(cuts, cuts[1:])) for _ in range(a, b)]
    return Placement(tuple(devices), tuple(layers), 0, k - 1).with_sizes(parts)


def _partition(k, n, cost, combine) -> tuple[float, list[int]]:
    """Best cut of ``n`` layers into ``k`` non-empty runs under a monotone ``combine``; DP."""
    inf = math.inf
    best = [[inf] * (n + 1) for _ in range(k + 1)]
    back = [[0] * (n + 1) for _ in range(k + 1)]
    best[0][0] = 0.0
    for slot in range(1, k + 1):
        for b in range(slot, n - (k - slot) + 1):
            for a in range(slot - 1, b):
                if math.isinf(best[slot - 1][a]):
                    continue
                c = cost(slot - 1, a, b)
                if math.isinf(c):
                    continue
                value = combine(best[slot - 1][a], c)
                if value < best[slot][b]:
                    best[slot][b], back[slot][b] = value, a
    cuts = [n]
    for slot in range(k, 0, -1):
        cuts.append(back[slot][cuts[-1]])
    return best[k][n], cuts[::-1]
