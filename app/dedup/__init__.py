"""Near-duplicate detection: exact content hashes, MinHash signatures and an LSH index shared by workers.

The pure parts (``minhash``, ``lsh``, ``cluster``) import nothing from the service, so the benchmark and
the unit tests run them without a database.
"""
