"""One function per job (run, evaluate, merge, export, preprocess, infer, bench, compare), explicit parameters.

Jobs log through :mod:`m2det_impl.logs`; a job's results are records at its ``RESULT`` level."""
