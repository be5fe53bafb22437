# Two commands are all a fresh machine needs: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
DEMO_OUT ?= runs/demo

.PHONY: setup demo test test-slow lint bench clean

setup: $(STAMP)

# torch/torchvision first: plain `pip install torch torchvision` takes the wheels on local disk
# here. The stamp makes a second run install nothing; editing pyproject.toml re-runs pip.
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check torch torchvision 2>&1 | grep -v '^WARNING: Location' || true
	$(PY) -m pip install -q --disable-pip-version-check -e '.[dev]' 2>&1 | grep -v '^WARNING: Location' || true
	$(PY) -c "import efficientdet, torch, torchvision, timm, effdet" 
	touch $(STAMP)

demo: setup
	$(VENV)/bin/efficientdet demo --out $(DEMO_OUT)

test: setup
	$(PY) -m pytest -q

test-slow: setup
	$(PY) -m pytest -q -m slow

lint: setup
	$(VENV)/bin/ruff check src tests benchmarks examples
	$(VENV)/bin/mypy

bench: setup
	$(PY) benchmarks/bench_forward.py

clean:
	rm -rf $(VENV) build dist src/*.egg-info
