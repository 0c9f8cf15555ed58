"""aproc benchmarks: aproc and its peers measured side by side in one run.

Run from the repository root::

    .venv/bin/python -m benchmarks            # full run (< 10 minutes on 2 cores)
    .venv/bin/python -m benchmarks --quick    # smoke mode for CI (< 60 s); never asserts a speed

See docs/BENCHMARKS.md for what each benchmark measures and the latest results.
"""
