"""A one-shot GPU check: parity with the reference fixtures and throughput at real size, in one JSON.

    PYTHONPATH=. python -m tools.gpu_check -o DIR [--device cuda] [--quick] [--fixtures DIR]

Unlike every other module of tools/, this entry point drives the stages, the trainer's model and objective,
the sampler and the evaluator directly (tests/test_imports.py lets it, and lets nothing import it). It needs
no Ray, no insightface and no installed copy of the project: see README.md, "Benchmarks".
"""
