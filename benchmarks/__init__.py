"""Accuracy, speed and reference-parity scripts (numbers, not tests); never installed.

A regular package so that `python -m benchmarks.compare_reference` finds this folder and no
other `benchmarks` module on the path.
"""
