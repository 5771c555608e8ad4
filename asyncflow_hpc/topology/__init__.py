"""Topology: which rank plays which role (pure), and the communicators that connect them (MPI/torch)."""
