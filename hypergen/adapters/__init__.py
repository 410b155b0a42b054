"""Adapters: one task's generated parameters, in Python and as a folder.

    folder.py  adapter folders: written atomically by the PEFT target's format, read back, dispatched by the
               registered target name (:func:`load_adapter`, :func:`write_adapter`, :func:`export_adapter`)
    task.py    :class:`TaskAdapter`, what ``hypergen.HyperNetwork.adapt`` returns (generate, save, to peft)
"""

from .folder import Adapter, export_adapter, load_adapter, write_adapter  # noqa: F401
from .task import TaskAdapter  # noqa: F401
