# Set-up and everyday targets. `make e2e` and `make test` are the README's two set-up commands:
# each creates .venv on first use, installing torch's CPU wheel before anything else. `make e2e` (and the Space)
# need the train and space extras only; the test and benchmark targets add the dev extra (~30 s more).
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_SPEC ?= torch==2.13.0
export HF_HUB_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false
export GRADIO_ANALYTICS_ENABLED ?= False

.PHONY: install e2e smoke test test-all bench rehearse quality format clean

$(VENV)/.installed-run: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check "$(TORCH_SPEC)"
	$(PY) -m pip install -q --disable-pip-version-check -e '.[train,space]'
	touch $@

$(VENV)/.installed: $(VENV)/.installed-run
	$(PY) -m pip install -q --disable-pip-version-check -e '.[train,space,dev]'
	touch $@

install: $(VENV)/.installed

e2e: $(VENV)/.installed-run  ## the embedded end-to-end job (no download); CORPUS=<folder|saved DatasetDict|Hub id> runs it on yours; E2E_ARGS=--ablations adds the ablation rows
	$(PY) recipes/run_embedded.py $(if $(CORPUS),--corpus "$(CORPUS)") $(E2E_ARGS)

smoke: $(VENV)/.installed-run  ## the same job on a very small corpus, in a couple of minutes
	$(PY) recipes/run_embedded.py --smoke

test: install  ## the test suite CI runs (slow tests excluded)
	$(PY) -m pytest -q

bench: install  ## the benchmark suite: results/*.json, *.png, and the tables of README.md and model_card.md
	$(PY) benchmarks/run_suite.py $(BENCH_ARGS)

rehearse: install  ## real-scale rehearsal on CPU (3B shapes, 2 gloo ranks, FSDP save, 30,000 JPEGs): docs/REHEARSAL.md
	$(PY) benchmarks/rehearse.py $(REHEARSE_ARGS)

test-all: install
	$(PY) -m pytest -q -m ""

quality: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: install
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

clean:
	rm -rf outputs
