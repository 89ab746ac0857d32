"""The benchmarks behind ``python tools/bench.py`` (its modes, one module each, and what they
share), the GPU step profile ``tools/benchmarks/gpu_profile_step.py`` that
``tools/gpu_check.sh`` runs, and ``tools/benchmarks/recipes_bench.py``.
"""
