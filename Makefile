# make demo: run the app on the bundled model.  make test: run every test.  make docs: serve the docs.
# Each target creates .venv and installs what it needs on first use.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
DEBIAN_PACKAGES := chromium wordnet-base

.PHONY: demo test bench docs system-packages clean

demo: $(VENV)/.runtime
	$(PY) app.py

test: $(VENV)/.dev system-packages
	$(PY) -m pytest

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

# Chromium (browser tests) and the WordNet database (building the bundled model) come from
# Debian. Installed when missing and possible (root with apt-get); otherwise those tests skip.
system-packages:
	@missing=""; test -x /usr/bin/chromium || missing="chromium"; \
	test -f /usr/share/wordnet/data.noun || missing="$$missing wordnet-base"; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y $$missing; \
	  else echo "note: missing Debian packages ($$missing): browser/build tests will be skipped"; fi; \
	fi

clean:
	rm -rf $(VENV) .pytest_cache test-artifacts site
