"""Components: generators, projectors, regularizers and PEFT targets, each behind an abstract interface."""
