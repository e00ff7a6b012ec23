"""tokenomy.benchmarks: the ``tokenomy bench ...`` suites (``prefix`` today)."""
