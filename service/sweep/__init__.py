"""Running a spec on Ray: engine, trial driver and workers, Tune callbacks, searcher, scheduler.

The only package of ``service`` that imports Ray's runtime; the workarounds of Ray's bugs live in
one module of it (``ray_workarounds``), each naming the Ray version it works around.
"""
