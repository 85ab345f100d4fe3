"""Small bundled example models (weights and sample images) for trying edgekiln without your own model."""
