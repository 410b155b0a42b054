"""``hypergen recipes`` (list, copy, validate, schema) and ``hypergen registry list``."""

from __future__ import annotations

import json

import click

from .options import _code_option, _set_option


@click.group()
def recipes() -> None:
    """List, copy and validate recipes; print their JSON schema."""


@recipes.command("list")
def recipes_list() -> None:
    """The built-in recipes (shipped inside the package): name, method, main model, description."""
    from ..recipe.builtin import summaries

    rows = summaries()
    width = max(len(r.name) for r in rows)
    method_width = max(len(r.method) for r in rows)
    model_width = max(len(r.main_model) for r in rows)
    for r in rows:
        click.echo(f"{r.name:<{width}}  {r.method:<{method_width}}  {r.main_model:<{model_width}}  {r.description}")


@recipes.command("copy")
@click.argument("name")
@click.argument("dest", type=click.Path())
@click.option("--overwrite", is_flag=True, help="Replace an existing DEST file.")
def recipes_copy(name, dest, overwrite) -> None:
    """Copy the built-in recipe NAME to DEST (a file, or a folder: DEST/NAME.json), unchanged, to edit it.

    Relative paths in it (data.path, a main model folder) stay as they are: like those of every recipe they are
    resolved against the folder `hypergen train` runs in, not the recipe's folder."""
    from ..recipe.builtin import copy_recipe

    target, relative = copy_recipe(name, dest, overwrite)
    click.echo(f"{name} copied to {target}")
    for key, value in relative:
        click.echo(f"note: {key} is the relative path {value!r}: resolved against the folder you run "
                   "`hypergen train` in (set it with --set or edit the copy)")


@recipes.command("validate")
@click.argument("files", nargs=-1, required=True)
@_set_option
@_code_option
def recipes_validate(files, overrides) -> None:
    """Check FILES (paths or built-in recipe names) against the recipe schema and the registries."""
    from ..recipe.builtin import resolve_recipe
    from ..components.build import make_component
    from ..recipe import HypernetRecipe, load_recipe

    for file in files:
        file = resolve_recipe(file)
        recipe = load_recipe(file, list(overrides))
        if isinstance(recipe, HypernetRecipe):
            make_component("peft_targets", recipe.peft, f"{file}: peft")
            make_component("generators", recipe.hypernetwork.generator, f"{file}: hypernetwork.generator")
            make_component("projectors", recipe.hypernetwork.projector, f"{file}: hypernetwork.projector")
            for i, spec in enumerate(recipe.hypernetwork.regularizers):
                make_component("regularizers", spec, f"{file}: hypernetwork.regularizers.{i}")
        for i, spec in enumerate(recipe.training.loggers):
            make_component("loggers", spec, f"{file}: training.loggers.{i}")
        click.echo(f"{file}: ok ({recipe.kind})")


@recipes.command("schema")
def recipes_schema() -> None:
    """Print the JSON schema of hypernetwork and finetune recipes."""
    from ..recipe import recipe_schema

    click.echo(json.dumps(recipe_schema(), indent=2))


@click.group("registry")
def registry_group() -> None:
    """Inspect the component registries."""


@registry_group.command("list")
@_code_option
def registry_list() -> None:
    """List every registered component (built-in, from a plugin or from --code) with its registry."""
    from .. import components  # noqa: F401 - registers the built-in components
    from ..training import loggers  # noqa: F401 - and the built-in metric loggers
    from ..models import packaged  # noqa: F401 - and the built-in packaged models
    from ..registry import KINDS, registry

    for kind in KINDS:
        for name, factory in registry.entries(kind).items():
            origin = getattr(factory, "__module__", "?")
            click.echo(f"{kind:<14} {name:<28} {origin}")
