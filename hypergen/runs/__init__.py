"""Runs: a recipe trained into a run folder, and the folder read back. One module per job:

    devices.py   where a run computes (``training.device``)
    tasks.py     the recipe's tasks by split: training (less validation), validation, held-out test
    assembly.py  the recipe assembled: main model, components, method, collator
    folder.py    the run folder's life cycle: prepared and locked, finished, read back; ``init_from``
    train.py     the one training path, for every recipe kind (``hypergen train``, ``finetune``, ``pretrain``)
    evaluate.py  scoring a run on its test tasks, its validation split or under a demos control
    sweep.py     ``hypergen sweep``: one run per grid point, the best by validation score, tested

The run folder's files are listed in :mod:`hypergen.runs.folder`.
"""
