# Two entry points on a fresh machine (each installs everything first, idempotently):
#   make run   - convert CIFAR-10 and train (ResNet9, 24 epochs on a GPU; the CPU quick recipe without one)
#   make test  - the whole test suite (what .ci/run calls)
.PHONY: run test test-numeric install bench gpu-check

install:
	@bash .ci/install.sh

run:
	@venv=$$(bash .ci/install.sh) && "$$venv/bin/fasttrain" quickstart

# Two workers (pytest-xdist): most tests wait on subprocesses and imports, so two at a time fill 2 cores.
test:
	@venv=$$(bash .ci/install.sh) && "$$venv/bin/python" -m pytest -q -n 2 --dist worksteal

# The floating-point comparisons once more with oneDNN limited to AVX2 (as on a CPU without AVX-512/AMX):
# they must hold on any instruction set, not only the one that recorded them.
test-numeric:
	@venv=$$(bash .ci/install.sh) && ONEDNN_MAX_CPU_ISA=AVX2 "$$venv/bin/python" -m pytest -q -n 2 --dist worksteal -m numeric

bench:
	@venv=$$(bash .ci/install.sh) && "$$venv/bin/python" benchmarks/pipeline_throughput.py

# The GPU window's one command: from a plain source checkout, nothing installed, no network (docs/gpu.md).
# GPU_CHECK_DRY_RUN=1 runs the same steps on the CPU at tiny sizes.
gpu-check:
	PYTHONPATH=. python3 benchmarks/gpu_check.py
