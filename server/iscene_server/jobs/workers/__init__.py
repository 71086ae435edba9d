"""Who runs the jobs: workers, each with its own models on its own device.

* :mod:`.base` — the :class:`~.base.Worker` the service hands a :class:`~.base.JobRun` to, one job at a time.
* :mod:`.models` — the models one worker loads (the I-Scene pipeline, the SAM segmenter).
* :mod:`.execute` — what a job of each kind runs, given those models (the same code on every kind of worker).
* :mod:`.local` — a worker on a device of this machine (``--devices``).
* :mod:`.remote` — workers on a Ray cluster (``--ray``), each driving one :mod:`.actor` on a cluster node.
"""
