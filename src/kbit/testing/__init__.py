"""kbit's conformance suite, shipped inside the package.

Every test runs once per (backend, device) pair available in this process, comparing the backend's
kernel with an oracle written in the test (and, for non-reference backends, with the reference
kernel on the same inputs). A third-party backend wheel runs it with::

    python -m pytest --pyargs kbit.testing

``KBIT_BACKENDS`` / ``KBIT_DISABLE`` select which backends load, as everywhere in kbit.
"""
