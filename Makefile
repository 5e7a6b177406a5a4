# Two set-up commands that work on a fresh machine:
#   make demo   - create .venv, install probda, run the end-to-end demo on synthetic data
#   make test   - create .venv, install probda with dev extras, run the test suite
# torch is pinned here (not in pyproject) so the CPU wheel on disk is used.

VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_PIN ?= torch==2.13.0
DEMO_OUT ?= demo_out

.PHONY: install demo test test-slow test-wheel docs bench clean

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH_PIN)"
	$(PY) -m pip install -q -e ".[all,dev]" "$(TORCH_PIN)"
	touch $@

install: $(VENV)/.installed

demo: install
	$(VENV)/bin/probda demo -o $(DEMO_OUT)

test: install
	$(PY) -m pytest -m "not slow"

test-slow: install
	$(PY) -m pytest -m slow

test-wheel: install
	$(PY) -m pytest -m slow tests/test_wheel.py

docs: install
	$(VENV)/bin/typer probda_deploy.cli.app utils docs --name probda --output docs/cli.md

bench: install
	$(PY) benchmarks/train_speed.py
	$(PY) benchmarks/sampler.py
	$(PY) benchmarks/adaptation.py

clean:
	rm -rf $(VENV) $(DEMO_OUT) .pytest_cache
