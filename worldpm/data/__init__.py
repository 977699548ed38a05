"""PairRecords and ThreadRecords -> training micro-batches: tokenised pair tables (pairs.py), thread tables and what each
objective reads of a thread (threads.py), the datasets and their weighted, resumable order (stream.py), and padding-free
micro-batches of pairs and whole threads planned across ranks (packing.py). Imports nothing from train, eval or serve.
"""
