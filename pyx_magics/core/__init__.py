"""The IPython-free core of pyx: ids, hashing, redaction, inputs, manifests, comparison.

Nothing in this package imports IPython or a database driver (a test enforces it).
"""
