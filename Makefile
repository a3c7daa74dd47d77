# The two commands of the README: `make demo` and `make test`.
# Both set everything up on a fresh machine (see scripts/bootstrap.sh).
PY := .venv/bin/python

.PHONY: setup samples demo test lint format bench cleansing clean

setup:
	@bash scripts/bootstrap.sh

samples: setup
	@$(PY) samples/build_samples.py

demo: samples
	@$(PY) samples/demo.py

lint: setup
	@$(PY) -m ruff check .
	@$(PY) -m ruff format --check .

format: setup
	@$(PY) -m ruff format .
	@$(PY) -m ruff check --fix .

test: samples lint
	@$(PY) -m pytest -q

bench: samples
	@$(PY) benchmarks/bench_speed.py

cleansing: samples
	@$(PY) benchmarks/cleansing.py

clean:
	rm -rf samples/build demo_output benchmarks/output
