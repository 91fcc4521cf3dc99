"""``python -m benchmarks``: see ``benchmarks/run.py`` (``--help``)."""

from .run import main

if __name__ == "__main__":
    raise SystemExit(main())
