"""Triton kernels of kbit, one op per module (the same stem as ``kbit/reference/<op>.py``).

Packaged into the kbit-triton wheel as ``kbit_triton.kernels``; ``kbit_triton`` imports these modules
only when a kernel is first called, so importing the backend does not import triton. Each module
holds the ``@triton.jit`` kernel and its host wrapper, which takes the op's arguments (schema order of
``kbit._ops``), allocates the outputs and launches. Shared device code: ``rounding`` (block scaling,
nearest code, round-to-nearest-even casts), ``optimizer_rules``; shared host code: ``codebook``
(sorted code tables) and ``launch`` (device guard, grid sizes).
"""
