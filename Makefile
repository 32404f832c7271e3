# Two targets do all set-up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
CONSTRAINTS ?= constraints.txt
BIN := $(VENV)/bin
DEMO_OUT ?= runs/demo
# On a busy machine torch's OpenMP threads can spin-wait on descheduled siblings and run many times slower;
# passive waiting costs next to nothing on an idle one.
export OMP_WAIT_POLICY ?= PASSIVE

.PHONY: demo test lint clean fashion-mnist chromium

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed-dev: $(BIN)/python pyproject.toml $(CONSTRAINTS)
	$(BIN)/pip install -q -c $(CONSTRAINTS) -e '.[dev]'
	touch $@

$(VENV)/.installed: $(BIN)/python pyproject.toml $(CONSTRAINTS)
	$(BIN)/pip install -q -c $(CONSTRAINTS) -e .
	touch $@

# Fashion-MNIST: already found, else Debian's package (when root with apt), else the canonical download.
fashion-mnist: $(VENV)/.installed
	@$(BIN)/bioprop datasets --check fashion-mnist 2>/dev/null \
	  || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null \
	       && apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist >/dev/null; } \
	  || $(BIN)/bioprop datasets --download fashion-mnist
	@$(BIN)/bioprop datasets --check fashion-mnist

# The feedforward rules side by side on Fashion-MNIST (3 epochs each, the angle to backprop every 50 steps), as a
# study: it prints the table and where its report is (a rerun skips the finished runs).
DEMO_RULES ?= bp,fa,dfa,usf,frsf,brsf
demo: fashion-mnist
	$(BIN)/bioprop compare --rules $(DEMO_RULES) --data fashion-mnist --arch mlp:256x256 --activation tanh \
	  --optimizer adamw --lr 1e-3 --schedule cosine --batch-size 128 --epochs 3 --seeds 0 --probe-every 50 \
	  --jobs 2 --out $(DEMO_OUT)

# Headless Chromium renders the HTML report in its test: Debian's package when root with apt, else that test skips.
chromium:
	@command -v chromium >/dev/null || command -v chromium-browser >/dev/null \
	  || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && apt-get update -qq \
	       && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; } \
	  || echo "chromium not installed: the HTML report's rendering test will be skipped"

test: $(VENV)/.installed-dev chromium
	$(BIN)/python -m pytest

lint: $(VENV)/.installed-dev
	$(BIN)/ruff check src tests benchmarks examples scripts

clean:
	rm -rf $(VENV) build src/*.egg-info .pytest_cache
