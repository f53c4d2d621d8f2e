# The two commands of the README:
#   make demo   run the whole loop locally (broker, server, trainer, agents)
#   make test   run the test suite
# Both create .venv and install edgeloop with its extras on first use.

PYTHON ?= python3
VENV   ?= .venv
PY      = $(VENV)/bin/python
STAMP   = $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)
PYTEST_ARGS ?=

.PHONY: demo test test-fast venv bench clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# torch 2.14.1 / torchvision 0.29.1 are pinned because that pair imports
	# together on a CPU-only machine; pip takes them from a local wheel cache
	# when one is configured.
	$(PY) -m pip install --quiet 'torch==2.14.1' 'torchvision==0.29.1'
	$(PY) -m pip install --quiet -e '.[agent,trainer,dev]'
	@rm -f $(VENV)/.installed-*
	@touch $@

demo: $(STAMP)
	$(VENV)/bin/edgeloop demo $(DEMO_ARGS)

test: $(STAMP)
	$(PY) -m pytest $(PYTEST_ARGS)

test-fast: $(STAMP)
	$(PY) -m pytest -m "not slow and not browser" $(PYTEST_ARGS)

bench: $(STAMP)
	mkdir -p bench/results
	for b in agent ingest train loop rollout; do \
		$(VENV)/bin/edgeloop bench $$b --json bench/results/$$b.json || exit 1; done

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
