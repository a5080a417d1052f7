"""Features at rest: the HDF5 store, leak-free splits, row selection, labels, one-hot columns."""
