"""hypergen: hypernetworks that turn a few demonstrations into PEFT weights for a frozen language model."""

__version__ = "0.1.0"
