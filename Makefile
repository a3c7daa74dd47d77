# The two commands of the README: `make demo` and `make test`.
# Both set everything up on a fresh machine (see scripts/bootstrap.sh).
PY := .venv/bin/python
# pytest on every core (at most 4): the suite is mostly processes that wait on each other.
PARALLEL := -n auto --maxprocesses 4

.PHONY: setup samples demo test test-quick lint format bench cleansing clean setup-oldest test-oldest test-slow

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

# The whole suite on .venv (the newest nnabla), then its focused subset on the oldest.
test: samples lint setup-oldest
	@$(PY) -m pytest -q $(PARALLEL)
	@$(MAKE) --no-print-directory test-oldest

# The unit tests alone (no plugin processes, workers, MPI or leave-one-out retraining, no
# benchmark runs): a quick check while working. `make test` stays the whole suite.
test-quick: samples
	@$(PY) -m pytest -q $(PARALLEL) -m "not slow and not system and not bench"

# The focused subset on the oldest supported nnabla and dependencies
# (scripts/oldest-requirements.txt), in .venv-oldest, which does not have the package installed,
# like NNC's Python: it is imported from the checkout. Loading, the version shims, the solvers
# against nnabla's own updates, datasets, one run of each plugin (and the NNC install), and
# leave-one-out agreement on the tabular samples. The samples are built by .venv (nnabla 1.32
# cannot save solver state).
OLDEST_PY := .venv-oldest/bin/python
OLDEST_TESTS := tests/nnp/test_compat.py tests/nnp/test_model.py tests/nnp/test_solvers.py \
	tests/data/test_datasets.py tests/plugin/test_install.py \
	tests/plugin/test_cli.py::test_a_python_without_nnabla_gets_one_line_even_for_help \
	tests/test_end_to_end.py::test_image_plugin_on_the_noisy_digits \
	tests/test_end_to_end.py::test_real_nnc_model_runs_end_to_end \
	tests/evaluation/test_agreement.py::test_one_epoch_from_the_trained_model

setup-oldest:
	@bash scripts/bootstrap.sh oldest

test-oldest: samples setup-oldest
	@$(OLDEST_PY) -m pytest -q -W ignore::DeprecationWarning $(OLDEST_TESTS)

# The stress runs left out of `make test` (the dense signal sweeps: 240 runs of the signal
# harness and 204 signals or kills over the workers' start-up; about 15 minutes when busy).
test-slow: samples
	@$(PY) -m pytest -q $(PARALLEL) -m slow

bench: samples
	@$(PY) benchmarks/bench_speed.py
	@$(PY) benchmarks/bench_parallel.py

cleansing: samples
	@$(PY) benchmarks/cleansing.py

clean:
	rm -rf samples/build demo_output benchmarks/output
