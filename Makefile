# The two commands of the README. Both install what is missing first (scripts/install.sh).
.PHONY: demo test install

install:
	@bash scripts/install.sh

demo: install
	.venv/bin/python -m fastsat.demo

test: install
	.venv/bin/python -m pytest -q
