# The two commands of the README. Each sets up .venv on first use (scripts/setup.sh).
.PHONY: setup demo test test-fast test-capped bench

setup:
	@bash scripts/setup.sh

# Main job: extract features from the shipped example audio file.
demo: setup
	.venv/bin/mert demo

# The full test suite, then the kernel-dispatch and dtype tests again with the CPU capped to
# AVX2 (no AVX-512, no native bf16), so a path that needs more passes nowhere (CI runs this).
test: setup
	.venv/bin/python -m pytest -q
	$(MAKE) --no-print-directory test-capped

test-fast: setup
	.venv/bin/python -m pytest -q -m "not slow"
	$(MAKE) --no-print-directory test-capped

test-capped: setup
	ONEDNN_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2 .venv/bin/python -m pytest -q -m dispatch

bench: setup
	.venv/bin/python benchmarks/bench_model.py
