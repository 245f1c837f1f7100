"""Thin Prefect orchestration over ``pipeline``: each flow reads like a table of contents."""
