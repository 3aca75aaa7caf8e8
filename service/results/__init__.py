"""A sweep's results: its folder (the one owner of its files), trial records, the report."""
