# posswitch developer entry points.  Quick start: `make demo`, `make test`.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
EXTRAS ?= test,devices

.PHONY: all venv sysdeps build test lint demo bench clean

all: build

# System packages (Debian) some components need; idempotent, skipped when already present.
sysdeps:
	@bash scripts/system-deps.sh

# (sysdeps first: building the venv compiles pyscard and the core, which need swig and the -dev headers)
$(VENV)/.installed: pyproject.toml setup.py | sysdeps
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip setuptools wheel "cython>=3.0,<4"
	$(PIP) install -q -e ".[$(EXTRAS)]" --no-build-isolation
	@touch $@

venv: $(VENV)/.installed

# Compile the Cython core in place (fails loudly if the compiler does).
build: venv
	flock .build.lock $(PY) setup.py -q build_ext --inplace

lint: venv
	$(VENV)/bin/ruff check .

test: sysdeps build lint
	$(VENV)/bin/pytest -q

demo: sysdeps build
	$(VENV)/bin/posswitch demo

bench: sysdeps build
	$(VENV)/bin/pytest bench -q -o python_files='bench_*.py' -o testpaths=bench --benchmark-only --benchmark-columns=min,median,mean,ops,rounds -p no:cacheprovider

clean:
	rm -rf build $(VENV) *.egg-info .pytest_cache .benchmarks .build.lock
	find _fastcore -name '*.so' -delete -o -name '_*.c' -delete -o -name '*.html' -delete
