"""Where a sweep's files live: a folder of this machine (or a shared volume), or a bucket prefix.

``service.storage.paths.as_path`` turns a location the user gave into a ``Path`` or a
``BucketPath`` (``s3://bucket/prefix``); the sweep folder and the engine work with either.
"""
