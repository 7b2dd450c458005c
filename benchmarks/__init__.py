"""Benchmarks: scripts that measure speed, memory and quality on this machine and print a table.

Run them from the repository root, as scripts (`python benchmarks/speed.py`) or as
modules (`python -m benchmarks.speed`).
"""
