"""The operator tool: the local stack, benchmarks and the one command line (the composition root,
the only code that imports both `api` and `streams`). Settings and errors live in `core`."""

__all__: list[str] = []
