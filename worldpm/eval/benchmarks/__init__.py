"""The benchmarks, one loader module each (their real file formats and official metrics), the registry that names them
(registry.py) and the shared file readers (sources.py)."""
