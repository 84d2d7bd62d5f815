"""Neural-network code for the Wan models and the loading of their checkpoints.

This package knows nothing of recipes, caches or plugins: it builds modules, reads checkpoint
files lazily, recognises what a checkpoint holds from its key/shape signature, and loads
weights strictly onto meta-initialised modules.
"""
