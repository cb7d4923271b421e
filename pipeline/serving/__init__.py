"""Serving: ``inference`` (user/item vectors from a checkpoint, shared by training, evaluation and recommendation),
``recommend`` (the exported index and top-K) and ``job`` (the recommend stage's export and query)."""
