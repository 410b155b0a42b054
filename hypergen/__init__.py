"""hypergen: hypernetworks that turn a few demonstrations into PEFT weights for a frozen language model.

``hypergen.HyperNetwork`` (:class:`hypergen.pretrained.PretrainedHyperNetwork`, imported on first use) loads a
trained hypernetwork with its main model: ``HyperNetwork.from_pretrained(run folder, saved folder or hub id)``.
``hypergen.predict_many`` (:func:`hypergen.adapters.multi_task.predict_many`) decodes queries of several tasks' adapters in
shared batches.
"""

from .version import __version__
__all__ = ["HyperNetwork", "predict_many", "__version__"]


def __getattr__(name: str):
    if name == "HyperNetwork":  # lazily: importing hypergen stays cheap (no torch, no transformers)
        from .pretrained.hypernetwork import PretrainedHyperNetwork

        return PretrainedHyperNetwork
    if name == "predict_many":
        from .adapters.multi_task import predict_many

        return predict_many
    raise AttributeError(f"module 'hypergen' has no attribute {name!r}")
