"""The base layer every Tessera package imports, and which imports none of them.

Settings (`config`), the PostgreSQL pool (`db`), the model catalog and its prices (`catalog`),
the error root (`errors`) and the format of API keys (`keys`). Nothing here starts a service or
reads the environment at import time.
"""
