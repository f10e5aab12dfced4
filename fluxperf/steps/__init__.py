"""The optimization steps apply() runs, one module (or folder) per technique."""
