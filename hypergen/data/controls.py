"""The demos controls of ``hypergen eval --control``: does a method use the demos it is given at all?

* ``other``: every held-out task gets another held-out task's demos (:func:`hypergen.data.tasks.
  with_demos_of_other_tasks`, applied to the tasks);
* ``random``: every demos token (not the special ones: EOS, padding) becomes a token id drawn uniformly from the
  tokenizer's ordinary vocabulary (every id that is not a special token), so the demos keep their length, their
  padding and their mask; seeded by ``seed`` and the demos text, so a task gets the same random text wherever its
  demos are read (by the hypernetwork, and before each query when the main model reads them too);
* ``none``: no demos. The hypernetwork reads a demos batch with no tokens (T x 1 of padding, mask all 0); a method
  that puts the demos in the main model's input gets the query alone.

``random`` and ``none`` act where the collator tokenizes demos (:class:`DemoControl`); scores are written to
``RUN/eval-control-<name>/`` (runs evaluated before the controls had names wrote ``RUN/eval-other-demos/``).
"""

from __future__ import annotations

import zlib

import torch

CONTROLS = ("other", "random", "none")
LEGACY_OTHER_DEMOS_DIR = "eval-other-demos"  # where `--other-demos` wrote before `--control`; still read


def control_dir(name: str) -> str:
    """The run's sub-folder of a control's scores: ``eval-control-<name>``."""
    return f"eval-control-{name}"


class DemoControl:
    """What the collator does to every demos sequence it tokenizes: ``random`` or ``none`` (see the module)."""

    def __init__(self, name: str, tokenizer, seed: int = 0) -> None:
        if name not in ("random", "none"):
            raise ValueError(f"a token-level demos control is 'random' or 'none', got {name!r}")
        self.name = name
        self.seed = seed
        self.special = frozenset(tokenizer.all_special_ids)
        self.ordinary = torch.tensor([i for i in range(len(tokenizer)) if i not in self.special])

    @property
    def drops_demos(self) -> bool:
        return self.name == "none"

    def random_ids(self, length: int, key: str) -> torch.Tensor:
        """``length`` ordinary token ids, the same for the same ``key`` (a demos text) and seed."""
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + zlib.crc32(key.encode("utf-8")))
        return self.ordinary[torch.randint(len(self.ordinary), (length,), generator=generator)]

    def replace_ids(self, ids: list[int], key: str) -> list[int]:
        """``ids`` with every non-special id replaced by a random ordinary id (``random``), in order."""
        drawn = iter(self.random_ids(len(ids), key).tolist())
        return [i if i in self.special else next(drawn) for i in ids]

    def demo_batch(self, demo_ids: torch.Tensor, demo_mask: torch.Tensor,
                   texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """The hypernetwork's T x n_d demos under the control: random ids in the real tokens' places (same mask),
        or (``none``) T x 1 of padding with a mask of zeros."""
        if self.drops_demos:
            return demo_ids.new_zeros(demo_ids.shape[0], 1), demo_mask.new_zeros(demo_ids.shape[0], 1)
        rows = []
        for ids, mask, text in zip(demo_ids.tolist(), demo_mask.tolist(), texts):
            real = [i for i, keep in zip(ids, mask) if keep]
            rows.append(self.replace_ids(real, text) + ids[len(real):])  # right padding stays as it was
        return torch.tensor(rows, dtype=demo_ids.dtype), demo_mask
