"""What a run keeps on disk, in one place with one codec.

``codec`` (tagged JSON and raw arrays: the one convention), ``files`` (atomic writes
that never follow a planted link), ``state`` (the run's state as data, and its
encoders), ``checkpoint`` (the checkpoint file, its lock, and what a run writes),
``journal`` (finished solves, replayed after a crash), ``history`` (one JSONL line per
step).
"""
