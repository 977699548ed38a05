"""PairRecords -> training micro-batches: tokenised pair tables (pairs.py), the datasets and their weighted, resumable order
(stream.py), and padding-free micro-batches planned across ranks (packing.py). Imports nothing from train, eval or serve.
"""
