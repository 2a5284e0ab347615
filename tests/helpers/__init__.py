"""Generators of test data shared by the tests (and the report's benchmark)."""
