# Two commands do all the set-up on a fresh clone: `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test lint install clean bench

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --upgrade --quiet pip
	# torch first and pinned, so nothing can pull a CUDA build in its place.
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

# Train the built-in dates task (≤ 5 min on 2 CPU cores), score it, translate a few dates and
# draw their attention.
DEMO_DATES := "5. März 2021" "March 5, 2021" "2021年3月5日" "пятница, 5 марта 2021 г."
demo: $(STAMP)
	$(BIN)/heedful train configs/dates.yaml --overwrite
	$(BIN)/heedful evaluate runs/dates
	$(BIN)/heedful predict runs/dates $(DEMO_DATES) --show-attention

test: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

bench: $(STAMP)
	$(BIN)/python benchmarks/attention.py
	$(BIN)/python benchmarks/demo_dates.py

clean:
	rm -rf $(VENV) runs .pytest_cache .ruff_cache
