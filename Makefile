# Two entry points on a fresh machine (each installs everything first, idempotently):
#   make run   - convert CIFAR-10 and train (ResNet9, 24 epochs on a GPU; the CPU quick recipe without one)
#   make test  - the whole test suite (what .ci/run calls)
.PHONY: run test install bench gpu-check

install:
	@bash .ci/install.sh

run:
	@venv=$$(bash .ci/install.sh) && "$$venv/bin/fasttrain" quickstart

test:
	@venv=$$(bash .ci/install.sh) && "$$venv/bin/python" -m pytest -q

bench:
	@venv=$$(bash .ci/install.sh) && "$$venv/bin/python" benchmarks/pipeline_throughput.py

# The GPU window's one command: from a plain source checkout, nothing installed, no network (docs/gpu.md).
# GPU_CHECK_DRY_RUN=1 runs the same steps on the CPU at tiny sizes.
gpu-check:
	PYTHONPATH=. python3 benchmarks/gpu_check.py
