"""Data access on the center side: readers, layouts, built-in datasets, slicing and splits.

Only centers and raw baselines import this package; the server never does.
"""
