# The two commands of the README. Both set up .venv first (idempotent, seconds when done).
.PHONY: setup demo test

setup:
	scripts/setup.sh

demo: setup
	.venv/bin/deepfusion demo

test:
	scripts/test.sh
