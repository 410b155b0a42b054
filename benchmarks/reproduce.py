"""The reproduction study as a script: ``python benchmarks/reproduce.py ARGS`` is ``hypergen reproduce ARGS``
(:mod:`hypergen.commands.reproduce`; ``--help`` lists the options)."""

from hypergen.commands.reproduce import reproduce as main

if __name__ == "__main__":
    main()
