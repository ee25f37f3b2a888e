"""The records of the channel-group pass (`onnx_dns.channel_groups`): layouts of values, sliced initializers
(slots), rewritten attributes (edits), groups, and the walk's state with its union-find over groups.

A segment (group, start, count) names channels start .. start + count - 1 of a group: a Split that cuts through a
group hands each piece a segment of it. The union-find keeps each group's offset inside its parent, so joining a
piece with a whole group (a C2f bottleneck's residual Add) places that group inside the first one's channels.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx

from onnx_dns.graph import consumers, inferred_values, initializers, to_array


@dataclass(frozen=True)
class Layout:
    """The channels of a value: on `axis` (of `rank`), `segments` of (group, start, count), each channel spread as
    `outer` x channels x `inner` entries along the axis once flattened; `zero`: pruned channels hold zeros."""

    axis: int
    rank: int
    segments: tuple[tuple[int, int, int], ...]
    outer: int = 1
    inner: int = 1
    zero: bool = True

    @property
    def channels(self) -> int:
        return sum(count for *_, count in self.segments)

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
    """Channels removable together: named after the first node producing them. `spans`: the (start, count) of
    the group's channels each masked tensor holds (all of them, but for a layer joined with a Split's piece)."""

    name: str
    size: int
    masked: list[tuple[str, int]] = field(default_factory=list)
    spans: dict[str, tuple[int, int]] = field(default_factory=dict)

    def mask_shape(self, tensor: str, tensor_rank: int) -> tuple[int, ...]:
        """The broadcast shape of the channel mask of `tensor`, one of `masked`."""
        axis = dict(self.masked)[tensor]
        count = self.spans.get(tensor, (0, self.size))[1]
        return tuple(count if i == axis else 1 for i in range(tensor_rank))


@dataclass
class ChannelGroups:
    """What the fold needs: prunable groups by id, the refused ones with why, every slot and every edit."""

    groups: dict[int, ChannelGroup]
    refused: dict[str, str]
    slots: list[Slot]
    edits: list[Edit]

    def keep_index(self, layout: Layout, keeps: dict[int, np.ndarray]) -> np.ndarray:
        """Which entries of the layout's axis stay, given each group's kept channels (groups absent keep all)."""
        parts = [keeps[g][start:start + n] if g in keeps else np.ones(n, dtype=bool) for g, start, n in layout.segments]
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
        self.offset: list[int] = []
        self.names: list[str] = []
        self.sizes: list[int] = []
        self.refusals: dict[int, str] = {}
        self.slots: list[Slot] = []
        self.edits: list[Edit] = []
        self.label = ""

    def new_group(self, size: int, fixed: bool = False) -> int:
        self.parent.append(len(self.parent))
        self.offset.append(0)
        self.names.append(self.label)
        self.sizes.append(size)
        if fixed:
            self.refusals[len(self.parent) - 1] = ""
        return len(self.parent) - 1

    def find(self, gid: int) -> int:
        return self.locate(gid)[0]

    def locate(self, gid: int) -> tuple[int, int]:
        """The root of `gid` and where `gid`'s channels start among the root's (path compression keeps offsets)."""
        path = []
        while self.parent[gid] != gid:
            path.append(gid)
            gid = self.parent[gid]
        start = sum(self.offset[g] for g in path)
        rest = start
        for node in path:
            rest, self.offset[node] = rest - self.offset[node], rest
            self.parent[node] = gid
        return gid, start

    def union(self, a: tuple[int, int, int], b: tuple[int, int, int]) -> bool:
        """Make segments `a` and `b` (same count) the same channels; False when they cannot be: two places of
        one group, or groups that would only overlap in part."""
        (ra, sa), (rb, sb) = self.locate(a[0]), self.locate(b[0])
        sa, sb = sa + a[1], sb + b[1]
        if ra == rb:
            return sa == sb
        for root, child, shift in sorted([(ra, rb, sa - sb), (rb, ra, sb - sa)], key=lambda t: t[0]):
            if shift >= 0 and shift + self.sizes[child] <= self.sizes[root]:
                self.parent[child], self.offset[child] = root, shift
                why = self.refusals.pop(child, None)
                if why is not None and root not in self.refusals:
                    self.refusals[root] = why
                return True
        return False

    def refuse(self, layout: Layout | None, why: str) -> None:
        """Leave every group of `layout` alone, saying why (the first reason is kept)."""
        for gid, *_ in layout.segments if layout else ():
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
