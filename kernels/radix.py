"""A radix tree over token ids whose nodes hold the KV tensors of their span.

The embedded engine looks up each prompt here before prefilling: the longest cached prefix is reused and
only the rest is computed (the idea of SGLang's RadixAttention, at token granularity). Design points:

* A node owns the tokens of its edge and, per layer, an owning clone of ``(K, V)`` for those positions
  (shape ``[1, H_kv, len, D]``). Views would keep a parent's buffer alive and break the byte accounting.
* A match that ends inside an edge splits the node, so the matched part becomes a node of its own.
* Matches are capped at ``len(prompt) - 1``: the last prompt token must run to give the next-token logits
  (a cache as long as the prompt makes transformers feed the whole prompt again).
* Nodes on a path in use are locked (reference counts) and are never evicted; eviction removes the least
  recently used unlocked leaf until the tree fits its byte budget.

The same tree runs without tensors (``bytes_per_token`` instead of KV), which lets benchmarks replay a
token trace under memory pressure exactly as the engine would.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = ["RadixNode", "PrefixMatch", "RadixCache"]

KV = list[tuple[Any, Any]]  # per layer (keys, values), each [1, H_kv, len, D]

_clock = itertools.count()


class RadixNode:
    __slots__ = ("tokens", "children", "parent", "kv", "lock_ref", "last_access", "nbytes")

    def __init__(self, tokens: tuple[int, ...], parent: RadixNode | None, kv: KV | None, nbytes: int) -> None:
        self.tokens = tokens
        self.children: dict[int, RadixNode] = {}
        self.parent = parent
        self.kv = kv
        self.lock_ref = 0
        self.last_access = next(_clock)
        self.nbytes = nbytes

    def __repr__(self) -> str:
        return f"RadixNode(len={len(self.tokens)}, children={len(self.children)}, lock={self.lock_ref})"


@dataclass
class PrefixMatch:
    """The cached prefix of a prompt: the path of nodes and its length in tokens."""

    nodes: list[RadixNode] = field(default_factory=list)
    length: int = 0


def _kv_nbytes(kv: KV) -> int:
    return sum(k.numel() * k.element_size() + v.numel() * v.element_size() for k, v in kv)


def _slice_kv(kv: KV, start: int, stop: int | None, clone: bool = True) -> KV:
    # clone(): an owning copy, so the sliced parent buffer can be freed.
    if not clone:
        return [(k[:, :, start:stop, :], v[:, :, start:stop, :]) for k, v in kv]
    return [(k[:, :, start:stop, :].clone(), v[:, :, start:stop, :].clone()) for k, v in kv]


class RadixCache:
    """A radix tree of cached KV spans under a byte budget.

    Args:
        budget_bytes: the most bytes of KV the tree may hold; least recently used unlocked leaves are
            evicted to stay under it.
        bytes_per_token: use the tree without tensors (token accounting only), e.g. to replay traces.
    """

    def __init__(self, budget_bytes: int, bytes_per_token: int | None = None) -> None:
        if budget_bytes < 0:
            raise ValueError(f"RadixCache.budget_bytes must be >= 0, got {budget_bytes}")
        self.budget_bytes = budget_bytes
        self.bytes_per_token = bytes_per_token
        self.root = RadixNode((), None, None, 0)
        self.root.lock_ref = 1  # the root is never evicted
        self.nbytes = 0
        self.queries = 0
        self.query_tokens = 0
        self.hit_tokens = 0
        self.evicted_tokens = 0
        self.eviction_priority: Callable[[RadixNode], Any] | None = None
        """Which unlocked leaf goes first (smallest first); default: least recently used. Benchmarks set an
        offline-optimal policy here to compare against."""

    # -- lookup -----------------------------------------------------------------------------------------

    def peek(self, ids: Sequence[int]) -> int:
        """Length of the cached prefix of ``ids``; changes nothing (for schedulers)."""
        node, i = self.root, 0
        while i < len(ids):
            child = node.children.get(ids[i])
            if child is None:
                break
            n = _common(child.tokens, ids, i)
            i += n
            if n < len(child.tokens):
                break
            node = child
        return i

    def match(self, ids: Sequence[int], cap: int | None = None) -> PrefixMatch:
        """Find the longest cached prefix of ``ids`` (at most ``cap`` tokens, default ``len(ids) - 1``),
        splitting a node where the match ends inside its edge. Touches the path for LRU."""
        limit = len(ids) - 1 if cap is None else min(cap, len(ids))
        self.queries += 1
        self.query_tokens += len(ids)
        path: list[RadixNode] = []
        node, i = self.root, 0
        stamp = next(_clock)
        while i < limit:
            child = node.children.get(ids[i])
            if child is None:
                break
            n = _common(child.tokens, ids, i, stop=limit)
            if n < len(child.tokens):
                child = self._split(child, n)
            child.last_access = stamp
            path.append(child)
            i += n
            node = child
        self.hit_tokens += i
        return PrefixMatch(path, i)

    def gather(self, match: PrefixMatch) -> KV:
        """The KV of a match, one fresh ``(K, V)`` per layer (concatenated along the sequence)."""
        import torch

        if not match.nodes or match.nodes[0].kv is None:
            return []
        layers = len(match.nodes[0].kv)
        return [
            (torch.cat([n.kv[l][0] for n in match.nodes], dim=2),  # type: ignore[index]
             torch.cat([n.kv[l][1] for n in match.nodes], dim=2))  # type: ignore[index]
            for l in range(layers)
        ]

    # -- locking ----------------------------------------------------------------------------------------

    # A lock counts on every node from the match's last node up to the root, walked through the parents at
    # lock and unlock time: a node split in between inherits the count and is released with the rest.

    def lock(self, match: PrefixMatch) -> None:
        node = match.nodes[-1] if match.nodes else None
        while node is not None and node is not self.root:
            node.lock_ref += 1
            node = node.parent

    def unlock(self, match: PrefixMatch) -> None:
        node = match.nodes[-1] if match.nodes else None
        while node is not None and node is not self.root:
            if node.lock_ref <= 0:
                raise RuntimeError("RadixCache.unlock without a matching lock")
            node.lock_ref -= 1
            node = node.parent

    # -- insertion and eviction -------------------------------------------------------------------------

    def insert(self, ids: Sequence[int], kv: KV | None = None, *, offset: int = 0, clone: bool = True) -> int:
        """Cache ``ids``, whose KV for every position from ``offset`` on is ``kv`` (``None`` in token-only mode).

        Returns how many leading tokens were already cached. The new span is cloned out of ``kv``; nothing is
        inserted if fewer than ``offset`` tokens were cached (the KV of the ones between is not in ``kv``).
        ``clone=False`` keeps a view instead, for a caller whose ``kv`` is never written again: no copy, but the
        whole buffer it views stays allocated while any view of it is cached (the budget counts the views).
        """
        ids = tuple(ids)
        node, i = self.root, 0
        stamp = next(_clock)
        while i < len(ids):
            child = node.children.get(ids[i])
            if child is None:
                break
            n = _common(child.tokens, ids, i)
            if n < len(child.tokens):
                child = self._split(child, n)
            child.last_access = stamp
            node = child
            i += n
        if offset > i:
            return i
        if i < len(ids):
            span = ids[i:]
            if self.bytes_per_token is not None:
                new_kv, nbytes = None, len(span) * self.bytes_per_token
            else:
                if kv is None:
                    raise ValueError("RadixCache.insert needs kv unless bytes_per_token is set")
                new_kv = _slice_kv(kv, i - offset, len(ids) - offset, clone)
                nbytes = _kv_nbytes(new_kv)
            leaf = RadixNode(span, node, new_kv, nbytes)
            leaf.last_access = stamp
            node.children[span[0]] = leaf
            self.nbytes += nbytes
            # Keep the new leaf while making room: it is the most likely to be wanted next.
            leaf.lock_ref += 1
            self.evict(self.nbytes - self.budget_bytes)
            leaf.lock_ref -= 1
            if self.nbytes > self.budget_bytes:
                self.evict(self.nbytes - self.budget_bytes)
        return i

    def evict(self, nbytes: int) -> int:
        """Free at least ``nbytes`` (if possible) by removing LRU unlocked leaves. Returns bytes freed."""
        if nbytes <= 0:
            return 0
        key = self.eviction_priority or (lambda n: n.last_access)
        heap = [(key(n), id(n), n) for n in self._leaves() if n.lock_ref == 0]
        heapq.heapify(heap)
        freed = 0
        while heap and freed < nbytes:
            _, _, leaf = heapq.heappop(heap)
            parent = leaf.parent
            assert parent is not None
            del parent.children[leaf.tokens[0]]
            freed += leaf.nbytes
            self.nbytes -= leaf.nbytes
            self.evicted_tokens += len(leaf.tokens)
            leaf.kv = None
            if parent is not self.root and not parent.children and parent.lock_ref == 0:
                heapq.heappush(heap, (key(parent), id(parent), parent))
        return freed

    def clear(self) -> None:
        """Drop every unlocked entry."""
        self.evict(self.nbytes)

    # -- introspection ----------------------------------------------------------------------------------

    @property
    def cached_tokens(self) -> int:
        return sum(len(n.tokens) for n in self._nodes())

    @property
    def hit_rate(self) -> float:
        return self.hit_tokens / self.query_tokens if self.query_tokens else 0.0

    def _nodes(self) -> list[RadixNode]:
        out, stack = [], list(self.root.children.values())
        while stack:
            n = stack.pop()
            out.append(n)
            stack.extend(n.children.values())
        return out

    def _leaves(self) -> list[RadixNode]:
        return [n for n in self._nodes() if not n.children]

    def _split(self, node: RadixNode, k: int) -> RadixNode:
        """Split ``node``'s edge after ``k`` tokens; returns the new upper node."""
        parent = node.parent
        assert parent is not None and 0 < k < len(node.tokens)
        if node.kv is not None:
            upper_kv: KV | None = _slice_kv(node.kv, 0, k)
            lower_kv: KV | None = _slice_kv(node.kv, k, None)
            upper_bytes, lower_bytes = _kv_nbytes(upper_kv), _kv_nbytes(lower_kv)  # type: ignore[arg-type]
        else:
            upper_kv = lower_kv = None
            upper_bytes = node.nbytes * k // len(node.tokens)
            lower_bytes = node.nbytes - upper_bytes
        upper = RadixNode(node.tokens[:k], parent, upper_kv, upper_bytes)
        upper.lock_ref = node.lock_ref  # a lock on the lower part is a lock on the path above it
        upper.last_access = node.last_access
        parent.children[upper.tokens[0]] = upper
        node.tokens = node.tokens[k:]
        node.kv = lower_kv
        node.parent = upper
        self.nbytes += upper_bytes + lower_bytes - node.nbytes
        node.nbytes = lower_bytes
        upper.children[node.tokens[0]] = node
        return upper

    def path_tokens(self, node: RadixNode) -> tuple[int, ...]:
        """All tokens from the root down to the end of ``node``."""
        parts = []
        while node is not None and node is not self.root:
            parts.append(node.tokens)
            node = node.parent  # type: ignore[assignment]
        return tuple(t for part in reversed(parts) for t in part)

    def __repr__(self) -> str:
        return (f"RadixCache(tokens={self.cached_tokens}, bytes={self.nbytes}/{self.budget_bytes}, "
                f"hit_rate={self.hit_rate:.2f})")


def _common(edge: tuple[int, ...], ids: Sequence[int], start: int, stop: int | None = None) -> int:
    """Length of the common prefix of ``edge`` and ``ids[start:stop]``."""
    end = len(ids) if stop is None else stop
    n = min(len(edge), end - start)
    i = 0
    while i < n and edge[i] == ids[start + i]:
        i += 1
    return i
