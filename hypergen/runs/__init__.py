"""Runs: a recipe trained into a run folder, and the folder read back. One module per job:

    devices.py   where a run computes (``training.device``)
    tasks.py     the recipe's tasks by split: training (less validation), validation, held-out test
    assembly.py  the recipe assembled: main model, components, method, collator
    folder.py    the run folder's life cycle: prepared and locked, finished, read back; ``init_from``
    train.py     the one training path, for every recipe kind (``hypergen train``, ``finetune``, ``pretrain``)
    evaluate.py  scoring a run on its test tasks, its validation split or under a demos control
    sweep.py     ``hypergen sweep``: one run per grid point, the best by validation score, tested

A run folder::

    RUN/hypergen-run.json            the marker: this folder is a hypergen run (see hypergen/folders.py)
    RUN/.hypergen.lock               locked while a process trains the run
    RUN/recipe.json                  the resolved recipe
    RUN/metrics.jsonl                one JSON line per logged step
    RUN/run_info.json                what ran: the optimizer's class and the training backend
    RUN/checkpoints/step-*/          see training/checkpoint.py
    RUN/hypernetwork.safetensors     final hypernetwork weights (hypernetwork and pretrain recipes)
    RUN/pretrain_data.json           pretrain recipes: texts drawn, used and skipped (hypergen/pretraining/text.py)
    RUN/model/                       final main model, a Hugging Face folder (finetune recipes)
    RUN/eval/scores.json, predictions.jsonl
"""
