"""Benchmark harness for Tether (issues 5 and 10): `python -m bench` (see README, "Performance").

On a throwaway PostgreSQL cluster it starts itself (`bench.cluster`, pg_stat_statements
preloaded) or on a server given with --server-url, it seeds the real schema with bulk
SQL, starts two gRPC servers as subprocesses -- a floor server (`bench.floor`: one raw
asyncpg statement per call) and `tether serve` -- and drives both with the same
closed-loop asyncio load generator (`bench.load`): the service through the raw
generated stub and through the shipped `AsyncSessionsClient`, a Slack-style gateway on
the client (`bench.gateway`), and a second `tether serve` on an SQLite file
(`bench.sqlite`). It prints every cell with its ratio to its floor, issue 10's targets
and the statements each call runs, and writes the same as JSON.
"""
