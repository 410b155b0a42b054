"""Adapters: one task's generated parameters, in Python and as a folder.

    folder.py      adapter folders: written atomically by the PEFT target's format, read back, dispatched by the
                   registered target name (:func:`load_adapter`, :func:`write_adapter`, :func:`export_adapter`)
    task.py        :class:`TaskAdapter`, what ``hypergen.HyperNetwork.adapt`` returns (generate, save, to peft)
    stack.py       several adapters stacked into one batch (``hypergen predict --adapter A --adapter B``)
    multi_task.py  :func:`predict_many` (``hypergen.predict_many``): queries of several tasks in shared batches
    serving.py     ``hypergen check-adapter``: is a LoRA folder loadable by peft and vLLM's LoRA loader
"""

from .folder import Adapter, export_adapter, load_adapter, write_adapter  # noqa: F401
from .task import TaskAdapter  # noqa: F401
