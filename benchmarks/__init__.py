"""tokenomy.benchmarks: the ``tokenomy bench ...`` suites (``prefix`` today)."""

if __name__ != "tokenomy.benchmarks":  # found as a top-level package from the repository root
    from tokenomy._toplevel import defer_to_installed

    defer_to_installed(__name__)
