"""Recipes: the JSON file that describes a run, as pydantic models (this package's public names).

    models.py    the sections of a recipe of each kind (hypernetwork, finetune, pretrain), with their defaults
    pretrain.py  a pretrain recipe's ``pretrain`` section (HyperTuning-PT's chunks and corpus)
    checks.py    what every recipe is checked for beyond its types (plain JSON, depth) and how errors read
    load.py      read a file, apply ``--set`` overrides, validate by kind, the JSON schema
    builtin.py   the built-in recipes (the JSON files in ``hypergen/recipes/``): names, summaries, copies

The built-in recipes themselves are data, in ``hypergen/recipes/`` (the repository's ``recipes/`` links to it).
"""

from .checks import MAX_DEPTH, Strict, check_plain_json, format_validation_error  # noqa: F401
from .load import apply_overrides, load_recipe, parse_recipe, read_recipe_dict, recipe_schema  # noqa: F401
from .models import (RECIPE_KINDS, ComponentSpec, Data, Distributed, Evaluation, FinetuneRecipe,  # noqa: F401
                     GradientCheckpointing, Hypernetwork, HypernetRecipe, MainModel, PretrainRecipe, Recipe, TinyT5,
                     Training, recipe_sections)
from .pretrain import Pretrain  # noqa: F401
