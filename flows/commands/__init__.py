"""CLI command groups. Each module exposes ``register(app)``; heavy imports stay inside commands
so ``reviewflow --help`` is instant."""
