# Two entry points for a fresh machine: `make demo` and `make test` (each sets up what it needs).
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
# the GWAS Catalog's validator (gwas-ssf validate) for the --gwas-ssf test, in a venv of its own
SSF_VENV  := .venv-ssf
SSF_STAMP := $(SSF_VENV)/.installed

.PHONY: demo test test-fast bench bench-refresh system-deps clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[test]"
	touch $(STAMP)

# best effort and cached: when pip cannot install it (no network), the validator test skips and the
# next `make test` tries again. On Python < 3.13 pip finds 1.0.x, whose pins need these numpy/click
# caps and six
$(SSF_STAMP):
	@($(PYTHON) -m venv $(SSF_VENV) && \
	  $(SSF_VENV)/bin/python -m pip install -q --retries 1 --timeout 30 "gwas-sumstats-tools>=1.0.25,<3" six \
	    "numpy<2; python_version<'3.13'" "click<8.2; python_version<'3.13'" && \
	  touch $(SSF_STAMP)) || echo "note: gwas-sumstats-tools not installed; the GWAS-SSF validator test will skip"

# Java 17+ for Spark and plink2 (Debian's package) for the oracle tests, when absent
system-deps:
	@bash .ci/system-deps

demo: system-deps $(STAMP)
	$(VENV)/bin/dash-spark demo --overwrite

test: system-deps $(STAMP) $(SSF_STAMP)
	$(PY) -m pytest -q

test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow"

bench: system-deps $(STAMP)
	$(VENV)/bin/dash-spark bench --samples 10000 --variants 100000

# adding a 10% wave to a stored 900,000-sample cohort vs recomputing the union (needs ~55 GB of disk)
bench-refresh: $(STAMP)
	$(VENV)/bin/dash-spark bench --refresh --samples 1000000 --variants 100000

clean:
	rm -rf $(VENV) $(SSF_VENV) demo_out demo_out-data bench_out .pytest_cache
