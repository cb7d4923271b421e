"""Where each supported data set lives, and which ``data.source`` reads it.

URLs are the public ones published by the data sets' authors (checked 2025). Each data set has one base URL,
overridable with ``--base-url`` or the ``MMREC_DOWNLOAD_BASE_URL`` environment variable (a mirror, or the
loopback server of the tests); file paths below are relative to it.

H&M needs a Kaggle account (accept the competition rules, then use the Kaggle CLI) and MicroLens is distributed
from its authors' site: for both, :data:`CATALOG` holds instructions to obtain the files by hand instead of URLs.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

BASE_URL_ENV = "MMREC_DOWNLOAD_BASE_URL"

AMAZON_2018_CATEGORIES = (
    "AMAZON_FASHION", "All_Beauty", "Appliances", "Arts_Crafts_and_Sewing", "Automotive", "Books", "CDs_and_Vinyl",
    "Cell_Phones_and_Accessories", "Clothing_Shoes_and_Jewelry", "Digital_Music", "Electronics", "Gift_Cards",
    "Grocery_and_Gourmet_Food", "Home_and_Kitchen", "Industrial_and_Scientific", "Kindle_Store", "Luxury_Beauty",
    "Magazine_Subscriptions", "Movies_and_TV", "Musical_Instruments", "Office_Products", "Patio_Lawn_and_Garden",
    "Pet_Supplies", "Prime_Pantry", "Software", "Sports_and_Outdoors", "Tools_and_Home_Improvement",
    "Toys_and_Games", "Video_Games",
)  # fmt: skip
AMAZON_2023_CATEGORIES = (
    "All_Beauty", "Amazon_Fashion", "Appliances", "Arts_Crafts_and_Sewing", "Automotive", "Baby_Products",
    "Beauty_and_Personal_Care", "Books", "CDs_and_Vinyl", "Cell_Phones_and_Accessories", "Clothing_Shoes_and_Jewelry",
    "Digital_Music", "Electronics", "Gift_Cards", "Grocery_and_Gourmet_Food", "Handmade_Products",
    "Health_and_Household", "Health_and_Personal_Care", "Home_and_Kitchen", "Industrial_and_Scientific",
    "Kindle_Store", "Magazine_Subscriptions", "Movies_and_TV", "Musical_Instruments", "Office_Products",
    "Patio_Lawn_and_Garden", "Pet_Supplies", "Software", "Sports_and_Outdoors", "Subscription_Boxes",
    "Tools_and_Home_Improvement", "Toys_and_Games", "Unknown", "Video_Games",
)  # fmt: skip


@dataclass(frozen=True)
class Dataset:
    name: str
    description: str
    source: str  # the data.source that reads the files
    base_url: str | None  # None: not downloadable by this tool (see ``manual``)
    files: Callable[[str | None], list[str]] = lambda category: []  # paths relative to base_url
    categories: tuple[str, ...] = ()
    default_category: str | None = None
    archive_dir: str | None = None  # a zip's top folder: data.path is <out>/<archive_dir>
    checksum_suffix: str | None = None  # published next to each file (e.g. ".md5"); used when reachable
    images: bool = False  # item images can be fetched from the reader's image_ref URLs
    manual: str = ""  # how to obtain the files by hand
    homepage: str = ""

    def url(self, relative: str, base_url: str | None = None) -> str:
        base = base_url or os.environ.get(BASE_URL_ENV) or self.base_url
        if base is None:
            raise ValueError(f"{self.name} has no download URL")
        return base.rstrip("/") + "/" + relative.lstrip("/")

    def data_path(self, out: Path) -> Path:
        return out / self.archive_dir if self.archive_dir else out


def _movielens(name: str, folder: str, description: str) -> Dataset:
    reader = {"ml-100k": "movielens100k", "ml-1m": "movielens"}.get(folder, "movielens_csv")
    return Dataset(
        name=name,
        description=description,
        source=reader,
        base_url="https://files.grouplens.org/datasets/movielens/",
        files=lambda category: [f"{folder}.zip"],
        archive_dir=folder,
        checksum_suffix=".md5",
        homepage="https://grouplens.org/datasets/movielens/",
    )


def _amazon2018(name: str, description: str, reviews: str) -> Dataset:
    """An Amazon 2018 category: ``reviews`` (its path, ``{c}`` = the category) + ``metaFiles2/meta_{c}.json.gz``."""
    return Dataset(
        name=name,
        description=description,
        source="amazon2018",
        base_url="https://datarepo.eng.ucsd.edu/mcauley_group/data/amazon_v2/",
        files=lambda c: [reviews.format(c=c), f"metaFiles2/meta_{c}.json.gz"],
        categories=AMAZON_2018_CATEGORIES,
        default_category="Arts_Crafts_and_Sewing",
        images=True,
        homepage="https://nijianmo.github.io/amazon/index.html",
    )


CATALOG: dict[str, Dataset] = {
    "amazon2018": _amazon2018(
        "amazon2018",
        "Amazon Review Data 2018 (Ni et al.), one category: 5-core reviews + metadata",
        "categoryFilesSmall/{c}_5.json.gz",
    ),
    "amazon2018_full": _amazon2018(
        "amazon2018_full",
        "Amazon Review Data 2018, one category: all reviews (not 5-core) + metadata",
        "categoryFiles/{c}.json.gz",
    ),
    "amazon2023": Dataset(
        name="amazon2023",
        description="Amazon Reviews 2023 (Hou et al.), one category: reviews + metadata",
        source="amazon2023",
        base_url="https://datarepo.eng.ucsd.edu/mcauley_group/data/amazon_2023/raw/",
        files=lambda c: [f"review_categories/{c}.jsonl.gz", f"meta_categories/meta_{c}.jsonl.gz"],
        categories=AMAZON_2023_CATEGORIES,
        default_category="All_Beauty",
        images=True,
        homepage="https://amazon-reviews-2023.github.io/",
    ),
    "movielens100k": _movielens("movielens100k", "ml-100k", "MovieLens 100K (943 users, 1,682 movies)"),
    "movielens1m": _movielens("movielens1m", "ml-1m", "MovieLens 1M (6,040 users, 3,706 movies)"),
    "movielens20m": _movielens("movielens20m", "ml-20m", "MovieLens 20M (138,493 users, 27,278 movies)"),
    "movielens25m": _movielens("movielens25m", "ml-25m", "MovieLens 25M (162,541 users, 62,423 movies)"),
    "movielens32m": _movielens("movielens32m", "ml-32m", "MovieLens 32M (200,948 users, 87,585 movies)"),
    "ml1m_posters": Dataset(
        name="ml1m_posters",
        description="MovieLens-1M posters by MovieID (antonsteenvoorden/ml1m-images) + GroupLens movies.dat",
        source="ml1m_recbole",
        base_url="https://raw.githubusercontent.com/antonsteenvoorden/ml1m-images/master/",
        files=lambda category: ["ml1m_images.csv"],  # + ml-1m.zip and the posters: pipeline.download.posters
        homepage="https://github.com/antonsteenvoorden/ml1m-images",
    ),
    "hm": Dataset(
        name="hm",
        description="H&M Personalized Fashion Recommendations (Kaggle competition data)",
        source="hm",
        base_url=None,
        homepage="https://www.kaggle.com/competitions/h-and-m-personalized-fashion-recommendations",
        manual=(
            "H&M is distributed by Kaggle and needs an account: sign in, accept the competition rules at "
            "https://www.kaggle.com/competitions/h-and-m-personalized-fashion-recommendations/rules, create an API "
            "token (~/.kaggle/kaggle.json), then run\n"
            "  pip install kaggle\n"
            "  kaggle competitions download -c h-and-m-personalized-fashion-recommendations -p {out}\n"
            "  unzip {out}/h-and-m-personalized-fashion-recommendations.zip -d {out}\n"
            "(images/ alone is ~30 GB; transactions_train.csv, articles.csv and images/ are what the reader needs). "
            "Then set data.source: hm, data.path: {out}, data.images_dir: {out}/images"
        ),
    ),
    "microlens": Dataset(
        name="microlens",
        description="MicroLens-100k micro-video data (Ni et al. 2023): pairs, English titles, cover images",
        source="microlens",
        base_url=None,
        homepage="https://github.com/westlake-repl/MicroLens",
        manual=(
            "MicroLens is distributed from its authors' site, https://recsys.westlake.edu.cn/MicroLens-100k-Dataset/ "
            "(see https://github.com/westlake-repl/MicroLens for the current links and terms). Download "
            "MicroLens-100k_pairs.csv, MicroLens-100k_title_en.csv and the covers archive into {out}, extract the "
            "covers to {out}/MicroLens-100k_covers/, then set data.source: microlens, data.path: {out}, "
            "data.images_dir: {out}/MicroLens-100k_covers"
        ),
    ),
}
