"""Fetch raw data sets and item images from their public URLs (``python -m stages.download``).

- ``http``: the fetcher (bounded concurrency, retries with backoff, timeouts, resume, verification, atomic writes);
- ``catalog``: the public URL of every supported data set, and instructions for those obtained by hand;
- ``images``: item images by item id, each verified by decoding it;
- ``run``: one data set end to end, with ``manifest.json`` files recording every outcome.
"""

from pipeline.download.http import DownloadError, FetchOptions, FetchResult, RemoteFile, fetch_all, fetch_file
from pipeline.download.run import DownloadConfig, DownloadSummary, download_dataset

__all__ = [
    "DownloadConfig",
    "DownloadError",
    "DownloadSummary",
    "FetchOptions",
    "FetchResult",
    "RemoteFile",
    "download_dataset",
    "fetch_all",
    "fetch_file",
]
