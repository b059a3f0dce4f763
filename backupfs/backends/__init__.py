"""Storage backends: where repository files live."""
