# make demo: run the app on the bundled model.  make test: run every test.  make docs: serve the docs.
# make test-fast: every test but the browser, stress, Ray and slow ones, for the edit-test loop.
# Each target creates .venv and installs what it needs on first use.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# pytest-xdist: two workers; with no test in a group, loadgroup hands out one test at a time, in file
# order, as a worker runs low (see docs/development.md).
PYTEST := $(PY) -m pytest -n 2 --dist loadgroup

.PHONY: demo test test-fast bench docs system-packages clean

demo: $(VENV)/.runtime
	$(PY) app.py

test: $(VENV)/.dev system-packages
	$(PYTEST) --durations=25

test-fast: $(VENV)/.dev
	$(PYTEST) -m "not browser and not stress and not ray and not slow"

bench: $(VENV)/.dev
	$(PY) benchmarks/bench.py

# The documentation site (mkdocs.yml, docs/) at http://$(DOCS_ADDRESS), rebuilt on every save.
DOCS_ADDRESS ?= 127.0.0.1:8000
docs: $(VENV)/.dev
	NO_MKDOCS_2_WARNING=1 $(PY) -m mkdocs serve --dev-addr $(DOCS_ADDRESS)

$(VENV)/.runtime: requirements.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -r requirements.txt
	$(PY) -m pip install --no-deps -e .
	touch $@

$(VENV)/.dev: $(VENV)/.runtime requirements-dev.txt
	$(PY) -m pip install -r requirements-dev.txt
	touch $@

# Chromium (browser tests), the WordNet database (the bundled model's build, its phrases) and
# GCompris's photos (the real-photo set) come from Debian. Installed when missing and possible
# (root with apt-get); otherwise those tests skip.
system-packages:
	@missing=""; test -x /usr/bin/chromium || missing="chromium"; \
	test -f /usr/share/wordnet/data.noun || missing="$$missing wordnet-base"; \
	test -d /usr/share/gcompris-qt/rcc || missing="$$missing gcompris-qt-data"; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y $$missing; \
	  else echo "note: missing Debian packages ($$missing): browser/build tests will be skipped"; fi; \
	fi

clean:
	rm -rf $(VENV) .pytest_cache test-artifacts site
