"""The ``hypergen`` subcommands beyond training and evaluation, one module per family; :mod:`hypergen.cli`
adds them to the ``hypergen`` group."""
