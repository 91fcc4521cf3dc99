"""The benchmark suite (issue 9): our Redis driver against raw Redis and the peers.

``python -m benchmarks`` (or ``nox -s bench``) starts a private redis-server, runs every
measurement several times and prints medians with their min-max spread, the ratios the
targets name, PASS or MISS for each target, and writes the raw figures (JSON) and a chart
(PNG). ``--peers`` adds the peer queues, each in its own virtualenv. See docs/performance.md.
"""
