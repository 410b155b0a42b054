"""hypergen: hypernetworks that turn a few demonstrations into PEFT weights for a frozen language model.

``hypergen.HyperNetwork`` (:class:`hypergen.pretrained.PretrainedHyperNetwork`, imported on first use) loads a
trained hypernetwork with its main model: ``HyperNetwork.from_pretrained(run folder, saved folder or hub id)``.
"""

from .version import __version__
__all__ = ["HyperNetwork", "__version__"]


def __getattr__(name: str):
    if name == "HyperNetwork":  # lazily: importing hypergen stays cheap (no torch, no transformers)
        from .pretrained import PretrainedHyperNetwork

        return PretrainedHyperNetwork
    raise AttributeError(f"module 'hypergen' has no attribute {name!r}")
