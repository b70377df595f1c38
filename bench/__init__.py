"""driftd's benchmarks: ``bench/run`` (see bench/__main__.py and bench/RESULTS.md).

Kept out of the test run: pytest collects only tests/, and nothing here is
named test_*.py.
"""
