"""Pluggable compile targets. Each subpackage has a builder (compile) and a runner (load + infer).

Backends are looked up through ``backends.registry``; no backend SDK is imported
until a backend is actually used.
"""
