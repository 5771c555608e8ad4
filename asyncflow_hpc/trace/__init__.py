"""HDF5 run traces: recorder, reader, views (summary, plot, export), simulator and replay."""
