"""The model-zoo conformance suite (issue #14): real pretrained models from PyPI wheels."""
