"""Programs the tests run inside network namespaces (python -m tests.support.programs.<name>)."""
