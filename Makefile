# Set-up is part of every target: a fresh clone needs only `make demo` or `make test`.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint format clean

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV) || python3 -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

demo: $(STAMP)
	@rm -rf demo_output
	$(BIN)/liaids synth --out demo_output/phantom --cases 1 --seed 7 --format dicom --preview
	@echo "Demo study (DICOM, three series): demo_output/phantom/internal_0000/dicom"
	$(BIN)/liaids diagnose demo_output/phantom/internal_0000/dicom -o demo_output/diagnosis \
		--clinical demo_output/phantom/internal_0000/case.json
	@echo "Report to open in a browser: demo_output/diagnosis/report.html"

test: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

format: $(STAMP)
	$(BIN)/ruff format src tests benchmarks

clean:
	rm -rf $(VENV) demo_output .pytest_cache
