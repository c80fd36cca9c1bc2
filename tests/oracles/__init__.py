"""Independent test oracles.

Everything in this package is written from ``docs/reference.md.md`` (and, where docs/reference.md leaves a
rounding detail open, from the reference's Cython-generated C code), never from
``m2det_impl``. The oracles are slow on purpose: plain Python loops that follow
the reference line by line, so that a reviewer can check them against docs/reference.md
without reasoning about vectorisation. ``tests/pipeline/test_oracle_self_check.py``
proves them against the golden reference data before they are used to judge
the implementation.
"""
