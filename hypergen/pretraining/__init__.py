"""HyperTuning-PT's first stage: a hypernetwork pre-trained on raw text (a ``"kind": "pretrain"`` recipe, whose
``pretrain`` section is :mod:`hypergen.recipe.pretrain`).

    corpus.py  where the text comes from: a ``datasets``-loadable corpus, local files, or the training tasks' text
    chunks.py  each text drawn cut into chunks c1..c4 (the sampler) and batched (the collator)
    text.py    the joint with a run: the text a recipe trains on, its sampler, the report of what was read
"""
