"""Models whose ID layers are addressable by dotted module names."""
