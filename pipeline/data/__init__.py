"""Raw-format readers, cleaning, id mapping, splits and torch datasets."""
