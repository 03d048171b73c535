"""The CPU benchmarks and the tiny assets the tests and benchmarks build (not part of the installed package).

Imported from a checkout of the repository (its root on ``sys.path``): :mod:`benchmarks.launch` runs the
recipe on CPU, :mod:`benchmarks.e2e` and :mod:`benchmarks.learning` are the end-to-end and learning
benchmarks, :mod:`benchmarks.sft` runs verl's SFT trainer on CPU, :mod:`benchmarks.smoke` is the GPU smoke
test's evaluator, :mod:`benchmarks.fixtures` builds the tiny models, tokenizers, data and the arithmetic task.
"""
