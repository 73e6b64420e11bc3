"""One module per method, named after it; each registers its method when imported.

`fastretrain.methods.load_all()` imports them all (the registry's one entry point); importing this package
alone registers nothing.
"""
