"""The reproduction study (``python benchmarks/reproduce.py``): the paper's Table 2, Table 5 and Figures 1, 3, 4
at a scale this machine trains, with every method a recipe of the same trainer. See :mod:`.plan`."""
