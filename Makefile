# The two commands of the README. Each sets up .venv on first use (scripts/setup.sh).
.PHONY: setup demo test test-fast bench

setup:
	@bash scripts/setup.sh

# Main job: extract features from the shipped example audio file.
demo: setup
	.venv/bin/mert demo

# The full test suite (CI runs exactly this).
test: setup
	.venv/bin/python -m pytest -q

test-fast: setup
	.venv/bin/python -m pytest -q -m "not slow"

bench: setup
	.venv/bin/python benchmarks/bench_model.py
