"""The records of the channel-group pass (`onnx_dns.channel_groups`): layouts of values, sliced initializers
(slots), rewritten attributes (edits), groups, and the walk's state with its union-find over groups."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx

from onnx_dns.graph import consumers, inferred_values, initializers, to_array


@dataclass(frozen=True)
class Layout:
    """The channels of a value: on `axis` (of `rank`), `segments` of (group, channels), each channel spread as
    `outer` x channels x `inner` entries along the axis once flattened; `zero`: pruned channels hold zeros."""

    axis: int
    rank: int
    segments: tuple[tuple[int, int], ...]
    outer: int = 1
    inner: int = 1
    zero: bool = True

    @property
    def channels(self) -> int:
        return sum(size for _, size in self.segments)

    @property
    def plain(self) -> bool:
        return self.outer == 1 and self.inner == 1


@dataclass(frozen=True)
class Slot:
    """An initializer sliced along `axis` as `layout` says; `masked`: it carries a channel mask in training."""

    tensor: str
    axis: int
    layout: Layout
    masked: bool


@dataclass(frozen=True)
class Edit:
    """A node attribute or shape constant that the fold rewrites: kind 'group', 'split' or 'reshape'."""

    output: str
    kind: str
    layouts: tuple[Layout, ...]


@dataclass
class ChannelGroup:
    """Channels removable together: named after the first node producing them."""

    name: str
    size: int
    masked: list[tuple[str, int]] = field(default_factory=list)

    def mask_shape(self, tensor_rank: int, axis: int) -> tuple[int, ...]:
        return tuple(self.size if i == axis else 1 for i in range(tensor_rank))


@dataclass
class ChannelGroups:
    """What the fold needs: prunable groups by id, the refused ones with why, every slot and every edit."""

    groups: dict[int, ChannelGroup]
    refused: dict[str, str]
    slots: list[Slot]
    edits: list[Edit]

    def keep_index(self, layout: Layout, keeps: dict[int, np.ndarray]) -> np.ndarray:
        """Which entries of the layout's axis stay, given each group's kept channels (groups absent keep all)."""
        parts = [keeps[g] if g in keeps else np.ones(size, dtype=bool) for g, size in layout.segments]
        flags = np.concatenate(parts) if parts else np.ones(0, dtype=bool)
        return np.tile(np.repeat(flags, layout.inner), layout.outer)


class Walk:
    """The state of the walk: layouts of values, groups as a union-find, their slots, refusals and edits."""

    def __init__(self, model: onnx.ModelProto, maskable: set[str] | None) -> None:
        self.graph = model.graph
        self.inits = initializers(model.graph)
        self.shapes = {name: _dims(v) for name, v in inferred_values(model).items()}
        self.readers = consumers(model.graph)
        self.maskable = maskable
        self.layouts: dict[str, Layout] = {}
        self.parent: list[int] = []
        self.names: list[str] = []
        self.sizes: list[int] = []
        self.refusals: dict[int, str] = {}
        self.slots: list[Slot] = []
        self.edits: list[Edit] = []
        self.label = ""

    def new_group(self, size: int, fixed: bool = False) -> int:
        self.parent.append(len(self.parent))
        self.names.append(self.label)
        self.sizes.append(size)
        if fixed:
            self.refusals[len(self.parent) - 1] = ""
        return len(self.parent) - 1

    def find(self, gid: int) -> int:
        while self.parent[gid] != gid:
            self.parent[gid] = self.parent[self.parent[gid]]
            gid = self.parent[gid]
        return gid

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)
            why = self.refusals.pop(max(ra, rb), None)
            if why is not None and min(ra, rb) not in self.refusals:
                self.refusals[min(ra, rb)] = why

    def refuse(self, layout: Layout | None, why: str) -> None:
        """Leave every group of `layout` alone, saying why (the first reason is kept)."""
        for gid, _ in layout.segments if layout else ():
            self.refusals.setdefault(self.find(gid), f"{self.label}: {why}")

    def const(self, name: str) -> np.ndarray | None:
        return to_array(self.inits[name]) if name in self.inits else None

    def shape(self, name: str) -> list[int | None] | None:
        if name in self.inits:
            return list(self.inits[name].dims)
        return self.shapes.get(name)

    def slot(self, tensor: str, axis: int, layout: Layout, masked: bool) -> None:
        if len({n.output[0] for n, _ in self.readers.get(tensor, [])}) > 1:
            self.refuse(layout, f"initializer {tensor!r} is shared by several nodes")
        self.slots.append(Slot(tensor, axis, layout, masked))

    def can_mask(self, tensor: str) -> bool:
        return self.maskable is None or tensor in self.maskable

    def edit(self, node: onnx.NodeProto, kind: str, *layouts: Layout) -> None:
        self.edits.append(Edit(node.output[0], kind, layouts))


def _dims(value: onnx.ValueInfoProto) -> list[int | None] | None:
    if not value.type.tensor_type.HasField("shape"):
        return None
    return [d.dim_value if d.HasField("dim_value") else None for d in value.type.tensor_type.shape.dim]
