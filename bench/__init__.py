"""EPM benchmarks: every figure next to the raw nats-py ceiling measured in the same run.

Run with ``make bench`` (or ``make bench QUICK=1``); see ``bench/__main__.py``.
"""
