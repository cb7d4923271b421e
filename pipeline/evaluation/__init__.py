"""Evaluation: ``ranking`` (full ranking of held-out items), ``metrics``, ``significance`` (paired comparisons),
``references`` (cold-start reference rows), ``fusion`` / ``controls`` / ``claims`` (control rows and what the report
may claim), ``faiss_index`` / ``retrieval`` (the index and top-K search shared with training and serving) and ``job``
(the evaluate stage's body). Never imports the training loop, :mod:`pipeline.training.fit`
(tests/test_checkpoint.py)."""
