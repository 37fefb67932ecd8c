"""Analysis of trained networks and run histories: feature geometry, soft-label statistics, curves and
tables. Pure functions over tensors and metric records; used by the experiment layer (final geometry of a
run) and by the reports above it."""
