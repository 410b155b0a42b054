"""A trained hypernetwork with everything it needs, as ``hypergen.HyperNetwork``: from a run folder, a saved folder
or the Hugging Face hub, and saved or pushed back.

    hypernetwork.py  :class:`PretrainedHyperNetwork` (from_pretrained, adapt, save_pretrained, push_to_hub)
    hub.py           hub ids, the local cache, offline errors
    model_card.py    the README.md a saved hypernetwork carries
"""

from .hypernetwork import PretrainedHyperNetwork  # noqa: F401
