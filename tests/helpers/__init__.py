"""Helpers shared by several test modules; no test module imports another (tests/conftest.py holds the fixtures).

- ``training``: the learnable item-cycle toy (split, catalog, ``train_cfg``) every training test starts from
- ``odmt`` / ``mp4sr``: tiny catalogs, configs and models of the two multimodal models
- ``projects``: a tiny evaluated project on disk (prepared data, untrained checkpoints, params) for the stage tests
- ``dvc_project``: a fresh git + DVC copy of this repository's pipeline for ``dvc repro`` end to end
- ``encoders``: tiny local Hugging Face and open_clip checkpoints
- ``data``: prepared-data writers and the hand-made ``data:`` config
- ``loopback``: a scripted 127.0.0.1 HTTP server (never the internet)

The generated raw data sets (tiny ML-1M, tiny table, the fake encoder) stay in ``tests/fixtures/``.
"""
