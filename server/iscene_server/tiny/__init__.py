"""Tiny seeded model packages (I-Scene + TRELLIS base, and SAM) for tests, CI, benchmarks and offline demos.

A tool above the engine and segmentation: it writes packages in the official layouts that both then read, so
it imports them, and nothing in the server imports it except the CLI's ``make-tiny-package``.
"""
