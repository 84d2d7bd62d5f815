"""The built-in model families: data only (components, official defaults, accepted inputs)."""
