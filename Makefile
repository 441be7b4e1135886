# The README's two commands: `make train` and `make test`. Each builds its own .venv and finds the data.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
ARGS ?=

.PHONY: train test data bench clean

train: $(VENV)/.installed data
	$(PY) train.py $(ARGS)

test: $(VENV)/.installed-dev data
	$(PY) -m pytest $(ARGS)

bench: $(VENV)/.installed data
	$(PY) bench.py $(ARGS)

# A stamp per requirements file: editing either one rebuilds what depends on it.
$(VENV)/.installed: requirements.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements.txt
	touch $@

$(VENV)/.installed-dev: $(VENV)/.installed requirements-dev.txt
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt
	touch $@

# Debian's package when the data is nowhere data.py looks and we may use apt-get; else torchvision's
# download into ./data (train.py explains what to do if that fails too).
data: $(VENV)/.installed
	@if $(PY) data.py; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		echo "installing Debian's dataset-fashion-mnist"; \
		DEBIAN_FRONTEND=noninteractive apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist >/dev/null && \
		$(PY) data.py; \
	else \
		echo "downloading Fashion-MNIST with torchvision into ./data"; \
		$(PY) data.py --download || true; \
	fi

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis
