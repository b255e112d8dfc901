"""Per-source workers: each runs one source through inference and event building.

A worker owns one thread; the daemon starts and stops workers and reads their health.
"""
