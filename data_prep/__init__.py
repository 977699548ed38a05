"""Forum dumps and public preference sets -> PairRecord shards. Imports neither torch nor worldpm (runs on CPU-only data boxes)."""
