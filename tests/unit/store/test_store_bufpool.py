"""Recycled receive buffers: reused only once no array (view, slice, torch tensor) uses them."""

import numpy as np

from asyncflow_hpc.store.bufpool import BufferPool

MiB = 1 << 20


def test_buffer_is_reused_only_when_nothing_references_it():
    pool = BufferPool(64 * MiB)
    a = pool.empty((3 * MiB // 4,), np.float32)  # 3 MiB
    a[:] = 7
    view = a[10:20]
    del a
    b = pool.empty((3 * MiB // 4,), np.float32)
    assert pool.fresh == 2 and pool.reused == 0  # a slice of the first array kept its buffer busy
    assert (view == 7).all()
    b[:] = 1
    assert (view == 7).all()  # and it was not written through the second array
    del view
    c = pool.empty((MiB // 2, 4), np.int16)  # 4 MiB fits the 3 MiB buffer? no: it takes a fresh one
    assert pool.fresh == 3
    d = pool.empty((3 * MiB,), np.uint8)
    assert pool.reused == 1 and d.shape == (3 * MiB,) and c.dtype == np.int16


def test_torch_tensor_keeps_its_buffer():
    import torch

    pool = BufferPool(64 * MiB)
    t = torch.from_numpy(pool.empty((MiB,), np.float32))
    t.fill_(3.0)
    other = pool.empty((MiB,), np.float32)
    other[:] = 0
    assert pool.fresh == 2 and float(t.sum()) == 3.0 * MiB
    del t
    pool.empty((MiB,), np.float32)
    assert pool.reused == 1


def test_small_arrays_bypass_and_the_pool_stays_bounded():
    pool = BufferPool(8 * MiB)
    small = pool.empty((100,), np.int64)
    assert pool.fresh == 0 and small.shape == (100,)
    held = [pool.empty((3 * MiB,), np.uint8) for _ in range(4)]  # 12 MiB asked, at most 8 kept
    assert pool.held <= 8 * MiB and pool.fresh == 4
    del held
    big = pool.empty((6 * MiB,), np.uint8)  # needs room: free buffers too small for it are dropped
    assert pool.held <= 8 * MiB and big.nbytes == 6 * MiB
    assert BufferPool(0).empty((4 * MiB,), np.uint8).nbytes == 4 * MiB
