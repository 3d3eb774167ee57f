# The two commands: `make demo` and `make test`. Both set up .venv/ and node_modules/.
PY      := .venv/bin/python
PIP     := .venv/bin/pip
STAMP_PY  := .venv/.fedchain-installed
STAMP_NPM := node_modules/.fedchain-installed

.PHONY: setup demo test lint compile bench clean cid-vectors docs-check

setup: $(STAMP_PY) $(STAMP_NPM)

# Where torch comes from: PyTorch's index of CPU builds. PyPI's torch for Linux is the CUDA
# build (~16 nvidia-* wheels, gigabytes). `make setup TORCH_INDEX=` installs it from pip's
# usual index (PyPI: CUDA on Linux); TORCH_INDEX=<url> from another index or mirror.
TORCH_INDEX ?= https://download.pytorch.org/whl/cpu

$(STAMP_PY): pyproject.toml
	test -x $(PY) || python3 -m venv .venv
	$(PIP) install --quiet --upgrade pip
	# torch first, alone and pinned exactly, from TORCH_INDEX instead of PyPI (so PyPI's CUDA
	# build never comes into question). A wheel in pip's find-links still counts, and an index
	# that cannot be reached is given up within seconds (--retries 1 --timeout 15): a machine
	# offline with the wheel at hand installs it. Its dependencies come with the project's.
	$(PIP) install --quiet --no-deps $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX) --retries 1 --timeout 15) "torch==2.13.0"
	$(PIP) install --quiet -e ".[dev,bench]"
	# the default strategy's compiled sweeps (fedchain/aggregation/native.py): built now with
	# the machine's C compiler; without one they run in numpy (same results, slower)
	$(PY) -c "from fedchain.aggregation.streaming import build_kernels; build_kernels()"
	touch $@

$(STAMP_NPM): package.json package-lock.json
	npm ci --no-audit --no-fund --loglevel=error
	touch $@

demo: setup
	$(PY) -m fedchain.cli simulate --job examples/cnn/fedchain.toml --output runs/demo --audit

test: setup
	$(PY) -m pytest -n 2

lint: setup
	.venv/bin/ruff check fedchain tests bench scripts examples
	.venv/bin/mypy fedchain

compile: setup
	$(PY) -m fedchain.cli compile

bench: setup
	$(PY) bench/gas.py
	$(PY) bench/storage.py
	$(PY) bench/aggregate.py
	$(PY) bench/audit.py
	$(PY) bench/hostile.py
	$(PY) bench/robustness.py
	$(PY) bench/pipeline.py
	$(PY) bench/fedbuff.py
	$(PY) bench/scale.py
	$(PY) bench/dp.py
	$(PY) bench/dp.py --part learner
	$(PY) bench/secagg.py --part all

# Every CID and gas figure the READMEs quote, recomputed (all rounds of every example), and
# every command the READMEs show run as written, in a scratch copy of the checkout
# (scripts/docs_commands.py; the walkthroughs' terminals as background processes, on the
# dev chain's ports 8545 and 5001, which must be free). The CIDs of models torch makes
# (genesis, updates, global models) are quoted as torch computes them with its AVX2 kernels
# on x86-64: DOCS_KERNELS selects those on CPUs with wider ones too (AVX-512, AMX).
# `make docs-check DOCS_KERNELS=` runs the CPU's own; `DOCS_COMMANDS=--long` also runs the
# long commands (make test, the DCGAN's 10 rounds, 1,000 learners: an hour or more).
DOCS_KERNELS ?= ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 MKL_CBWR=AVX2 MKL_ENABLE_INSTRUCTIONS=AVX2
DOCS_COMMANDS ?=
docs-check: setup
	env $(DOCS_KERNELS) $(PY) scripts/docs_numbers.py --check; numbers=$$?; \
	env $(DOCS_KERNELS) $(PY) scripts/docs_commands.py $(DOCS_COMMANDS); commands=$$?; \
	test $$numbers -eq 0 && test $$commands -eq 0

clean:
	rm -rf .venv node_modules build dist *.egg-info .pytest_cache

# Regenerate the reference CIDs (tests/data/cid_vectors.json) with the IPFS reference importer.
cid-vectors: setup
	node_modules/node/bin/node scripts/cid-vectors.mjs
