"""Sequential recommenders. Each model file registers itself in ``registry``."""
