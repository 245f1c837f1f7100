"""Stage 4, score: write sentiment columns back into DuckDB tables, and run user SQL over them."""
