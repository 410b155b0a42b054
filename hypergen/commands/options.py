"""Options several commands share: ``--set`` (recipe overrides), ``--code`` (import a file that registers
components) and a quiet Hugging Face hub."""

from __future__ import annotations

import click

_set_option = click.option("--set", "overrides", multiple=True, metavar="KEY.PATH=VALUE",
                           help="Override a recipe field (value parsed as JSON), repeatable.")


def _import_code(ctx: click.Context, param: click.Parameter, value: str | None) -> None:
    if value is not None:
        from ..user_code import import_code_file

        import_code_file(value)


_code_option = click.option("--code", type=click.Path(dir_okay=False), callback=_import_code, expose_value=False,
                            metavar="FILE.py", help="A Python file to import first: it registers components "
                            "(with hypergen's registry decorators) that the recipe may name.")



def _quiet_hub() -> None:
    """No transformers progress bars (loading/writing weights)."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
