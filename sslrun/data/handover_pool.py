"""Shared-memory buffers that loader workers reuse for the batches they hand over, each taken back
only once the trainer holds no view of it.

Why: a fresh shared buffer per handover costs its tmpfs pages (allocated, zeroed, faulted in by
both processes, freed): at 96 px, where a step's images fill 1.7 MiB, that was ~30 % of a
decode-only worker's time (bench/RESULTS-throughput.md). A reused buffer's pages are already
there.

Why it is safe: one flag in shared memory per buffer. A worker writes only into a buffer whose
flag is clear, and sets it before the batch leaves. The trainer clears it only when its own
reference is the last one to the buffer's storage (`torch._C._storage_Use_Count`, the count of
tensors and storages that point at it): a batch a caller keeps, or any view of one, keeps its
buffer out of the pool. Where that count is missing, workers allocate a fresh buffer each time.
With pinned batches (a CUDA run) StepBatches makes no pool: the pin thread's copy hides when the
shared buffer is done with.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.utils.data import get_worker_info

SLOTS = 6  # buffers per worker: the DataLoader's prefetch (4 handovers), the one in use, one being given back
_use_count = getattr(torch._C, "_storage_Use_Count", None)


def fresh_buffer(nbytes: int) -> Tensor:
    """uint8 of nbytes: in shared memory inside a worker (the batch then crosses without a copy),
    private memory in the trainer."""
    if get_worker_info() is None:
        return torch.empty((nbytes,), dtype=torch.uint8)
    storage = torch.UntypedStorage._new_shared(nbytes)
    return torch.empty(0, dtype=torch.uint8).set_(storage, 0, (nbytes,))


class HandoverPool:
    """SLOTS buffers per worker, their busy flags shared by the trainer and every worker."""

    def __init__(self, workers: int) -> None:
        self.flags = torch.zeros(max(1, workers) * SLOTS, dtype=torch.uint8).share_memory_()
        self._mine: dict[int, torch.UntypedStorage] = {}  # worker side: its slots' storages
        self._held: list[tuple[int, torch.UntypedStorage]] = []  # trainer side: slots handed over

    @staticmethod
    def usable() -> bool:
        return _use_count is not None

    def __getstate__(self) -> dict:  # a spawned worker starts with no buffers and holds none
        return {"flags": self.flags, "_mine": {}, "_held": []}

    # --- in a worker -------------------------------------------------------------------
    def buffer(self, nbytes: int) -> tuple[int, Tensor]:
        """(slot, uint8 of nbytes) from a free slot of this worker, or (-1, a fresh buffer) when
        all are busy or this is not a worker."""
        info = get_worker_info()
        if info is None:
            return -1, fresh_buffer(nbytes)
        flags = self.flags.numpy()
        for slot in range(info.id * SLOTS, (info.id + 1) * SLOTS):
            if flags[slot]:
                continue
            storage = self._mine.get(slot)
            if storage is None or storage.nbytes() < nbytes:
                storage = self._mine[slot] = torch.UntypedStorage._new_shared(nbytes)
            flags[slot] = 1
            return slot, torch.empty(0, dtype=torch.uint8).set_(storage, 0, (nbytes,))
        return -1, fresh_buffer(nbytes)

    # --- in the trainer ----------------------------------------------------------------
    def received(self, slot: int, storage: torch.UntypedStorage) -> None:
        """A batch from `slot` arrived; `storage` is its buffer's (this reference is kept until
        the slot is given back)."""
        if slot >= 0:
            self._held.append((slot, storage))

    def give_back(self) -> int:
        """Clear the flag of every slot whose storage nothing but this pool points at; the
        number given back."""
        assert _use_count is not None
        keep, freed = [], 0
        flags = self.flags.numpy()
        for slot, storage in self._held:
            if _use_count(storage._cdata) <= 1:
                flags[slot] = 0
                freed += 1
            else:
                keep.append((slot, storage))
        self._held = keep
        return freed
