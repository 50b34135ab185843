"""Helpers shared by test modules (pytest puts this directory on sys.path)."""


def invoke(*args: str) -> int:
    """Run the CLI in-process the way the console script does; return its exit status."""
    from prunus import cli

    try:
        cli.main(list(args))
    except SystemExit as exc:
        return exc.code
    return 0
