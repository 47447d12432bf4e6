"""Places providers behind one interface (provider.py): offline, Google, cache."""
