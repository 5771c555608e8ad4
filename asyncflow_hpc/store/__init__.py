"""Streaming sample store (TransferQueue semantics) on MPI one-sided RMA windows, and its in-process twin."""
