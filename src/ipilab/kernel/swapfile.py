"""Swap slots and the swap cache, as a reclaimer of anonymous pages uses them in 4.12.

`add_to_swap` (mm/swap_state.c) gets a slot with `get_swap_page` (mm/swap_slots.c): from this CPU's
swap_slots_cache, which `refill_swap_slots_cache` fills SWAP_SLOTS_CACHE_SIZE slots at a time through
`get_swap_pages` (mm/swapfile.c): `swap_avail_lock` to pick the device from the swap_avail_head plist and
requeue it, then that device's `si->lock` held across `scan_swap_map_slots` for the whole batch. Both are
plain `spin_lock`: interrupts stay on, so an interrupt taken while a CPU holds `si->lock` stretches the spin
of every CPU queued behind it. On a non-rotational device (4.12's pmem, zram) `scan_swap_map_slots` hands
each CPU slots from a cluster of its own (`si->percpu_cluster`, SWAPFILE_CLUSTER slots), taking the next free
cluster when it runs out; clusters are handed out in order.

`__add_to_swap_cache` then inserts the page into the swap cache: the radix tree of the address space that
covers its slot (`swapper_spaces`, one per SWAP_ADDRESS_SPACE_PAGES slots since 4.11), under that space's
`tree_lock` with interrupts off (`spin_lock_irq`); `__remove_mapping` (mm/vmscan.c) deletes it under the same
lock after writeback. Since 4.11 the free cluster list is ordered so that consecutive clusters lie in different
trees (`setup_swap_map_and_extents`: column by column, SWAP_CLUSTER_COLS = 64 clusters apart), so the clusters
CPUs take at about the same time are in different trees and rarely share a tree_lock.
"""

from __future__ import annotations

import math
from collections.abc import Generator
from typing import Any

from ipilab.kernel.locking import SpinLock, spin_lock, spin_lock_irq, spin_unlock, spin_unlock_irq
from ipilab.kernel.steps import Busy, KernelCode, Platform
from ipilab.machine.costs import CostId

SWAP_SLOTS_CACHE_SIZE = 64  # include/linux/swap_slots.h (4.12)
SWAPFILE_CLUSTER = 256  # mm/swapfile.c (4.12, without THP swap)
SWAP_ADDRESS_SPACE_SHIFT = 14  # include/linux/swap.h (4.12): one swap cache tree per 2^14 slots (64 MB)
CLUSTERS_PER_TREE = (1 << SWAP_ADDRESS_SPACE_SHIFT) // SWAPFILE_CLUSTER  # SWAP_CLUSTER_COLS: 64
GB = 1 << 30


def swap_trees(swap_bytes: float, ncpus: int) -> int:
    """The swap cache trees of a device of `swap_bytes`, at most 4 per CPU: clusters taken one after the other
    are in consecutive trees, so CPUs share a tree only when their clusters are a whole round of trees apart,
    which the cap keeps as rare as on a device of any size (and the lock tables small)."""
    return max(1, min(math.ceil(swap_bytes / (1 << (SWAP_ADDRESS_SPACE_SHIFT + 12))), 4 * ncpus))


class SwapDevice:
    """One swap device (swap_info_struct) with the global swap_avail_lock, its per-CPU slot caches and
    clusters, and the locks of its swap cache trees."""

    def __init__(self, ncpus: int, trees: int) -> None:
        self.swap_avail_lock = SpinLock("swap_avail_lock")
        self.lock = SpinLock("si->lock")
        self.tree_locks = [SpinLock(f"swap_cache/{i}") for i in range(trees)]
        self.next_cluster = 1  # the k-th free cluster; cluster 0 holds the swap header
        self.cluster_next = [0] * ncpus  # si->percpu_cluster: next slot, and how many are left
        self.cluster_left = [0] * ncpus
        self.cache_next = [0] * ncpus  # swap_slots_cache: consecutive slots of the cluster, next and left
        self.cache_left = [0] * ncpus
        self.refills = 0

    def tree_lock(self, offset: int) -> SpinLock:
        """The tree_lock of the swap cache tree holding slot `offset` (swap_address_space())."""
        return self.tree_locks[(offset >> SWAP_ADDRESS_SPACE_SHIFT) % len(self.tree_locks)]


def free_cluster(k: int, trees: int) -> int:
    """The k-th cluster of the free list: the trees' first clusters in turn, then their second, and so on."""
    k %= trees * CLUSTERS_PER_TREE
    return (k % trees) * CLUSTERS_PER_TREE + k // trees


def scan_swap_map_slots(dev: SwapDevice, cpu: int, n: int) -> int:
    """Take `n` slots from `cpu`'s cluster (SWAP_SLOTS_CACHE_SIZE divides SWAPFILE_CLUSTER, so a batch never
    straddles two); return the first."""
    if dev.cluster_left[cpu] == 0:
        dev.cluster_next[cpu] = free_cluster(dev.next_cluster, len(dev.tree_locks)) * SWAPFILE_CLUSTER
        dev.cluster_left[cpu] = SWAPFILE_CLUSTER
        dev.next_cluster += 1
    first = dev.cluster_next[cpu]
    dev.cluster_next[cpu] += n
    dev.cluster_left[cpu] -= n
    return first


def get_swap_pages(p: Platform, cpu: int, dev: SwapDevice, n: int) -> Generator[Any, Any, int]:
    yield from spin_lock(p, cpu, dev.swap_avail_lock)
    spin_unlock(p, cpu, dev.swap_avail_lock)  # the device is requeued on the plist, then the lock dropped
    yield from spin_lock(p, cpu, dev.lock)
    yield Busy(n * p.cost(CostId.SWAP_SLOT_SCAN, cpu), "scan_swap_map_slots")
    first = scan_swap_map_slots(dev, cpu, n)
    spin_unlock(p, cpu, dev.lock)
    return first


def get_swap_page(p: Platform, cpu: int, dev: SwapDevice) -> Generator[Any, Any, int]:
    """One slot from this CPU's swap_slots_cache, refilling it first if empty."""
    if dev.cache_left[cpu] == 0:
        dev.cache_next[cpu] = yield from get_swap_pages(p, cpu, dev, SWAP_SLOTS_CACHE_SIZE)
        dev.cache_left[cpu] = SWAP_SLOTS_CACHE_SIZE
        dev.refills += 1
    offset = dev.cache_next[cpu]
    dev.cache_next[cpu] += 1
    dev.cache_left[cpu] -= 1
    return offset


def add_to_swap(p: Platform, cpu: int, dev: SwapDevice) -> Generator[Any, Any, int]:
    """A slot for the page, and the page in the swap cache; return the slot."""
    offset = yield from get_swap_page(p, cpu, dev)
    lock = dev.tree_lock(offset)
    yield from spin_lock_irq(p, cpu, lock)
    yield Busy(p.cost(CostId.ADD_TO_SWAP, cpu), "add_to_swap_cache")
    yield from spin_unlock_irq(p, cpu, lock)
    return offset


def remove_mapping(p: Platform, cpu: int, dev: SwapDevice, offset: int) -> KernelCode:
    """__remove_mapping of a written-back swap cache page: out of its tree, under the tree's lock."""
    lock = dev.tree_lock(offset)
    yield from spin_lock_irq(p, cpu, lock)
    yield Busy(p.cost(CostId.REMOVE_MAPPING, cpu), "__remove_mapping")
    yield from spin_unlock_irq(p, cpu, lock)
