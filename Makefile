# Two entry points for a fresh machine: `make demo` and `make test` (each sets up what it needs).
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: demo test test-fast bench bench-refresh system-deps clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[test]"
	touch $(STAMP)

# Java 17+ for Spark and plink2 (Debian's package) for the oracle tests, when absent
system-deps:
	@bash .ci/system-deps

demo: system-deps $(STAMP)
	$(VENV)/bin/dash-spark demo --overwrite

test: system-deps $(STAMP)
	$(PY) -m pytest -q

test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow"

bench: system-deps $(STAMP)
	$(VENV)/bin/dash-spark bench --samples 10000 --variants 100000

# adding a 10% wave to a stored 900,000-sample cohort vs recomputing the union (needs ~55 GB of disk)
bench-refresh: $(STAMP)
	$(VENV)/bin/dash-spark bench --refresh --samples 1000000 --variants 100000

clean:
	rm -rf $(VENV) demo_out demo_out-data bench_out .pytest_cache
