"""MkDocs hooks: pages generated at build time, so that they cannot go stale.

* ``reference/recipes.md``: every recipe section and field, read from the pydantic models in ``hypergen.recipe``;
* ``reference/cli.md``: every command's ``--help``, read from the click command tree in ``hypergen.cli``;
* ``results/...``: ``benchmarks/results/`` (the recorded results, Markdown and figures), as they are in the
  repository.

Nothing here needs the network; ``mkdocs build --strict`` fails on a broken link in any of them.
"""

from __future__ import annotations

import sys
import typing
from pathlib import Path

from mkdocs.structure.files import File

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # the checkout's hypergen, whatever is installed
    sys.path.insert(0, str(ROOT))


def on_files(files, config):
    files.append(File.generated(config, "reference/recipes.md", content=recipes_reference()))
    files.append(File.generated(config, "reference/cli.md", content=cli_reference()))
    results = ROOT / "benchmarks" / "results"
    for path in sorted(results.rglob("*")):
        if path.is_file() and path.suffix in {".md", ".png"}:
            uri = "results/" + path.relative_to(results).as_posix()
            files.append(File.generated(config, uri, abs_src_path=str(path)))
    return files


# ---------------------------------------------------------------------------------------------------- recipes
def _type_name(annotation) -> str:
    from pydantic import BaseModel

    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is typing.Literal:
        return " \\| ".join(f'`"{a}"`' if isinstance(a, str) else f"`{a}`" for a in args)
    if origin is typing.Annotated:
        return _type_name(args[0])
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        return " \\| ".join(_type_name(a) for a in args)
    if origin in (list, tuple, dict):
        return f"{origin.__name__}[{', '.join(_type_name(a) for a in args)}]"
    if annotation is type(None):
        return "null"
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return f"[{annotation.__name__}](#{annotation.__name__.lower()})"
    return getattr(annotation, "__name__", str(annotation))


def _default(field) -> str:
    if field.is_required():
        return "required"
    if field.default_factory is not None:
        value = field.default_factory()
    else:
        value = field.default
    if hasattr(value, "model_dump"):
        value = value.model_dump(exclude_unset=False)
    import json

    text = json.dumps(value)
    return f"`{text}`" if len(text) < 60 else f"`{text[:57]}...`"


def _constraints(field) -> str:
    found = []
    for item in field.metadata:
        for name, symbol in (("gt", ">"), ("ge", ">="), ("lt", "<"), ("le", "<=")):
            if getattr(item, name, None) is not None:
                found.append(f"{symbol} {getattr(item, name)}")
    return f" ({', '.join(found)})" if found else ""


def _section_models(model, seen: list) -> None:
    """``model`` and every pydantic model reachable through its fields, depth first, each once."""
    from pydantic import BaseModel

    if model in seen:
        return
    seen.append(model)
    for field in model.model_fields.values():
        stack = [field.annotation]
        while stack:
            annotation = stack.pop()
            if isinstance(annotation, type) and issubclass(annotation, BaseModel):
                _section_models(annotation, seen)
            stack.extend(typing.get_args(annotation))


def recipes_reference() -> str:
    from hypergen import recipe

    kinds = {"hypernetwork": recipe.HypernetRecipe, **recipe.RECIPE_KINDS}
    lines = ["# Recipe reference", "",
             "Generated at build time from the pydantic models in `hypergen.recipe` (the same models that "
             "validate every recipe), so it says what the code accepts. Extra keys are refused everywhere except in "
             "a component (`{\"name\": ..., parameters}`), whose parameters are its constructor's "
             "(see [Extending](../extending.md)). `hypergen recipes schema` prints the same as JSON schema.", ""]
    lines += ["| `kind` | model | what |", "|---|---|---|"]
    for kind, model in kinds.items():
        summary = " ".join((model.__doc__ or "").strip().split("\n\n")[0].split())
        lines.append(f"| `\"{kind}\"` | [{model.__name__}](#{model.__name__.lower()}) | {summary} |")
    lines.append("")
    seen: list = []
    for model in kinds.values():
        _section_models(model, seen)
    for model in seen:
        lines += [f"## {model.__name__}", ""]
        doc = (model.__doc__ or "").strip()
        if doc and not doc.startswith(("Usage docs", "!!! abstract")):
            lines += [" ".join(doc.split()), ""]
        lines += ["| field | type | default | description |", "|---|---|---|---|"]
        for name, field in model.model_fields.items():
            description = (field.description or "").replace("|", "\\|").replace("\n", " ")
            lines.append(f"| `{name}` | {_type_name(field.annotation)}{_constraints(field)} | {_default(field)} | "
                         f"{description} |")
        lines.append("")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------- cli
def _commands(command, path):
    import click

    yield path, command
    if isinstance(command, click.Group):
        for name in sorted(command.commands):
            yield from _commands(command.commands[name], [*path, name])


def cli_reference() -> str:
    import click

    from hypergen.cli import main

    lines = ["# Command reference", "",
             "Generated at build time from the click command tree (`hypergen.cli`): each command's `--help`. "
             "The [command-line guide](../cli.md) says what the commands do together.", ""]
    for path, command in _commands(main, ["hypergen"]):
        if getattr(command, "hidden", False):
            continue
        name = " ".join(path)
        ctx = None
        for part in path[:-1]:  # the parents' contexts, so that the usage line reads "hypergen recipes copy"
            ctx = click.Context(main, info_name=part, parent=ctx)
        ctx = click.Context(command, info_name=path[-1], parent=ctx)
        lines += [f"## `{name}`", "", "```text", ctx.get_help(), "```", ""]
    return "\n".join(lines)
