"""Multimodal sequential recommendation: the library behind the DVC stages."""
