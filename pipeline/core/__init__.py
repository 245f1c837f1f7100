"""Core: what every stage stands on. Configuration (where things live), errors, atomic storage, the lake
schema, DuckDB helpers, option checks and plots. Imports no other stage."""
