"""tokenomy.benchmarks: the ``tokenomy bench ...`` suites; ``commands`` makes each one a subcommand."""

if __name__ != "tokenomy.benchmarks":  # found as a top-level package from the repository root
    from tokenomy._toplevel import defer_to_installed

    defer_to_installed(__name__)
