# Two commands do all setup on a fresh machine:
#   make book   build the rendered book (executes every notebook) -> _build/html/index.html
#               (the public edition: no solutions, no answer keys; `make instructor-book` has them)
#   make test   run every test (unit tests, every notebook under nbval, the built book in a browser,
#               then every notebook in full mode with every run capped: the dry run)
# Both create or refresh the virtual environment in .venv first.
# RESNET_MODE=quick (default) or full picks the scale; RESNET_DATA points at the data folder.

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
RESNET_MODE ?= quick
export RESNET_MODE

.PHONY: format figures venv book instructor-book test dry-run browser sandbox exercises grade benchmark time-to-accuracy latency results-summary reproduce runs gpu-evidence clean help

help:
	@sed -n '1,7p' Makefile

venv: $(VENV)/.installed

# Reinstall whenever the pins or the package metadata change.
$(VENV)/.installed: requirements.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --disable-pip-version-check -q -r requirements.txt
	# d2l's own pins (numpy 1.23, matplotlib 3.7...) break modern Pythons: install it without them.
	$(PY) -m pip install --disable-pip-version-check -q --no-deps d2l==1.0.3
	$(PY) -m pip install --disable-pip-version-check -q --no-deps --no-build-isolation -e .
	touch $@

# Built in a staging folder and published only when every page built without an error (build_book.py).
book: venv
	$(PY) scripts/build_book.py --mode $(RESNET_MODE)

# Instructors: the edition with the solutions and the answer keys -> _build/instructor/html/index.html
instructor-book: venv
	$(PY) scripts/build_book.py --mode $(RESNET_MODE) --edition instructor

# Bubblewrap, the grader's sandbox (scripts/sandbox.py: no network, read-only course), installed when missing.
sandbox:
	@command -v bwrap >/dev/null 2>&1 || ! command -v apt-get >/dev/null 2>&1 || { \
	  echo "Installing bubblewrap for the grading sandbox..."; \
	  if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq bubblewrap >/dev/null; }
	@command -v bwrap >/dev/null 2>&1 || echo "No bubblewrap (bwrap): grading runs with resource limits only (README, Trust)."

# Headless Chromium for the rendered-book test (Debian's package), installed when missing.
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  echo "Installing Debian's chromium for the rendered-book test..."; \
	  if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq chromium >/dev/null; }

# The test build goes to its own folder: `make test` never replaces the book that `make book` built
# (the execution cache, one per mode and data, is shared).
TEST_HTML := _build/test/html
test: venv browser sandbox
	$(PY) scripts/build_book.py --mode quick --out $(TEST_HTML)
	# Two workers, one notebook each; one thread per worker so they do not fight over 2 cores.
	RESNET_MODE=quick RESNET_BOOK_HTML=$(CURDIR)/$(TEST_HTML) OMP_NUM_THREADS=1 $(PY) -m pytest -n 2 --dist loadfile \
	  --nbval-lax --nbval-current-env --nbval-cell-timeout 900 tests book
	$(PY) scripts/dry_run.py --if-data

# Every notebook in full mode on the CPU, every run capped at 2 epochs of 2 batches (scripts/dry_run.py).
dry-run: venv
	$(PY) scripts/dry_run.py $(ARGS)

# Instructors: student copies of every chapter (solutions replaced by stubs) in exercises/.
exercises: venv
	$(PY) scripts/make_exercises.py --out exercises

# Instructors: grade a folder of submissions (see README), report in grades/.
SUBMISSIONS ?=
grade: venv sandbox
	@test -n "$(SUBMISSIONS)" || { echo "usage: make grade SUBMISSIONS=<folder of submitted notebooks>"; exit 2; }
	RESNET_MODE=quick $(PY) scripts/grade.py --submissions "$(SUBMISSIONS)" --out grades

# Speed: training throughput of the classic DataLoader loop vs the fast path, side by side
# (results/throughput-*.json), and seconds to 94 % CIFAR-10 test accuracy (a GPU run).
benchmark: venv
	$(PY) benchmarks/throughput.py $(ARGS)

time-to-accuracy: venv
	$(PY) benchmarks/time_to_accuracy.py $(ARGS)

# Forward latency of ResNet-18...152 at batch 1 and 32 (results/latency-*.json).
latency: venv
	$(PY) benchmarks/latency.py $(ARGS)

# The README's "Measured so far" tables, regenerated from results/*.json (a test checks them).
results-summary: venv
	$(PY) benchmarks/summary.py --write README.md

# The paper's CIFAR-10 experiment (He et al. Sec. 4.2) on a GPU: 9 nets x seeds 0,1 -> results/cifar10/*.json.
# Resumable: run again to continue. ARGS="--max-minutes 9 --jobs 4" fits 10-minute slots;
# ARGS="--nets resnet56 --seeds 0" picks runs.
reproduce: venv
	$(PY) scripts/reproduce.py --mode full $(ARGS)

# The book's full-scale trainings, outside the notebooks (a GPU): the degradation nets, chapter 4's
# runs, then Table 6. Resumable; ARGS="--max-minutes 9 --jobs 4" fits 10-minute slots, ARGS=--list
# shows the queue and what is done, ARGS=--dry-run checks the whole path on a CPU in minutes.
runs: venv
	$(PY) scripts/runs.py $(ARGS)

# On a lent GPU: every GPU figure in priority order within 9 minutes (DEVELOPERS.md). It uses the
# project's venv where there is one, else the machine's own Python with PyTorch.
GPU_PY ?= $(if $(wildcard $(PY)),$(PY),python3)
gpu-evidence:
	PYTHONPATH=$(CURDIR) $(GPU_PY) benchmarks/gpu_evidence.py $(ARGS)

# Format the notebooks' code cells to 88 columns (black); a test checks that nothing is left to do.
format: venv
	$(PY) scripts/format_notebooks.py

# The book's diagrams (book/figures/*.svg), drawn from utils.models; a test checks they are current.
figures: venv
	$(PY) scripts/draw_figures.py

clean:
	rm -rf _build
