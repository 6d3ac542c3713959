# softclip developer entry points. `make test` and `make demo` work on a fresh machine.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# GPU machines get onnxruntime-gpu + faiss-gpu, everything else the CPU builds (never both).
EXTRA := $(shell nvidia-smi -L >/dev/null 2>&1 && echo gpu || echo cpu)

.PHONY: install test test-slow lint demo clean

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	# The pinned torch is a CPU wheel on CPU machines; the project itself accepts any recent torch.
	$(BIN)/python -m pip install --quiet torch==2.13.0
	# constraints.txt holds torch at that version while the reference libraries bring torchvision.
	$(BIN)/python -m pip install --quiet -c constraints.txt -e ".[$(EXTRA),train,app,ray,dev,reference]"
	touch $(STAMP)

test: install
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q

test-slow: install
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q -m slow

lint: install
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

demo: install
	$(BIN)/softclip demo

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache *.egg-info
