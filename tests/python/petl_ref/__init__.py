"""Plain-PyTorch re-implementations of PETL methods, one module per method (see petl_reference.py)."""
