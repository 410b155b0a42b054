"""User-facing errors. The CLI prints them as one line and exits with status 2."""


class HypergenError(Exception):
    """A problem with the user's input (recipe, data, paths). Its message names what is wrong and where."""


class RecipeError(HypergenError):
    """A recipe that does not validate or cannot be built."""


class TaskFormatError(HypergenError):
    """A task file that is not in the Super-NaturalInstructions format."""


class UnknownComponentError(HypergenError):
    """A component name that no registry knows."""
