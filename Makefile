# Two entry points: `make demo` and `make test`. Both create .venv when it is missing.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test benchmarks notebooks clean

$(PY):
	$(PYTHON) -m venv $(VENV)

$(STAMP): $(PY) setup.cfg pyproject.toml
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[aws,test,ray]'
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m fedsim.demo

test: $(STAMP)
	$(VENV)/bin/ruff check fedsim tests benchmarks packaging
	$(PY) -m pytest -n 2 --dist loadfile tests

benchmarks: $(STAMP)
	$(PY) benchmarks/federated_mean_memory.py
	$(PY) benchmarks/call_overhead.py
	$(PY) benchmarks/fedavg.py
	$(PY) benchmarks/client_read.py
	$(PY) benchmarks/silo_work.py
	$(PY) benchmarks/client_data.py
	$(PY) benchmarks/aws_round.py

notebooks: $(STAMP)
	$(PY) tutorials/store_outputs.py

clean:
	rm -rf $(VENV) build *.egg-info
