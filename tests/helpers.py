"""Helpers shared by test modules (pytest puts this directory on sys.path)."""


def invoke(*args: str) -> int:
    """Run the CLI in-process the way the console script does; return its exit status."""
    from prunus import cli

    try:
        cli.main(list(args))
    except SystemExit as exc:
        return exc.code
    return 0


def config_error(values: dict) -> str:
    """The one-sentence error ``parse_config`` raises for a bad study (fails if none)."""
    import pytest

    from prunus.errors import PrunusError
    from prunus.study.config import parse_config

    with pytest.raises(PrunusError) as info:
        parse_config(values)
    return str(info.value)
